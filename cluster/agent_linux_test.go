//go:build linux

package cluster_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
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
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/valyala/fastjson"
)

// runTestAgent is this binary in its agent role (TestMain), as
// "mini-cluster -handoff-agent" is on a remote host.
func runTestAgent() int {
	if err := cluster.RunAgent(context.Background(), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		return 1
	}
	return 0
}

// agentWorker reports the group environment it got on stdout (relayed by
// the agent as a log record), reports ready and serves until told to stop.
func agentWorker() int {
	if os.Getenv("AGENT_WORKER_STUBBORN") == "1" {
		// Ignores the stop signal: only SIGKILL ends it early.
		signal.Ignore(syscall.SIGTERM)
	}
	done := cluster.Done()
	fmt.Printf("agent-worker id=%s group=%s index=%s size=%s params=%s\n",
		os.Getenv("HANDOFF_WORKER_ID"), os.Getenv("HANDOFF_GROUP"), os.Getenv("HANDOFF_GROUP_INDEX"),
		os.Getenv("HANDOFF_GROUP_SIZE"), os.Getenv("HANDOFF_PARAMS"))
	if err := cluster.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "agent-worker: ready:", err)
		return 3
	}
	if os.Getenv("AGENT_WORKER_STUBBORN") == "1" {
		time.Sleep(60 * time.Second)
		return 0
	}
	<-done
	fmt.Println("agent-worker bye")
	return 0
}

// agentEnv is the worker environment the tests hand the agent: the role,
// the census marker, and no exit delay under the race detector.
func agentEnv(pc *proccensus.Census) []string {
	return []string{helperproc.RoleVar + "=agent-worker", pc.Env(), "GORACE=atexit_sleep_ms=0"}
}

// agentPipe runs RunAgent in this process over two pipes.
type agentPipe struct {
	t        *testing.T
	inW      *os.File // the master's end of the agent's input
	outR     *os.File // the master's end of the agent's output
	outW     *os.File // the agent's end of its output
	w        *ipcframe.Writer
	r        *ipcframe.Reader
	p        fastjson.Parser
	buf      []byte
	done     chan error
	cancel   context.CancelFunc
	frames   []string // every frame read, for failure messages
	finished bool
	quiet    func() // stops the pings
}

// startAgentPipe starts the agent; a goroutine pings it every 200 ms as a
// master does, until quiet, the end of the test, or the input is closed.
func startAgentPipe(t *testing.T) *agentPipe {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	a := &agentPipe{
		t: t, inW: inW, outR: outR, outW: outW, done: make(chan error, 1), cancel: cancel,
		w: ipcframe.NewWriter(inW, nil),
		r: ipcframe.NewReader(outR, nil),
	}
	go func() {
		err := cluster.RunAgent(ctx, inR, outW)
		inR.Close()
		outW.Close()
		a.done <- err
	}()
	stopPing := make(chan struct{})
	a.quiet = sync.OnceFunc(func() { close(stopPing) })
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopPing:
				return
			case <-tick.C:
				if a.w.WriteFrame([]byte(`{"type":"ping"}`)) != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		a.quiet()
		a.inW.Close()
		if !a.finished {
			a.wait()
		}
		a.outR.Close()
		cancel()
	})
	return a
}

func (a *agentPipe) send(payload string) {
	a.t.Helper()
	if err := a.w.WriteFrame([]byte(payload)); err != nil {
		a.t.Fatalf("write to agent: %v", err)
	}
}

// next reads the agent's next frame, or fails the test after d.
func (a *agentPipe) next(d time.Duration) (*fastjson.Value, error) {
	a.outR.SetReadDeadline(time.Now().Add(d))
	var err error
	a.buf, err = a.r.ReadFrame(a.buf[:0])
	if err != nil {
		return nil, err
	}
	a.frames = append(a.frames, string(a.buf))
	return a.p.ParseBytes(a.buf)
}

// until reads frames until match accepts one, within 15 s.
func (a *agentPipe) until(what string, match func(v *fastjson.Value) bool) {
	a.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		v, err := a.next(time.Until(deadline))
		if err != nil {
			a.t.Fatalf("waiting for %s: %v\nframes:\n%s", what, err, strings.Join(a.frames, "\n"))
		}
		if match(v) {
			return
		}
	}
	a.t.Fatalf("no %s within 15 s\nframes:\n%s", what, strings.Join(a.frames, "\n"))
}

// drain reads until the agent closes its output and returns the types of
// the frames read meanwhile and RunAgent's error.
func (a *agentPipe) drain() ([]string, error) {
	a.t.Helper()
	var types []string
	for {
		v, err := a.next(20 * time.Second)
		if err != nil {
			break
		}
		types = append(types, string(v.GetStringBytes("type")))
	}
	return types, a.wait()
}

func (a *agentPipe) wait() error {
	a.finished = true
	select {
	case err := <-a.done:
		return err
	case <-time.After(25 * time.Second):
		a.t.Fatal("RunAgent did not return")
		return nil
	}
}

func isType(typ string) func(v *fastjson.Value) bool {
	return func(v *fastjson.Value) bool { return string(v.GetStringBytes("type")) == typ }
}

func startSpec(t *testing.T, pc *proccensus.Census, workers int) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, workers)
	for i := range ids {
		ids[i] = fmt.Sprint(7 + i)
	}
	env := ""
	for i, kv := range agentEnv(pc) {
		if i > 0 {
			env += ","
		}
		env += fmt.Sprintf("%q", kv)
	}
	return fmt.Sprintf(`{"type":"start","version":1,"group":"pipe","program":%q,"args":["-test.run=^$"],`+
		`"ids":[%s],"index_base":2,"group_size":9,"params":{"x":[1,2]},"env":[%s],"listen":["127.0.0.1:0"],`+
		`"ready":"notify","shutdown_timeout_ms":5000,"status_interval_ms":500}`,
		exe, strings.Join(ids, ","), env)
}

// workersUp waits until a status frame shows n ready workers.
func (a *agentPipe) workersUp(n int) {
	a.t.Helper()
	a.until(fmt.Sprintf("status with %d ready workers", n), func(v *fastjson.Value) bool {
		return isType("status")(v) && v.GetInt("status", "ready_workers") == n && v.GetBool("ready")
	})
}

// TestAgentOverPipe runs the agent without ssh: it reports itself, relays
// its workers' output with their group environment, reports status, obeys
// a restart, and stops its workers gracefully at EOF, exiting cleanly.
func TestAgentOverPipe(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	a := startAgentPipe(t)
	a.send(startSpec(t, pc, 2))
	a.until("started", isType("started"))
	a.until("worker output", func(v *fastjson.Value) bool {
		return isType("log")(v) && string(v.GetStringBytes("msg")) == `agent-worker id=8 group=pipe index=3 size=9 params={"x":[1,2]}` &&
			string(v.GetStringBytes("attrs", "stream")) == "stdout" && v.GetInt("attrs", "slot") == 1 && v.GetInt("attrs", "pid") > 0
	})
	a.workersUp(2)
	a.send(`{"type":"restart","seq":41}`)
	a.until("ack 41", func(v *fastjson.Value) bool {
		return isType("ack")(v) && v.GetInt("seq") == 41 && v.Get("error") == nil
	})
	a.until("generation 2", func(v *fastjson.Value) bool {
		return isType("status")(v) && v.GetInt("status", "generation") == 2 && v.GetInt("status", "ready_workers") == 2
	})
	a.inW.Close() // EOF: the master is gone
	types, err := a.drain()
	if err != nil {
		t.Errorf("RunAgent after EOF: %v", err)
	}
	if len(types) < 2 || types[len(types)-1] != "exit" || types[len(types)-2] != "status" {
		t.Errorf("last frames %v, want ... status exit", types)
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestAgentMaxRunningTime: the master changes the maximum running time of
// a running agent; it is acknowledged, reported in status, and the
// agent's worker is recycled; an out-of-range value is a protocol error.
func TestAgentMaxRunningTime(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	a := startAgentPipe(t)
	a.send(startSpec(t, pc, 1))
	a.until("started", isType("started"))
	a.workersUp(1)
	var first int
	a.until("a worker pid", func(v *fastjson.Value) bool {
		first = v.GetInt("status", "slots", "0", "pid")
		return isType("status")(v) && first > 0
	})
	a.send(`{"type":"max_running_time","seq":5,"max_running_time_ms":1000}`)
	a.until("ack 5", func(v *fastjson.Value) bool {
		return isType("ack")(v) && v.GetInt("seq") == 5 && v.Get("error") == nil
	})
	a.until("the worker recycled", func(v *fastjson.Value) bool {
		pid := v.GetInt("status", "slots", "0", "pid")
		return isType("status")(v) && v.GetInt("status", "max_running_time_ms") == 1000 && pid > 0 && pid != first &&
			v.GetInt("status", "ready_workers") == 1
	})
	a.send(`{"type":"max_running_time","seq":6,"max_running_time_ms":10}`)
	types, err := a.drain()
	if !errors.Is(err, cluster.ErrAgentProtocol) {
		t.Errorf("RunAgent after 10 ms: %v, want ErrAgentProtocol", err)
	}
	if len(types) == 0 || types[len(types)-1] != "exit" {
		t.Errorf("last frames %v, want ... exit", types)
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestAgentKill: after "stop", workers that ignore SIGTERM would have the
// whole grace period (30 s here); "kill", the master's second stop signal,
// SIGKILLs them at once and the agent exits.
func TestAgentKill(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	a := startAgentPipe(t)
	spec := startSpec(t, pc, 2)
	spec = strings.Replace(spec, `"shutdown_timeout_ms":5000`, `"shutdown_timeout_ms":30000`, 1)
	spec = strings.Replace(spec, `"env":[`, `"env":["AGENT_WORKER_STUBBORN=1",`, 1)
	a.send(spec)
	a.until("started", isType("started"))
	a.workersUp(2)
	a.send(`{"type":"stop","seq":1}`)
	a.until("ack 1", func(v *fastjson.Value) bool { return isType("ack")(v) && v.GetInt("seq") == 1 })
	a.send(`{"type":"kill"}`)
	done := make(chan struct{})
	var types []string
	var err error
	go func() { types, err = a.drain(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		// The grace period is 30 s: only a kill ends the agent this soon.
		t.Fatalf("agent still running 15 s after kill\nframes:\n%s", strings.Join(a.frames, "\n"))
	}
	if err != nil {
		t.Errorf("RunAgent: %v", err)
	}
	if len(types) == 0 || types[len(types)-1] != "exit" {
		t.Errorf("last frames %v, want ... exit", types)
	}
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestAgentProtocolErrors: a malformed frame from the master ends the agent
// with an error matching ErrAgentProtocol, after an "error" frame and with
// its workers stopped; a wrong first frame starts no worker at all.
func TestAgentProtocolErrors(t *testing.T) {
	oversized := string(binary.BigEndian.AppendUint32([]byte{'h', 1, 0, 0}, 2<<20))
	for _, tc := range []struct {
		name  string
		frame string // sent after the workers are up ("" with first)
		first string // sent instead of the start spec
		raw   bool   // frame is raw bytes, not a payload
	}{
		{name: "garbage", frame: "not json at all"},
		{name: "unknown-type", frame: `{"type":"frobnicate","seq":1}`},
		{name: "agent-type-from-master", frame: `{"type":"status","ready":true,"status":{}}`},
		{name: "bad-seq", frame: `{"type":"restart","seq":-4}`},
		{name: "oversized", frame: oversized, raw: true},
		{name: "bad-header", frame: "GET / HTTP/1.1\r\n\r\n", raw: true},
		{name: "first-not-start", first: `{"type":"restart","seq":1}`},
		{name: "start-bad-version", first: `{"type":"start","version":2,"program":"x","ids":[0],"listen":["127.0.0.1:0"]}`},
		{name: "start-no-ids", first: `{"type":"start","version":1,"program":"x","ids":[],"listen":["127.0.0.1:0"]}`},
		{name: "start-nul-arg", first: `{"type":"start","version":1,"program":"/bin/true","args":["a\u0000b"],"ids":[0],"listen":["127.0.0.1:0"]}`},
		{name: "start-nul-env", first: `{"type":"start","version":1,"program":"/bin/true","env":["A=\u0000"],"ids":[0],"listen":["127.0.0.1:0"]}`},
		{name: "start-nul-group", first: `{"type":"start","version":1,"group":"g\u0000","program":"x","ids":[0],"listen":["127.0.0.1:0"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			a := startAgentPipe(t)
			if tc.first != "" {
				a.send(tc.first)
			} else {
				a.send(startSpec(t, pc, 1))
				a.until("started", isType("started"))
				a.workersUp(1)
				if tc.raw {
					if _, err := a.inW.WriteString(tc.frame); err != nil {
						t.Fatal(err)
					}
				} else {
					a.send(tc.frame)
				}
			}
			types, err := a.drain()
			if !errors.Is(err, cluster.ErrAgentProtocol) {
				t.Errorf("RunAgent: %v, want ErrAgentProtocol", err)
			}
			want := []string{"error"}
			if tc.first == "" {
				want = []string{"error", "log", "status", "exit"}
			}
			types = lastWords(types)
			if diff := cmp.Diff(want, types); diff != "" {
				t.Errorf("frames after the fault (-want +got):\n%s", diff)
			}
			if err := pc.WaitGone(10 * time.Second); err != nil {
				t.Error(err)
			}
		})
	}
}

// lastWords is the shape of what the agent sent from its "error" frame
// on: "error", then (when workers ran) its log of stopping them, its last
// "status" and "exit". Status frames between are periodic.
func lastWords(types []string) []string {
	var out []string
	for _, ty := range types {
		if len(out) == 0 && ty != "error" {
			continue
		}
		if ty == "log" && out[len(out)-1] == "log" {
			continue
		}
		out = append(out, ty)
	}
	if n := len(out); n >= 2 {
		mid := out[1 : n-2]
		out = append(append([]string{out[0]}, slices.DeleteFunc(slices.Clone(mid), func(s string) bool { return s == "status" })...), out[n-2:]...)
		out = slices.Compact(out)
	}
	return out
}

// TestAgentMasterSilent: a master that stops pinging without closing the
// session (a link dropped without FIN: sshd keeps the agent's stdin open)
// is given up after three status intervals plus 2 s; the agent stops its
// workers and returns an error matching ErrAgentProtocol. With "stuck",
// the master does not read either and the wire is full, so no frame can
// be written: the agent still stops its workers and returns, its flush
// bounded (1 s here instead of 5 s, to keep the test cheap).
func TestAgentMasterSilent(t *testing.T) {
	for _, stuck := range []bool{false, true} {
		t.Run(fmt.Sprintf("stuck=%v", stuck), func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			t.Cleanup(cluster.SetAgentFlushTimeout(time.Second))
			a := startAgentPipe(t)
			// status_interval_ms 100: silent after 2.3 s.
			a.send(strings.Replace(startSpec(t, pc, 1), `"status_interval_ms":500`, `"status_interval_ms":100`, 1))
			a.until("started", isType("started"))
			a.workersUp(1)
			a.quiet()
			began := time.Now()
			var types []string
			var err error
			if stuck {
				// Fill the pipe: every write of the agent blocks from now on.
				a.outW.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
				a.outW.Write(make([]byte, 1<<20))
				a.outW.SetWriteDeadline(time.Time{})
				err = a.wait()
			} else {
				types, err = a.drain()
				types = lastWords(types)
				if diff := cmp.Diff([]string{"error", "log", "status", "exit"}, types); diff != "" {
					t.Errorf("frames after the silence (-want +got):\n%s", diff)
				}
			}
			if !errors.Is(err, cluster.ErrAgentProtocol) || !strings.Contains(err.Error(), "nothing from the master") {
				t.Errorf("RunAgent: %v, want ErrAgentProtocol for a silent master", err)
			}
			// 2.3 s of silence, the worker's graceful stop, 1 s of flush
			// at most, and slack for a loaded machine.
			if d := time.Since(began); d > 15*time.Second {
				t.Errorf("RunAgent returned %v after the master went silent", d)
			}
			if err := pc.WaitGone(10 * time.Second); err != nil {
				t.Error(err)
			}
		})
	}
}
