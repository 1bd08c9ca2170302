//go:build linux

package supervise

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

type lockFile = *os.File

// Byte ranges of the lock file. Owners contend for ownerByte. liveByte is
// taken only after the new owner removed any stale pid file, so a reader
// that sees it held knows a pid file it opened earlier either is the live
// owner's or has been unlinked since (which the reader checks): a dead
// owner's pid is never reported live.
//
// That does not hold against the pid file directory's owner, whom
// checkLastDir accepts (/run/app of the service's user for a root
// master): it can move a pid file of an earlier run aside and rename it
// back over the path once a new owner has taken liveByte, and the file is
// root's, with one link. So owners of this release also hold recordByte,
// taken (before liveByte) only once the lock record in the lock file,
// which only the owner's user can write, names the pid the pid file
// holds, or no pid (0) before the first Write. A reader that finds
// recordByte held reports a pid live only if the record names it. Owners
// of earlier releases hold ownerByte and liveByte only, and leave the lock
// file empty: for them, a reader does as those releases did.
const (
	ownerByte  = 0
	liveByte   = 1
	recordByte = 2
)

// testHookPIDFileRead, set only by tests, runs in ReadPIDFile after the pid
// file was read and before the lock is tested.
var testHookPIDFileRead func()

// testHookPIDFileLive, set only by tests, runs in ReadPIDFile right after
// liveByte was found held.
var testHookPIDFileLive func()

// testHookPIDFileOpen, set only by tests, runs in ReadPIDFile right before
// the pid file is opened: where another file may be swapped in.
var testHookPIDFileOpen func()

// testHookPIDFileWrite, set only by tests, runs in Write right before the
// rename (renamed false) and right after it (true), where the pid file and
// the lock record are updated one after the other.
var testHookPIDFileWrite func(renamed bool)

// CreatePIDFile validates the pid file at path and takes its lock, held
// until Close. It does not write the file: call Write once the process is
// ready, so readers never see a pid that is not serving yet. A stale file
// (its lock free) is removed under the lock without acting on the pid in it.
//
// Nothing another user could have planted there, or could swap, is used
// (CVE-2018-16888 class); a refusal is an *UnsafePIDFileError, matching
// ErrUnsafePIDFile:
//   - The pid file's directory must not be writable by others unless it
//     is sticky (as /tmp); writable by its group is accepted.
//   - Run as root, the path from / to the directory must have no unsafe
//     transition (systemd's rule): no step, through a directory or a
//     symlink, from an entry owned by a user other than root to an entry
//     owned by another user. A directory of the service's user under a
//     root-owned one is accepted; a symlink or directory of that user
//     leading to root's directories is not.
//   - An existing pid or lock file must be a regular file (never a
//     symlink, never followed), owned by the caller, with one hard link,
//     not writable by group or others.
//   - A missing lock file is created 0644 (O_EXCL); an existing one is
//     used as it is, never chmod'ed: if it is not readable by others,
//     other users' ReadPIDFile fails until it is removed (while no owner
//     runs) and recreated.
//   - The owner keeps a lock record in the lock file naming the pid it
//     wrote (none until Write), which ReadPIDFile checks the pid file
//     against. An existing lock file must be empty (as earlier releases
//     leave it), hold such a record (of any pid file, or of another
//     version), or hold recordSize NUL bytes (as a crash may leave it):
//     other content may be another file of the caller's, moved there, and
//     is not overwritten.
func CreatePIDFile(path string) (*PIDFile, error) {
	path = filepath.Clean(path)
	dir := filepath.Dir(path)
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	if err := checkExisting(path); err != nil {
		return nil, err
	}
	lock, err := openLock(path + ".lock")
	if err != nil {
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
	// The record a dead owner left names its pid: a file of its put back
	// at path must not match it once we hold recordByte.
	if err := initRecord(lock, path+".lock", 0); err != nil {
		lock.Close()
		return nil, err
	}
	for _, b := range []int64{recordByte, liveByte} {
		if _, err := ofdLock(lock, unix.F_OFD_SETLK, unix.F_WRLCK, b); err != nil {
			lock.Close()
			// Only an owner write-locks these bytes, and we own
			// ownerByte; but anyone who can read the lock file can
			// read-lock them (as ownerByte). Never go on without
			// recordByte: readers would trust any pid file.
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
				return nil, fmt.Errorf("%w: %s", ErrPIDFileLocked, path)
			}
			return nil, err
		}
	}
	return &PIDFile{path: path, lock: lock, record: true}, nil
}

// initRecord makes the lock record of lock, the lock file name on which
// we hold ownerByte, name pid (0: no pid file), before recordByte is
// taken. An existing lock file is written into only if it is empty (an
// earlier release's) or holds a lock record: any other content may be
// another file of our user's, renamed there by the directory's owner,
// which is not ours to overwrite (as openLock never chmods one).
func initRecord(lock *os.File, name string, pid int) error {
	var b [recordSize + 1]byte
	n, err := lock.ReadAt(b[:], 0)
	if err != nil && err != io.EOF {
		return err
	}
	if n > 0 && !ourContent(b[:n]) {
		return unsafePath(name, "holds %d bytes that are not a pid lock record, not overwritten (if it is the pid file's lock file, remove %s while no owner runs)", n, name)
	}
	if err := setRecord(lock, strings.TrimSuffix(name, ".lock"), pid, 0); err != nil {
		return err
	}
	if n > recordSize {
		// A longer record of another version: readers parse the whole
		// file.
		return lock.Truncate(int64(recordSize))
	}
	return nil
}

// ourContent reports whether b, the start of a lock file, is what an owner
// may overwrite: a lock record, of any pid file and any version (a
// downgrade);
// or recordSize NUL bytes, as a crash can leave a file whose size reached
// the disk before its data (ext4 delalloc). Only owners write the record,
// holding ownerByte as we do, so it is not torn by a concurrent rewrite.
func ourContent(b []byte) bool {
	if strings.HasPrefix(string(b), "handoff-pid-lock ") {
		return true
	}
	if len(b) != recordSize {
		return false
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// setRecord rewrites the lock record of lock, the lock file of the pid
// file at path, to name pid and prev.
func setRecord(lock *os.File, path string, pid, prev int) error {
	var b [recordSize]byte
	_, err := lock.WriteAt(appendLockRecord(b[:0], filepath.Base(path), pid, prev), 0)
	return err
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

// openLock opens the lock file name, creating it if absent. Only a file
// this call created (O_EXCL) is chmod'ed: fchmod on an existing one would
// change whatever inode is there, such as a root-owned 0600 file
// hard-linked at name by another user, which passes the owner and mode
// checks (only its link count tells it apart).
func openLock(name string) (*os.File, error) {
	// Each retry needs the file removed between our two opens, which in
	// a directory checkDir accepted only root, we, the directory's owner
	// or its group may do: they can only make CreatePIDFile fail.
	for range 8 {
		fd, err := unix.Open(name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err == nil {
			f := os.NewFile(uintptr(fd), name)
			// Readers of other users open the lock to test it
			// (ReadPIDFile), as they read the 0644 pid file: it must
			// be readable whatever the umask.
			if err := f.Chmod(0o644); err != nil {
				f.Close()
				return nil, err
			}
			if err := checkFile(f, name); err != nil {
				f.Close()
				return nil, err
			}
			return f, nil
		}
		if err != unix.EEXIST {
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
		// O_NOFOLLOW: a symlink planted at the lock path must not make
		// us lock another file.
		fd, err = unix.Open(name, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		switch err {
		case nil:
		case unix.ENOENT:
			continue
		case unix.ELOOP:
			return nil, unsafePath(name, "is a symlink")
		default:
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
		f := os.NewFile(uintptr(fd), name)
		fi, err := f.Stat()
		if err == nil {
			err = checkInfo(fi, name, false)
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		if fi.Sys().(*syscall.Stat_t).Nlink == 0 {
			// Removed since we opened it: a lock on it would not
			// exclude an owner that creates the file anew.
			f.Close()
			continue
		}
		return f, nil
	}
	return nil, unsafePath(name, "keeps being removed while it is opened")
}

func unsafePath(path, format string, args ...any) error {
	return &UnsafePIDFileError{Path: path, Reason: fmt.Sprintf(format, args...)}
}

// maxSymlinks bounds the symlinks safeWalk follows, as the kernel does
// (ELOOP after 40).
const maxSymlinks = 40

// checkDir applies CreatePIDFile's directory rules to dir, the pid file's
// directory: run as root, the walk from / (safeWalk); for anyone, the
// rule for the last directory (checkLastDir).
func checkDir(dir string) error {
	if os.Geteuid() != 0 {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		return checkLastDir(fi, dir)
	}
	fi, resolved, err := safeWalk(dir)
	if err != nil {
		return err
	}
	return checkLastDir(fi, resolved)
}

// checkLastDir refuses a pid file directory that anyone may write to
// without the sticky bit: anyone could swap the pid or lock file between
// our checks and our use, or remove the lock file so that a second owner
// locks another inode. With the sticky bit (as /tmp) the kernel lets only
// an entry's owner, the directory's owner and root rename or remove it,
// and what others plant (their own file, a symlink, a hard link) is
// refused by the file checks (owner, O_NOFOLLOW, link count) and O_EXCL.
// A directory writable by its group is accepted (as /var/local, 2775
// root:staff): its group is trusted with what it holds. Its owner is not
// checked, as systemd does not: a root master may keep its pid file in a
// directory of the service's user (/run/app), whose owner can make
// CreatePIDFile fail, remove the files or rename them (and so put back a
// pid file of an earlier run, which the lock record keeps ReadPIDFile from
// reporting live: see recordByte).
func checkLastDir(fi os.FileInfo, path string) error {
	if !fi.IsDir() {
		return unsafePath(path, "is not a directory")
	}
	// Group write counts too, as before these checks followed systemd's
	// walk: a group member could delete or rename the pid and lock files.
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return unsafePath(path, "is a directory writable by group or others and not sticky")
	}
	return nil
}

// safeWalk resolves dir from / one component at a time, as the kernel
// would, and refuses it on an unsafe transition: from a directory, or a
// symlink, owned by a user other than root to an entry owned by another
// user. That user could otherwise point the path, through a symlink or a
// directory of theirs, at a directory of root's holding another daemon's
// pid file (CVE-2018-16888). Leaving a root-owned entry is always safe.
// This is systemd's rule (chase with CHASE_SAFE, unsafe_transition), at
// the same steps: from the current directory to each entry met, to the
// parent on "..", and from a symlink to / when its target is absolute (a
// relative target is resolved from the symlink's directory, so checked
// from it). It returns the directory reached, and its resolved path.
func safeWalk(dir string) (os.FileInfo, string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, "", err
	}
	root, err := os.Lstat("/")
	if err != nil {
		return nil, "", err
	}
	// cur never names a symlink, so its lexical parent (for "..") is its
	// real one.
	cur, curInfo, rest, links := "/", root, abs, 0
	for rest != "" {
		var name string
		name, rest, _ = strings.Cut(rest, "/")
		switch name {
		case "", ".":
			continue
		case "..":
			parent := filepath.Dir(cur)
			fi, err := os.Lstat(parent)
			if err != nil {
				return nil, "", err
			}
			if err := checkTransition(cur, curInfo, parent, fi); err != nil {
				return nil, "", err
			}
			cur, curInfo = parent, fi
			continue
		}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(next)
		if err != nil {
			return nil, "", err
		}
		if err := checkTransition(cur, curInfo, next, fi); err != nil {
			return nil, "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur, curInfo = next, fi
			continue
		}
		if links++; links > maxSymlinks {
			return nil, "", &os.PathError{Op: "lstat", Path: dir, Err: unix.ELOOP}
		}
		target, err := os.Readlink(next)
		if err != nil {
			return nil, "", err
		}
		if filepath.IsAbs(target) {
			if a, b := ownerOf(fi), ownerOf(root); a != 0 && a != b {
				return nil, "", unsafePath(next, "is a symlink owned by uid %d to an absolute path (/ is owned by uid %d)", a, b)
			}
			cur, curInfo = "/", root
		}
		rest = target + "/" + rest
	}
	return curInfo, cur, nil
}

// checkTransition refuses the step from from (owned by a) to to (owned by
// b) when a is not root and b is not a.
func checkTransition(from string, fromInfo os.FileInfo, to string, toInfo os.FileInfo) error {
	a, b := ownerOf(fromInfo), ownerOf(toInfo)
	if a == 0 || a == b {
		return nil
	}
	return unsafePath(to, "is owned by uid %d and reached from %s, owned by uid %d", b, from, a)
}

// ownerOf returns fi's owner. os.FileInfo.Sys is a *syscall.Stat_t
// whatever package made the call.
func ownerOf(fi os.FileInfo) int {
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}

// checkExisting checks the pid file at path, if any, before an owner
// replaces (Write) or removes (CreatePIDFile) it: neither opens it. A
// reader checks the file it opened instead (openForRead).
func checkExisting(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return checkInfo(fi, path, false)
}

func checkFile(f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return checkInfo(fi, path, false)
}

// checkInfo refuses a pid or lock file another user could have planted or
// could change. A hard link (st_nlink > 1) is refused: it passes the other
// checks when it leads to a file of the caller's, root's for root, that is
// not ours to touch.
func checkInfo(fi os.FileInfo, path string, reader bool) error {
	if fi.Mode()&os.ModeSymlink != 0 {
		return unsafePath(path, "is a symlink")
	}
	if !fi.Mode().IsRegular() {
		return unsafePath(path, "is not a regular file")
	}
	// 0 links is no link to another file: a file being replaced (Write's
	// rename) can be stat'ed after its lookup and its unlinking.
	st := fi.Sys().(*syscall.Stat_t)
	if st.Nlink > 1 {
		return unsafePath(path, "has %d hard links", st.Nlink)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return unsafePath(path, "is writable by group or others")
	}
	if int(st.Uid) != os.Geteuid() && !(reader && st.Uid == 0) {
		return unsafePath(path, "is owned by uid %d", st.Uid)
	}
	return nil
}

// Write atomically replaces the pid file's content with pid: a temporary
// file in the same directory is written, synced and renamed over it, so a
// reader sees the old or the new pid, never an empty or partial file. The
// lock record names both pids until the rename, and the new one after it.
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
	// Readers accept the pid file's old pid or the new one from here to
	// the rename, and the new one only after it: at every moment the file
	// holds a pid the record names, however long we are descheduled.
	if err == nil {
		err = setRecord(p.lock, p.path, pid, p.written)
	}
	if h := testHookPIDFileWrite; h != nil && err == nil {
		h(false)
	}
	if err == nil {
		// rename(2) replaces a symlink planted at path, never follows it.
		err = os.Rename(tmp.Name(), p.path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		_ = setRecord(p.lock, p.path, p.written, 0)
		return err
	}
	if h := testHookPIDFileWrite; h != nil {
		h(true)
	}
	// The file holds pid now, whatever comes of the record's rewrite: the
	// next Write must name pid as the one it replaces.
	p.written = pid
	if err := setRecord(p.lock, p.path, pid, 0); err != nil {
		return err
	}
	if !p.record {
		// AdoptPIDFile found recordByte read-locked by someone else.
		if _, err := ofdLock(p.lock, unix.F_OFD_SETLK, unix.F_WRLCK, recordByte); err == nil {
			p.record = true
		}
	}
	return nil
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
// a new owner is taking over. The pid and lock files must pass
// CreatePIDFile's file checks, except that a reader also accepts files owned by root, so any user can
// read a root daemon's pid file (both files are 0644). They are checked as
// opened, so no file swapped in after a check passes, and a FIFO never
// blocks the reader.
//
// Run as root, the reader also refuses a path with an unsafe transition
// (see CreatePIDFile): a symlink or directory planted by another user
// must not lead root to another daemon's pid file, reported live.
//
// The directory's owner, who may be another user than the pid file's
// (/run/app of the service's user for a root master), can rename the
// files: put back a pid file the daemon wrote in an earlier run, which is
// the daemon's, with one link. A pid is therefore reported live only if
// the lock record the live owner keeps in the lock file, which only the
// owner's user can write, names it and the pid file (by its base name,
// against the lock file of another pid file swapped in with it). An owner
// of a release before lock records keeps none (its lock file is empty,
// recordByte unlocked): its pid file is trusted as those releases did,
// without that protection, until the owner runs this release (a restart,
// or AdoptPIDFile at an in-place upgrade), unless someone read-locks
// recordByte: it then reads as not live (see readPIDFileOnce).
func ReadPIDFile(path string) (pid int, live bool, err error) {
	if os.Geteuid() == 0 {
		if _, _, err := safeWalk(filepath.Dir(filepath.Clean(path))); err != nil {
			return 0, false, err
		}
	}
	return readPIDFile(path)
}

// readPIDFile is ReadPIDFile without its path walk.
func readPIDFile(path string) (pid int, live bool, err error) {
	// A retry is needed only when the file, its lock record or its owner
	// changes (Write, takeover, a Close) between our read and our checks,
	// a window of a few system calls, or when a record is read torn by a
	// rewrite; an owner rewriting in a tight loop can cause a few in a
	// row, 32 never in practice, and the answer after them is the safe
	// one: not live.
	for range 32 {
		var same bool
		pid, live, same, err = readPIDFileOnce(path)
		if err != nil || !live || same {
			return pid, live, err
		}
	}
	return pid, false, nil
}

// readPIDFileOnce reads the pid, tests liveByte, checks the pid against
// the lock record if recordByte is held, then checks that path still
// names the file it read. The open descriptor pins that file's inode, so a
// new file at path cannot have the same inode number.
func readPIDFileOnce(path string) (pid int, live, same bool, err error) {
	if h := testHookPIDFileOpen; h != nil {
		h()
	}
	f, err := openForRead(path)
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
	lock, err := openForRead(path + ".lock")
	if errors.Is(err, os.ErrNotExist) {
		return pid, false, false, nil
	}
	if err != nil {
		return 0, false, false, err
	}
	defer lock.Close()
	held, err := ofdLock(lock, unix.F_OFD_GETLK, unix.F_RDLCK, liveByte)
	if err != nil || !held {
		return pid, false, false, err
	}
	if h := testHookPIDFileLive; h != nil {
		h()
	}
	// F_WRLCK: reports a read lock on recordByte too. Anyone who can read
	// the lock file can read-lock it, and an owner adopting a lock of an
	// earlier release then runs without recordByte (AdoptPIDFile): we
	// check the record whenever the byte holds any lock. An owner of an
	// earlier release, whose lock file is empty, then reads as not live
	// while someone read-locks the byte: a denial of service by whoever
	// can read the lock file, never a dead pid reported live.
	record, err := ofdLock(lock, unix.F_OFD_GETLK, unix.F_WRLCK, recordByte)
	if err != nil {
		return 0, false, false, err
	}
	var rec [recordSize + 1]byte
	var recN int
	if record {
		// Read after the lock was found held: its holder wrote the
		// record before taking recordByte, so it is not a dead
		// owner's.
		recN, err = lock.ReadAt(rec[:], 0)
		if err != nil && err != io.EOF {
			return 0, false, false, err
		}
		// Another pid is a file put back by the directory's owner, or
		// one replaced by Writes since we read it; a malformed record is
		// one torn by a rewrite. Retry: the answer after the retries is
		// not live.
		want, prev, err := parseLockRecord(rec[:recN], filepath.Base(path))
		if err != nil || (pid != want && pid != prev) {
			return pid, true, false, nil
		}
	}
	// The owner we tested may have closed since (releasing both bytes at
	// once) and another taken over, while the directory's owner moved the
	// file we read aside and back around it: the bytes tested one after
	// the other, or the record, would then describe different owners.
	// Test again; any change is retried.
	held, err = ofdLock(lock, unix.F_OFD_GETLK, unix.F_RDLCK, liveByte)
	if err != nil {
		return 0, false, false, err
	}
	again, err := ofdLock(lock, unix.F_OFD_GETLK, unix.F_WRLCK, recordByte)
	if err != nil {
		return 0, false, false, err
	}
	if !held || again != record {
		return pid, true, false, nil
	}
	if record {
		// A new owner writes its record before it takes recordByte, so
		// the same record now is the same owner's (or one rewrite of
		// it by a Write, which is retried).
		var now [recordSize + 1]byte
		n, err := lock.ReadAt(now[:], 0)
		if err != nil && err != io.EOF {
			return 0, false, false, err
		}
		if string(now[:n]) != string(rec[:recN]) {
			return pid, true, false, nil
		}
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

// openForRead opens name, the pid or the lock file, for a reader and
// checks the file it opened, never the path before: another file could be
// swapped in between a check of the path and the open (CVE-2018-16888
// class), by the directory's owner at any time (a root daemon's pid file
// in /run/app of the service's user), or in a sticky directory by anyone
// while no pid file is there (between CreatePIDFile and Write). A file
// owned by root is trusted too (see ReadPIDFile). A missing file is an
// error matching os.ErrNotExist.
func openForRead(name string) (*os.File, error) {
	// O_NOFOLLOW: a symlink is refused, not followed (ELOOP). O_NONBLOCK: a
	// FIFO must not block the reader in open(2) until a writer comes; it
	// is then refused as not a regular file. O_NOCTTY: a terminal must not
	// become a session leader's controlling terminal.
	var fd int
	var err error
	for {
		fd, err = unix.Open(name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			break
		}
	}
	switch err {
	case nil:
	case unix.ELOOP:
		return nil, unsafePath(name, "is a symlink")
	case unix.ENXIO:
		// open(2) of a unix domain socket.
		return nil, unsafePath(name, "is not a regular file")
	default:
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	// Back to blocking before os.NewFile, which would otherwise try to
	// put the descriptor on the netpoller.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(fd), name)
	fi, err := f.Stat()
	if err == nil {
		err = checkInfo(fi, name, true)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// liveHeld reports whether liveByte of the lock file name, which must be
// the file fi describes, is locked by an open file description other than
// the one this call opens: F_OFD_GETLK ignores only the caller's own.
func liveHeld(name string, fi os.FileInfo) (bool, error) {
	// O_NONBLOCK: as in readPIDFileOnce, never block on a FIFO.
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, &os.PathError{Op: "open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	now, err := f.Stat()
	if err != nil {
		return false, err
	}
	if !os.SameFile(fi, now) {
		return false, unsafePath(name, "was replaced while it was adopted")
	}
	return ofdLock(f, unix.F_OFD_GETLK, unix.F_RDLCK, liveByte)
}
