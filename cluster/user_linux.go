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

// asUser runs fn on an OS thread of its own whose filesystem uid and gid
// and supplementary groups are c's: on Linux these are per thread (the
// raw system calls, not glibc's or Go's process-wide set*id), and a
// non-zero fsuid drops the filesystem capabilities (CAP_DAC_OVERRIDE and
// the like, capabilities(7)) from the thread's effective set. So every
// path fn resolves, creates, chmods or unlinks is checked by the kernel
// as c's, at the moment it happens: no check-then-use window a symlink
// swap could slip through. fn must not start goroutines that touch the
// filesystem (they would run on other threads). The thread is never given
// back: its goroutine exits locked, so the runtime terminates it with its
// changed credentials. c nil runs fn on a thread without effective
// capabilities instead (dropCapsOnThread).
func asUser(c *supervise.Credential, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with this goroutine.
		runtime.LockOSThread()
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
	}()
	return <-errc
}

func becomeOnThread(c *supervise.Credential) error {
	groups := make([]int, len(c.Groups))
	for i, g := range c.Groups {
		groups[i] = int(g)
	}
	// x/sys's Setgroups and Setfs[ug]id are the raw system calls: this
	// thread only.
	if err := unix.Setgroups(groups); err != nil {
		return os.NewSyscallError("setgroups", err)
	}
	// setfs[ug]id(2) returns the previous id and no error on failure;
	// setting the same id again returns the one in force.
	unix.SetfsgidRetGid(int(c.GID))
	if prev, _ := unix.SetfsgidRetGid(int(c.GID)); prev != int(c.GID) {
		return fmt.Errorf("setfsgid %d: still %d", c.GID, prev)
	}
	unix.SetfsuidRetUid(int(c.UID))
	if prev, _ := unix.SetfsuidRetUid(int(c.UID)); prev != int(c.UID) {
		return fmt.Errorf("setfsuid %d: still %d", c.UID, prev)
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
// done with c's filesystem ids, so they succeed only where c's user could
// do them itself, and the socket file and its lock are that user's (c
// nil: without effective capabilities). owner closes ln, unlinking the
// path as c too.
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

// closerAs closes a listener of listenUnixAs with its user's rights: the
// unlink at close resolves the path again, and the master must not
// remove, through a symlink swapped in meanwhile, what that user could
// not.
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
