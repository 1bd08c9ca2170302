//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// fakeListener is the fake worker's listener: descriptor 3, or in handoff
// mode the connections the master hands over for the first listener.
func fakeListener() (net.Listener, error) {
	if os.Getenv("HANDOFF_MODE") == "handoff" {
		name, _, _ := strings.Cut(os.Getenv("LISTEN_FDNAMES"), ":")
		return cluster.HandoffListener(name)
	}
	f := os.NewFile(3, "listener")
	defer f.Close()
	return net.FileListener(f)
}

// otherModes are the modes besides shared, which cluster_test.go covers.
var otherModes = []string{"reuseport", "handoff"}

// listeningInodes returns the inodes of the TCP sockets in LISTEN state in
// pid's network namespace (/proc/<pid>/net/tcp and tcp6).
func listeningInodes(pid int) map[uint64]bool {
	out := map[uint64]bool{}
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		sc.Scan() // header
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 || fl[3] != "0A" {
				continue
			}
			if ino, err := strconv.ParseUint(fl[9], 10, 64); err == nil && ino != 0 {
				out[ino] = true
			}
		}
	}
	return out
}

// modeShape is what must not change in the master across restart cycles in
// every mode: how many descriptors of each kind it holds, and the inodes of
// its listening sockets (never re-bound). Per-worker channels get new
// inodes with every worker, so other socket inodes may change.
func modeShape(pid int) (map[string]int, []uint64, error) {
	kinds, sockets, err := fdShape(pid)
	if err != nil {
		return nil, nil, err
	}
	listening := listeningInodes(pid)
	var ls []uint64
	for _, ino := range sockets {
		if listening[ino] {
			ls = append(ls, ino)
		}
	}
	slices.Sort(ls)
	return kinds, slices.Compact(ls), nil
}

// TestModesRestartsUnderLoad is L1 in reuseport and handoff modes:
// graceful restarts under load lose no request (ok == sent), every reply
// comes from a live worker of the generation it claims, and the master's
// descriptors have the same shape after every cycle.
func TestModesRestartsUnderLoad(t *testing.T) {
	for _, mode := range otherModes {
		t.Run("L1 "+mode, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			signals := loadSize(4, 20)
			m := startMaster(t, pc, nil, append([]string{"-mode", mode, "-n", "4", "-listen", "127.0.0.1:0", "-shutdown-timeout", "2s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
			addr := m.waitReady()
			mpid := m.cmd.Process.Pid
			kinds0, ls0, err := modeShape(mpid)
			if err != nil {
				t.Fatal(err)
			}
			// One listener in handoff mode; one per slot in reuseport mode.
			if want := map[string]int{"handoff": 1, "reuseport": 4}[mode]; len(ls0) != want {
				t.Errorf("master holds %d listening sockets, want %d", len(ls0), want)
			}
			checkFDs := func(when string) {
				t.Helper()
				var kinds map[string]int
				var ls []uint64
				if !waitFor(fdcensus.Settle, func() bool {
					kinds, ls, err = modeShape(mpid)
					return err == nil && cmp.Equal(kinds0, kinds) && cmp.Equal(ls0, ls)
				}) {
					t.Errorf("%s: master's descriptors changed: kinds (-before +after):\n%s\nlistening sockets (-before +after):\n%s",
						when, cmp.Diff(kinds0, kinds), cmp.Diff(ls0, ls))
				}
			}
			clients := loadSize(16, 64)
			var res loadclient.Result
			var wg sync.WaitGroup
			wg.Add(1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			span := time.Duration(signals)*500*time.Millisecond + 2*time.Second
			pause := span * time.Duration(2*clients) / 15000
			go func() {
				defer wg.Done()
				res = loadclient.Run(ctx, loadclient.Options{Addr: addr, NewConn: clients, KeepAlive: clients, Requests: 20000, Duration: 60 * time.Second, Pause: pause, Header: "X-Worker", Record: true})
			}()
			for i := 0; i < signals; i++ {
				next := time.Now().Add(500 * time.Millisecond)
				m.signal(syscall.SIGHUP)
				if !waitFor(10*time.Second, func() bool { return count(m.records(), "restart done", "restart failed") >= i+1 }) {
					cancel()
					wg.Wait()
					t.Fatalf("restart %d not done within 10 s", i+1)
				}
				checkFDs(fmt.Sprintf("after restart %d", i+1))
				time.Sleep(time.Until(next))
			}
			time.Sleep(time.Second)
			cancel()
			wg.Wait()
			recs := m.records()
			last := lastGeneration(recs)
			t.Logf("%s: %v; generations %d", mode, res, last)
			if n := count(recs, "restart failed"); n != 0 {
				t.Errorf("%d restarts failed", n)
			}
			if last != signals+1 {
				t.Errorf("last generation %d, want %d", last, signals+1)
			}
			if res.Failed() != 0 || res.OK != res.Sent {
				t.Errorf("lost requests: %v; errors %q", res, res.Errors)
			}
			if res.P99 >= time.Second {
				t.Errorf("p99 %v, want < 1 s; slow requests: %q", res.P99, res.Slow)
			}
			if limit := clients * 4 * (last - 1); res.RetriedAfterReset > limit {
				t.Errorf("%d requests retried after a reset with no reply byte, want at most %d", res.RetriedAfterReset, limit)
			}
			checkReplies(t, res.Replies, lives(recs))
			checkFDs("at the end")
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}

// TestReuseportQueuedSurviveWorkerExit is B7 in reuseport mode: a worker
// is SIGKILLed while connections wait in its slot's accept queue; the
// master keeps that socket open, the slot's next worker accepts them, and
// none is reset. (Workers binding their own SO_REUSEPORT sockets would
// reset them: see docs/operations.md, "Modes".)
func TestReuseportQueuedSurviveWorkerExit(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	hold := filepath.Join(t.TempDir(), "go")
	m := startMaster(t, pc, []string{"SRV_HOLD=" + hold}, append([]string{"-mode", "reuseport", "-n", "2", "-listen", "127.0.0.1:0", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	const clients = 100
	results := make(chan error, clients)
	for i := 0; i < clients; i++ {
		go func() {
			_, _, err := get(addr, "/")
			results <- err
		}()
	}
	time.Sleep(300 * time.Millisecond) // connected and queued on both slots' sockets
	w := m.workers()
	if len(w) != 2 {
		t.Fatalf("%d workers, want 2", len(w))
	}
	for _, pid := range w {
		if err := m.signalWorker(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if err := os.WriteFile(hold, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	failed := 0
	for i := 0; i < clients; i++ {
		if err := <-results; err != nil {
			failed++
			t.Log(err)
		}
	}
	if failed != 0 {
		t.Errorf("%d of %d queued connections failed after every worker was killed", failed, clients)
	}
	m.signal(syscall.SIGTERM)
	m.wait(15 * time.Second)
}

// TestModeEnvironment checks what workers get in each mode: HANDOFF_MODE;
// in reuseport mode a socket per slot, the same one in every generation
// of the slot; in handoff mode the connection channel after the listeners
// and the control channel.
func TestModeEnvironment(t *testing.T) {
	for _, mode := range []string{"shared", "reuseport", "handoff"} {
		t.Run(mode, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			m := startMaster(t, pc, nil, append([]string{"-mode", mode, "-n", "2", "-listen", "127.0.0.1:0", "--"}, fakeSrvCmd(t)...)...)
			addr := m.waitReady()
			// slot -> generation -> socket inode of descriptor 3
			seen := map[string]map[string]string{}
			collect := func(gen string) {
				t.Helper()
				// Bounded by count and time: a rolling restart's last worker
				// may take a while to become ready on a busy machine.
				deadline := time.Now().Add(10 * time.Second)
				for i := 0; i < 20000 && time.Now().Before(deadline); i++ {
					body, _, err := get(addr, "/env")
					if err != nil {
						t.Fatal(err)
					}
					env := envOf(body)
					if env["HANDOFF_MODE"] != mode {
						t.Fatalf("HANDOFF_MODE=%q, want %q", env["HANDOFF_MODE"], mode)
					}
					wantConn := ""
					if mode == "handoff" {
						// 3 = the listener, 4 = the control channel.
						wantConn = "5"
					}
					if env["HANDOFF_CONN_FD"] != wantConn {
						t.Fatalf("HANDOFF_CONN_FD=%q, want %q", env["HANDOFF_CONN_FD"], wantConn)
					}
					slot, g := env["HANDOFF_WORKER_ID"], env["HANDOFF_WORKER_GENERATION"]
					if seen[slot] == nil {
						seen[slot] = map[string]string{}
					}
					ino, _, _ := strings.Cut(env["INODES"], ",")
					seen[slot][g] = ino
					if g == gen && len(seen) == 2 && seen["0"][gen] != "" && seen["1"][gen] != "" {
						return
					}
				}
				t.Fatalf("both slots of generation %s not seen: %v", gen, seen)
			}
			collect("1")
			m.signal(syscall.SIGHUP)
			collect("2")
			for _, slot := range []string{"0", "1"} {
				if seen[slot]["1"] != seen[slot]["2"] {
					t.Errorf("slot %s: socket %s in generation 1, %s in generation 2: not kept", slot, seen[slot]["1"], seen[slot]["2"])
				}
			}
			same := seen["0"]["1"] == seen["1"]["1"]
			if want := mode != "reuseport"; same != want {
				t.Errorf("slots share one socket: %v, want %v (%v)", same, want, seen)
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}

// TestReuseportScaleDownLosesNone: scaling down in reuseport mode closes
// the master's copy of the removed slot's socket at once, so the socket
// leaves the kernel's group as soon as the stopping worker closes its own
// copy (the first step of its graceful stop), not when it has exited:
// connections made while it still finishes its requests all reach the
// remaining slot, and none is reset.
func TestReuseportScaleDownLosesNone(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	const slow = 2 * time.Second
	m := startMaster(t, pc, []string{"SRV_SLOW=" + slow.String()}, append([]string{"-mode", "reuseport", "-n", "2", "-listen", "127.0.0.1:0", "-shutdown-timeout", "10s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	get := func(n int, errs chan<- error) {
		for range n {
			go func() {
				c := &http.Client{Timeout: 3 * slow, Transport: &http.Transport{DisableKeepAlives: true}}
				resp, err := c.Get("http://" + addr + "/")
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				errs <- err
			}()
		}
	}
	// Requests in flight on both slots keep the removed worker busy for
	// up to slow after its SIGTERM.
	const before, during = 8, 40
	errs := make(chan error, before+during)
	get(before, errs)
	time.Sleep(300 * time.Millisecond)
	m.signal(syscall.SIGTTOU)
	if !waitFor(5*time.Second, func() bool { return count(m.records(), "scaled") > 0 }) {
		t.Fatal("not scaled down within 5 s")
	}
	time.Sleep(200 * time.Millisecond) // the stopping worker closed its listener
	get(during, errs)
	failed := 0
	for range before + during {
		if err := <-errs; err != nil {
			failed++
			t.Log(err)
		}
	}
	if failed != 0 {
		t.Errorf("%d of %d requests failed across the scale-down", failed, before+during)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// TestHandoffMasterEMFILE is E1 for the master's accept loop in handoff
// mode: with its soft RLIMIT_NOFILE at 3, every accept4 fails with EMFILE
// while a client waits in the backlog. The master backs off instead of
// spinning (under 50 % of a CPU over 2 s, TESTPLAN E1's bound), and serves
// the client once the limit is restored.
func TestHandoffMasterEMFILE(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m := startMaster(t, pc, nil, append([]string{"-mode", "handoff", "-n", "1", "-listen", "127.0.0.1:0", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	pid := m.cmd.Process.Pid
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	// Descriptors 0-2 are open: no new one fits under 3.
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 3, Max: old.Max}, nil); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
				t.Error(err)
			}
		}
	}
	defer restore()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool { return count(m.records(), "handoff: accept") > 0 }) {
		t.Fatal("the master logged no failed accept")
	}
	const span = 2 * time.Second
	c0 := cpuTicks([]int{pid})
	time.Sleep(span)
	if busy := time.Duration(cpuTicks([]int{pid})-c0) * clockTick; busy > span/2 {
		t.Errorf("master used %v of CPU in %v at EMFILE: spinning", busy, span)
	}
	restore()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(reply), "HTTP/1.0 200") {
		t.Errorf("after the limit was restored: %q, %v; want a 200 reply", reply, err)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}
