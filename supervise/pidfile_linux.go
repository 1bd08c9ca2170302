//go:build linux

package supervise

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

type lockFile = *os.File

// Byte ranges of the lock file. Owners contend for ownerByte. liveByte is
// taken only after the new owner removed any stale pid file, so a reader
// that sees it held knows a pid file it opened earlier either is the live
// owner's or has been unlinked since (which the reader checks): a dead
// owner's pid is never reported live.
const (
	ownerByte = 0
	liveByte  = 1
)

// testHookPIDFileRead, set only by tests, runs in ReadPIDFile after the pid
// file was read and before the lock is tested.
var testHookPIDFileRead func()

// CreatePIDFile validates the pid file at path and takes its lock, held
// until Close. It does not write the file: call Write once the process is
// ready, so readers never see a pid that is not serving yet. A stale file
// (its lock free) is removed under the lock without acting on the pid in it.
func CreatePIDFile(path string) (*PIDFile, error) {
	path = filepath.Clean(path)
	dir := filepath.Dir(path)
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	if err := checkExisting(path); err != nil {
		return nil, err
	}
	// O_NOFOLLOW: a symlink planted at the lock path must not make us
	// create or lock another file.
	fd, err := unix.Open(path+".lock", unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		if err == unix.ELOOP {
			return nil, fmt.Errorf("%w: %s.lock is a symlink", ErrUnsafePIDFile, path)
		}
		return nil, &os.PathError{Op: "open", Path: path + ".lock", Err: err}
	}
	lock := os.NewFile(uintptr(fd), path+".lock")
	if err := checkFile(lock, path+".lock"); err != nil {
		lock.Close()
		return nil, err
	}
	// Readers of other users open the lock to test it (ReadPIDFile), as
	// they read the 0644 pid file; whatever the umask, or an older 0600
	// lock file, it must be readable.
	if err := lock.Chmod(0o644); err != nil {
		lock.Close()
		return nil, err
	}
	if _, err := ofdLock(lock, unix.F_OFD_SETLK, unix.F_WRLCK, ownerByte); err != nil {
		lock.Close()
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("%w: %s", ErrPIDFileLocked, path)
		}
		return nil, err
	}
	// The previous owner died without Close (SIGKILL): its file names a pid
	// that may be anyone's by now. Remove it before announcing ourselves
	// live, so no reader pairs that pid with our lock.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		lock.Close()
		return nil, err
	}
	if _, err := ofdLock(lock, unix.F_OFD_SETLK, unix.F_WRLCK, liveByte); err != nil {
		// Only an owner takes liveByte, and we own ownerByte.
		lock.Close()
		return nil, err
	}
	return &PIDFile{path: path, lock: lock}, nil
}

// ofdLock applies or tests (F_OFD_GETLK) an open file description lock on
// byte at of f. OFD locks, unlike flock(2), can be tested without being
// taken, so a reader never makes a starting owner fail; like flock, they
// belong to the open file description and vanish when the owner dies.
func ofdLock(f *os.File, cmd int, typ int16, at int64) (held bool, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: at, Len: 1}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		for {
			lerr = unix.FcntlFlock(fd, cmd, &lk)
			if lerr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return false, err
	}
	if lerr != nil {
		return false, os.NewSyscallError("fcntl", lerr)
	}
	return cmd == unix.F_OFD_GETLK && lk.Type != unix.F_UNLCK, nil
}

// checkDir refuses a directory others may write to without the sticky bit:
// they could swap the pid file between our checks and our use.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafePIDFile, dir)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("%w: directory %s is writable by others", ErrUnsafePIDFile, dir)
	}
	return nil
}

func checkExisting(path string) error { return checkExistingAs(path, false) }

// checkExistingAs is checkExisting, for a reader (ReadPIDFile) when reader
// is true: a reader also trusts a file owned by root, which it could not
// have planted, so anyone may read a root daemon's pid file.
func checkExistingAs(path string, reader bool) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return checkInfo(fi, path, reader)
}

func checkFile(f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return checkInfo(fi, path, false)
}

func checkInfo(fi os.FileInfo, path string, reader bool) error {
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%w: %s is a symlink", ErrUnsafePIDFile, path)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrUnsafePIDFile, path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: %s is writable by others", ErrUnsafePIDFile, path)
	}
	// os.FileInfo.Sys is a *syscall.Stat_t whatever package made the call.
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() && !(reader && st.Uid == 0) {
		return fmt.Errorf("%w: %s is owned by uid %d", ErrUnsafePIDFile, path, st.Uid)
	}
	return nil
}

// Write atomically replaces the pid file's content with pid: a temporary
// file in the same directory is written, synced and renamed over it, so a
// reader sees the old or the new pid, never an empty or partial file.
func (p *PIDFile) Write(pid int) error {
	if pid < 1 || pid > maxPID {
		return fmt.Errorf("%w: pid %d", ErrInvalid, pid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lock == nil {
		return os.ErrClosed
	}
	if err := checkExisting(p.path); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p.path), "."+filepath.Base(p.path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(strconv.Itoa(pid) + "\n")
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// rename(2) replaces a symlink planted at path, never follows it.
		err = os.Rename(tmp.Name(), p.path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// Close removes the pid file and releases the lock. It is idempotent.
func (p *PIDFile) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lock == nil {
		return nil
	}
	err := os.Remove(p.path)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if cerr := p.lock.Close(); err == nil {
		err = cerr
	}
	p.lock = nil
	return err
}

// ReadPIDFile reads the pid file at path and reports whether its owner is
// live (holds the lock). A pid from a file that is not live is stale and
// must not be signalled: it may belong to an unrelated process by now. A
// pid written by an owner that has died is never reported live, even while
// a new owner is taking over. The files must pass CreatePIDFile's checks,
// except that a reader also accepts files owned by root, so any user can
// read a root daemon's pid file (both files are 0644).
func ReadPIDFile(path string) (pid int, live bool, err error) {
	// A retry is needed only when the file is replaced (Write, takeover)
	// between our read and our check, a window of three system calls; an
	// owner rewriting in a tight loop can hit a few in a row, 32 never in
	// practice, and the answer after them is the safe one: not live.
	for range 32 {
		var same bool
		pid, live, same, err = readPIDFileOnce(path)
		if err != nil || !live || same {
			return pid, live, err
		}
	}
	return pid, false, nil
}

// readPIDFileOnce reads the pid, tests liveByte, then checks that path still
// names the file it read. The open descriptor pins that file's inode, so a
// new file at path cannot have the same inode number.
func readPIDFileOnce(path string) (pid int, live, same bool, err error) {
	if err := checkExistingAs(path, true); err != nil {
		return 0, false, false, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return 0, false, false, err
	}
	defer f.Close()
	var b [16]byte
	n, err := io.ReadFull(f, b[:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return 0, false, false, err
	}
	pid, err = parsePID(b[:n])
	if err != nil {
		return 0, false, false, err
	}
	if h := testHookPIDFileRead; h != nil {
		h()
	}
	fd, err := unix.Open(path+".lock", unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOENT {
			return pid, false, false, nil
		}
		return 0, false, false, &os.PathError{Op: "open", Path: path + ".lock", Err: err}
	}
	lock := os.NewFile(uintptr(fd), path+".lock")
	defer lock.Close()
	held, err := ofdLock(lock, unix.F_OFD_GETLK, unix.F_RDLCK, liveByte)
	if err != nil || !held {
		return pid, false, false, err
	}
	// liveByte is held, so any stale file was removed before it was
	// taken: if path still names the file we read, its pid is the owner's.
	read, err := f.Stat()
	if err != nil {
		return 0, false, false, err
	}
	now, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return pid, true, false, nil
	}
	if err != nil {
		return 0, false, false, err
	}
	return pid, true, os.SameFile(read, now), nil
}
