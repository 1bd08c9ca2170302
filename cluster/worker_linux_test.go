//go:build linux

package cluster_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
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
	"github.com/handoff-go/handoff/internal/syncbuf"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// goWorker is a worker written against the worker API. It serves HTTP on
// its inherited listener (or W_ADDR standalone), optionally listens on
// W_LISTEN2 (network W_LISTEN2_NET, default tcp) through the master, reports to the master with Send, logs
// through LogHandler, and answers the master's messages:
//
//	"hang"   SIGSTOP itself (a hung worker: no more heartbeats)
//	other    reply "echo:<message>"
//
// At start it sends "hello <slot> <isworker> <control fd var> <watchdog pid ok>"
// and, with W_LISTEN2, "inode <slot> <inode>" or "listen2-error <ErrListen?>".
// Standalone it prints "standalone <addr> <isworker> <id> <send error>".
// W_VARIANT selects another worker of workerVariants instead.
func goWorker() int {
	if v := os.Getenv("W_VARIANT"); v != "" {
		return workerVariants[v]()
	}
	// Before the first call of the API, which takes the variable.
	wdOK := os.Getenv("WATCHDOG_PID") == strconv.Itoa(os.Getpid())
	ctx := cluster.Context()
	log := slog.New(cluster.LogHandler(nil))
	ln, err := cluster.Listen(ctx, "tcp", os.Getenv("W_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-worker:", err)
		return 3
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %d\n", os.Getpid(), cluster.ID())
	})}
	go srv.Serve(ln)
	if !cluster.IsWorker() {
		fmt.Printf("standalone %s %v %d %v\n", ln.Addr(), cluster.IsWorker(), cluster.ID(), errors.Is(cluster.Send(nil), cluster.ErrNotWorker))
	} else {
		cluster.Send(fmt.Appendf(nil, "hello %d %v %q %v", cluster.ID(), cluster.IsWorker(), os.Getenv("HANDOFF_CONTROL_FD"), wdOK))
	}
	if a := os.Getenv("W_LISTEN2"); a != "" {
		network := os.Getenv("W_LISTEN2_NET")
		if network == "" {
			network = "tcp"
		}
		ln2, err := cluster.Listen(ctx, network, a)
		if err != nil {
			log.Error("second listener", "err", err)
			cluster.Send(fmt.Appendf(nil, "listen2-error %v", errors.Is(err, cluster.ErrListen)))
		} else {
			go srv.Serve(ln2)
			cluster.Send(fmt.Appendf(nil, "inode %d %d", cluster.ID(), listenerInode(ln2)))
		}
	}
	log.WithGroup("grp").Info("worker up", "answer", 42, "k", "v")
	if err := cluster.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "go-worker: ready:", err)
		return 3
	}
	for {
		select {
		case <-cluster.Done():
			srv.Close()
			return 0
		case msg := <-cluster.Messages():
			if string(msg) == "hang" {
				unix.Kill(os.Getpid(), unix.SIGSTOP)
				continue
			}
			cluster.Send(append([]byte("echo:"), msg...))
		}
	}
}

func listenerInode(ln net.Listener) uint64 {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return 0 // a handoff listener: no socket of its own
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var st unix.Stat_t
	rc.Control(func(fd uintptr) { unix.Fstat(int(fd), &st) })
	return st.Ino
}

// syncBuffer is a log sink tests read while the master writes.
type syncBuffer struct{ syncbuf.Buffer }

func (s *syncBuffer) records() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(s.String(), "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(line), &r) == nil {
			out = append(out, r)
		}
	}
	return out
}

// find returns the records with message msg.
func (s *syncBuffer) find(msg string) []map[string]any {
	var out []map[string]any
	for _, r := range s.records() {
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// goCluster is an in-process master for worker-API tests.
type goCluster struct {
	t    *testing.T
	m    *cluster.Master
	log  *syncBuffer
	msgs chan cluster.Message
	kept []cluster.Message // received, not yet collected
	stop func() error
}

// startGoCluster runs n workers of role with env added, heartbeat hb, and
// waits until the cluster is ready.
func startGoCluster(t *testing.T, pc *proccensus.Census, n int, role string, hb time.Duration, env ...string) *goCluster {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return startProgramCluster(t, pc, n, hb, nil, bin, []string{"-test.run=^$"}, append([]string{helperproc.RoleVar + "=" + role}, env...)...)
}

// startProgramCluster runs n workers of prog; hook, if not nil, sees every
// message from a worker first, in OnMessage.
func startProgramCluster(t *testing.T, pc *proccensus.Census, n int, hb time.Duration, hook func(cluster.Message), prog string, args []string, env ...string) *goCluster {
	t.Helper()
	return startClusterWith(t, pc, n, hb, hook, nil, prog, args, env...)
}

// startClusterWith is startProgramCluster with edit, if not nil, changing
// the configuration first.
func startClusterWith(t *testing.T, pc *proccensus.Census, n int, hb time.Duration, hook func(cluster.Message), edit func(*cluster.Config), prog string, args []string, env ...string) *goCluster {
	t.Helper()
	c := &goCluster{t: t, log: &syncBuffer{}, msgs: make(chan cluster.Message, 256)}
	cfg := &cluster.Config{
		Program:   prog,
		Args:      args,
		Workers:   n,
		Listen:    []string{"127.0.0.1:0"},
		Env:       append(append(os.Environ(), pc.Env(), "GORACE=atexit_sleep_ms=0"), env...),
		Logger:    slog.New(slog.NewJSONHandler(c.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Heartbeat: hb,
		Backoff:   supervise.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond},
		OnMessage: func(msg cluster.Message) {
			if hook != nil {
				hook(msg)
			}
			select {
			case c.msgs <- msg:
			default:
				t.Errorf("OnMessage queue full: %q", msg.Payload)
			}
		},
	}
	if edit != nil {
		edit(cfg)
	}
	m, err := cluster.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.m = m
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	var runErr error
	c.stop = func() error {
		once.Do(func() {
			m.Stop()
			runErr = <-done
			cancel()
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := c.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("master log:\n%s", c.log.String())
		}
	})
	select {
	case <-m.Ready():
	case err := <-done:
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("cluster not ready within 15 s")
	}
	return c
}

// collect waits for messages from workers until n have a prefix in
// prefixes, and returns those; others are kept for later calls.
func (c *goCluster) collect(n int, prefixes ...string) []cluster.Message {
	c.t.Helper()
	var out []cluster.Message
	match := func(msg cluster.Message) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(string(msg.Payload), p) {
				return true
			}
		}
		return false
	}
	kept := c.kept[:0:0]
	for _, msg := range c.kept {
		if len(out) < n && match(msg) {
			out = append(out, msg)
		} else {
			kept = append(kept, msg)
		}
	}
	c.kept = kept
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case msg := <-c.msgs:
			if match(msg) {
				out = append(out, msg)
			} else {
				c.kept = append(c.kept, msg)
			}
		case <-timeout:
			c.t.Fatalf("got %d of %d messages with prefixes %q", len(out), n, prefixes)
		}
	}
	return out
}

// slotPIDs returns the serving pid of every slot, waiting until all have
// one and are ready.
func (c *goCluster) slotPIDs(n int) []int {
	c.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		st := c.m.Status()
		if st.ReadyWorkers != n || len(st.Slots) != n {
			continue
		}
		out := make([]int, n)
		for i, sl := range st.Slots {
			out[i] = sl.PID
		}
		return out
	}
	c.t.Fatalf("%d workers not ready: %+v", n, c.m.Status())
	return nil
}

// waitReplaced waits until slot's pid is no longer old and every slot is
// ready again, and returns the pids.
func (c *goCluster) waitReplaced(n, slot, old int) []int {
	c.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		st := c.m.Status()
		if st.ReadyWorkers == n && len(st.Slots) == n && st.Slots[slot].PID != old && st.Slots[slot].PID != 0 {
			return c.slotPIDs(n)
		}
	}
	c.t.Fatalf("slot %d (pid %d) not replaced: %+v", slot, old, c.m.Status())
	return nil
}

// TestWorkerAPI runs Go workers using the API under a real master: slot
// IDs and environment, the inherited listener, a listener bound by the
// master on request (one socket for every worker and generation), messages
// both ways and broadcast, and log forwarding with slot and pid.
func TestWorkerAPI(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	second := ln.Addr().String()
	ln.Close()
	c := startGoCluster(t, pc, 2, "go-worker", time.Second, "W_LISTEN2="+second)

	hellos := c.collect(2, "hello ")
	got := map[string]bool{}
	for _, h := range hellos {
		got[string(h.Payload)] = true
		if want := fmt.Sprintf("hello %d ", h.Slot); !strings.HasPrefix(string(h.Payload), want) {
			t.Errorf("message %q from slot %d", h.Payload, h.Slot)
		}
	}
	// HANDOFF_CONTROL_FD is taken by the package and removed from the
	// environment; WATCHDOG_PID names the worker itself.
	want := map[string]bool{`hello 0 true "" true`: true, `hello 1 true "" true`: true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("hello messages (-want +got):\n%s", diff)
	}

	// The inherited listener serves.
	body, err := httpGet(c.m.Addrs()[0].String())
	if err != nil || len(strings.Fields(body)) != 2 {
		t.Errorf("GET on the inherited listener: %q, %v", body, err)
	}
	// The second address, bound by the master once: same socket in both
	// workers, and it serves.
	inodes := map[string]int{}
	for _, msg := range c.collect(2, "inode ", "listen2-error") {
		f := strings.Fields(string(msg.Payload))
		inodes[f[len(f)-1]]++
	}
	if len(inodes) != 1 {
		t.Fatalf("second listener inodes %v, want one socket for both workers", inodes)
	}
	if body, err := httpGet(second); err != nil || len(strings.Fields(body)) != 2 {
		t.Errorf("GET on the master-bound listener: %q, %v", body, err)
	}

	// Master -> one worker, master -> all.
	pids := c.slotPIDs(2)
	if err := c.m.Send(1, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	echo := c.collect(1, "echo:")
	if diff := cmp.Diff(cluster.Message{Slot: 1, PID: pids[1], Payload: []byte("echo:ping")}, echo[0]); diff != "" {
		t.Errorf("reply to Send (-want +got):\n%s", diff)
	}
	if err := c.m.Broadcast([]byte("all")); err != nil {
		t.Fatal(err)
	}
	slots := map[int]string{}
	for _, msg := range c.collect(2, "echo:") {
		slots[msg.Slot] = string(msg.Payload)
	}
	if diff := cmp.Diff(map[int]string{0: "echo:all", 1: "echo:all"}, slots); diff != "" {
		t.Errorf("replies to Broadcast (-want +got):\n%s", diff)
	}
	if err := c.m.Send(7, []byte("x")); !errors.Is(err, cluster.ErrNoWorker) {
		t.Errorf("Send to a slot that does not exist: %v, want ErrNoWorker", err)
	}
	if err := c.m.Send(0, make([]byte, cluster.MaxMessage+1)); !errors.Is(err, cluster.ErrTooLarge) {
		t.Errorf("Send of an oversized payload: %v, want ErrTooLarge", err)
	}

	// Log records arrive with the worker's attributes plus slot and pid.
	var logged []string
	for _, r := range c.log.find("worker up") {
		logged = append(logged, fmt.Sprintf("slot=%v pid=%v grp.answer=%v grp.k=%v", r["slot"], r["pid"], r["grp.answer"], r["grp.k"]))
	}
	wantLogged := []string{
		fmt.Sprintf("slot=0 pid=%d grp.answer=42 grp.k=v", pids[0]),
		fmt.Sprintf("slot=1 pid=%d grp.answer=42 grp.k=v", pids[1]),
	}
	if diff := cmp.Diff(wantLogged, logged, cmpSorted); diff != "" {
		t.Errorf("forwarded log records (-want +got):\n%s", diff)
	}

	// A new generation gets the very same socket from the master's cache.
	if err := c.m.Restart(); err != nil {
		t.Fatal(err)
	}
	for _, msg := range c.collect(2, "inode ", "listen2-error") {
		f := strings.Fields(string(msg.Payload))
		inodes[f[len(f)-1]]++
	}
	if len(inodes) != 1 {
		t.Errorf("second listener inodes across a restart %v, want one socket", inodes)
	}
}

var cmpSorted = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

func httpGet(addr string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestWorkerListenBindError: an address the master cannot or will not
// bind (in use; a privileged port, which only -listen binds) comes back to
// the worker as an error wrapping ErrListen; the master logs it and keeps
// serving. A host name is resolved by the worker, so the master binds the
// address it names.
func TestWorkerListenBindError(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freePort := strconv.Itoa(free.Addr().(*net.TCPAddr).Port)
	free.Close()
	for _, tc := range []struct {
		name, addr string
		fails      bool
	}{
		{"in use", busy.Addr().String(), true},
		{"privileged port", "127.0.0.1:80", true},
		{"name", "localhost:" + freePort, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startGoCluster(t, pc, 1, "go-worker", 0, "W_LISTEN2="+tc.addr)
			msg := c.collect(1, "inode ", "listen2-error")
			if !tc.fails {
				if got := string(msg[0].Payload); !strings.HasPrefix(got, "inode ") {
					t.Errorf("worker reported %q, want a listener", got)
				}
				return
			}
			if got := string(msg[0].Payload); got != "listen2-error true" {
				t.Errorf("worker reported %q, want a bind error wrapping ErrListen", got)
			}
			if len(c.log.find("worker's listen request failed")) != 1 {
				t.Errorf("master did not log the failed request once")
			}
			if len(c.log.find("second listener")) != 1 {
				t.Errorf("the worker's error log record was not forwarded")
			}
		})
	}
}

// TestWorkerListenControlChar: a unix path with a newline (or any
// control character) that a worker asks the master to bind is refused: the
// worker gets an error wrapping ErrListen, nothing is created, and the
// master keeps serving the worker. The master names the listeners it
// bound for workers in the upgrade state, one record a line, so such a
// path forged records there (a worker could make the next SIGUSR2 discard
// the state and kill every worker, or make the new image kill a process
// of its choosing).
func TestWorkerListenControlChar(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	for _, tc := range []struct{ name, path string }{
		{"newline", dir + "/s\nW 4242 0 1 -1 -1"},
		{"carriage return", dir + "/s\r"},
		{"DEL", dir + "/s\x7f"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startGoCluster(t, pc, 1, "go-worker", 0, "W_LISTEN2_NET=unix", "W_LISTEN2="+tc.path)
			msg := c.collect(1, "inode ", "listen2-error")
			if got := string(msg[0].Payload); got != "listen2-error true" {
				t.Errorf("worker reported %q, want a bind error wrapping ErrListen", got)
			}
			if len(c.log.find("worker's listen request failed")) != 1 {
				t.Errorf("master did not log the refused request once")
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 0 {
				t.Errorf("created in %s: %v, want nothing", dir, entries)
			}
			// The master is unaffected: it still talks to the worker.
			if err := c.m.Send(0, []byte("still")); err != nil {
				t.Fatal(err)
			}
			if got := string(c.collect(1, "echo:")[0].Payload); got != "echo:still" {
				t.Errorf("reply %q, want echo:still", got)
			}
		})
	}
}

// TestLogHandlerClips: whatever a worker logs, the frame its LogHandler
// queues is one the master's decoder accepts (a refused one gets the
// worker killed), with the message cut to at most 8 KiB of valid UTF-8:
// binary text and a 4-byte rune cut at the limit grow when invalid bytes
// become U+FFFD.
func TestLogHandlerClips(t *testing.T) {
	long := strings.Repeat("a", 9000)
	for _, tc := range []struct {
		name, msg, want string
	}{
		{"short", "hello", "hello"},
		{"long ascii", long, long[:8192]},
		{"binary", strings.Repeat("\xff", 9000), strings.Repeat("\ufffd", 8192/3)},
		{"rune at the cut", strings.Repeat("a", 8185) + "\U0001F600" + "tail", strings.Repeat("a", 8185) + "\U0001F600" + "tai"},
		{"binary attribute", "m", "m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frames := cluster.ForwardedLog(func(h slog.Handler) {
				slog.New(h).Info(tc.msg, "bin", strings.Repeat("\xfe", 9000))
			})
			if len(frames) != 1 {
				t.Fatalf("%d frames queued, want 1", len(frames))
			}
			if len(frames[0]) > cluster.MaxControlFrame {
				t.Fatalf("frame of %d bytes, over %d", len(frames[0]), cluster.MaxControlFrame)
			}
			m, err := cluster.DecodeControl(frames[0])
			if err != nil {
				t.Fatalf("the master would refuse the record (and kill the worker): %v", err)
			}
			if m.Msg != tc.want {
				t.Errorf("message of %d bytes starting %.20q, want %d bytes starting %.20q", len(m.Msg), m.Msg, len(tc.want), tc.want)
			}
		})
	}
}

// TestWorkerStandalone: the same worker code without a master binds
// locally, is no worker, cannot Send, and stops on SIGTERM through Done;
// activation variables meant for another process are ignored, never
// adopted (TESTPLAN A20).
func TestWorkerStandalone(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"plain", nil},
		{"variables for another process", []string{"LISTEN_PID=1", "LISTEN_FDS=1", "HANDOFF_CONTROL_FD=3", "WATCHDOG_USEC=1000", "WATCHDOG_PID=1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := helperproc.Command(t, "go-worker", &helperproc.Options{Env: append([]string{pc.Env(), "W_ADDR=127.0.0.1:0"}, tc.env...)})
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			lineCh := make(chan string, 1)
			go func() {
				s, _ := bufio.NewReader(out).ReadString('\n')
				lineCh <- s
				errc <- cmd.Wait()
			}()
			defer func() {
				cmd.Process.Kill()
				<-errc
			}()
			var line string
			select {
			case line = <-lineCh:
			case <-time.After(10 * time.Second):
				t.Fatal("standalone worker printed nothing")
			}
			f := strings.Fields(line)
			if len(f) != 5 || f[0] != "standalone" {
				t.Fatalf("standalone worker said %q", line)
			}
			if diff := cmp.Diff([]string{"false", "0", "true"}, f[2:]); diff != "" {
				t.Errorf("IsWorker, ID, Send is ErrNotWorker (-want +got):\n%s", diff)
			}
			if _, err := httpGet(f[1]); err != nil {
				t.Errorf("standalone listener: %v", err)
			}
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-errc:
				errc <- err
				if err != nil {
					t.Errorf("standalone worker after SIGTERM: %v, want a clean exit", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("standalone worker ignored SIGTERM")
			}
		})
	}
}

// TestWorkerMasterGone: EOF on the control channel closes Done, and a
// message from the master arrives on Messages. The test is the master.
func TestWorkerMasterGone(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	local, remote := socketpairFiles(t)
	defer local.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnFile, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Through the exec shim, so LISTEN_PID names the worker.
	cmd := exec.Command(bin, cluster.ShimArg, bin, bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), pc.Env(), helperproc.RoleVar+"=go-worker", "GORACE=atexit_sleep_ms=0",
		"LISTEN_FDS=1", "HANDOFF_CONTROL_FD=4", "HANDOFF_WORKER_ID=5")
	cmd.ExtraFiles = []*os.File{lnFile, remote}
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	remote.Close()
	lnFile.Close()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-errc
	}()
	r := ipcframe.NewReader(local, nil)
	defer r.Close()
	local.SetDeadline(time.Now().Add(10 * time.Second))
	read := func() string {
		t.Helper()
		for {
			b, err := r.ReadFrame(nil)
			if err != nil {
				t.Fatalf("reading the worker's channel: %v", err)
			}
			m, err := cluster.DecodeControl(b)
			if err != nil {
				t.Fatalf("worker sent %q: %v", b, err)
			}
			if cluster.TypeName(&m) == "message" {
				return string(m.Data)
			}
		}
	}
	if got := read(); got != `hello 5 true "" false` {
		t.Errorf("hello %q", got)
	}
	if err := ipcframe.NewWriter(local, nil).WriteFrame(cluster.AppendData(nil, []byte("hi"))); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "echo:hi" {
		t.Errorf("echo %q", got)
	}
	// Master gone: the worker's Done closes and it exits 0.
	local.Close()
	select {
	case err := <-errc:
		errc <- err
		if err != nil {
			t.Errorf("worker after EOF: %v, want a clean exit", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not stop when its channel closed")
	}
}

func socketpairFiles(t *testing.T) (*net.UnixConn, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "local")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		t.Fatal(err)
	}
	return c.(*net.UnixConn), os.NewFile(uintptr(fds[1]), "remote")
}

// TestHeartbeats: a hung Go worker (SIGSTOPped: its automatic heartbeats
// stop) is killed and replaced while its sibling is untouched; a shell
// worker that sends WATCHDOG=1 stays, one that does not is replaced.
func TestHeartbeats(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	// Deadlines are generous: the machine may be loaded (several packages'
	// tests, -race), and only a missed deadline is asserted, never speed.
	const hb = 200 * time.Millisecond
	t.Run("hung go worker", func(t *testing.T) {
		c := startGoCluster(t, pc, 2, "go-worker", hb)
		before := c.slotPIDs(2)
		// Healthy workers survive several deadlines.
		time.Sleep(hb * cluster.HeartbeatFactor * 3)
		if diff := cmp.Diff(before, c.slotPIDs(2)); diff != "" {
			t.Fatalf("healthy workers replaced (-before +after):\n%s", diff)
		}
		if err := c.m.Send(0, []byte("hang")); err != nil {
			t.Fatal(err)
		}
		after := c.waitReplaced(2, 0, before[0])
		if after[1] != before[1] {
			t.Errorf("slot 1 replaced too: %d -> %d", before[1], after[1])
		}
		recs := c.log.find("worker killed to be replaced")
		if len(recs) != 1 || recs[0]["pid"] != float64(before[0]) || !strings.Contains(fmt.Sprint(recs[0]["reason"]), "no heartbeat") {
			t.Errorf("kill records %v, want one for pid %d with a heartbeat reason", recs, before[0])
		}
	})
	// A heartbeat long before READY=1 must not make a worker late the
	// moment it is ready: the deadline counts from readiness.
	t.Run("slow start after an early heartbeat", func(t *testing.T) {
		c := startGoCluster(t, pc, 1, "raw-worker", hb, "W_SLOW_START=1s")
		before := c.slotPIDs(1)
		time.Sleep(hb * cluster.HeartbeatFactor * 3)
		if recs := c.log.find("worker killed to be replaced"); len(recs) != 0 {
			t.Errorf("worker %v killed as it became ready: %v", before, recs)
		}
	})
	// The master, not the worker, is slow: OnMessage blocks on one of its
	// messages for several deadlines while the worker's heartbeats queue
	// up behind it. The worker must not be killed for that.
	t.Run("slow OnMessage", func(t *testing.T) {
		returned := make(chan struct{})
		c := startProgramCluster(t, pc, 1, hb, func(msg cluster.Message) {
			if string(msg.Payload) == "echo:slow" {
				time.Sleep(hb * cluster.HeartbeatFactor * 4)
				close(returned)
			}
		}, os.Args[0], []string{"-test.run=^$"}, helperproc.RoleVar+"=go-worker")
		before := c.slotPIDs(1)
		if err := c.m.Send(0, []byte("slow")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-returned:
		case <-time.After(10 * time.Second):
			t.Fatal("OnMessage never saw the reply")
		}
		// Let the watcher look a few more times once the master caught up.
		time.Sleep(hb * 2)
		if recs := c.log.find("worker killed to be replaced"); len(recs) != 0 {
			t.Errorf("worker %v killed while the master was slow: %v", before, recs)
		}
	})
	// Shell workers fork a systemd-notify per ping: a longer interval.
	const shellHB = 400 * time.Millisecond
	for _, tc := range []struct {
		name     string
		script   string
		replaced bool
	}{
		// systemd-notify waits for the master to read each message
		// (BARRIER=1), so every ping is attributed to the worker.
		{"shell worker pings", `test "$WATCHDOG_PID" = $$ && test "$WATCHDOG_USEC" = 1200000 || exit 3; systemd-notify --ready; while :; do systemd-notify WATCHDOG=1; sleep 0.05; done`, false},
		{"silent shell worker", `systemd-notify --ready; exec sleep 60`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startProgramCluster(t, pc, 1, shellHB, nil, "sh", []string{"-c", tc.script})
			before := c.slotPIDs(1)
			replaced := func() bool { return len(c.log.find("worker killed to be replaced")) > 0 }
			// Three deadlines for the pinging worker; the silent one is
			// replaced after one, polled for up to 10 s.
			wait := shellHB * cluster.HeartbeatFactor * 3
			if tc.replaced {
				wait = 10 * time.Second
			}
			for deadline := time.Now().Add(wait); time.Now().Before(deadline) && !(tc.replaced && replaced()); {
				time.Sleep(20 * time.Millisecond)
			}
			if got := replaced(); got != tc.replaced {
				t.Errorf("replaced = %v, want %v (pids %v -> %v)", got, tc.replaced, before, c.m.Status().Slots)
			}
		})
	}
}

// rawWorker is a worker that does not use the package: it reports ready
// and then, in slot W_BAD_SLOT and only once (marker file W_MARKER),
// writes garbage of kind W_GARBAGE on its control channel. With
// W_SLOW_START it sends one heartbeat, waits that long before it reports
// ready, and from 300 ms later on sends heartbeats every 50 ms.
func rawWorker() int {
	fd, err := strconv.Atoi(os.Getenv("HANDOFF_CONTROL_FD"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "raw-worker: no control channel")
		return 3
	}
	if d, err := time.ParseDuration(os.Getenv("W_SLOW_START")); err == nil {
		hb := ipcframe.AppendFrame(nil, []byte(`{"type":"heartbeat"}`))
		unix.Write(fd, hb)
		time.Sleep(d)
		go func() {
			// The first one well inside the deadline, but after the
			// master saw the worker ready.
			time.Sleep(300 * time.Millisecond)
			for range 2000 {
				unix.Write(fd, hb)
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	if err := notifyReady(); err != nil {
		fmt.Fprintln(os.Stderr, "raw-worker:", err)
		return 3
	}
	if os.Getenv("HANDOFF_WORKER_ID") == os.Getenv("W_BAD_SLOT") {
		if f, err := os.OpenFile(os.Getenv("W_MARKER"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			f.Close()
			garbage(fd, os.Getenv("W_GARBAGE"))
		}
	}
	sig := make(chan os.Signal, 1)
	signalNotify(sig)
	<-sig
	return 0
}

func garbage(fd int, kind string) {
	frame := func(p string) []byte { return ipcframe.AppendFrame(nil, []byte(p)) }
	var b []byte
	switch kind {
	case "json":
		b = frame(`{"type":`)
	case "unknown type":
		b = frame(`{"type":"reboot"}`)
	case "master's type":
		b = frame(`{"type":"listened","id":1,"name":"x"}`)
	case "bad listen":
		b = frame(`{"type":"listen","id":1,"network":"tcp","address":"` + strings.Repeat("x", 300) + `"}`)
	case "oversized":
		b = []byte{ipcframe.Magic, ipcframe.Version, 0, 0, 0, 0x10, 0, 0}
	case "bad header":
		b = []byte("GET / HTTP/1.1\r\n\r\n")
	case "spoofing log":
		// Valid, so no violation: keys the master's record already has.
		b = frame(`{"type":"log","msg":"spoof","attrs":{"slot":9,"pid":1,"msg":"other","level":"x","time":"y","ok":true}}`)
	case "descriptor":
		b = frame(`{"type":"heartbeat"}`)
		b[2] = 1
		unix.Sendmsg(fd, b, unix.UnixRights(0), nil, 0)
		return
	}
	unix.Write(fd, b)
}

// TestMalformedFromWorker: whatever garbage one worker writes on its
// control channel, only that worker is killed and replaced, with a logged
// reason; the other keeps its pid and the master keeps serving.
func TestMalformedFromWorker(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	for _, kind := range []string{"json", "unknown type", "master's type", "bad listen", "oversized", "bad header", "descriptor"} {
		t.Run(kind, func(t *testing.T) {
			marker := t.TempDir() + "/m"
			c := startGoCluster(t, pc, 2, "raw-worker", 0, "W_BAD_SLOT=0", "W_MARKER="+marker, "W_GARBAGE="+kind)
			var bad int
			for deadline := time.Now().Add(10 * time.Second); bad == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				for _, r := range c.log.find("worker killed to be replaced") {
					bad = int(r["pid"].(float64))
				}
			}
			if bad == 0 {
				t.Fatal("no worker was restarted")
			}
			c.waitReplaced(2, 0, bad)
			started := 0
			for _, r := range c.log.find("worker started") {
				if r["slot"] == float64(1) {
					started++
				}
			}
			if started != 1 {
				t.Errorf("slot 1 started %d times, want once", started)
			}
			recs := c.log.find("worker killed to be replaced")
			if len(recs) != 1 || recs[0]["slot"] != float64(0) || !strings.Contains(fmt.Sprint(recs[0]["reason"]), "control channel") {
				t.Errorf("kill records %v, want one for slot 0 naming the control channel", recs)
			}
			if err := c.m.Broadcast([]byte("still there")); err != nil {
				t.Errorf("Broadcast after the restart: %v", err)
			}
		})
	}
}

// TestWorkerLogCannotSpoof: a worker's log record cannot pass for another
// worker's or change the record's own keys: colliding attributes are
// renamed, the slot and pid are the master's.
func TestWorkerLogCannotSpoof(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	marker := t.TempDir() + "/m"
	c := startGoCluster(t, pc, 1, "raw-worker", 0, "W_BAD_SLOT=0", "W_MARKER="+marker, "W_GARBAGE=spoofing log")
	pid := c.slotPIDs(1)[0]
	var recs []map[string]any
	for deadline := time.Now().Add(10 * time.Second); len(recs) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		recs = c.log.find("spoof")
	}
	if len(recs) != 1 {
		t.Fatalf("%d records with the worker's message, want 1", len(recs))
	}
	got := map[string]any{}
	for _, k := range []string{"slot", "pid", "level", "worker.slot", "worker.pid", "worker.msg", "worker.level", "worker.time", "ok"} {
		got[k] = recs[0][k]
	}
	want := map[string]any{"slot": 0.0, "pid": float64(pid), "level": "INFO", "worker.slot": 9.0, "worker.pid": 1.0,
		"worker.msg": "other", "worker.level": "x", "worker.time": "y", "ok": true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("forwarded record (-want +got):\n%s", diff)
	}
	if n := len(c.log.find("worker killed to be replaced")); n != 0 {
		t.Errorf("worker killed for a valid record")
	}
}

// startNotify is NOTIFY_SOCKET as the process started: the worker API's
// first call takes it from the environment.
var startNotify = os.Getenv("NOTIFY_SOCKET")

func notifyReady() error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: startNotify, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte("READY=1"))
	return err
}

func signalNotify(c chan os.Signal) { signal.Notify(c, syscall.SIGTERM, syscall.SIGINT) }

// TestSendQueueBounded: a worker that never reads its channel makes
// Master.Send fail with ErrQueueFull instead of growing the master, and is
// not killed for it (TESTPLAN E4).
func TestSendQueueBounded(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	c := startGoCluster(t, pc, 1, "raw-worker", 0)
	pid := c.slotPIDs(1)[0]
	payload := make([]byte, cluster.MaxMessage)
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		err = c.m.Send(0, payload)
	}
	if !errors.Is(err, cluster.ErrQueueFull) {
		t.Fatalf("Send to a worker that does not read: %v, want ErrQueueFull", err)
	}
	if got := c.slotPIDs(1)[0]; got != pid {
		t.Errorf("worker replaced (%d -> %d) for not reading", pid, got)
	}
}
