//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/httpdrain"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/syncbuf"
	"golang.org/x/sys/unix"
)

// fakeSrvArg selects the fake worker (TESTPLAN §1.0) in a re-executed test
// binary. It is an argument, not helperproc's role variable, because
// workers inherit the master's environment, role included.
const fakeSrvArg = "-fake-srv"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case cluster.ShimArg:
			err := cluster.RunShim(os.Args[2:])
			fmt.Fprintln(os.Stderr, err)
			os.Exit(cluster.ShimExitCode(err))
		case fakeSrvArg:
			os.Exit(fakeSrv())
		}
	}
	// After the shim and the fake worker: the master arms their Pdeathsig.
	armBenchPdeathsig()
	helperproc.Main(m, map[string]func() int{"mini-cluster": roleMaster, "mini-cluster-forged": roleForgedUpgrade, "bench-runner": roleBenchRunner})
}

// roleMaster is mini-cluster itself, run from the test binary so the exec
// shim (os.Executable) is the test binary too.
func roleMaster() int {
	if path := os.Getenv(soakGoroutinesVar); path != "" {
		if err := reportGoroutines(path); err != nil {
			fmt.Fprintf(os.Stderr, "mini-cluster (test): %v\n", err)
			return 3
		}
	}
	if os.Getenv(embedderSignalsVar) != "" {
		embedderSignals()
	}
	return runMain(context.Background(), helperproc.Args(), os.Stdin, os.Stdout, os.Stderr)
}

// fakeSrv is the fake worker: an HTTP server on LISTEN_FDS descriptor 3 that
// answers "pid:generation" in X-Worker. Knobs (environment):
//
//	SRV_SLOW=d        sleep d in every request
//	SRV_HOLD=path     accept only once path exists
//	SRV_READY_CHILD=1 send READY=1 from a grandchild process, not the worker
//	SRV_REPORT=dir    report to the test through files in dir (see report):
//	                  on SIGUSR2 stop accepting, then write <pid>.inflight,
//	                  the connections it still holds; on SIGINT write
//	                  <pid>.sigint before stopping
//	SRV_ACTIVE=1      with SRV_REPORT, keep <pid>.active up to date with the
//	                  number of requests in their handler
//	SRV_READY_GATE=path  send READY=1 (and serve) only once path exists
//	SRV_NOFILE=n      set our own soft RLIMIT_NOFILE to n at start (Go
//	                  gives children the soft limit it found, so the
//	                  master cannot lower it for us); with SRV_REPORT,
//	                  <pid>.emfile counts accepts failed with EMFILE and
//	                  <pid>.peak is the most connections open at once
//	SRV_QUIESCE=1     with SRV_REPORT, on SIGUSR2 wait (bounded) until no
//	                  accepted connection has a request unanswered before
//	                  writing <pid>.inflight (then the count still busy)
//	SRV_HANG_GEN=n    in generation n (HANDOFF_WORKER_GENERATION), once
//	                  the listener is open (in handoff mode: subscribed),
//	                  start a "sleep" child in our process group, then
//	                  never send READY=1 and never accept (a start timeout
//	                  must kill the whole group; TESTPLAN C3)
//	SRV_TRY_LISTEN=p,q  GET /env also asks the master (cluster.Listen)
//	                  for unix sockets at paths p, q, ..., and reports
//	                  each result ("TRY_LISTEN p=ok" or the error)
//	SRV_FAIL_GEN=n    in generation n, once the listener is open, exit 3
//	                  after 200 ms, before READY=1: a started process that
//	                  crashes during initialisation (TESTPLAN C11)
func fakeSrv() int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "fake-srv: "+format+"\n", args...)
		return 3
	}
	nofile := os.Getenv("SRV_NOFILE")
	if err := setNofile(nofile); err != nil {
		return fail("%v", err)
	}
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return fail("LISTEN_PID=%q, pid %d", os.Getenv("LISTEN_PID"), os.Getpid())
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 1 {
		return fail("LISTEN_FDS=%q", os.Getenv("LISTEN_FDS"))
	}
	var ino [3]uint64
	for i := 0; i < n && i < 3; i++ {
		var st syscall.Stat_t
		if err := syscall.Fstat(3+i, &st); err == nil {
			ino[i] = st.Ino
		}
	}
	gen := os.Getenv("HANDOFF_WORKER_GENERATION")
	ln, err := fakeListener() // modes_test.go
	if err != nil {
		return fail("%v", err)
	}
	if code, ok := genFault(gen); ok {
		return code
	}
	slow, _ := time.ParseDuration(os.Getenv("SRV_SLOW"))
	tag := strconv.Itoa(os.Getpid()) + ":" + gen
	dir := os.Getenv("SRV_REPORT")
	var activeMu sync.Mutex
	active := 0
	trackActive := func(delta int) {
		if dir == "" || os.Getenv("SRV_ACTIVE") != "1" {
			return
		}
		// Under the lock so the file never goes back to an older count.
		activeMu.Lock()
		defer activeMu.Unlock()
		active += delta
		report(dir, "active", active)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		trackActive(1)
		defer trackActive(-1)
		time.Sleep(slow)
		w.Header().Set("X-Worker", tag)
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker", tag)
		for _, k := range []string{"LISTEN_FDS", "LISTEN_FDNAMES", "HANDOFF_WORKER_ID", "HANDOFF_WORKER_GENERATION", "HANDOFF_WORKERS", "NOTIFY_SOCKET", "HANDOFF_MODE", "HANDOFF_CONN_FD"} {
			fmt.Fprintf(w, "%s=%s\n", k, os.Getenv(k))
		}
		fmt.Fprintf(w, "INODES=%d,%d,%d\n", ino[0], ino[1], ino[2])
		groups, _ := syscall.Getgroups()
		slices.Sort(groups)
		fmt.Fprintf(w, "IDS=%d:%d:%v\n", os.Getuid(), os.Getgid(), groups)
		// Last: the worker API's first call takes NOTIFY_SOCKET and the
		// LISTEN_* variables out of the environment.
		if paths := os.Getenv("SRV_TRY_LISTEN"); paths != "" {
			for _, p := range strings.Split(paths, ",") {
				ln, err := cluster.Listen(r.Context(), "unix", p)
				res := "ok"
				if err != nil {
					res = err.Error()
				} else {
					ln.Close()
				}
				fmt.Fprintf(w, "TRY_LISTEN %s=%s\n", p, res)
			}
		}
	})
	var open openConns
	if dir != "" && nofile != "" {
		var closeCounters func()
		if ln, closeCounters, err = countEMFILE(dir, ln, &open); err != nil {
			return fail("%v", err)
		}
		defer closeCounters()
	}
	srv := &http.Server{Handler: mux, ConnState: open.track}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	usr2 := make(chan os.Signal, 1)
	if dir != "" {
		// Before READY=1: SIGUSR2's default action would kill us.
		signal.Notify(usr2, syscall.SIGUSR2)
	}
	if gate := os.Getenv("SRV_READY_GATE"); gate != "" {
		for i := 0; i < 3000; i++ {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	var child *exec.Cmd
	if os.Getenv("SRV_READY_CHILD") == "1" {
		// A grandchild (worker -> sh -> python3) announces readiness, as a
		// shell worker running systemd-notify does, and outlives its send,
		// so the master must attribute it through its ancestry. It leaves
		// (bounded) once the shell is gone or the worker is (a killed
		// worker's shell is re-parented).
		child = exec.Command("sh", "-c", `python3 -c 'import os,socket,time
def ppid(p):
    try: return open("/proc/%d/stat"%p).read().rsplit(")",1)[1].split()[1]
    except OSError: return None
sh=os.getppid(); wk=ppid(sh); a=os.environ["NOTIFY_SOCKET"]; a="\0"+a[1:] if a[0]=="@" else a
s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); s.connect(a); s.send(b"READY=1\nSTATUS=child says ready")
for _ in range(600):
    if os.getppid()!=sh or ppid(sh)!=wk: break
    time.sleep(0.05)'; true`)
		child.Stdout, child.Stderr = os.Stderr, os.Stderr
		if err := child.Start(); err != nil {
			return fail("%v", err)
		}
	} else if err := sdNotify("READY=1\nSTATUS=fake ready"); err != nil {
		return fail("notify: %v", err)
	}
	if hold := os.Getenv("SRV_HOLD"); hold != "" {
		// Ready but not accepting: connections queue in the shared socket.
		for i := 0; i < 3000; i++ {
			if _, err := os.Stat(hold); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	pl := &pausableListener{Listener: ln, closed: make(chan struct{}), parked: make(chan struct{})}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- httpdrain.Serve(ctx, srv, pl, &httpdrain.Options{Grace: 10 * time.Second}) }()
wait:
	for {
		select {
		case err := <-errc:
			return fail("serve: %v", err)
		case <-usr2:
			pl.pause()
			if os.Getenv("SRV_QUIESCE") == "1" {
				// Requests on connections accepted before the pause get
				// their replies; a kill after the report finds only idle
				// keep-alive connections, which clients may retry.
				for i := 0; i < 500 && open.busy() > 0; i++ {
					time.Sleep(10 * time.Millisecond)
				}
				report(dir, "inflight", open.busy())
				continue
			}
			report(dir, "inflight", open.count())
		case sig := <-sigs:
			if sig == syscall.SIGINT && dir != "" {
				report(dir, "sigint", 1)
			}
			break wait
		}
	}
	sdNotify("STOPPING=1")
	stop()
	if err := <-errc; err != nil {
		fmt.Fprintf(os.Stderr, "fake-srv: drain: %v\n", err)
	}
	if child != nil {
		child.Process.Kill()
		child.Wait()
	}
	return 0
}

// countEMFILE wraps ln so that dir/<pid>.emfile counts its accepts that
// failed with EMFILE, and makes open keep dir/<pid>.peak, the most
// connections open at once. Both files are opened now: at EMFILE none
// could be. closeCounters closes them.
func countEMFILE(dir string, ln net.Listener, open *openConns) (_ net.Listener, closeCounters func(), err error) {
	emfile, err := openCounter(dir, "emfile")
	if err != nil {
		return nil, nil, err
	}
	if open.peak, err = openCounter(dir, "peak"); err != nil {
		emfile.f.Close()
		return nil, nil, err
	}
	return &emfileListener{Listener: ln, n: emfile}, func() { emfile.f.Close(); open.peak.f.Close() }, nil
}

// setNofile sets this process's soft RLIMIT_NOFILE to the SRV_NOFILE value
// v ("": leave it). Go gives children the soft limit it found, so a worker
// must lower its own.
func setNofile(v string) error {
	if v == "" {
		return nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("SRV_NOFILE=%q", v)
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	rl.Cur = n
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("setrlimit: %w", err)
	}
	return nil
}

// genFault acts on SRV_FAIL_GEN and SRV_HANG_GEN in generation gen: ok
// says the fake worker must exit with code.
func genFault(gen string) (code int, ok bool) {
	if g := os.Getenv("SRV_FAIL_GEN"); g != "" && g == gen {
		// Late enough that the master saw the process start.
		time.Sleep(200 * time.Millisecond)
		fmt.Fprintf(os.Stderr, "fake-srv: SRV_FAIL_GEN=%s: initialisation failed on purpose\n", g)
		return 3, true
	}
	if g := os.Getenv("SRV_HANG_GEN"); g != "" && g == gen {
		// The child is in our process group and outlives us unless the
		// master kills the group, not just us.
		child := exec.Command("sleep", "60")
		if err := child.Start(); err != nil {
			fmt.Fprintf(os.Stderr, "fake-srv: %v\n", err)
			return 3, true
		}
		// Bounded; SIGTERM's default action (no handler yet) and SIGKILL
		// end us sooner.
		time.Sleep(time.Minute)
		child.Process.Kill()
		child.Wait()
		fmt.Fprintf(os.Stderr, "fake-srv: SRV_HANG_GEN=%s: still alive after 1 min\n", g)
		return 3, true
	}
	return 0, false
}

// report writes n to dir/<pid>.<what> atomically (rename), for the test to
// read while the worker runs or after it died.
func report(dir, what string, n int) {
	name := filepath.Join(dir, strconv.Itoa(os.Getpid())+"."+what)
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(n)), 0o600); err != nil {
		fmt.Fprintf(os.Stderr, "fake-srv: report: %v\n", err)
		return
	}
	if err := os.Rename(tmp, name); err != nil {
		fmt.Fprintf(os.Stderr, "fake-srv: report: %v\n", err)
	}
}

// reports reads every dir/<pid>.<what> written by report.
func reports(t testing.TB, dir, what string) map[int]int {
	t.Helper()
	out := map[int]int{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		p, ok := strings.CutSuffix(e.Name(), "."+what)
		if !ok {
			continue
		}
		pid, err1 := strconv.Atoi(p)
		b, err2 := os.ReadFile(filepath.Join(dir, e.Name()))
		n, err3 := strconv.Atoi(strings.TrimSpace(string(b)))
		if err := errors.Join(err1, err2, err3); err != nil {
			t.Fatalf("report %s: %v", e.Name(), err)
		}
		out[pid] = n
	}
	return out
}

// openConns tracks accepted connections not yet closed (or hijacked).
type openConns struct {
	mu    sync.Mutex
	state map[net.Conn]http.ConnState
	most  int
	peak  *counter // nil: the most open at once is not reported
}

// track is the fake worker's srv.ConnState, which httpdrain wraps.
func (o *openConns) track(c net.Conn, s http.ConnState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch s {
	case http.StateClosed, http.StateHijacked:
		delete(o.state, c)
	default:
		if o.state == nil {
			o.state = map[net.Conn]http.ConnState{}
		}
		o.state[c] = s
	}
	if len(o.state) > o.most {
		o.most = len(o.state)
		if o.peak != nil {
			o.peak.set(o.most)
		}
	}
}

// count is the number of accepted connections not yet closed: the most
// requests that can fail if the worker dies now and accepts no more.
func (o *openConns) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.state)
}

// busy is the number of accepted connections with a request not yet
// answered, or not yet read (new).
func (o *openConns) busy() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, s := range o.state {
		if s == http.StateNew || s == http.StateActive {
			n++
		}
	}
	return n
}

// counter is a number the fake worker keeps in dir/<pid>.<what> through a
// descriptor opened at start, rewritten in place (fixed width), so it
// costs no new descriptor when the process has none left.
type counter struct {
	mu sync.Mutex
	f  *os.File
	n  int
}

func openCounter(dir, what string) (*counter, error) {
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(os.Getpid())+"."+what), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	c := &counter{f: f}
	c.set(0)
	return c, nil
}

func (c *counter) set(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.write(n)
}

func (c *counter) add(d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.write(c.n + d)
}

// write stores n, c.mu held.
func (c *counter) write(n int) {
	c.n = n
	if _, err := c.f.WriteAt(fmt.Appendf(nil, "%19d\n", n), 0); err != nil {
		fmt.Fprintf(os.Stderr, "fake-srv: report: %v\n", err)
	}
}

// emfileListener counts accepts that failed for lack of descriptors. The
// error goes on unchanged: net/http backs off on it (5 ms doubling to
// 1 s), which is what TESTPLAN L7 checks.
type emfileListener struct {
	net.Listener
	n *counter
}

func (l *emfileListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if errors.Is(err, unix.EMFILE) {
		l.n.add(1)
	}
	return c, err
}

// soakGoroutinesVar names a file in which the master role writes
// runtime.NumGoroutine() and the live heap (as of the last GC) every 200 ms
// (TESTPLAN L6 samples them).
const soakGoroutinesVar = "MC_TEST_GOROUTINES"

// reportGoroutines starts the master role's goroutine report. The file
// is opened once and rewritten in place, so the report adds one
// descriptor for the master's life instead of one per write.
func reportGoroutines(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	go func() {
		// runtime/metrics reads the heap without stopping the world.
		heap := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		// Bounded: 40 min, longer than any soak.
		for i := 0; i < 12000; i++ {
			metrics.Read(heap)
			f.WriteAt(fmt.Appendf(nil, "%19d %19d\n", runtime.NumGoroutine(), heap[0].Value.Uint64()), 0)
			time.Sleep(200 * time.Millisecond)
		}
	}()
	return nil
}

// pausableListener lets the fake worker stop accepting on SIGUSR2 and
// keep serving what it holds: pause closes our descriptor of the shared
// socket (the master and the other workers keep it listening; in handoff
// mode the queued connections go back to the master), while Accept,
// instead of failing, waits for Close, so httpdrain.Serve drains only on
// SIGTERM.
type pausableListener struct {
	net.Listener
	paused    atomic.Bool
	closeOnce sync.Once
	closed    chan struct{} // closed by Close
	parkOnce  sync.Once
	parked    chan struct{} // closed once Accept waits for Close after pause
}

func (l *pausableListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil && l.paused.Load() {
		// net/http registers (ConnState StateNew) every connection an
		// Accept returned before it calls Accept again, so from here on
		// openConns holds every connection this worker accepted.
		l.parkOnce.Do(func() { close(l.parked) })
		<-l.closed
		return nil, net.ErrClosed
	}
	return c, err
}

func (l *pausableListener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closed)
		if !l.paused.Load() {
			err = l.Listener.Close()
		}
	})
	return err
}

// pause closes the socket and waits, bounded, until Accept has seen it.
func (l *pausableListener) pause() {
	if l.paused.Swap(true) {
		return
	}
	l.Listener.Close()
	select {
	case <-l.parked:
	case <-time.After(5 * time.Second):
	}
}

func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return errors.New("no NOTIFY_SOCKET")
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

type syncBuffer = syncbuf.Buffer

// master is a running mini-cluster started by a test.
type master struct {
	t    testing.TB
	cmd  *exec.Cmd
	log  *syncBuffer
	addr string // first listen address, once ready
	done chan struct{}
	err  error
}

// readyRE finds the first listen address in the "cluster ready" record of
// either log format.
var readyRE = regexp.MustCompile(`msg="cluster ready".* listen=([^ ,]+)|"msg":"cluster ready".*"listen":"([^",]+)`)

// fakeSrvCmd is the worker command line for the fake worker.
func fakeSrvCmd(t *testing.T) []string {
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{bin, fakeSrvArg}
}

// startMaster starts mini-cluster with args (flags, then the program) and
// the census marker in its environment.
func startMaster(t testing.TB, pc *proccensus.Census, env []string, args ...string) *master {
	t.Helper()
	cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{Env: append([]string{pc.Env()}, env...), Args: args})
	return startCmd(t, cmd)
}

func startCmd(t testing.TB, cmd *exec.Cmd) *master {
	t.Helper()
	// The master's private notify directory goes under TMPDIR; a master a
	// test SIGKILLs cannot remove it, so keep it in the test's own.
	return startCmdIn(t, cmd, t.TempDir())
}

// startCmdIn is startCmd with TMPDIR set to tmp.
func startCmdIn(t testing.TB, cmd *exec.Cmd, tmp string) *master {
	t.Helper()
	return startCmdIO(t, cmd, tmp, nil, nil)
}

// startCmdIO is startCmdIn with the master's stdout and stderr given (nil:
// the log the test reads).
func startCmdIO(t testing.TB, cmd *exec.Cmd, tmp string, stdout, stderr *os.File) *master {
	t.Helper()
	m := &master{t: t, cmd: cmd, log: &syncBuffer{}, done: make(chan struct{})}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "TMPDIR="+tmp)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	// Or the test's own (output_linux_test.go).
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if stderr != nil {
		cmd.Stderr = stderr
	}
	benchPdeathsig(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.err = cmd.Wait(); close(m.done) }()
	t.Cleanup(func() {
		select {
		case <-m.done:
		default:
			cmd.Process.Kill()
			<-m.done
		}
		if t.Failed() {
			t.Logf("mini-cluster log:\n%s", m.log.String())
		}
	})
	return m
}

// waitReady waits for the "cluster ready" log line and returns the first
// listen address.
func (m *master) waitReady() string {
	m.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if s := readyRE.FindStringSubmatch(m.log.String()); s != nil {
			m.addr = s[1] + s[2]
			return m.addr
		}
		select {
		case <-m.done:
			m.t.Fatalf("mini-cluster exited before ready: %v\n%s", m.err, m.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	m.t.Fatalf("mini-cluster not ready within 20 s:\n%s", m.log.String())
	return ""
}

func (m *master) signal(sig syscall.Signal) {
	m.t.Helper()
	if err := m.cmd.Process.Signal(sig); err != nil {
		m.t.Fatal(err)
	}
}

// wait waits for the master to exit and returns its exit code.
func (m *master) wait(d time.Duration) int {
	m.t.Helper()
	select {
	case <-m.done:
	case <-time.After(d):
		m.t.Fatalf("mini-cluster did not exit within %v:\n%s", d, m.log.String())
	}
	return m.cmd.ProcessState.ExitCode()
}

// workers returns the pids of the master's live children.
func (m *master) workers() []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := proccensus.Stat(pid); ok && p.PPID == m.cmd.Process.Pid && p.State != 'Z' {
			out = append(out, pid)
		}
	}
	return out
}

// get performs one GET on a fresh connection and returns the body and the
// X-Worker header.
func get(addr, path string) (string, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.Header.Get("X-Worker"), err
}

// generations returns the distinct generations in X-Worker values.
func generations(values map[string]int) map[int]bool {
	out := map[int]bool{}
	for v := range values {
		_, g, _ := strings.Cut(v, ":")
		if n, err := strconv.Atoi(g); err == nil {
			out[n] = true
		}
	}
	return out
}

// envOf parses the /env reply.
func envOf(body string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			out[k] = v
		}
	}
	return out
}

// signalWorker signals pid through a pidfd, and for SIGKILL waits for its
// death, after checking, with the pidfd
// open, that pid is still a child of the master: a pid found by a /proc
// scan may have exited and been reused since, and a pidfd pins the process
// it was opened for.
func (m *master) signalWorker(pid int, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return os.NewSyscallError("pidfd_open", err)
	}
	defer unix.Close(fd)
	if p, ok := proccensus.Stat(pid); !ok || p.PPID != m.cmd.Process.Pid || p.State == 'Z' {
		return fmt.Errorf("pid %d is no longer a live worker", pid)
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
		return os.NewSyscallError("pidfd_send_signal", err)
	}
	if sig == syscall.SIGSTOP {
		return waitStopped(pid, 5*time.Second)
	}
	if sig != syscall.SIGKILL {
		return nil
	}
	// Wait for the death (a pidfd polls readable once the process has
	// exited), so the next /proc scan does not count the dying worker.
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, err := unix.Poll(pfd, int(time.Until(deadline)/time.Millisecond)+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("poll", err)
		}
		if n > 0 {
			return nil
		}
	}
	return fmt.Errorf("pid %d still alive 5 s after SIGKILL", pid)
}

// waitStopped waits until every thread of pid is stopped. SIGSTOP is only
// pending when pidfd_send_signal returns: the stop takes effect as each
// thread next passes through the kernel, which on a loaded machine came up
// to 53 ms later, time enough for a worker to read and accept connections
// a test expects it never to see (and that a later SIGKILL then resets).
func waitStopped(pid int, limit time.Duration) error {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	deadline := time.Now().Add(limit)
	for {
		tasks, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		stopped := len(tasks) > 0
		for _, tk := range tasks {
			b, err := os.ReadFile(dir + "/" + tk.Name() + "/stat")
			if err != nil {
				continue // the thread exited
			}
			// The state follows the command's closing parenthesis (the
			// last one: the command may hold one too).
			i := strings.LastIndex(string(b), ") ")
			if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
				stopped = false
				break
			}
		}
		if stopped {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d not stopped %v after SIGSTOP", pid, limit)
		}
		time.Sleep(time.Millisecond)
	}
}

// logRec is one record of the master's -log-format json output, with the
// attributes the tests read.
type logRec struct {
	Time       time.Time `json:"time"`
	Msg        string    `json:"msg"`
	PID        int       `json:"pid"`
	Generation int       `json:"generation"`
	Signal     string    `json:"signal"`
}

// records parses the master's JSON log so far; lines that are not records
// (none are expected) are skipped.
func (m *master) records() []logRec {
	var out []logRec
	for _, line := range strings.Split(m.log.String(), "\n") {
		var r logRec
		if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &r) == nil {
			out = append(out, r)
		}
	}
	return out
}

// count returns how many records have one of msgs.
func count(recs []logRec, msgs ...string) int {
	n := 0
	for _, r := range recs {
		if slices.Contains(msgs, r.Msg) {
			n++
		}
	}
	return n
}

// lastGeneration is the highest generation begun: 1 (the first) plus the
// restarts the master actually began.
func lastGeneration(recs []logRec) int {
	g := 1
	for _, r := range recs {
		if r.Msg == "restart begun" && r.Generation > g {
			g = r.Generation
		}
	}
	return g
}

// life is when a worker was live according to the master's log.
type life struct {
	generation     int
	started, ended time.Time // ended is zero while it runs
}

// lives maps worker pids to their lifetimes.
func lives(recs []logRec) map[int]*life {
	out := map[int]*life{}
	for _, r := range recs {
		switch r.Msg {
		case "worker started":
			out[r.PID] = &life{generation: r.Generation, started: r.Time}
		case "worker exited", "worker exited unexpectedly":
			if l := out[r.PID]; l != nil {
				l.ended = r.Time
			}
		}
	}
	return out
}

// fdShape is what must be the same in the master after every restart
// cycle: the inodes of its sockets (the listeners and the notify socket,
// never re-bound) and how many descriptors of each kind it holds (pipes to
// workers have new inodes per worker, but not a new count; so do the
// per-worker channel sockets, left out of the inodes).
func fdShape(pid int) (map[string]int, []uint64, error) {
	snap, err := fdcensus.Take(pid)
	if err != nil {
		return nil, nil, err
	}
	kinds := map[string]int{}
	for _, fd := range snap {
		k := fd.Target
		if i := strings.IndexByte(k, '['); i > 0 && !strings.HasPrefix(k, "anon_inode:") {
			k = k[:i]
		}
		kinds[k]++
	}
	return kinds, withoutPerWorker(snap.Inodes("socket:")), nil
}

// runLoad runs the load client in the background until the returned stop,
// which waits for it and returns its result; stop may be called again
// (deferred, say) and returns the same result.
func runLoad(opts loadclient.Options) (stop func() loadclient.Result) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var res loadclient.Result
	go func() {
		defer close(done)
		res = loadclient.Run(ctx, opts)
	}()
	return func() loadclient.Result {
		cancel()
		<-done
		return res
	}
}

// checkReplaced waits (15 s) until the master runs as many workers as old,
// none of them old, and checks that a request at addr is answered by
// generation gen; after names the event, as in "after the restart".
func checkReplaced(t *testing.T, m *master, addr string, old []int, gen, after string) {
	t.Helper()
	var now []int
	if !waitFor(15*time.Second, func() bool {
		now = m.workers()
		return len(now) == len(old) && !slices.ContainsFunc(now, func(p int) bool { return slices.Contains(old, p) })
	}) {
		t.Errorf("workers %v %s, want %d new ones (old %v)", now, after, len(old), old)
	}
	_, tag, err := get(addr, "/")
	if _, g, _ := strings.Cut(tag, ":"); err != nil || g != gen {
		t.Errorf("request %s: %q, %v; want generation %s", after, tag, err, gen)
	}
}

// checkFDShape waits (fdcensus.Settle) for the master pid's descriptors to
// have the shape kinds0 and sockets0 (fdShape) again, and fails the test
// with both diffs if they do not; what names the span, as in "across the
// restart".
func checkFDShape(t *testing.T, pid int, kinds0 map[string]int, sockets0 []uint64, what string) {
	t.Helper()
	var kinds map[string]int
	var sockets []uint64
	var err error
	if !waitFor(fdcensus.Settle, func() bool {
		kinds, sockets, err = fdShape(pid)
		return err == nil && cmp.Equal(kinds0, kinds) && cmp.Equal(sockets0, sockets)
	}) {
		t.Errorf("master's descriptors changed %s (err %v): kinds (-before +after):\n%s\nsocket inodes (-before +after):\n%s",
			what, err, cmp.Diff(kinds0, kinds), cmp.Diff(sockets0, sockets))
	}
}

// stopClean stops the master with SIGTERM and checks it exits 0 without a
// panic in its log.
func stopClean(t *testing.T, m *master) {
	t.Helper()
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if strings.Contains(m.log.String(), "panic") {
		t.Errorf("the master's log mentions a panic")
	}
}
