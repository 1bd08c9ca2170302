//go:build linux

package supervise

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

type lockFile = *os.File

// CreatePIDFile validates the pid file at path and takes its lock, held
// until Close. It does not write the file: call Write once the process is
// ready, so readers never see a pid that is not serving yet. A stale file
// (its lock free) is taken over without acting on the pid in it.
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
	fd, err := unix.Open(path+".lock", unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
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
	if _, err := ofdLock(lock, unix.F_OFD_SETLK, unix.F_WRLCK); err != nil {
		lock.Close()
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("%w: %s", ErrPIDFileLocked, path)
		}
		return nil, err
	}
	return &PIDFile{path: path, lock: lock}, nil
}

// ofdLock applies or tests (F_OFD_GETLK) a whole-file open file description
// lock. OFD locks, unlike flock(2), can be tested without being taken, so a
// reader never makes a starting owner fail; like flock, they belong to the
// open file description and vanish when the owner dies.
func ofdLock(f *os.File, cmd int, typ int16) (held bool, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	lk := unix.Flock_t{Type: typ, Whence: 0}
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

func checkExisting(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return checkInfo(fi, path)
}

func checkFile(f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return checkInfo(fi, path)
}

func checkInfo(fi os.FileInfo, path string) error {
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
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
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
// must not be signalled: it may belong to an unrelated process by now.
func ReadPIDFile(path string) (pid int, live bool, err error) {
	if err := checkExisting(path); err != nil {
		return 0, false, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false, err
	}
	pid, err = parsePID(b)
	if err != nil {
		return 0, false, err
	}
	fd, err := unix.Open(path+".lock", unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOENT {
			return pid, false, nil
		}
		return 0, false, &os.PathError{Op: "open", Path: path + ".lock", Err: err}
	}
	lock := os.NewFile(uintptr(fd), path+".lock")
	defer lock.Close()
	held, err := ofdLock(lock, unix.F_OFD_GETLK, unix.F_RDLCK)
	if err != nil {
		return 0, false, err
	}
	return pid, held, nil
}
