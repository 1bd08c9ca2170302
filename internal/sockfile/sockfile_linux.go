//go:build linux

package sockfile

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// sockType checks path and opts and returns the socket type they ask for.
func sockType(path string, opts *Options) (int, error) {
	network, err := opts.network()
	if err != nil {
		return 0, err
	}
	if path == "" {
		return 0, errors.New("empty path")
	}
	if len(path) > maxPath {
		return 0, ErrPathTooLong
	}
	if network == "unixpacket" {
		return unix.SOCK_SEQPACKET, nil
	}
	return unix.SOCK_STREAM, nil
}

func listen(path string, opts *Options) (*Listener, error) {
	sotype, err := sockType(path, opts)
	if err != nil {
		return nil, err
	}
	lockFD, err := lock(path + ".lock")
	if err != nil {
		return nil, err
	}
	l, err := create(path, sotype, opts.mode())
	if err != nil {
		releaseLock(lockFD)
		return nil, err
	}
	l.lockFD = lockFD
	l.unlink = true
	return l, nil
}

// lock opens and flocks the lock file. A held lock means another process is
// creating or serving the socket: ErrInUse at once, rather than waiting for
// a holder that may serve for days.
func lock(path string) (int, error) {
	// O_NOFOLLOW: a symlink planted at the lock path must not make us create
	// or lock a file elsewhere. O_NONBLOCK: a FIFO planted there must not
	// block the open (it is then refused as not a regular file).
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0o600)
	if err != nil {
		switch err {
		case unix.ELOOP:
			return -1, fmt.Errorf("%w: %s is a symlink", ErrNotSocket, path)
		case unix.EISDIR:
			return -1, fmt.Errorf("%w: %s is a directory", ErrNotSocket, path)
		}
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, fmt.Errorf("%w: %s is not a regular file", ErrNotSocket, path)
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		if err == unix.EWOULDBLOCK {
			return -1, fmt.Errorf("%w: %s is held by another process", ErrInUse, path)
		}
		return -1, os.NewSyscallError("flock", err)
	}
	return fd, nil
}

func releaseLock(fd int) {
	if fd >= 0 {
		// Closing the last descriptor of the open file description drops
		// the flock.
		unix.Close(fd)
	}
}

// beforeConnect, when set by a test, runs in checkExisting between the
// Lstat that found a socket and the connect that probes it: the window in
// which another process may remove or replace the file.
var beforeConnect func(path string)

// staleFile identifies the stale socket file checkExisting found.
type staleFile struct{ dev, ino uint64 }

// checkExisting decides what may happen to whatever is at path: nothing
// there (nil, nil) or a stale socket (its identity) may be replaced;
// anything else may not.
func checkExisting(path string, sotype int) (*staleFile, error) {
	var st unix.Stat_t
	err := unix.Lstat(path, &st)
	if err == unix.ENOENT {
		return nil, nil
	}
	if err != nil {
		return nil, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fmt.Errorf("%w: %s is a %s", ErrNotSocket, path, fileKind(st.Mode))
	}
	fd, err := unix.Socket(unix.AF_UNIX, sotype|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	if beforeConnect != nil {
		beforeConnect(path)
	}
	// Non-blocking: a live listener with a full backlog answers EAGAIN
	// instead of making us wait.
	switch err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err {
	case nil, unix.EAGAIN, unix.EINPROGRESS, unix.EPROTOTYPE:
		// EPROTOTYPE: someone listens there with another socket type.
		return nil, fmt.Errorf("%w: %s accepts connections", ErrInUse, path)
	case unix.ECONNREFUSED:
		// Bound by nobody: the owner died without unlinking it.
		return &staleFile{dev: uint64(st.Dev), ino: uint64(st.Ino)}, nil
	case unix.ENOENT:
		// The stale file was removed since the Lstat (systemd-tmpfiles, an
		// admin): nothing is there now.
		return nil, nil
	default:
		return nil, &os.PathError{Op: "connect", Path: path, Err: err}
	}
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return "non-socket file"
}

// create replaces a stale socket, binds, secures and listens, with the lock
// held. Binding path itself, rather than a temporary name renamed into
// place, keeps getsockname (and every peer's view of the address) equal to
// path.
func create(path string, sotype int, mode os.FileMode) (*Listener, error) {
	stale, err := checkExisting(path, sotype)
	if err != nil {
		return nil, err
	}
	// Other sockfile users are locked out until we are done, but not other
	// programs: only the stale file found is removed, not whatever may have
	// replaced it since (bind then fails with EADDRINUSE).
	if stale != nil {
		if err := unlinkIfSame(path, stale.dev, stale.ino); err != nil {
			return nil, err
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, sotype|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	closeFD := true
	defer func() {
		if closeFD {
			unix.Close(fd)
		}
	}()
	// bind(2) never replaces a file: EADDRINUSE means someone outside the
	// lock created the path since checkExisting.
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		if err == unix.EADDRINUSE {
			return nil, fmt.Errorf("%w: %s was created by another process meanwhile", ErrInUse, path)
		}
		return nil, &os.PathError{Op: "bind", Path: path, Err: err}
	}
	bound := true
	defer func() {
		if bound {
			unix.Unlink(path)
		}
	}()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		bound = false // not ours any more
		return nil, fmt.Errorf("%w: %s was replaced after bind", ErrNotSocket, path)
	}
	// The mode is set before listen(2): until then every connect gets
	// ECONNREFUSED, so nobody connects while the umask's mode applies.
	if err := chmodNoFollow(path, mode); err != nil {
		return nil, err
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		return nil, os.NewSyscallError("listen", err)
	}
	// net.FileListener works on its own copy; f owns (and closes) fd.
	closeFD = false
	f := os.NewFile(uintptr(fd), path)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	bound = false
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // Close decides, by inode
	return &Listener{ul: ul, path: path, dev: uint64(st.Dev), ino: uint64(st.Ino)}, nil
}

func chmodNoFollow(path string, mode os.FileMode) error {
	err := unix.Fchmodat(unix.AT_FDCWD, path, uint32(mode.Perm()), unix.AT_SYMLINK_NOFOLLOW)
	if err == unix.EOPNOTSUPP || err == unix.ENOSYS {
		// Kernels before 6.6 lack fchmodat2; the Lstat above checked that
		// path is our socket, not a symlink.
		err = unix.Chmod(path, uint32(mode.Perm()))
	}
	if err != nil {
		return &os.PathError{Op: "chmod", Path: path, Err: err}
	}
	return nil
}

func unlinkIfSame(path string, dev, ino uint64) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	// The type too: the inode of a stale file, once unlinked, is free for
	// reuse, and tmpfs and ext4 hand it to the next file created.
	if uint64(st.Dev) != dev || uint64(st.Ino) != ino || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil // a successor's file
	}
	if err := unix.Unlink(path); err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "unlink", Path: path, Err: err}
	}
	return nil
}

func adopt(fd int, path string, dev, ino uint64, opts *Options) (*Listener, error) {
	sotype, err := sockType(path, opts)
	if err != nil {
		return nil, err
	}
	if err := checkListening(fd, path, sotype); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotListener, err)
	}
	// The lock first, as Listen takes it, so the identity check and
	// everything after it happen under the lock. Best effort: the
	// previous holder's lock died with its descriptor, and whoever holds
	// it now (a starting instance probing the path) finds the socket live
	// and lets go. But a lock path that is not a regular file (lock
	// refuses it without following or opening it), which Listen refuses,
	// means the path is not for sockfile to manage: the socket serves,
	// the file is left at Close.
	lockFD, lockErr := lock(path + ".lock")
	unlink := true
	if lockErr != nil {
		lockFD = -1
		unlink = !errors.Is(lockErr, ErrNotSocket)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		releaseLock(lockFD)
		if err == unix.ENOENT {
			return nil, fmt.Errorf("%w: %s was removed", ErrReplaced, path)
		}
		return nil, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || uint64(st.Dev) != dev || uint64(st.Ino) != ino {
		releaseLock(lockFD)
		return nil, fmt.Errorf("%w: %s is now another %s", ErrReplaced, path, fileKind(st.Mode))
	}
	// fd stays the caller's: an *os.File over it would close it when
	// collected, so wrap a duplicate (net.FileListener dups it again).
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		releaseLock(lockFD)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(dup), path)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		releaseLock(lockFD)
		return nil, err
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // Close decides, by inode
	return &Listener{ul: ul, path: path, dev: dev, ino: ino, lockErr: lockErr, lockFD: lockFD, unlink: unlink}, nil
}

// checkListening checks that fd is a listening AF_UNIX socket of type
// sotype bound to path.
func checkListening(fd int, path string, sotype int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("descriptor %d: %w", fd, os.NewSyscallError("fstat", err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("descriptor %d is not a socket", fd)
	}
	for _, o := range []struct {
		opt, want int
		what      string
	}{
		{unix.SO_DOMAIN, unix.AF_UNIX, "an AF_UNIX socket"},
		{unix.SO_TYPE, sotype, "of the expected socket type"},
		{unix.SO_ACCEPTCONN, 1, "listening"},
	} {
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, o.opt)
		if err != nil {
			return fmt.Errorf("descriptor %d: %w", fd, os.NewSyscallError("getsockopt", err))
		}
		if v != o.want {
			return fmt.Errorf("descriptor %d is not %s", fd, o.what)
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("descriptor %d: %w", fd, os.NewSyscallError("getsockname", err))
	}
	if ua, ok := sa.(*unix.SockaddrUnix); !ok || ua.Name != path {
		return fmt.Errorf("descriptor %d is not bound to %s", fd, path)
	}
	return nil
}
