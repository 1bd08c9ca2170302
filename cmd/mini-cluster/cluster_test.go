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
		{"unknown mode", append([]string{"-mode", "bogus", "-listen", "127.0.0.1:0", "--"}, srv...), 2, "want shared, reuseport or handoff"},
		{"reuseport unix", append([]string{"-mode", "reuseport", "-listen", "unix://" + filepath.Join(t.TempDir(), "s"), "--"}, srv...), 1, "unix sockets cannot be shared by SO_REUSEPORT"},
		{"handoff udp", append([]string{"-mode", "handoff", "-listen", "udp://127.0.0.1:0", "--"}, srv...), 1, "udp sockets have no connections to hand off"},
		{"bad listen", append([]string{"-listen", "sctp://127.0.0.1:1", "--"}, srv...), 2, "scheme"},
		{"no host", append([]string{"-listen", ":8080", "--"}, srv...), 2, "no host"},
		{"no listen", srv, 1, "no -listen"},
		{"no program", []string{"-listen", "127.0.0.1:0"}, 2, "no program"},
		{"missing program", []string{"-listen", "127.0.0.1:0", "--", "/nonexistent/srv"}, 1, "worker program"},
		{"bad strategy", append([]string{"-restart-strategy", "random", "-listen", "127.0.0.1:0", "--"}, srv...), 2, "random"},
		{"too many workers", append([]string{"-n", "5000", "-listen", "127.0.0.1:0", "--"}, srv...), 2, "want 1 to 4096, or 0 for one per usable CPU"},
		{"bad log format", append([]string{"-log-format", "xml", "-listen", "127.0.0.1:0", "--"}, srv...), 2, "xml"},
		{"unknown flag", append([]string{"-bogus", "-listen", "127.0.0.1:0", "--"}, srv...), 2, "flag provided but not defined: -bogus"},
		{"bad duration", append([]string{"-heartbeat", "soon", "-listen", "127.0.0.1:0", "--"}, srv...), 2, "invalid value \"soon\""},
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
			if n := strings.Count(out, tc.msg); n != 1 {
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
		// storm > 0: the signals are sent without waiting, alternating
		// SIGHUP and SIGUSR1 (both mean restart; identical pending
		// signals would merge in the kernel, hiding the storm from the
		// master), and at most storm generations may begin. Otherwise
		// each restart is awaited and every one must take effect.
		storm int
	}{
		{"L1 rolling", loadSize(5, 20), 500, "rolling", 0},
		{"L1 parallel", loadSize(3, 20), 500, "parallel", 0},
		// One restart in flight and one queued: a burst yields at most
		// two more generations (C17).
		{"C17 burst", 10, 0, "rolling", 3},
		// The storm is compressed into 250 ms in both sizes: a restart of
		// the fake workers takes tens of ms, so 50 signals over 5 s would
		// be 50 honest restarts, not a storm.
		{"L5 storm", 50, 5, "rolling", 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			m := startMaster(t, pc, nil, append([]string{"-n", "4", "-listen", "127.0.0.1:0", "-restart-strategy", tc.strategy, "-shutdown-timeout", "2s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
			addr := m.waitReady()
			mpid := m.cmd.Process.Pid
			// Listening sockets only: each worker's channels are new sockets
			// (modes_test.go).
			kinds0, sockets0, err := modeShape(mpid)
			if err != nil {
				t.Fatal(err)
			}
			checkFDs := func(when string) {
				t.Helper()
				var kinds map[string]int
				var sockets []uint64
				if !waitFor(fdcensus.Settle, func() bool {
					kinds, sockets, err = modeShape(mpid)
					return err == nil && cmp.Equal(kinds0, kinds) && cmp.Equal(sockets0, sockets)
				}) {
					t.Errorf("%s: master's descriptors changed: kinds (-before +after):\n%s\nsocket inodes (-before +after):\n%s",
						when, cmp.Diff(kinds0, kinds), cmp.Diff(sockets0, sockets))
				}
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
				res = loadclient.Run(ctx, loadclient.Options{Addr: addr, NewConn: clients, KeepAlive: clients, Requests: 20000, Duration: 60 * time.Second, Pause: pause, Header: "X-Worker", Record: true})
			}()
			if tc.storm == 0 {
				for i := 0; i < tc.signals; i++ {
					next := time.Now().Add(time.Duration(tc.interval) * time.Millisecond)
					m.signal(syscall.SIGHUP)
					gen := i + 2
					if !waitFor(10*time.Second, func() bool { return count(m.records(), "restart done", "restart failed") >= i+1 }) {
						t.Fatalf("restart %d (generation %d) not done within 10 s", i+1, gen)
					}
					// Every cycle, not only at the end: a leak per restart
					// must not hide behind a later close.
					checkFDs(fmt.Sprintf("after restart %d", i+1))
					time.Sleep(time.Until(next))
				}
			} else {
				for i := 0; i < tc.signals; i++ {
					time.Sleep(time.Duration(tc.interval) * time.Millisecond)
					m.signal([]syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1}[i%2])
				}
			}
			// Let the last restart finish under load, then settle: no
			// restart running and none begun for a while.
			time.Sleep(time.Second)
			settled := waitFor(15*time.Second, func() bool {
				recs := m.records()
				if count(recs, "restart begun") != count(recs, "restart done", "restart failed") {
					return false
				}
				time.Sleep(500 * time.Millisecond)
				return count(m.records(), "restart begun") == count(recs, "restart begun")
			})
			cancel()
			wg.Wait()
			if !settled {
				t.Errorf("restarts did not settle within 15 s")
			}
			recs := m.records()
			last := lastGeneration(recs)
			t.Logf("%s: %v; restart signals seen %d, generations %d, answering %v", tc.name, res,
				count(recs, "restart signal"), last, keys(generations(res.Values)))
			if n := count(recs, "restart failed"); n != 0 {
				t.Errorf("%d restarts failed", n)
			}
			if tc.storm == 0 {
				if last != tc.signals+1 {
					t.Errorf("last generation %d after %d awaited restarts, want %d", last, tc.signals, tc.signals+1)
				}
			} else {
				// SIGHUP and SIGUSR1 are distinct, so both reach the
				// master however the kernel merges the rest.
				if n := count(recs, "restart signal"); n < 2 {
					t.Errorf("master saw %d restart signals, want at least 2: the storm did not reach it", n)
				}
				if last < 2 || last > tc.storm {
					t.Errorf("last generation %d after %d reload signals, want 2..%d (coalescing)", last, tc.signals, tc.storm)
				}
			}
			if res.Failed() != 0 || res.OK != res.Sent {
				t.Errorf("lost requests: %v; errors %q", res, res.Errors)
			}
			if res.P99 >= time.Second {
				t.Errorf("p99 %v, want < 1 s; slow requests: %q", res.P99, res.Slow)
			}
			// A keep-alive request can meet its idle connection being
			// closed by a draining worker (HTTP/1.1 allows the close; the
			// client retries an idempotent request). Each keep-alive
			// client's connection is on one worker at a time, and each
			// restart drains each of the 4 old workers once, so at most
			// clients*4 such retries per restart; more means connections
			// are closed outside a drain.
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

// checkReplies checks that every reply came from a worker of the
// generation it claims, live (per the master's log) at some moment between
// the request's send and its reply.
func checkReplies(t *testing.T, replies []loadclient.Reply, lv map[int]*life) {
	t.Helper()
	// slog's JSON times have millisecond resolution, truncated.
	const res = time.Millisecond
	bad := 0
	for _, r := range replies {
		pidS, genS, _ := strings.Cut(r.Value, ":")
		pid, err1 := strconv.Atoi(pidS)
		gen, err2 := strconv.Atoi(genS)
		l := lv[pid]
		var why string
		switch {
		case err1 != nil || err2 != nil:
			why = "unparsable"
		case l == nil:
			why = "pid never started by the master"
		case l.generation != gen:
			why = fmt.Sprintf("master started it as generation %d", l.generation)
		case r.Done.Before(l.started):
			why = fmt.Sprintf("reply before the worker started at %v", l.started.Format("15:04:05.000"))
		case !l.ended.IsZero() && r.Sent.After(l.ended.Add(res)):
			why = fmt.Sprintf("sent after the worker exited at %v", l.ended.Format("15:04:05.000"))
		}
		if why != "" {
			if bad++; bad <= 10 {
				t.Errorf("reply %q sent %v, done %v: %s", r.Value, r.Sent.Format("15:04:05.000"), r.Done.Format("15:04:05.000"), why)
			}
		}
	}
	if bad > 10 {
		t.Errorf("%d replies in all from a worker not live at the time", bad)
	}
	if len(replies) == 0 {
		t.Errorf("no replies recorded")
	}
}

// oldest returns the pid that started first.
func oldest(pids []int) int {
	best, bestStart := pids[0], uint64(1<<63)
	for _, pid := range pids {
		f, ok := statFields(fmt.Sprintf("/proc/%d/stat", pid))
		if ok && len(f) > 19 {
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

// TestKillWorkersUnderLoad: a worker crashes every 500 ms under load, in
// every mode, without warning: the test stops it (SIGSTOP), counts the
// client connections in its descriptor table, and SIGKILLs it. No
// connection is ever refused, because the master keeps the sockets open,
// and only those held connections may fail (TESTPLAN L3, C2). In handoff
// mode the held ones include a batch read from the channel but not yet
// returned by Accept; what the stopped worker was sent meanwhile waits
// unread in its channel, and the master passes it on to the others.
func TestKillWorkersUnderLoad(t *testing.T) {
	for _, mode := range append([]string{"shared"}, otherModes...) {
		t.Run("L3 "+mode, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			// The long run uses 8 workers so each slot is killed about every
			// 4 s, under supervise's default burst limit of 5 starts in 10 s.
			n := loadSize(4, 8)
			m := startMaster(t, pc, []string{"SRV_SLOW=5ms"}, append([]string{"-mode", mode, "-n", fmt.Sprint(n), "-listen", "127.0.0.1:0", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
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
			kills, exposed := 0, 0
			for i := 0; i < int(dur/(500*time.Millisecond)); i++ {
				time.Sleep(500 * time.Millisecond)
				w := m.workers()
				if len(w) == 0 {
					continue
				}
				// The oldest worker: every slot is hit in turn, so none
				// reaches supervise's burst limit by bad luck.
				victim := oldest(w)
				if err := m.signalWorker(victim, syscall.SIGSTOP); err != nil {
					t.Logf("worker %d: %v", victim, err)
					continue
				}
				// Stopped, it takes nothing more from the kernel: what it
				// holds now is what dies with it. Every thread must have
				// stopped, so that none still installs a descriptor (a
				// recvmsg, an accept4) after the count. Meanwhile new
				// connections queue for it (its channel, its reuseport
				// listener) or go to the others.
				if !waitFor(5*time.Second, func() bool { return allStopped(victim) }) {
					t.Logf("worker %d: not every thread stopped within 5 s", victim)
				}
				time.Sleep(50 * time.Millisecond)
				held, err := heldConns(victim)
				if err != nil {
					m.signalWorker(victim, syscall.SIGKILL)
					<-done
					t.Fatalf("worker %d: %v", victim, err)
				}
				if err := m.signalWorker(victim, syscall.SIGKILL); err != nil {
					<-done
					t.Fatalf("worker %d: %v", victim, err)
				}
				kills++
				exposed += held
			}
			<-done
			rescued := m.rescued()
			t.Logf("%s: %d kills holding %d client connections, %d passed on from their channels: %v", mode, kills, exposed, rescued, res)
			if kills == 0 {
				t.Fatal("no worker was killed")
			}
			if res.Refused != 0 || res.Timeout != 0 || res.Other != 0 {
				t.Errorf("refused/timeout/other must be 0: %v; errors %q", res, res.Errors)
			}
			if res.Reset > exposed {
				t.Errorf("%d resets, but the killed workers held only %d connections", res.Reset, exposed)
			}
			if mode == "handoff" && rescued == 0 {
				t.Errorf("no connection passed on from a killed worker's channel; the test no longer exercises the rescue")
			}
			if !waitFor(10*time.Second, func() bool { return len(m.workers()) == n }) {
				t.Errorf("%d workers live after the kills, want %d", len(m.workers()), n)
			}
			if _, _, err := get(addr, "/"); err != nil {
				t.Errorf("after the kills: %v", err)
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}

// statFields reads a /proc stat file and returns its fields after the
// command name (state first), which may itself hold spaces and parentheses.
func statFields(path string) ([]string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	return strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])), true
}

// allStopped reports whether every thread of process pid is stopped
// (state T, or t when traced).
func allStopped(pid int) bool {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) == 0 {
		return false
	}
	for _, e := range ents {
		f, ok := statFields(filepath.Join(dir, e.Name(), "stat"))
		if !ok || len(f) == 0 || (f[0] != "T" && f[0] != "t") {
			return false
		}
	}
	return true
}

// heldConns counts the TCP sockets other than listeners in process pid's
// descriptor table: the client connections that die with it. /proc/net/tcp
// and tcp6 list the sockets of this network namespace, the worker's.
func heldConns(pid int) (int, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	inodes := map[string]bool{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(line)
			if len(f) > 9 && f[3] != "0A" && inodes[f[9]] { // 0A: LISTEN
				n++
			}
		}
	}
	return n, nil
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
	w := m.workers()
	if len(w) == 0 {
		t.Fatal("no worker to kill")
	}
	if err := m.signalWorker(w[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
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
// finish and exits 0; the workers, in their own process groups, never see
// the SIGINT, and the log shows stop signal, workers exited, stopped in
// that order (TESTPLAN C15, C16).
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
			dir := t.TempDir()
			args := append([]string{"-n", "2", "-listen", "127.0.0.1:0", "-shutdown-timeout", "10s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)
			cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{Env: []string{pc.Env(), "SRV_SLOW=1500ms", "SRV_REPORT=" + dir, "SRV_ACTIVE=1"}, Args: args})
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
			// The workers report the requests in their handlers.
			active := func() int {
				n := 0
				for _, c := range reports(t, dir, "active") {
					n += c
				}
				return n
			}
			if !waitFor(5*time.Second, func() bool { return active() == inflight }) {
				t.Fatalf("%d requests in the workers' handlers, want %d", active(), inflight)
			}
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
			if got := reports(t, dir, "sigint"); len(got) != 0 {
				t.Errorf("workers %v received SIGINT: not in their own process groups", keys(intKeys(got)))
			}
			checkStopOrder(t, m.records())
		})
	}
}

// checkStopOrder checks the log: the stop signal, then every worker's
// exit, then "stopped", last.
func checkStopOrder(t *testing.T, recs []logRec) {
	t.Helper()
	stop, stopped := -1, -1
	var exits []int
	for i, r := range recs {
		switch r.Msg {
		case "stop signal: stopping workers gracefully":
			if stop < 0 {
				stop = i
			}
		case "worker exited", "worker exited unexpectedly":
			exits = append(exits, i)
		case "stopped":
			stopped = i
		}
	}
	started := count(recs, "worker started")
	switch {
	case stop < 0 || stopped < 0:
		t.Errorf("log lacks the stop signal (%d) or stopped (%d) record", stop, stopped)
	case len(exits) != started:
		t.Errorf("%d workers started, %d exits logged", started, len(exits))
	case stopped != len(recs)-1:
		t.Errorf("records after stopped: %+v", recs[stopped+1:])
	default:
		for _, i := range exits {
			if i < stop || i > stopped {
				t.Errorf("worker %d exit logged at record %d, outside stop signal (%d) .. stopped (%d)", recs[i].PID, i, stop, stopped)
			}
		}
	}
}

func intKeys(m map[int]int) map[int]bool {
	out := map[int]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}
