//go:build linux

package cluster

import (
	"errors"
	"fmt"
	"os"
	"runtime"

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
// searched, ACLs, read-only mounts and LSMs included. The check runs on an
// OS thread of its own whose filesystem uid and gid and supplementary
// groups are switched to c's: on Linux these are per thread (the raw
// system calls, not glibc's or Go's process-wide set*id), and a non-zero
// fsuid drops the filesystem capabilities (CAP_DAC_OVERRIDE and the like,
// capabilities(7)) from the thread's effective set. faccessat2 with
// AT_EACCESS checks with those ids, where access(2) would check the real
// uid, root's. The thread is never given back: its goroutine exits locked,
// so the runtime terminates it with its changed credentials. Needs root
// (CAP_SETGID for setgroups) and Linux 5.8 (faccessat2).
func accessAs(c *supervise.Credential, path string, mode uint32) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with this goroutine.
		runtime.LockOSThread()
		errc <- accessOnThread(c, path, mode)
	}()
	return <-errc
}

func accessOnThread(c *supervise.Credential, path string, mode uint32) error {
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
}
