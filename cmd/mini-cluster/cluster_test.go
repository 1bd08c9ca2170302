//go:build linux

package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// -long runs the TESTPLAN's full load figures instead of the CI-sized ones.
var long = flag.Bool("long", false, "run load tests at full TESTPLAN size")

// TestServeAndEnvironment checks what a worker gets: the same sockets as
// descriptors 3.. in -listen order in every worker and generation, and the
// documented environment without the master's own activation variables.
func TestServeAndEnvironment(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	sock := filepath.Join(t.TempDir(), "s")
	m := startMaster(t, pc, []string{"NOTIFY_SOCKET=@bogus-master-socket", "LISTEN_FDNAMES=bogus"},
		append([]string{"-n", "2", "-listen", "127.0.0.1:0", "-listen", "udp://127.0.0.1:0", "-listen", "unix://" + sock, "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()

	seen := map[string]map[string]string{} // pid:gen -> env
	collect := func() {
		for i := 0; i < 200 && len(seen) < 2; i++ {
			body, tag, err := get(addr, "/env")
			if err != nil {
				t.Fatal(err)
			}
			seen[tag] = envOf(body)
		}
	}
	collect()
	m.signal(syscall.SIGHUP)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(m.log.String(), "restart done") && strings.Count(m.log.String(), "RestartDone") == 0 {
		_, tag, err := get(addr, "/env")
		if err == nil && strings.HasSuffix(tag, ":2") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := 0; i < 200; i++ {
		body, tag, err := get(addr, "/env")
		if err != nil {
			t.Fatal(err)
		}
		seen[tag] = envOf(body)
		if len(generations(tagsOf(seen))) == 2 && len(seen) >= 3 {
			break
		}
	}
	if got := generations(tagsOf(seen)); !got[1] || !got[2] {
		t.Fatalf("generations seen %v, want 1 and 2", got)
	}
	var inodes string
	names := fmt.Sprintf("tcp-%s:udp-", strings.ReplaceAll(addr, ":", "-"))
	for tag, env := range seen {
		if inodes == "" {
			inodes = env["INODES"]
		}
		if env["INODES"] != inodes {
			t.Errorf("worker %s has sockets %s, another had %s: not the same sockets", tag, env["INODES"], inodes)
		}
		if !strings.HasPrefix(env["LISTEN_FDNAMES"], names) || !strings.HasSuffix(env["LISTEN_FDNAMES"], ":unix-"+sock) {
			t.Errorf("worker %s: LISTEN_FDNAMES=%q", tag, env["LISTEN_FDNAMES"])
		}
		want := map[string]string{"LISTEN_FDS": "3", "HANDOFF_WORKERS": "2", "HANDOFF_WORKER_GENERATION": strings.Split(tag, ":")[1]}
		got := map[string]string{"LISTEN_FDS": env["LISTEN_FDS"], "HANDOFF_WORKERS": env["HANDOFF_WORKERS"], "HANDOFF_WORKER_GENERATION": env["HANDOFF_WORKER_GENERATION"]}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("worker %s environment (-want +got):\n%s", tag, diff)
		}
		if id := env["HANDOFF_WORKER_ID"]; id != "0" && id != "1" {
			t.Errorf("worker %s: HANDOFF_WORKER_ID=%q", tag, id)
		}
		if ns := env["NOTIFY_SOCKET"]; ns == "" || ns == "@bogus-master-socket" {
			t.Errorf("worker %s: NOTIFY_SOCKET=%q, want the master's own socket for workers", tag, ns)
		}
	}
	// The unix listener exists and listens (the fake worker serves only
	// descriptor 3), with the service-socket mode whatever the umask.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o666 {
		t.Errorf("unix listener mode: %v, %v; want 0666", st.Mode(), err)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("unix socket file left behind: %v", err)
	}
}

func tagsOf(m map[string]map[string]string) map[string]int {
	out := map[string]int{}
	for k := range m {
		out[k] = 1
	}
	return out
}

// TestStartupErrors: bad command lines exit 2; a port already bound exits 1
// with a clear message and starts no worker (TESTPLAN B8).
func TestStartupErrors(t *testing.T) {
	fdcensus.Verify(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	srv := fakeSrvCmd(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"port in use", append([]string{"-n", "2", "-listen", busy.Addr().String(), "-listen", "127.0.0.1:0", "--"}, srv...), 1, "address already in use"},
		{"mode reuseport", append([]string{"-mode", "reuseport", "-listen", "127.0.0.1:0", "--"}, srv...), 2, "only shared"},
		{"bad listen", append([]string{"-listen", "sctp://127.0.0.1:1", "--"}, srv...), 2, "scheme"},
		{"no host", append([]string{"-listen", ":8080", "--"}, srv...), 2, "no host"},
		{"no listen", srv, 1, "no -listen"},
		{"no program", []string{"-listen", "127.0.0.1:0"}, 2, "no program"},
		{"missing program", []string{"-listen", "127.0.0.1:0", "--", "/nonexistent/srv"}, 1, "worker program"},
		{"bad strategy", append([]string{"-restart-strategy", "random", "-listen", "127.0.0.1:0", "--"}, srv...), 2, "random"},
		{"bad log format", append([]string{"-log-format", "xml", "-listen", "127.0.0.1:0", "--"}, srv...), 2, "xml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := proccensus.New(t)
			m := startMaster(t, pc, nil, tc.args...)
			if code := m.wait(10 * time.Second); code != tc.code {
				t.Errorf("exit code %d, want %d\n%s", code, tc.code, m.log.String())
			}
			out := m.log.String()
			if !strings.Contains(out, tc.msg) {
				t.Errorf("output lacks %q:\n%s", tc.msg, out)
			}
			if strings.Contains(out, "starting workers") {
				t.Errorf("workers were started:\n%s", out)
			}
			if n := strings.Count(out, "mini-cluster: "); n != 1 {
				t.Errorf("error printed %d times, want once:\n%s", n, out)
			}
		})
	}
}

// loadSize returns the CI or the -long figure.
func loadSize(ci, full int) int {
	if *long {
		return full
	}
	return ci
}

// TestRestartsUnderLoad: graceful restarts while clients hammer the
// cluster lose nothing (TESTPLAN L1), and a storm of reload signals is
// coalesced (L5, C17).
func TestRestartsUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name     string
		signals  int
		interval int // ms
		strategy string
		maxGen   int
	}{
		{"L1 rolling", loadSize(5, 20), loadSize(300, 500), "rolling", 0},
		{"L1 parallel", loadSize(3, 20), loadSize(300, 500), "parallel", 0},
		// Coalescing: one restart in flight and one queued, so a burst
		// yields at most two more generations (C17), and a storm far
		// fewer generations than signals (L5).
		{"C17 burst", 10, 0, "rolling", 3},
		{"L5 storm", 50, 5, "rolling", 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			m := startMaster(t, pc, nil, append([]string{"-n", "4", "-listen", "127.0.0.1:0", "-restart-strategy", tc.strategy, "-shutdown-timeout", "2s", "--"}, fakeSrvCmd(t)...)...)
			addr := m.waitReady()
			before, err := fdcensus.Take(m.cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			clients := loadSize(16, 64)
			var res loadclient.Result
			var wg sync.WaitGroup
			wg.Add(1)
			ctx, cancel := context.WithCancel(context.Background())
			// Spread the 20k-request budget over the signals plus 2 s.
			span := time.Duration(tc.signals*tc.interval)*time.Millisecond + 2*time.Second
			pause := span * time.Duration(2*clients) / 15000
			go func() {
				defer wg.Done()
				res = loadclient.Run(ctx, loadclient.Options{Addr: addr, NewConn: clients, KeepAlive: clients, Requests: 20000, Duration: 60 * time.Second, Pause: pause, Header: "X-Worker"})
			}()
			for i := 0; i < tc.signals; i++ {
				time.Sleep(time.Duration(tc.interval) * time.Millisecond)
				m.signal(syscall.SIGHUP)
			}
			// Let the last restart finish under load.
			time.Sleep(2 * time.Second)
			cancel()
			wg.Wait()
			t.Logf("%s: %v, generations %v", tc.name, res, keys(generations(res.Values)))
			if res.Failed() != 0 || res.OK != res.Sent {
				t.Errorf("lost requests: %v; errors %q", res, res.Errors)
			}
			if res.P99 >= time.Second {
				t.Errorf("p99 %v, want < 1 s; slow requests: %q", res.P99, res.Slow)
			}
			gens := generations(res.Values)
			if len(gens) < 2 {
				t.Errorf("generations answering %v: no restart took effect", keys(gens))
			}
			if tc.maxGen > 0 && len(gens) > tc.maxGen {
				t.Errorf("%d generations answered after %d reload signals, want at most %d (coalescing)", len(gens), tc.signals, tc.maxGen)
			}
			// The master's sockets are the same ones after every
			// restart: nothing leaked, nothing re-bound.
			if !waitFor(fdcensus.Settle, func() bool {
				after, err := fdcensus.Take(m.cmd.Process.Pid)
				return err == nil && cmp.Equal(before.Inodes("socket:"), after.Inodes("socket:"))
			}) {
				after, _ := fdcensus.Take(m.cmd.Process.Pid)
				t.Errorf("master's sockets changed (-before +after):\n%s", cmp.Diff(before.Inodes("socket:"), after.Inodes("socket:")))
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}

// oldest returns the pid that started first.
func oldest(pids []int) int {
	best, bestStart := pids[0], uint64(1<<63)
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 19 {
			if st, err := strconv.ParseUint(f[19], 10, 64); err == nil && st < bestStart {
				best, bestStart = pid, st
			}
		}
	}
	return best
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestKillWorkersUnderLoad: SIGKILL a random worker every 500 ms under load;
// no connection is ever refused, because the master keeps the socket open
// (TESTPLAN L3, C2).
func TestKillWorkersUnderLoad(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	// The long run uses 8 workers so each slot is killed about every 4 s,
	// under supervise's default burst limit of 5 starts in 10 s.
	n := loadSize(4, 8)
	m := startMaster(t, pc, nil, append([]string{"-n", fmt.Sprint(n), "-listen", "127.0.0.1:0", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	dur := time.Duration(loadSize(3, 15)) * time.Second
	var res loadclient.Result
	done := make(chan struct{})
	go func() {
		defer close(done)
		clients := loadSize(32, 128)
		res = loadclient.Run(context.Background(), loadclient.Options{Addr: addr, NewConn: clients, Requests: 20000, Duration: dur,
			Pause: dur * time.Duration(clients) / 18000})
	}()
	kills := 0
	for i := 0; i < int(dur/(500*time.Millisecond)); i++ {
		time.Sleep(500 * time.Millisecond)
		// The oldest worker: every slot is hit in turn, so none reaches
		// supervise's burst limit (5 starts in 10 s) by bad luck.
		if w := m.workers(); len(w) > 0 {
			syscall.Kill(oldest(w), syscall.SIGKILL)
			kills++
		}
	}
	<-done
	t.Logf("%d kills: %v", kills, res)
	if res.Refused != 0 || res.Timeout != 0 || res.Other != 0 {
		t.Errorf("refused/timeout/other must be 0: %v; errors %q", res, res.Errors)
	}
	// Only requests already accepted by a killed worker may fail; the fake
	// worker answers at once, so at most the clients in flight at a kill.
	if res.Reset > kills*loadSize(32, 128) {
		t.Errorf("%d resets for %d kills", res.Reset, kills)
	}
	// Every slot comes back.
	deadline := time.Now().Add(10 * time.Second)
	for len(m.workers()) != n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := len(m.workers()); got != n {
		t.Errorf("%d workers live after the kills, want %d", got, n)
	}
	if _, _, err := get(addr, "/"); err != nil {
		t.Errorf("after the kills: %v", err)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// TestQueuedConnectionsSurviveWorkerExit: connections waiting in the shared
// accept queue when a worker dies are answered by the others, none reset
// (TESTPLAN B7, B9).
func TestQueuedConnectionsSurviveWorkerExit(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	hold := filepath.Join(t.TempDir(), "go")
	m := startMaster(t, pc, []string{"SRV_HOLD=" + hold}, append([]string{"-n", "2", "-listen", "127.0.0.1:0", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	const clients = 100
	results := make(chan error, clients)
	for i := 0; i < clients; i++ {
		go func() {
			_, _, err := get(addr, "/")
			results <- err
		}()
	}
	time.Sleep(300 * time.Millisecond) // all connected and queued: nobody accepts yet
	for _, pid := range m.workers() {
		syscall.Kill(pid, syscall.SIGKILL)
		break
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
		t.Errorf("%d of %d queued connections failed after a worker died", failed, clients)
	}
	m.signal(syscall.SIGTERM)
	m.wait(15 * time.Second)
}

// TestStopDrainsInFlight: SIGTERM to the master, or SIGINT to its whole
// process group as a terminal's Ctrl-C does, lets every request in flight
// finish and exits 0 (TESTPLAN C15, C16).
func TestStopDrainsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name  string
		group bool
		sig   syscall.Signal
	}{
		{"C16 SIGTERM to master", false, syscall.SIGTERM},
		{"C15 SIGINT to process group", true, syscall.SIGINT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			args := append([]string{"-n", "2", "-listen", "127.0.0.1:0", "-shutdown-timeout", "5s", "--"}, fakeSrvCmd(t)...)
			cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{Env: []string{pc.Env(), "SRV_SLOW=600ms"}, Args: args})
			// The master leads its own process group, standing in for a
			// shell's foreground job.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			m := startCmd(t, cmd)
			addr := m.waitReady()
			const inflight = 64
			errs := make(chan error, inflight)
			for i := 0; i < inflight; i++ {
				go func() {
					_, _, err := get(addr, "/")
					errs <- err
				}()
			}
			time.Sleep(200 * time.Millisecond) // requests accepted and in their handlers
			if tc.group {
				syscall.Kill(-m.cmd.Process.Pid, tc.sig)
			} else {
				m.signal(tc.sig)
			}
			failed := 0
			for i := 0; i < inflight; i++ {
				if err := <-errs; err != nil {
					failed++
					t.Log(err)
				}
			}
			if failed != 0 {
				t.Errorf("%d of %d requests in flight failed on %v", failed, inflight, tc.sig)
			}
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}
