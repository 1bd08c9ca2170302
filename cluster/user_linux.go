//go:build linux

package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// workerCredential is the credential workers are started with for c
// (Config.Credential): nil when c is nil or names this process's own
// effective uid and gid (nothing to switch), c itself when this process is
// root, else an error: without CAP_SETUID and CAP_SETGID every spawn would
// fail in the forked child.
func workerCredential(c *supervise.Credential) (*supervise.Credential, error) {
	if c == nil {
		return nil, nil
	}
	euid, egid := os.Geteuid(), os.Getegid()
	if int(c.UID) == euid && int(c.GID) == egid {
		return nil, nil
	}
	if euid != 0 {
		return nil, fmt.Errorf("%w: running as uid %d, so workers cannot be started as uid %d gid %d: start the master as root, or leave the user out", ErrUser, euid, c.UID, c.GID)
	}
	cp := *c
	cp.Groups = append([]uint32(nil), c.Groups...)
	return &cp, nil
}

// accessAs is access(2) for another user: whether the kernel lets c reach
// path with mode (unix.R_OK, W_OK, X_OK), every directory on the way
// searched, ACLs, read-only mounts and LSMs included. faccessat2 with
// AT_EACCESS checks with the thread's filesystem ids (asUser), where
// access(2) would check the real uid, root's. Needs root (CAP_SETGID for
// setgroups) and Linux 5.8 (faccessat2).
func accessAs(c *supervise.Credential, path string, mode uint32) error {
	return asUser(c, func() error {
		err := unix.Faccessat2(unix.AT_FDCWD, path, mode, unix.AT_EACCESS)
		if errors.Is(err, unix.ENOSYS) {
			// Before Linux 5.8 nothing checks with the fsuid (access(2)
			// takes the real uid): refuse rather than guess.
			return fmt.Errorf("cannot check access for another user on this kernel: %w", os.NewSyscallError("faccessat2", err))
		}
		if err != nil {
			return os.NewSyscallError("faccessat2", err)
		}
		return nil
	})
}

// asUser runs fn on an OS thread of its own whose effective and
// filesystem uid and gid and supplementary groups are c's: on Linux
// credentials are per thread (the raw system calls, not glibc's or Go's
// process-wide set*id), and a non-zero effective uid drops the thread's
// effective capabilities (capabilities(7)). So every path fn resolves,
// creates, chmods or unlinks is checked by the kernel as c's, at the
// moment it happens: no check-then-use window a symlink swap could slip
// through; and a socket fn connects or listens on carries c's uid as its
// peer credentials (SO_PEERCRED is taken from the effective ids at
// connect(2) and listen(2)). fn must not start goroutines that touch the
// filesystem or sockets (they would run on other threads). The thread is
// never given back: its goroutine exits locked, so the runtime terminates
// it with its changed credentials. Never the main thread: the runtime
// parks a locked main thread forever instead of ending it, and the
// process's lead thread would keep c's ids. c nil runs fn on a thread
// without effective capabilities instead (dropCapsOnThread).
func asUser(c *supervise.Credential, fn func() error) error {
	errc := make(chan error, 1)
	go onDoomedThread(c, fn, errc)
	return <-errc
}

// onDoomedThread is asUser's goroutine: it locks its thread and, unless
// that is the main thread, changes the thread's credentials and runs fn.
func onDoomedThread(c *supervise.Credential, fn func() error, errc chan<- error) {
	// Never unlocked: the thread dies with this goroutine.
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		// The main thread: it stays locked, credentials untouched, so
		// the goroutine started here cannot be scheduled on it; then the
		// runtime parks it.
		go onDoomedThread(c, fn, errc)
		return
	}
	var err error
	if c == nil {
		err = dropCapsOnThread()
	} else {
		err = becomeOnThread(c)
	}
	if err == nil {
		err = fn()
	}
	errc <- err
}

// becomeOnThread gives the calling thread c's supplementary groups and
// effective (hence filesystem) gid and uid. The real and saved ids stay
// root's, like the rest of the process's: fn is the master's own code,
// and the thread ends with it, never reused.
func becomeOnThread(c *supervise.Credential) error {
	groups := make([]int, len(c.Groups))
	for i, g := range c.Groups {
		groups[i] = int(g)
	}
	// x/sys's Setgroups is the raw system call: this thread only. Groups
	// and gid first: both need CAP_SETGID, which the uid change drops.
	if err := unix.Setgroups(groups); err != nil {
		return os.NewSyscallError("setgroups", err)
	}
	// x/sys's Setres[ug]id are Go's process-wide ones (every thread):
	// the raw system calls change this thread only. -1 keeps an id.
	keep := ^uintptr(0)
	if _, _, e := unix.RawSyscall(sysSetresgid, keep, uintptr(c.GID), keep); e != 0 {
		return os.NewSyscallError("setresgid", e)
	}
	if _, _, e := unix.RawSyscall(sysSetresuid, keep, uintptr(c.UID), keep); e != 0 {
		return os.NewSyscallError("setresuid", e)
	}
	return nil
}

// dropCapsOnThread empties the calling thread's effective capability set
// (capset(2) is per thread), keeping the permitted one: a non-root master
// may hold file capabilities its workers lose at exec, and what it does
// for a worker on this thread must be only what the worker could do.
func dropCapsOnThread() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return os.NewSyscallError("capget", err)
	}
	if data[0].Effective == 0 && data[1].Effective == 0 {
		return nil
	}
	data[0].Effective, data[1].Effective = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return os.NewSyscallError("capset", err)
	}
	return nil
}

// listenUnixAs is sockfile.Listen run as c (asUser): the stale-socket
// check and its unlink, the bind, the chmod and the lock file are all
// done with c's ids, so they succeed only where c's user could do them
// itself, and the socket file and its lock are that user's, as is the
// socket to its clients (SO_PEERCRED) (c nil: without effective
// capabilities). owner closes ln, unlinking the path as c too.
func listenUnixAs(c *supervise.Credential, path string, opts *sockfile.Options) (ln *sockfile.Listener, owner io.Closer, err error) {
	err = asUser(c, func() error {
		var err error
		ln, err = sockfile.Listen(path, opts)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return ln, &closerAs{ln: ln, cred: c}, nil
}

// adoptUnixAs is sockfile.Adopt run as c (asUser), for a socket file
// listenUnixAs created in an earlier image of the master: the lock file
// is opened and locked, and the path checked, with c's ids, as at
// creation. owner closes ln, unlinking the path as c too.
func adoptUnixAs(c *supervise.Credential, fd int, path string, dev, ino uint64, opts *sockfile.Options) (ln *sockfile.Listener, owner io.Closer, err error) {
	err = asUser(c, func() error {
		var err error
		ln, err = sockfile.Adopt(fd, path, dev, ino, opts)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return ln, &closerAs{ln: ln, cred: c}, nil
}

// closerAs closes a listener of listenUnixAs (or adoptUnixAs) with its
// user's rights: the unlink at close resolves the path again, and the
// master must not remove, through a symlink swapped in meanwhile, what
// that user could not.
type closerAs struct {
	ln   *sockfile.Listener
	cred *supervise.Credential
}

func (c *closerAs) Close() error {
	ran := false
	err := asUser(c.cred, func() error {
		ran = true
		return c.ln.Close()
	})
	if !ran {
		// No thread of that user: leave the file (a stale socket the
		// next Listen replaces) rather than unlink it as the master.
		c.ln.SetUnlinkOnClose(false)
		c.ln.Close()
	}
	return err
}
