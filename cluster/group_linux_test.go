//go:build linux

package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// groupVars are the variables groupWorker reports.
var groupVars = []string{"HANDOFF_WORKER_ID", "HANDOFF_WORKERS", "HANDOFF_GROUP", "HANDOFF_GROUP_INDEX", "HANDOFF_GROUP_SIZE", "HANDOFF_PARAMS"}

// groupWorker prints its group environment and what cluster.Group and
// cluster.Params make of it ("genv K=V ... api NAME INDEX SIZE PARAMS"),
// serves HTTP ("pid id") on its listener (handoff mode too), and reports
// ready unless the file G_NOREADY names exists (a replacement that never
// becomes ready). It stops gracefully on SIGTERM.
func groupWorker() int {
	if os.Getenv("G_CHILD") == "probe" {
		name, index, size := cluster.Group()
		fmt.Printf("child api %q %d %d %v\n", name, index, size, cluster.Params() == nil)
		return 0
	}
	ctx := cluster.Context()
	var seen sync.Map // connections no longer fresh
	var b strings.Builder
	b.WriteString("genv")
	for _, k := range groupVars {
		if v, ok := os.LookupEnv(k); ok {
			fmt.Fprintf(&b, " %s=%s", k, v)
		} else {
			fmt.Fprintf(&b, " %s-unset", k)
		}
	}
	name, index, size := cluster.Group()
	params := "nil"
	if p := cluster.Params(); p != nil {
		params = string(p)
	}
	fmt.Fprintf(&b, " api %q %d %d %s", name, index, size, params)
	fmt.Println(b.String())
	if os.Getenv("G_CHILD") == "spawn" {
		// A child that inherits the group's variables (G_CHILD above).
		c := exec.Command(os.Args[0], os.Args[1:]...)
		c.Env = append(os.Environ(), "G_CHILD=probe")
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
		if err := c.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "group-worker: child:", err)
		}
	}

	var ln net.Listener
	var err error
	if os.Getenv("HANDOFF_MODE") == "handoff" {
		lname, _, _ := strings.Cut(os.Getenv("LISTEN_FDNAMES"), ":")
		ln, err = cluster.HandoffListener(lname)
	} else {
		ln, err = cluster.Listen(ctx, "tcp", "")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "group-worker:", err)
		return 3
	}
	// fresh counts accepted connections whose first request has not
	// reached the handler. Not "left StateNew": net/http sets StateActive
	// once it has read a request and only then checks whether Shutdown
	// began, dropping the request unanswered if so; only the handler's
	// start means the reply will be written.
	var fresh atomic.Int64
	settle := func(c net.Conn) {
		if _, ok := seen.LoadOrStore(c, true); !ok {
			fresh.Add(-1)
		}
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(groupConnKey{}).(net.Conn); ok {
			settle(c)
		}
		fmt.Fprintf(w, "%d %d\n", os.Getpid(), cluster.ID())
	}), ConnContext: func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, groupConnKey{}, c)
	}, ConnState: func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			fresh.Add(1)
		case http.StateClosed, http.StateHijacked:
			settle(c)
			seen.Delete(c)
		}
	}}
	served := make(chan struct{})
	go func() { srv.Serve(ln); close(served) }()
	if _, err := os.Stat(os.Getenv("G_NOREADY")); err != nil {
		if err := cluster.Ready(); err != nil {
			fmt.Fprintln(os.Stderr, "group-worker: ready:", err)
			return 3
		}
	}
	<-cluster.Done()
	// Stop accepting (our descriptor only: the shared socket stays with
	// the master and the others), then let accepted connections send
	// their request: net/http closes unanswered a connection whose request
	// it reads after Shutdown began.
	ln.Close()
	<-served
	for i := 0; i < 400 && fresh.Load() > 0; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return 0
}

// groupConnKey carries a request's accepted net.Conn in its context.
type groupConnKey struct{}

// groupMaster is an in-process master of group-worker processes.
type groupMaster struct {
	t        *testing.T
	m        *cluster.Master
	out, log *syncBuffer
	stop     func()
}

// newGroupMaster creates a master of group-worker from cfg (Program, Args,
// Listen, Env, Logger, Backoff and, unless logged, Stdout and Stderr are
// filled in) and runs it for at most 60 s.
func newGroupMaster(t *testing.T, pc *proccensus.Census, cfg cluster.Config, logged bool, env ...string) *groupMaster {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	g := &groupMaster{t: t, out: &syncBuffer{}, log: &syncBuffer{}}
	cfg.Program, cfg.Args = exe, []string{"-test.run=^$"}
	if cfg.Listen == nil {
		cfg.Listen = []string{"127.0.0.1:0"}
	}
	cfg.Env = append(append(os.Environ(), pc.Env(), "GORACE=atexit_sleep_ms=0", helperproc.RoleVar+"=group-worker"), env...)
	cfg.Logger = slog.New(slog.NewJSONHandler(g.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Backoff = supervise.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	if !logged {
		cfg.Stdout, cfg.Stderr = g.out, g.out
	}
	g.m, err = cluster.New(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.stop = runMaster(t, g.m, 60*time.Second)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("master log:\n%s\nworker output:\n%s", g.log.String(), g.out.String())
		}
	})
	return g
}

func (g *groupMaster) ready() {
	g.t.Helper()
	select {
	case <-g.m.Ready():
	case <-time.After(15 * time.Second):
		g.t.Fatalf("not ready within 15 s: %+v", g.m.Status())
	}
}

// waitStatus polls the status until ok holds, for at most 15 s.
func (g *groupMaster) waitStatus(what string, ok func(supervise.Status) bool) supervise.Status {
	g.t.Helper()
	var st supervise.Status
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if st = g.m.Status(); ok(st) {
			return st
		}
	}
	g.t.Fatalf("%s: not within 15 s; status %+v", what, st)
	return st
}

// groupWaitLines returns the output lines containing s, waiting until there are n.
func groupWaitLines(t *testing.T, buf *syncBuffer, s string, n int) []string {
	t.Helper()
	var got []string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got = got[:0]
		for _, l := range strings.Split(buf.String(), "\n") {
			if strings.Contains(l, s) {
				got = append(got, l)
			}
		}
		if len(got) >= n {
			return got
		}
	}
	t.Fatalf("%d of %d lines with %q:\n%s", len(got), n, s, buf.String())
	return nil
}

// TestGroupWorkerEnv: the worker environment of a group (global id, name,
// index, size, params), its absence outside a group even when the master's
// own environment has those variables (a master started by a worker), what
// cluster.Group and cluster.Params return, and the group in the output
// prefix or log attributes.
func TestGroupWorkerEnv(t *testing.T) {
	stale := []string{"HANDOFF_GROUP=stale", "HANDOFF_GROUP_INDEX=7", "HANDOFF_GROUP_SIZE=9", "HANDOFF_PARAMS={}"}
	for _, tc := range []struct {
		name   string
		cfg    cluster.Config
		logged bool
		// want by slot: the genv line after "genv ".
		want []string
		// prefix of slot 0's line ("" when logged), or its log attrs.
		prefix string
		attrs  map[string]any
	}{
		{
			name: "no group",
			cfg:  cluster.Config{Workers: 2},
			want: []string{
				`HANDOFF_WORKER_ID=0 HANDOFF_WORKERS=2 HANDOFF_GROUP-unset HANDOFF_GROUP_INDEX-unset HANDOFF_GROUP_SIZE-unset HANDOFF_PARAMS-unset api "" 0 1 nil`,
				`HANDOFF_WORKER_ID=1 HANDOFF_WORKERS=2 HANDOFF_GROUP-unset HANDOFF_GROUP_INDEX-unset HANDOFF_GROUP_SIZE-unset HANDOFF_PARAMS-unset api "" 0 1 nil`,
			},
			prefix: "[0 ",
		},
		{
			name: "group defaults",
			cfg:  cluster.Config{Workers: 2, Group: "db"},
			want: []string{
				`HANDOFF_WORKER_ID=0 HANDOFF_WORKERS=2 HANDOFF_GROUP=db HANDOFF_GROUP_INDEX=0 HANDOFF_GROUP_SIZE=2 HANDOFF_PARAMS={} api "db" 0 2 {}`,
				`HANDOFF_WORKER_ID=1 HANDOFF_WORKERS=2 HANDOFF_GROUP=db HANDOFF_GROUP_INDEX=1 HANDOFF_GROUP_SIZE=2 HANDOFF_PARAMS={} api "db" 1 2 {}`,
			},
			prefix: "[db 0 ",
		},
		{
			name: "group of a fleet",
			cfg: cluster.Config{Workers: 2, Group: "web.v2_x-1", Params: []byte(`{"shard":[1,2],"s":"a b"}`),
				GroupSize: 5, GroupIndexBase: 3, WorkerID: func(slot int) int { return 10 + slot }},
			logged: true,
			want: []string{
				`HANDOFF_WORKER_ID=10 HANDOFF_WORKERS=2 HANDOFF_GROUP=web.v2_x-1 HANDOFF_GROUP_INDEX=3 HANDOFF_GROUP_SIZE=5 HANDOFF_PARAMS={"shard":[1,2],"s":"a b"} api "web.v2_x-1" 3 5 {"shard":[1,2],"s":"a b"}`,
				`HANDOFF_WORKER_ID=11 HANDOFF_WORKERS=2 HANDOFF_GROUP=web.v2_x-1 HANDOFF_GROUP_INDEX=4 HANDOFF_GROUP_SIZE=5 HANDOFF_PARAMS={"shard":[1,2],"s":"a b"} api "web.v2_x-1" 4 5 {"shard":[1,2],"s":"a b"}`,
			},
			attrs: map[string]any{"group": "web.v2_x-1", "slot": float64(0), "stream": "stdout"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			g := newGroupMaster(t, pc, tc.cfg, tc.logged, stale...)
			g.ready()
			got := make([]string, len(tc.want))
			if tc.logged {
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
					recs := 0
					for _, r := range g.log.records() {
						msg, _ := r["msg"].(string)
						if !strings.HasPrefix(msg, "genv ") {
							continue
						}
						recs++
						slot := int(r["slot"].(float64))
						got[slot] = strings.TrimPrefix(msg, "genv ")
						if slot == 0 {
							attrs := map[string]any{}
							for k := range tc.attrs {
								attrs[k] = r[k]
							}
							if diff := cmp.Diff(tc.attrs, attrs); diff != "" {
								t.Errorf("log attrs of slot 0's line (-want +got):\n%s", diff)
							}
						}
					}
					if recs >= len(tc.want) {
						break
					}
				}
			} else {
				for _, l := range groupWaitLines(t, g.out, "genv ", len(tc.want)) {
					pre, rest, _ := strings.Cut(l, "genv ")
					f := strings.Fields(strings.Trim(pre, "[] "))
					slot, _ := strconv.Atoi(f[len(f)-2])
					got[slot] = rest
					if slot == 0 && !strings.HasPrefix(pre, tc.prefix) {
						t.Errorf("slot 0's line %q, want prefix %q", l, tc.prefix)
					}
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("worker environments (-want +got):\n%s", diff)
			}
		})
	}
}

// TestGroupWorkerChild: a group worker's child inherits the group's
// variables but is not the worker: cluster.Group and cluster.Params
// answer as outside a group there, as cluster.ID does.
func TestGroupWorkerChild(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	g := newGroupMaster(t, pc, cluster.Config{Workers: 1, Group: "db"}, false, "G_CHILD=spawn")
	g.ready()
	line := groupWaitLines(t, g.out, "child api ", 1)[0]
	_, got, _ := strings.Cut(line, "child api ")
	if want := `"" 0 1 true`; got != want {
		t.Errorf("Group and Params in a worker's child: %s, want %s", got, want)
	}
	g.stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestGroupConfigInvalid: New refuses bad group settings and policies
// before opening anything.
func TestGroupConfigInvalid(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []struct {
		name string
		cfg  cluster.Config
	}{
		{"space in name", cluster.Config{Group: "a b"}},
		{"slash in name", cluster.Config{Group: "a/b"}},
		{"name too long", cluster.Config{Group: strings.Repeat("g", 65)}},
		{"params without group", cluster.Config{Params: []byte(`{}`)}},
		{"size without group", cluster.Config{GroupSize: 3}},
		{"index base without group", cluster.Config{GroupIndexBase: 3}},
		{"params not json", cluster.Config{Group: "g", Params: []byte(`{"a":`)}},
		{"params with NUL", cluster.Config{Group: "g", Params: []byte("{\"a\":\"\x00\"}")}},
		{"params too large", cluster.Config{Group: "g", Params: []byte(`"` + strings.Repeat("x", 64<<10) + `"`)}},
		// Valid JSON, but fastjson's validator takes time in the square
		// of the depth: the bound other JSON of the package has.
		{"params nested too deep", cluster.Config{Group: "g", Params: []byte(strings.Repeat("[", 65) + strings.Repeat("]", 65))}},
		{"negative size", cluster.Config{Group: "g", GroupSize: -1}},
		{"negative index base", cluster.Config{Group: "g", GroupIndexBase: -1}},
		{"negative max running time", cluster.Config{MaxRunningTime: -time.Second}},
		// Outside the control socket's range, a status would be refused
		// by every client.
		{"max running time 500ms", cluster.Config{MaxRunningTime: 500 * time.Millisecond}},
		{"max running time 367 days", cluster.Config{MaxRunningTime: 367 * 24 * time.Hour}},
		{"unknown restart policy", cluster.Config{Restart: supervise.Policy(42)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Program, cfg.Workers, cfg.Listen = "true", 1, []string{"127.0.0.1:0"}
			cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			m, err := cluster.New(&cfg)
			if err == nil {
				m.Close()
				t.Fatal("New accepted it")
			}
		})
	}
	// The limits themselves are accepted.
	m, err := cluster.New(&cluster.Config{Program: "true", Workers: 1, Listen: []string{"127.0.0.1:0"},
		Group: strings.Repeat("g", 64), Params: []byte(`[]`), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
}

// TestRestartPolicy: Config.Restart decides whether a slot whose worker
// exited is respawned; a slot that is not stays done and the cluster keeps
// serving with the others.
func TestRestartPolicy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		policy  supervise.Policy
		code    int
		restart bool
	}{
		{"never after a clean exit", supervise.RestartNever, 0, false},
		{"never after a failure", supervise.RestartNever, 3, false},
		{"on-failure after a clean exit", supervise.RestartOnFailure, 0, false},
		{"on-failure after a failure", supervise.RestartOnFailure, 3, true},
		{"always after a clean exit", supervise.RestartAlways, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			m, err := cluster.New(&cluster.Config{
				Program: "sh",
				Args:    []string{"-c", `[ "$HANDOFF_WORKER_ID" = 1 ] && { sleep 0.2; exit ` + strconv.Itoa(tc.code) + `; }; exec sleep 60`},
				Workers: 2,
				Listen:  []string{"127.0.0.1:0"},
				Ready:   cluster.ReadyStarted,
				Restart: tc.policy,
				Backoff: supervise.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond},
				Env:     append(os.Environ(), pc.Env()),
				Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			runMaster(t, m, 30*time.Second)
			g := &groupMaster{t: t, m: m}
			st := g.waitStatus("slot 1 exited", func(st supervise.Status) bool {
				return len(st.Slots) == 2 && (st.Slots[1].State == supervise.SlotDone || st.Slots[1].Restarts > 0)
			})
			if got := st.Slots[1].Restarts > 0; got != tc.restart {
				t.Errorf("slot 1 restarted %v, want %v: %+v", got, tc.restart, st.Slots[1])
			}
			if !tc.restart {
				// Still done a moment later, and slot 0 still serves.
				time.Sleep(300 * time.Millisecond)
				st = m.Status()
				if st.Slots[1].State != supervise.SlotDone || st.Slots[1].PID != 0 || st.Slots[0].State != supervise.SlotReady || !st.Running {
					t.Errorf("status %+v, want slot 1 done, slot 0 ready", st)
				}
			}
		})
	}
}

// groupHTTPGet sends a request on an established connection and returns
// the reply's body (or an error) on the channel: a connection made while
// no worker runs, answered once one does.
func groupHTTPGet(c net.Conn, d time.Duration) <-chan string {
	out := make(chan string, 1)
	go func() {
		defer c.Close()
		c.SetDeadline(time.Now().Add(d))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			out <- "error: " + err.Error()
			return
		}
		b, err := io.ReadAll(c)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		_, body, _ := strings.Cut(string(b), "\r\n\r\n")
		out <- body
	}()
	return out
}

// TestSuspendResume: Suspend stops every worker and keeps the listeners,
// so connections made while suspended wait and are answered after Resume,
// in every mode; scaling while suspended changes the count resumed;
// Restart fails with ErrSuspended; both calls are idempotent.
func TestSuspendResume(t *testing.T) {
	for _, mode := range []cluster.Mode{cluster.ModeShared, cluster.ModeReuseport, cluster.ModeHandoff} {
		t.Run(mode.String(), func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			g := newGroupMaster(t, pc, cluster.Config{Workers: 2, Mode: mode}, false)
			g.ready()
			addr := g.m.Addrs()[0].String()
			if g.m.Suspended() {
				t.Fatal("Suspended before Suspend")
			}
			for range 2 {
				if err := g.m.Suspend(); err != nil {
					t.Fatalf("Suspend: %v", err)
				}
			}
			if !g.m.Suspended() {
				t.Fatal("not Suspended after Suspend")
			}
			g.waitStatus("every worker stopped", func(st supervise.Status) bool { return st.Processes == 0 && st.Workers == 0 })
			if err := g.m.Restart(); !errors.Is(err, cluster.ErrSuspended) {
				t.Errorf("Restart while suspended: %v, want ErrSuspended", err)
			}
			if err := g.m.ScaleBy(1); err != nil {
				t.Fatalf("ScaleBy while suspended: %v", err)
			}
			if st := g.m.Status(); st.Workers != 0 || st.Processes != 0 {
				t.Errorf("ScaleBy while suspended started workers: %+v", st)
			}
			// In reuseport mode the kernel spreads these over the
			// sockets of slots 0 and 1, which stay open while suspended.
			var replies []<-chan string
			for range 6 {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					t.Fatalf("dial while suspended: %v", err)
				}
				replies = append(replies, groupHTTPGet(c, 20*time.Second))
			}
			time.Sleep(300 * time.Millisecond)
			for i, r := range replies {
				select {
				case got := <-r:
					t.Fatalf("connection %d answered while suspended: %q", i, got)
				default:
				}
			}
			for range 2 {
				if err := g.m.Resume(); err != nil {
					t.Fatalf("Resume: %v", err)
				}
			}
			if g.m.Suspended() {
				t.Fatal("Suspended after Resume")
			}
			for i, r := range replies {
				select {
				case got := <-r:
					if f := strings.Fields(got); len(f) != 2 {
						t.Errorf("connection %d: reply %q", i, got)
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("connection %d not answered after Resume", i)
				}
			}
			g.waitStatus("3 workers ready", func(st supervise.Status) bool { return st.Workers == 3 && st.ReadyWorkers == 3 })
			if n := len(g.log.find("slot sockets closed")); n != 0 {
				t.Errorf("%d reuseport slot sockets closed by the suspension: their queued connections were lost", n)
			}
			// The resumed workers count the scaled slot.
			groupWaitLines(t, g.out, "HANDOFF_WORKERS=3", 3)
		})
	}
}

// TestScaleByHugeDelta: ScaleBy with a delta past the 4096-worker limit
// means the limit (or 0), never an int overflow that wraps around. On a
// suspended master it only sets the count Resume would start.
func TestScaleByHugeDelta(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	g := newGroupMaster(t, pc, cluster.Config{Workers: 2, Suspended: true}, false)
	g.ready()
	scaled := regexp.MustCompile(`"msg":"scaled while suspended","workers":(\d+)`)
	for _, tc := range []struct {
		delta int
		want  string
	}{{math.MaxInt, "4096"}, {math.MinInt, "0"}, {3, "3"}} {
		if err := g.m.ScaleBy(tc.delta); err != nil {
			t.Fatalf("ScaleBy(%d): %v", tc.delta, err)
		}
		all := scaled.FindAllStringSubmatch(g.log.String(), -1)
		if len(all) == 0 || all[len(all)-1][1] != tc.want {
			t.Errorf("ScaleBy(%d): last count logged %v, want %s", tc.delta, all, tc.want)
		}
	}
	if st := g.m.Status(); st.Processes != 0 {
		t.Errorf("ScaleBy while suspended started processes: %+v", st)
	}
}

// TestStartSuspended: Config.Suspended starts no worker, yet the master is
// ready at once (pid file written); Resume starts them. Suspend and
// Resume need Run.
func TestStartSuspended(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	m, err := cluster.New(&cluster.Config{Program: exe, Workers: 2, Listen: []string{"127.0.0.1:0"}, Suspended: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !m.Suspended() {
		t.Error("not Suspended before Run")
	}
	if err := m.Resume(); !errors.Is(err, supervise.ErrNotRunning) {
		t.Errorf("Resume before Run: %v, want ErrNotRunning", err)
	}
	m.Close()

	g := newGroupMaster(t, pc, cluster.Config{Workers: 2, Suspended: true, PIDFile: pidFile}, false)
	g.ready()
	b, err := os.ReadFile(pidFile)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("pid file %q, %v; want %d", b, err, os.Getpid())
	}
	time.Sleep(300 * time.Millisecond)
	if st := g.m.Status(); st.Workers != 0 || st.Processes != 0 || !g.m.Suspended() {
		t.Errorf("started suspended, status %+v suspended %v", st, g.m.Suspended())
	}
	// The log says why no worker runs, and does not claim to start any.
	if l := g.log.String(); !strings.Contains(l, `"msg":"started suspended`) || strings.Contains(l, `"msg":"starting workers"`) {
		t.Errorf("log of a master started suspended:\n%s", l)
	}
	if err := g.m.Resume(); err != nil {
		t.Fatal(err)
	}
	g.waitStatus("2 workers ready", func(st supervise.Status) bool { return st.ReadyWorkers == 2 })
}

// TestSuspendedRefusesUpgrade: an in-place upgrade (SIGUSR2) of a
// suspended master is refused before anything happens: the new image
// would not know it was suspended.
func TestSuspendedRefusesUpgrade(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	g := newGroupMaster(t, pc, cluster.Config{Workers: 1, Suspended: true}, false)
	g.ready()
	stop, err := g.m.HandleSignals()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := unix.Kill(os.Getpid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		recs := g.log.find("upgrade failed; this master keeps running and serving")
		if len(recs) > 0 {
			if e, _ := recs[0]["err"].(string); !strings.Contains(e, "suspended") {
				t.Errorf("upgrade refused with %q, want the suspension named", e)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("upgrade not refused within 10 s")
		}
	}
	if !g.m.Suspended() {
		t.Error("no longer suspended")
	}
}

// TestMaxRunningTime: workers older than MaxRunningTime are replaced one
// slot at a time, the replacement first, under load with no failed
// request (as a rolling restart, TESTPLAN L1); the slot keeps its
// generation and counts a new incarnation.
func TestMaxRunningTime(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	g := newGroupMaster(t, pc, cluster.Config{Workers: 2, MaxRunningTime: 1500 * time.Millisecond}, false)
	g.ready()
	first := g.m.Status()
	res := loadclient.Run(context.Background(), loadclient.Options{
		Addr: g.m.Addrs()[0].String(), NewConn: 4, KeepAlive: 2, Duration: 5 * time.Second, Requests: 8000, Pause: 2 * time.Millisecond,
	})
	t.Logf("load: %v", res)
	if res.OK == 0 || res.Failed() != 0 {
		t.Errorf("load during recycling: %v %q", res, res.Errors)
	}
	st := g.waitStatus("2 workers ready", func(st supervise.Status) bool { return st.ReadyWorkers == 2 })
	for i, sl := range st.Slots {
		if sl.PID == first.Slots[i].PID || sl.ID.Incarnation < 2 || sl.ID.Generation != first.Slots[i].ID.Generation {
			t.Errorf("slot %d: %+v, first %+v: want a new pid and incarnation, the same generation", i, sl.ID, first.Slots[i].ID)
		}
	}
	if st.Generation != first.Generation {
		t.Errorf("generation %d, want %d: recycling is not a restart", st.Generation, first.Generation)
	}
	if n := len(g.log.find("recycling worker past its maximum running time")); n < 2 {
		t.Errorf("%d recycles logged, want at least 2", n)
	}
	// SetMaxRunningTime keeps to the range New accepts.
	for _, d := range []time.Duration{-time.Second, 500 * time.Millisecond, 367 * 24 * time.Hour} {
		if err := g.m.SetMaxRunningTime(d); !errors.Is(err, cluster.ErrControlInvalid) {
			t.Errorf("SetMaxRunningTime(%v): %v, want ErrControlInvalid", d, err)
		}
	}
	if got := g.m.MaxRunningTime(); got != 1500*time.Millisecond {
		t.Errorf("maximum running time %v after refused changes, want 1.5s", got)
	}
}

// TestMaxRunningTimeFailedReplacement: a replacement that never becomes
// ready is killed at its start timeout and the old worker keeps serving
// (TESTPLAN C3); it is retried later, not in a loop, and succeeds once the
// replacement can start.
func TestMaxRunningTimeFailedReplacement(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	marker := filepath.Join(t.TempDir(), "noready")
	g := newGroupMaster(t, pc, cluster.Config{Workers: 1, MaxRunningTime: time.Second, StartTimeout: time.Second}, false, "G_NOREADY="+marker)
	g.ready()
	pid := g.m.Status().Slots[0].PID
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Attempt at ~1 s, killed at ~2 s; the retry is 5 s after the attempt.
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		if st := g.m.Status(); st.Slots[0].PID != pid || st.ReadyWorkers != 1 {
			t.Fatalf("slot 0 changed while its replacement failed: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(g.log.find("recycling worker past its maximum running time")); n != 1 {
		t.Errorf("%d recycle attempts in 4 s, want 1", n)
	}
	if n := len(g.log.find("supervise: recycle failed; the previous worker keeps serving")); n != 1 {
		t.Errorf("%d recycle failures logged, want 1", n)
	}
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}
	g.waitStatus("slot 0 recycled", func(st supervise.Status) bool {
		return st.Slots[0].PID != pid && st.Slots[0].PID != 0 && st.ReadyWorkers == 1
	})
	if st := g.m.Status(); !slices.ContainsFunc(st.Slots, func(s supervise.SlotStatus) bool { return s.ID.Incarnation >= 3 }) {
		t.Errorf("status %+v: want slot 0 at its third incarnation or later", st)
	}
}

// TestSuspendDuringRestart: Suspend is refused while a graceful restart is
// in flight (its deferred scale could be lost), and works once it ended.
func TestSuspendDuringRestart(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	marker := filepath.Join(t.TempDir(), "noready")
	g := newGroupMaster(t, pc, cluster.Config{Workers: 1, StartTimeout: 2 * time.Second}, false, "G_NOREADY="+marker)
	g.ready()
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.m.Restart(); err != nil {
		t.Fatal(err)
	}
	g.waitStatus("restart in flight", func(st supervise.Status) bool { return st.Restarting })
	if err := g.m.Suspend(); !errors.Is(err, supervise.ErrBusy) {
		t.Errorf("Suspend during a restart: %v, want ErrBusy", err)
	}
	if g.m.Suspended() {
		t.Error("Suspended after a refused Suspend")
	}
	g.waitStatus("restart failed", func(st supervise.Status) bool { return !st.Restarting })
	if err := g.m.Suspend(); err != nil {
		t.Fatalf("Suspend after the restart: %v", err)
	}
	g.waitStatus("every worker stopped", func(st supervise.Status) bool { return st.Processes == 0 })
}

// TestMaxRunningTimeSpawnFails: a replacement that cannot even be spawned
// (the exec shim is gone) leaves the old worker serving and is tried again
// after the retry delay, not at every check.
func TestMaxRunningTimeSpawnFails(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	shim := filepath.Join(t.TempDir(), "shim")
	if err := os.Symlink(exe, shim); err != nil {
		t.Fatal(err)
	}
	g := newGroupMaster(t, pc, cluster.Config{Workers: 1, MaxRunningTime: time.Second, Shim: shim}, false)
	g.ready()
	pid := g.m.Status().Slots[0].PID
	if err := os.Remove(shim); err != nil {
		t.Fatal(err)
	}
	// Checked every 250 ms from ~1 s; the retry is 5 s after the attempt.
	for deadline := time.Now().Add(3500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if st := g.m.Status(); st.Slots[0].PID != pid || st.ReadyWorkers != 1 {
			t.Fatalf("slot 0 changed while no replacement could start: %+v", st)
		}
	}
	spawns := 0
	for _, r := range g.log.records() {
		if r["event"] == supervise.SpawnFailed.String() {
			spawns++
		}
	}
	if spawns != 1 {
		t.Errorf("%d failed spawns of a replacement in 3.5 s, want 1", spawns)
	}
	if n := len(g.log.find("recycle failed; the worker keeps serving")); n != 1 {
		t.Errorf("%d recycle failures logged, want 1", n)
	}
}
