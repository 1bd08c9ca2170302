//go:build linux

package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestHelloGoWorker runs examples/hello (package cluster's worker API)
// under mini-cluster -heartbeat: an -addr the master did not bind is bound
// by the master once and served by both workers, and a hung worker
// (SIGSTOP) is killed and replaced while the other keeps running; a
// master that stood still itself (SIGSTOP) kills no healthy worker.
func TestHelloGoWorker(t *testing.T) {
	fdcensus.Verify(t)
	hello := buildHello(t)
	pc := proccensus.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := ln.Addr().String()
	ln.Close()
	// The master's own -listen is a unix socket: a TCP port 0 could be
	// given the port just freed, and the workers would then find free
	// among their inherited sockets instead of asking the master for it.
	own := "unix://" + filepath.Join(t.TempDir(), "m.sock")
	m := startMaster(t, pc, nil, "-n", "2", "-heartbeat", "300ms", "-log-format", "json", "-listen", own, "--", hello, "-addr", free)
	m.waitReady()
	seen := map[string]bool{}
	if !waitFor(10*time.Second, func() bool {
		if _, w, err := get(free, "/"); err == nil {
			seen[w] = true
		}
		return len(seen) == 2
	}) {
		t.Fatalf("workers seen on the master-bound address %s: %v, want 2", free, seen)
	}
	if n := count(m.records(), "listening for workers"); n != 1 {
		t.Errorf("%q logged %d times, want once (bound once, then cached)", "listening for workers", n)
	}

	pids := m.workers()
	if len(pids) != 2 {
		t.Fatalf("workers %v, want 2", pids)
	}
	// Healthy workers outlive a few heartbeat deadlines (900 ms each).
	time.Sleep(2 * time.Second)
	if got := m.workers(); !slices.Equal(sorted(got), sorted(pids)) {
		t.Fatalf("healthy workers replaced: %v -> %v", pids, got)
	}
	// Nor does the master's own standstill kill them: stopped for 1.5 s
	// (over a deadline), three times, it finds their heartbeats waiting
	// unread when it resumes.
	for range 3 {
		m.signal(syscall.SIGSTOP)
		time.Sleep(1500 * time.Millisecond)
		m.signal(syscall.SIGCONT)
		time.Sleep(600 * time.Millisecond)
	}
	if got := m.workers(); !slices.Equal(sorted(got), sorted(pids)) {
		t.Fatalf("healthy workers replaced after the master stood still: %v -> %v", pids, got)
	}
	if err := m.signalWorker(pids[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// A hung worker is replaced even while the master keeps standing still
	// itself, 500 ms out of every 750: its silence counts in the master's
	// running time (900 ms of it take under 3 s here).
	replaced := func() bool {
		w := m.workers()
		return len(w) == 2 && !slices.Contains(w, pids[0]) && slices.Contains(w, pids[1])
	}
	for i := 0; !replaced(); i++ {
		if i == 16 {
			t.Fatalf("hung worker %d not replaced within 12 s, 4 of them the master's (workers %v)", pids[0], m.workers())
		}
		m.signal(syscall.SIGSTOP)
		time.Sleep(500 * time.Millisecond)
		m.signal(syscall.SIGCONT)
		time.Sleep(250 * time.Millisecond)
	}
	if n := count(m.records(), "worker killed to be replaced"); n != 1 {
		t.Errorf("%d kill records, want 1", n)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func sorted(s []int) []int {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestDurationFlagBounds: -heartbeat and -shutdown-timeout outside the
// configuration file's bounds are usage errors (exit 2) naming the flag: a
// 100ns heartbeat gave workers WATCHDOG_USEC=0 ("off") and then killed
// them in a loop. -h is a success.
func TestDurationFlagBounds(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-heartbeat", "-1s"}, exitUsage, "-heartbeat -1s"},
		{[]string{"-heartbeat", "100ns"}, exitUsage, "-heartbeat 100ns: want 10ms to 1h"},
		{[]string{"-heartbeat", "2h"}, exitUsage, "-heartbeat 2h0m0s"},
		{[]string{"-shutdown-timeout", "1ms"}, exitUsage, "-shutdown-timeout 1ms: want 100ms to 24h"},
		{[]string{"-shutdown-timeout", "25h"}, exitUsage, "-shutdown-timeout 25h0m0s"},
		{[]string{"-h"}, exitOK, "usage: mini-cluster"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), append(tc.args, "-listen", "127.0.0.1:0", "true"), nil, &stderr, &stderr)
		if code := exitCode(err, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit code %d (err %v), stderr %q; want %d and %q", tc.args, code, err, stderr.String(), tc.code, tc.want)
		}
	}
}

// perWorkerSockets returns the inodes of unnamed connected unix sockets
// (/proc/net/unix): the master's ends of per-worker channels (control, and
// connection channels in handoff mode), new with every worker by design,
// unlike the listeners and the notify and control sockets.
func perWorkerSockets() map[uint64]bool {
	out := map[uint64]bool{}
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode [Path]
		f := strings.Fields(line)
		if len(f) != 7 || f[5] != "03" {
			continue
		}
		if ino, err := strconv.ParseUint(f[6], 10, 64); err == nil {
			out[ino] = true
		}
	}
	return out
}

// withoutPerWorker removes per-worker channel sockets from inodes.
func withoutPerWorker(inodes []uint64) []uint64 {
	skip := perWorkerSockets()
	out := inodes[:0:0]
	for _, ino := range inodes {
		if !skip[ino] {
			out = append(out, ino)
		}
	}
	return out
}
