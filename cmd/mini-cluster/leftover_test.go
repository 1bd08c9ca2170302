//go:build linux

package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// TestStopKillsSetsidDescendant: a worker's descendant that called setsid
// is out of the worker's process group, so the group signals of a stop miss
// it; it holds the listening socket. A clean stop must still end it (and
// log it), so the port is free for the next start.
func TestStopKillsSetsidDescendant(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	// The descendant ignores SIGTERM: it is SIGKILLed after
	// -shutdown-timeout.
	prog := writeScript(t, "#!/bin/sh\nsetsid sh -c 'trap \"\" TERM; exec sleep 1002' &\nexec sleep 1001\n")
	m := startMaster(t, pc, nil, "-n", "1", "-ready", "started", "-shutdown-timeout", "1s", "-listen", "127.0.0.1:0", "-log-format", "json", prog)
	addr := m.waitReady()
	var pid int
	if !waitFor(10*time.Second, func() bool {
		for _, p := range pc.Marked() {
			if strings.Contains(p.Cmdline, "sleep 1002") {
				pid = p.PID
				return true
			}
		}
		return false
	}) {
		t.Fatal("the setsid descendant did not start")
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != exitOK {
		t.Errorf("exit code %d, want 0", code)
	}
	if !waitFor(5*time.Second, func() bool {
		p := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, _ := unix.Poll(p, 0)
		return n == 1
	}) {
		t.Errorf("the setsid descendant %d survived the master's stop", pid)
	}
	if n := count(m.records(), "killing a leftover process of a worker"); n != 1 {
		t.Errorf("%d leftover kills logged, want 1", n)
	}
	// The port is free again.
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
	m2 := startMaster(t, pc, nil, "-n", "1", "-ready", "started", "-listen", addr, "-log-format", "json", writeScript(t, "#!/bin/sh\nexec sleep 1004\n"))
	m2.waitReady()
	stopClean(t, m2)
}
