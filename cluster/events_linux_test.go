//go:build linux

package cluster_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// hoHoldWorker is hoWorker whose slot 0, the first time only (the file
// HO_HOLDER_PID does not exist yet), first starts a process in a session of
// its own that holds copies of the worker's connection and control channel
// ends, and writes its pid to HO_HOLDER_PID. When the worker dies, its
// channels then never reach end of file and its process group's SIGKILL
// misses the holder: only the worker's pidfd or its Exited event tells the
// master it is gone.
func hoHoldWorker() int {
	if os.Getenv("HANDOFF_WORKER_ID") == "0" {
		path := os.Getenv("HO_HOLDER_PID")
		if f, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			f.Close()
			if err := startHolder(path); err != nil {
				fmt.Fprintln(os.Stderr, "ho-hold-worker:", err)
				return 3
			}
		}
	}
	return hoWorker()
}

func startHolder(path string) error {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, v := range []string{"HANDOFF_CONN_FD", "HANDOFF_CONTROL_FD"} {
		fd, err := strconv.Atoi(os.Getenv(v))
		if err != nil {
			return fmt.Errorf("%s: %w", v, err)
		}
		// A duplicate: an *os.File of the worker's own descriptor would
		// close it when collected.
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return err
		}
		files = append(files, os.NewFile(uintptr(dup), v))
	}
	cmd := exec.Command("sleep", "60")
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	cmd.Process.Release()
	// Renamed into place, so the test never reads a partial pid.
	if err := os.WriteFile(path+".tmp", []byte(strconv.Itoa(pid)), 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// fdCounts counts this process's descriptors of the kinds a worker gives
// the master: channel sockets and pidfds.
func fdCounts(t *testing.T) map[string]int {
	t.Helper()
	s, err := fdcensus.Take(0)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]int{"socket": s.Count("socket:"), "pidfd": s.Count("anon_inode:[pidfd]")}
}

// readyPIDs returns the serving workers' pids by slot once n slots each run
// a ready worker and none of them is in not, or nil.
func readyPIDs(st supervise.Status, n int, not []int) []int {
	if len(st.Slots) != n || st.ReadyWorkers != n {
		return nil
	}
	var pids []int
	for _, sl := range st.Slots {
		if sl.PID == 0 || sl.State != supervise.SlotReady || slices.Contains(not, sl.PID) {
			return nil
		}
		pids = append(pids, sl.PID)
	}
	return pids
}

// TestEventsDroppedReconciled: supervise drops events rather than stall
// when the master's reader falls behind. With a one-event buffer and the
// reader stalled, the first workers' Ready events and, once both are
// killed, their Exited events and the replacements' Started and Ready
// events are all dropped; one of the dead workers leaves a process holding
// its channel ends. Once the reader runs again the master notices the
// drops and rebuilds its state from its pidfds and the supervisor's
// status: the cluster is declared ready, the dead workers' pidfds and
// channels are closed (its descriptor counts are back to what two live
// workers need), no connection is handed to a dead worker (every request
// answered by a live one), and its books name exactly the live workers.
func TestEventsDroppedReconciled(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	holderPath := filepath.Join(t.TempDir(), "holder")
	holder := 0
	t.Cleanup(func() {
		// Before the process census: the holder left the worker's group
		// on purpose.
		if holder > 0 {
			unix.Kill(holder, unix.SIGKILL)
		}
	})
	log := &hoLog{}
	const n = 2
	m, err := cluster.New(&cluster.Config{
		Program: bin,
		Args:    []string{"-test.run=^$"},
		Workers: n,
		Mode:    cluster.ModeHandoff,
		Listen:  []string{"127.0.0.1:0"},
		Env: append(os.Environ(), pc.Env(), "GORACE=atexit_sleep_ms=0", helperproc.RoleVar+"=ho-hold-worker",
			"HO_HOLDER_PID="+holderPath),
		Logger:  slog.New(slog.NewJSONHandler(log, nil)),
		Backoff: supervise.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	stall := make(chan struct{})
	cluster.SetEventSeams(m, 1, func() { <-stall })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	stalled := true
	defer func() {
		if stalled {
			close(stall)
		}
		m.Stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("master log:\n%s", log.buf.String())
		}
	}()

	var first []int
	waitUntil(t, "first workers ready", 15*time.Second, func() bool {
		first = readyPIDs(m.Status(), n, nil)
		return first != nil
	})
	waitUntil(t, "holder started", 10*time.Second, func() bool {
		b, err := os.ReadFile(holderPath)
		if err == nil {
			holder, err = strconv.Atoi(string(b))
		}
		return err == nil
	})
	select {
	case <-m.Ready():
		t.Fatal("ready while every Ready event was dropped")
	default:
	}
	base := fdCounts(t)

	for _, pid := range first {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	var live []int
	waitUntil(t, "replacements ready", 15*time.Second, func() bool {
		live = readyPIDs(m.Status(), n, first)
		return live != nil
	})
	if st := m.Status(); st.DroppedEvents == 0 {
		t.Fatalf("no event dropped: %+v", st)
	}
	close(stall)
	stalled = false

	select {
	case <-m.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("not ready after the reader resumed")
	}
	waitUntil(t, "reconcile logged", 5*time.Second, func() bool {
		return len(log.find("supervise events dropped; master state reconciled")) > 0
	})
	want := cluster.WorkerBooks{Counted: live, Tracked: live, Channels: live, Routed: live, Live: map[int]int{0: 1, 1: 1}}
	slices.Sort(want.Counted)
	var got cluster.WorkerBooks
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = cluster.Books(m)
		if cmp.Equal(want, got) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("master's books of the workers (-want +got):\n%s", diff)
	}
	var counts map[string]int
	for deadline := time.Now().Add(fdcensus.Settle); ; time.Sleep(10 * time.Millisecond) {
		if counts = fdCounts(t); cmp.Equal(base, counts) || time.Now().After(deadline) {
			break
		}
	}
	if diff := cmp.Diff(base, counts); diff != "" {
		t.Errorf("master's channel sockets and pidfds, two live workers before and after (-want +got):\n%s", diff)
	}

	addr := m.Addrs()[0].String()
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	answered := map[int]int{}
	for i := range 40 {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		f := strings.Fields(string(b))
		pid := 0
		if len(f) == 2 {
			pid, _ = strconv.Atoi(f[0])
		}
		answered[pid]++
	}
	for pid := range answered {
		if !slices.Contains(live, pid) {
			t.Errorf("answered by %d, not a live worker %v: %v", pid, live, answered)
		}
	}
}

// TestEventsDroppedRestartAndScale: the reader is stalled (four-event
// buffer) across a graceful restart and a scale-down, so RestartDone,
// Scaled and the workers' Started and Exited events are dropped. Once it
// runs again, systemd hears READY=1 after the RELOADING=1 the restart
// began with, the removed slot's reuseport sockets are closed, and the
// master's books name only the one live worker.
func TestEventsDroppedRestartAndScale(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	nsPath := filepath.Join(t.TempDir(), "sd")
	sd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: nsPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	t.Setenv("NOTIFY_SOCKET", nsPath)
	log := &hoLog{}
	m, err := cluster.New(&cluster.Config{
		Program: "sleep",
		Args:    []string{"60"},
		Workers: 2,
		Mode:    cluster.ModeReuseport,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Env:     append(os.Environ(), pc.Env()),
		Logger:  slog.New(slog.NewJSONHandler(log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Write-locked by the test, the gate stalls the reader before its
	// next wait. Four events fit the start (Started and Ready of each
	// slot), so none is dropped before the gate closes, and RestartBegun
	// then always finds room; RestartDone, the restart's seventh event
	// or later, never does.
	var gate sync.RWMutex
	cluster.SetEventSeams(m, 4, func() {
		gate.RLock()
		defer gate.RUnlock()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	locked := false
	defer func() {
		if locked {
			gate.Unlock()
		}
		m.Stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("master log:\n%s", log.buf.String())
		}
	}()
	var got []string
	next := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		sd.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := sd.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		s, _, _ := strings.Cut(string(buf[:n]), "\n")
		got = append(got, s)
		return s
	}
	next() // READY=1 of the first generation
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	if b := cluster.Books(m); !slices.Equal(b.Slots, []int{1}) {
		t.Fatalf("slots with sockets of their own %v, want [1]", b.Slots)
	}

	gate.Lock()
	locked = true
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "restart done", 15*time.Second, func() bool {
		st := m.Status()
		return st.Generation == 2 && !st.Restarting && st.ReadyWorkers == 2 && st.Processes == 2
	})
	if err := m.ScaleBy(-1); err != nil {
		t.Fatal(err)
	}
	var live []int
	waitUntil(t, "scaled down", 15*time.Second, func() bool {
		st := m.Status()
		live = readyPIDs(st, 1, nil)
		return live != nil && st.Processes == 1
	})
	if st := m.Status(); st.DroppedEvents == 0 {
		t.Fatalf("no event dropped: %+v", st)
	}
	gate.Unlock()
	locked = false

	waitUntil(t, "reconcile logged", 10*time.Second, func() bool {
		return len(log.find("supervise events dropped; master state reconciled")) > 0
	})
	for len(got) < 3 {
		next()
	}
	if diff := cmp.Diff([]string{"READY=1", "RELOADING=1", "READY=1"}, got); diff != "" {
		t.Errorf("states sent to systemd (-want +got):\n%s", diff)
	}
	want := cluster.WorkerBooks{Counted: live, Tracked: live, Channels: live, Live: map[int]int{0: 1}}
	var books cluster.WorkerBooks
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if books = cluster.Books(m); cmp.Equal(want, books) || time.Now().After(deadline) {
			break
		}
	}
	if diff := cmp.Diff(want, books); diff != "" {
		t.Errorf("master's books of the workers (-want +got):\n%s", diff)
	}
}
