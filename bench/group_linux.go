//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// benchmarksSupported is nil: the benchmarks are Linux's.
func benchmarksSupported() error { return nil }

// ownGroup starts cmd in a process group of its own and makes cancelling
// it kill the whole group: a benchmark binary killed half-way runs no
// cleanups, and its helpers and mini-cluster master (whose workers die with
// it through Pdeathsig) would otherwise outlive the runner. A runner killed
// outright (SIGKILL) cancels nothing: Pdeathsig then kills cmd, which the
// benchmark binary passes on (pdeathsigVar: bench's and cmd/mini-cluster's
// test binaries arm PR_SET_PDEATHSIG in TestMain and set Pdeathsig on what
// their benchmarks start). Pdeathsig fires when the
// forking thread exits, not the process; the runner locks no goroutine to
// a thread, so its threads live as long as it does.
func ownGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		// The group's id is the leader's pid; the leader is not reaped
		// before Wait, so the id cannot have been reused.
		return unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	}
}

// becomeSubreaper makes this process the child subreaper of its
// descendants (prctl PR_SET_CHILD_SUBREAPER): an orphan re-parents to it
// instead of init, so that one that left the benchmark's process group
// (setsid) can still be found and killed. undo turns it off again.
func becomeSubreaper() (undo func(), err error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, os.NewSyscallError("prctl(PR_SET_CHILD_SUBREAPER)", err)
	}
	return func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) }, nil
}

// waitExited blocks until cmd's process has exited without reaping it
// (waitid WNOWAIT): while it is a zombie its pid, the group's id, cannot
// be reused, so its group can still be killed by that id.
func waitExited(cmd *exec.Cmd) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return os.NewSyscallError("waitid", err)
		}
	}
}

// reapLimit bounds the kill-and-reap passes over the orphans of one
// command: each pass finds the children of the ones reaped before.
const reapLimit = 1000

// killLeftovers kills what cmd, exited but not yet reaped, left running:
// its process group (helpers it started and did not reap, since it
// panicked, hit its -test.timeout or was OOM-killed), and every orphan that
// re-parented to this process (a subreaper) from outside the group. It
// reaps the orphans and returns the live processes it found, as
// "pid (command)".
func killLeftovers(cmd *exec.Cmd) []string {
	self, leader := os.Getpid(), cmd.Process.Pid
	var live []string
	for _, p := range procs() {
		if p.pid != leader && (p.pgrp == leader || p.ppid == self) && p.state != 'Z' {
			live = append(live, fmt.Sprintf("%d (%s)", p.pid, p.comm))
		}
	}
	// ESRCH: the group is empty.
	_ = unix.Kill(-leader, unix.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for range reapLimit {
		var orphans []int
		for _, p := range procs() {
			if p.ppid == self && p.pid != leader {
				orphans = append(orphans, p.pid)
			}
		}
		if len(orphans) == 0 || time.Now().After(deadline) {
			break
		}
		for _, pid := range orphans {
			// An unreaped child's pid cannot be reused, so the kill
			// reaches the orphan; once it is reaped, its own children
			// have re-parented here for the next pass.
			_ = unix.Kill(pid, unix.SIGKILL)
			for {
				_, err := unix.Wait4(pid, nil, 0, nil)
				if !errors.Is(err, unix.EINTR) {
					break
				}
			}
		}
	}
	return live
}

// proc is what killLeftovers reads of a process from /proc/<pid>/stat.
type proc struct {
	pid, ppid, pgrp int
	state           byte
	comm            string
}

// procs lists the processes of the system, skipping those gone while read.
func procs() []proc {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	var out []proc
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + n + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ppid pgrp ...": comm may hold spaces and ')'.
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open || end+2 >= len(b) {
			continue
		}
		f := strings.Fields(string(b[end+2:]))
		if len(f) < 3 || len(f[0]) != 1 {
			continue
		}
		ppid, err1 := strconv.Atoi(f[1])
		pgrp, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, proc{pid: pid, ppid: ppid, pgrp: pgrp, state: f[0][0], comm: string(b[open+1 : end])})
	}
	return out
}
