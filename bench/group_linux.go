//go:build linux

package main

import (
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// ownGroup starts cmd in a process group of its own and makes cancelling
// it kill the whole group: a benchmark binary killed half-way runs no
// cleanups, and its helpers and mini-cluster master (whose workers die with
// it through Pdeathsig) would otherwise outlive the runner.
func ownGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The group's id is the leader's pid; the leader is not reaped
		// before Wait, so the id cannot have been reused.
		return unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	}
}
