//go:build linux

package cluster_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// hoNotifyWorker is a handoff-mode worker that sends on NOTIFY_SOCKET
// what it is told by signal: SIGUSR1 RELOADING=1, SIGUSR2 READY=1 twice
// and then STATUS=ready-sent (which the master logs), SIGHUP STOPPING=1. It answers each connection of its first listener with
// its pid. In slot HO_HOLD_SLOT, the first time only (marker file
// HO_MARKER), it subscribes on its raw channel instead and never reads it,
// printing "queued" once a message waits there; SIGTERM makes it exit
// without reading, so what it holds is the master's to rescue. With
// HO_WATCHDOG=1 it sends WATCHDOG=1 every 10 ms until its STOPPING=1, as a
// program stops its watchdog loop when it begins to drain.
func hoNotifyWorker() int {
	sig := make(chan os.Signal, 4)
	// Before READY=1: a test signals the worker as soon as it is ready.
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	if os.Getenv("HO_WATCHDOG") == "1" {
		// The beats are the loop's below alone: the package's own (its
		// worker runtime reads WATCHDOG_USEC on first use) would go on.
		os.Unsetenv("WATCHDOG_USEC")
	}
	name, _, _ := strings.Cut(os.Getenv("LISTEN_FDNAMES"), ":")
	hold := false
	if os.Getenv("HANDOFF_WORKER_ID") == os.Getenv("HO_HOLD_SLOT") {
		if f, err := os.OpenFile(os.Getenv("HO_MARKER"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			f.Close()
			hold = true
		}
	}
	if hold {
		fd, err := strconv.Atoi(os.Getenv("HANDOFF_CONN_FD"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "ho-notify-worker: no connection channel")
			return 3
		}
		if _, err := unix.Write(fd, cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
			fmt.Fprintln(os.Stderr, "ho-notify-worker:", err)
			return 3
		}
		go func() {
			// SIOCINQ of a SOCK_SEQPACKET socket: the length of the
			// first queued message, read without taking it.
			for range 2000 {
				if n, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil && n > 0 {
					fmt.Println("queued")
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	} else {
		ln, err := cluster.HandoffListener(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ho-notify-worker:", err)
			return 3
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%d\n", os.Getpid())
				c.Close()
			}
		}()
	}
	if err := notifySend("READY=1"); err != nil {
		fmt.Fprintln(os.Stderr, "ho-notify-worker:", err)
		return 3
	}
	drain := make(chan struct{})
	if os.Getenv("HO_WATCHDOG") == "1" {
		go func() {
			t := time.NewTicker(10 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-drain:
					return
				case <-t.C:
					notifySend("WATCHDOG=1")
				}
			}
		}()
	}
	for s := range sig {
		var err error
		switch s {
		case syscall.SIGUSR1:
			err = notifySend("RELOADING=1")
		case syscall.SIGUSR2:
			for _, m := range []string{"READY=1", "READY=1", "STATUS=ready-sent"} {
				if err == nil {
					err = notifySend(m)
				}
			}
		case syscall.SIGHUP:
			select {
			case <-drain:
			default:
				close(drain)
			}
			err = notifySend("STOPPING=1")
		default:
			return 0
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "ho-notify-worker:", err)
			return 3
		}
	}
	return 0
}

func notifySend(state string) error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: startNotify, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// startNotifyCluster runs two ho-notify-worker slots in handoff mode with a
// control socket, env added, and waits until both are ready.
func startNotifyCluster(t *testing.T, env ...string) (*goCluster, *cluster.ControlClient) {
	t.Helper()
	return startNotifyClusterWith(t, nil, env...)
}

// startNotifyClusterWith is startNotifyCluster with edit applied to the
// configuration.
func startNotifyClusterWith(t *testing.T, edit func(*cluster.Config), env ...string) (*goCluster, *cluster.ControlClient) {
	t.Helper()
	pc := proccensus.New(t)
	ctl := filepath.Join(shortTemp(t), "ctl")
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := startClusterWith(t, pc, 2, 0, nil, func(cfg *cluster.Config) {
		cfg.Mode = cluster.ModeHandoff
		cfg.Control = ctl
		if edit != nil {
			edit(cfg)
		}
	}, bin, []string{"-test.run=^$"}, append([]string{helperproc.RoleVar + "=ho-notify-worker"}, env...)...)
	return c, dialControl(t, ctl)
}

// slotState waits until Master.Status and the control socket both show
// slot in state, with ready workers ready in all.
func slotState(t *testing.T, c *goCluster, cc *cluster.ControlClient, slot int, state supervise.SlotState, ready int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("slot %d %v, %d ready", slot, state, ready), 10*time.Second, func() bool {
		st := c.m.Status()
		return len(st.Slots) == 2 && st.Slots[slot].State == state && st.ReadyWorkers == ready
	})
	waitStatus(t, cc, fmt.Sprintf("slot %d %v", slot, state), func(st *cluster.ControlStatus) bool {
		return len(st.Slots) == 2 && st.Slots[slot].State == state && st.ReadyWorkers == ready
	})
}

// askPID connects to addr and returns the pid the worker answered with.
func askPID(addr string) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(line))
}

// TestWorkerReloading: a worker's RELOADING=1 shows it as reloading in
// Master.Status and on the control socket, no longer counted ready, and in
// handoff mode it is sent no new connection while the other worker gets
// them all; its READY=1 makes it ready and sent connections again. Both
// changes are logged.
func TestWorkerReloading(t *testing.T) {
	fdcensus.Verify(t)
	c, cc := startNotifyCluster(t)
	pids := c.slotPIDs(2)
	addr := c.m.Addrs()[0].String()
	unix.Kill(pids[0], unix.SIGUSR1)
	slotState(t, c, cc, 0, supervise.SlotReloading, 1)
	if st := c.m.Status(); st.Slots[1].State != supervise.SlotReady {
		t.Errorf("slot 1 %v, want ready", st.Slots[1].State)
	}
	got := map[int]int{}
	for i := range 20 {
		pid, err := askPID(addr)
		if err != nil {
			t.Fatalf("connection %d while slot 0 reloads: %v", i, err)
		}
		got[pid]++
	}
	if diff := cmp.Diff(map[int]int{pids[1]: 20}, got); diff != "" {
		t.Errorf("connections by worker pid while slot 0 (%d) reloads (-want +got):\n%s", pids[0], diff)
	}
	unix.Kill(pids[0], unix.SIGUSR2)
	slotState(t, c, cc, 0, supervise.SlotReady, 2)
	served := false
	for i := 0; i < 200 && !served; i++ {
		pid, err := askPID(addr)
		if err != nil {
			t.Fatalf("connection %d after the reload: %v", i, err)
		}
		served = pid == pids[0]
	}
	if !served {
		t.Errorf("slot 0 (%d) sent no connection of 200 after its READY=1", pids[0])
	}
	for _, msg := range []string{"worker reloading", "worker reloaded"} {
		recs := c.log.find(msg)
		if len(recs) != 1 || recs[0]["pid"] != float64(pids[0]) {
			t.Errorf("%q records %v, want one for pid %d", msg, recs, pids[0])
		}
	}
	if got := c.slotPIDs(2); !cmp.Equal(pids, got) {
		t.Errorf("workers replaced: %v -> %v", pids, got)
	}
}

// TestWorkerStopping: a worker's STOPPING=1 shows it as stopping, no longer
// counted ready, and in handoff mode it is sent nothing new; a READY=1 it
// sends later is ignored (logged once). The connections it holds unread
// when it exits are rescued and served by other workers, none reset, and
// its slot is respawned as after any exit. While the other worker reloads
// the stopping one is the only ready subscriber: what is dialed then waits
// for the reload to end instead of joining what the stopping worker holds.
func TestWorkerStopping(t *testing.T) {
	fdcensus.Verify(t)
	c, cc := startNotifyCluster(t, "HO_HOLD_SLOT=0", "HO_MARKER="+filepath.Join(t.TempDir(), "m"))
	pids := c.slotPIDs(2)
	addr := c.m.Addrs()[0].String()
	// Slot 1 reloads: slot 0, holding, is the one candidate.
	unix.Kill(pids[1], unix.SIGUSR1)
	slotState(t, c, cc, 1, supervise.SlotReloading, 1)

	type answer struct {
		pid int
		err error
	}
	var wg sync.WaitGroup
	answers := make(chan answer, 16)
	dial := func(n int) {
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pid, err := askPID(addr)
				answers <- answer{pid, err}
			}()
		}
	}
	const held, later = 3, 4
	dial(held)
	waitUntil(t, "connections queued on slot 0's channel", 10*time.Second, func() bool { return len(c.log.find("queued")) > 0 })
	// Let the rest of them reach slot 0 too.
	time.Sleep(100 * time.Millisecond)

	unix.Kill(pids[0], unix.SIGHUP)
	slotState(t, c, cc, 0, supervise.SlotStopping, 0)
	unix.Kill(pids[0], unix.SIGUSR2) // READY=1 twice, then a STATUS=
	// The notify socket is read in order: once the STATUS= is logged,
	// both READY=1 were handled.
	waitUntil(t, "STATUS= after READY=1 logged", 10*time.Second, func() bool { return len(c.log.find("worker status")) > 0 })
	if st := c.m.Status(); st.Slots[0].State != supervise.SlotStopping || st.ReadyWorkers != 0 {
		t.Errorf("after READY=1: slot 0 %v, %d ready; want stopping, 0", st.Slots[0].State, st.ReadyWorkers)
	}
	if n := len(c.log.find("worker sent READY=1 after STOPPING=1; ignored")); n != 1 {
		t.Errorf("ignored READY=1 logged %d times, want once", n)
	}

	dial(later)
	// Long enough for a delivery to slot 0 to show.
	time.Sleep(300 * time.Millisecond)
	unix.Kill(pids[1], unix.SIGUSR2)
	slotState(t, c, cc, 1, supervise.SlotReady, 1)
	unix.Kill(pids[0], unix.SIGTERM)
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.err != nil || a.pid == pids[0] || a.pid == 0 {
			t.Errorf("connection answered %d, %v; want another worker's pid", a.pid, a.err)
		}
	}
	rescued := 0
	waitUntil(t, "held connections rescued", 10*time.Second, func() bool {
		recs := c.log.find("handoff: passed on the connections a gone worker never read")
		rescued = 0
		for _, r := range recs {
			rescued += int(r["connections"].(float64))
		}
		return len(recs) > 0
	})
	if rescued < 1 || rescued > held {
		t.Errorf("%d connections rescued from the stopped worker, want 1 to %d (none dialed after its STOPPING=1)", rescued, held)
	}
	c.waitReplaced(2, 0, pids[0])
}

// TestWorkerStoppingTimeout: a worker that says STOPPING=1 and then does
// not exit is killed once the shutdown timeout has passed, as systemd
// does after STOPPING=1, and its slot respawned; one that exits in time is
// not (TestWorkerStopping, with the default timeout).
func TestWorkerStoppingTimeout(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 300 * time.Millisecond
	c := startClusterWith(t, pc, 1, 0, nil, func(cfg *cluster.Config) {
		cfg.Mode = cluster.ModeHandoff
		cfg.ShutdownTimeout = timeout
	}, bin, []string{"-test.run=^$"}, helperproc.RoleVar+"=ho-notify-worker")
	pid := c.slotPIDs(1)[0]
	start := time.Now()
	unix.Kill(pid, unix.SIGHUP) // STOPPING=1, and stays
	c.waitReplaced(1, 0, pid)
	if waited := time.Since(start); waited < timeout {
		t.Errorf("replaced after %v, before the shutdown timeout %v", waited, timeout)
	}
	recs := c.log.find("worker killed to be replaced")
	if len(recs) != 1 || recs[0]["pid"] != float64(pid) || !strings.Contains(fmt.Sprint(recs[0]["reason"]), "STOPPING=1") {
		t.Errorf("kill records %v, want one for pid %d naming STOPPING=1", recs, pid)
	}
}

// TestWorkerReloadTimeout: a worker that says RELOADING=1 and never READY=1
// is made ready again once the start timeout has passed, as systemd ends a
// notify reload after TimeoutStartSec: counted ready, shown ready and sent
// connections again, not replaced, the timeout logged as a warning.
func TestWorkerReloadTimeout(t *testing.T) {
	fdcensus.Verify(t)
	const timeout = 1500 * time.Millisecond
	c, cc := startNotifyClusterWith(t, func(cfg *cluster.Config) { cfg.StartTimeout = timeout })
	pids := c.slotPIDs(2)
	addr := c.m.Addrs()[0].String()
	unix.Kill(pids[0], unix.SIGUSR1) // RELOADING=1, and no READY=1
	slotState(t, c, cc, 0, supervise.SlotReloading, 1)
	slotState(t, c, cc, 0, supervise.SlotReady, 2)
	// The warning may be written just after the state changed.
	var recs []map[string]any
	waitUntil(t, "the reload timeout logged", 5*time.Second, func() bool {
		recs = c.log.find("worker reload timed out; ready again")
		return len(recs) > 0
	})
	if len(recs) != 1 || recs[0]["pid"] != float64(pids[0]) || recs[0]["level"] != "WARN" {
		t.Errorf("reload timeout records %v, want one warning for pid %d", recs, pids[0])
	}
	served := false
	for i := 0; i < 200 && !served; i++ {
		pid, err := askPID(addr)
		if err != nil {
			t.Fatalf("connection %d after the reload timed out: %v", i, err)
		}
		served = pid == pids[0]
	}
	if !served {
		t.Errorf("slot 0 (%d) sent no connection of 200 after its reload timed out", pids[0])
	}
	if got := c.slotPIDs(2); !cmp.Equal(pids, got) {
		t.Errorf("workers replaced: %v -> %v", pids, got)
	}
}

// TestWorkerStoppingNoHeartbeat: heartbeats are no longer due after
// STOPPING=1, as systemd stops a service's watchdog when it deactivates: a
// worker that stops its WATCHDOG=1 loop when it says STOPPING=1 is killed
// for the shutdown timeout, not for a missed heartbeat.
func TestWorkerStoppingNoHeartbeat(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const hb = 50 * time.Millisecond // due within 150 ms
	c := startClusterWith(t, pc, 1, hb, nil, func(cfg *cluster.Config) {
		cfg.Mode = cluster.ModeHandoff
		cfg.ShutdownTimeout = time.Second
	}, bin, []string{"-test.run=^$"}, helperproc.RoleVar+"=ho-notify-worker", "HO_WATCHDOG=1")
	pid := c.slotPIDs(1)[0]
	unix.Kill(pid, unix.SIGHUP) // STOPPING=1, heartbeats end, and stays
	c.waitReplaced(1, 0, pid)
	var reasons []string
	for _, r := range c.log.find("worker killed to be replaced") {
		if r["pid"] == float64(pid) {
			reasons = append(reasons, fmt.Sprint(r["reason"]))
		}
	}
	want := []string{"no exit within the shutdown timeout after STOPPING=1"}
	if diff := cmp.Diff(want, reasons); diff != "" {
		t.Errorf("kill reasons for pid %d (-want +got):\n%s", pid, diff)
	}
}
