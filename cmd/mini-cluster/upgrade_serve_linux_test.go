package main

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestUpgradeHandoffOldWorkersServe: in handoff mode the old workers go on
// serving after a SIGUSR2 upgrade until the new image's workers are ready
// (docs/operations.md, "Upgrading the master"), as in a restart. The new
// workers wait at their readiness gate (delayed) or never get ready
// (never ready: they hang until -start-timeout kills them, again and
// again); meanwhile every request on a new connection is answered by an
// old worker, before the test opens the gate. Once the gate opens, the new
// generation takes over, the old workers are stopped and reaped, and the
// master's descriptors have their old shape. The old code took the adopted
// workers out of the rotation at once: the master accepted nothing until a
// new worker was ready, and if none ever was, nothing at all.
func TestUpgradeHandoffOldWorkersServe(t *testing.T) {
	t.Run("delayed", func(t *testing.T) { testUpgradeHandoffOldWorkersServe(t, false) })
	t.Run("never ready", func(t *testing.T) { testUpgradeHandoffOldWorkersServe(t, true) })
}

func testUpgradeHandoffOldWorkersServe(t *testing.T, never bool) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	_, bin, gate := upgradeDir(t)
	env := []string{"SRV_READY_GATE=" + gate}
	args := []string{"-n", "2", "-mode", "handoff", "-listen", "127.0.0.1:0", "-shutdown-timeout", "2s", "-log-format", "json"}
	if never {
		// Generation 2 (the new image's) hangs before READY=1 and is
		// killed at its start timeout.
		env = append(env, "SRV_HANG_GEN=2")
		args = append(args, "-start-timeout", "1s")
	}
	m := startMasterFrom(t, pc, bin, env, append(append(args, "--"), fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	mpid := m.cmd.Process.Pid
	old := m.workers()
	slices.Sort(old)
	if len(old) != 2 {
		t.Fatalf("%d workers before the upgrade, want 2", len(old))
	}
	kinds0, sockets0, err := upgradeShape(t, mpid)
	if err != nil {
		t.Fatal(err)
	}

	// The new image's workers will wait at the gate.
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	copyBinary(t, bin)
	m.signal(syscall.SIGUSR2)
	newPIDs := func() map[int]bool {
		out := map[int]bool{}
		for _, r := range m.records() {
			if r.Msg == "worker started" && r.Generation == 2 {
				out[r.PID] = true
			}
		}
		return out
	}
	// Both new workers started (and subscribed, before the gate).
	if !waitFor(10*time.Second, func() bool {
		return count(m.records(), "upgrade: took over from the previous image") == 1 && len(newPIDs()) >= 2
	}) {
		t.Fatalf("no new image with two new workers within 10 s")
	}
	if never {
		// A new worker killed for not being ready: the new generation
		// has failed once already.
		if !waitFor(10*time.Second, func() bool {
			gen2 := newPIDs()
			for _, line := range strings.Split(m.log.String(), "\n") {
				for pid := range gen2 {
					if strings.Contains(line, `"msg":"worker exited`) && strings.Contains(line, `"pid":`+strconv.Itoa(pid)+`,`) {
						return true
					}
				}
			}
			return false
		}) {
			t.Fatalf("no new worker killed by its start timeout within 10 s")
		}
	}

	// Each request is made on a new connection while the gate is closed:
	// an answer can only come from an old worker, and it must come
	// before the test opens the gate (get gives up after 5 s, which a
	// master that waits for the new workers exceeds: the gate is never
	// opened before every request here returned).
	byPID := map[int]int{}
	for i := range 8 {
		_, tag, err := get(addr, "/")
		if err != nil {
			t.Errorf("request %d while the new workers are not ready: %v (the old workers must serve it)", i, err)
			break
		}
		p, g, _ := strings.Cut(tag, ":")
		pid, _ := strconv.Atoi(p)
		if g != "1" || !slices.Contains(old, pid) {
			t.Errorf("request %d answered by %q, want an old worker (%v, generation 1)", i, tag, old)
		}
		byPID[pid]++
	}
	if n := count(m.records(), "upgrade: new workers ready; stopping the previous image's workers", "upgrade: done"); n != 0 {
		t.Fatalf("the new workers were ready before the gate opened: the test proves nothing")
	}
	for _, pid := range old {
		if p, ok := proccensus.Stat(pid); !ok || p.PPID != mpid || p.State == 'Z' {
			t.Errorf("old worker %d is not alive as the master's child while the new workers are not ready", pid)
		}
	}
	t.Logf("answered by old workers while the new ones were not ready: %v", byPID)

	if never {
		stopClean(t, m)
		if n := count(m.records(), "upgrade: previous worker exited"); n != 2 {
			t.Errorf("%d old workers reported stopped at the master's stop, want 2", n)
		}
		return
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 1 }) {
		t.Fatalf("upgrade not done within 15 s")
	}
	if n := count(m.records(), "upgrade: previous worker exited"); n != 2 {
		t.Errorf("%d old workers reported stopped, want 2", n)
	}
	checkReplaced(t, m, addr, old, "2", "after the upgrade")
	if z := proccensus.Zombies(mpid); len(z) != 0 {
		t.Errorf("zombies left by the upgrade: %v", z)
	}
	var kinds map[string]int
	var sockets []uint64
	if !waitFor(fdcensus.Settle, func() bool {
		kinds, sockets, err = upgradeShape(t, mpid)
		return err == nil && cmp.Equal(kinds0, kinds) && cmp.Equal(sockets0, sockets)
	}) {
		t.Errorf("master's descriptors changed across the upgrade (err %v): kinds (-before +after):\n%s\nlistener and control socket inodes (-before +after):\n%s\nthe master's descriptors and children now:\n%s",
			err, cmp.Diff(kinds0, kinds), cmp.Diff(sockets0, sockets), masterFDs(mpid))
	}
	stopClean(t, m)
}
