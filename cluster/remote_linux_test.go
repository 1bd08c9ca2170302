//go:build linux

package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshlaunch"
	"github.com/handoff-go/handoff/internal/sshtest"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
	"golang.org/x/sys/unix"
)

// logRecord is one record a recHandler kept, attributes flattened.
type logRecord struct {
	Level slog.Level
	Msg   string
	Attrs map[string]any
	Dups  []string // keys that appeared more than once
}

// recHandler keeps every record, for tests that look for one.
type recHandler struct {
	mu    *sync.Mutex
	recs  *[]logRecord
	attrs []slog.Attr
}

func newRecHandler() *recHandler {
	return &recHandler{mu: new(sync.Mutex), recs: new([]logRecord)}
}

func (h *recHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{Level: r.Level, Msg: r.Message, Attrs: map[string]any{}}
	add := func(a slog.Attr) bool {
		if _, dup := rec.Attrs[a.Key]; dup {
			rec.Dups = append(rec.Dups, a.Key)
		}
		rec.Attrs[a.Key] = a.Value.Resolve().Any()
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	h.mu.Lock()
	*h.recs = append(*h.recs, rec)
	h.mu.Unlock()
	return nil
}

func (h *recHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recHandler{mu: h.mu, recs: h.recs, attrs: append(slices.Clone(h.attrs), as...)}
}

func (h *recHandler) WithGroup(string) slog.Handler { return h }

func (h *recHandler) records() []logRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.recs)
}

func (h *recHandler) dump() string {
	var b strings.Builder
	for _, r := range h.records() {
		fmt.Fprintf(&b, "%v %s %v\n", r.Level, r.Msg, r.Attrs)
	}
	return b.String()
}

// remoteRig is a remote group of the test binary's agent on a real sshd.
type remoteRig struct {
	t      *testing.T
	srv    *sshtest.Server
	g      *cluster.GroupConfig
	h      *cluster.RemoteHost
	rg     *cluster.RemoteGroup
	log    *recHandler
	cancel context.CancelFunc
	done   chan struct{}
}

// rigHeartbeatTimeout, when set, is the heartbeat timeout of the sessions
// startRemote runs (default: the package's).
var rigHeartbeatTimeout time.Duration

// startRemote starts sshd and runs a group "web" of one local worker (not
// started here) and two on the ssh host, whose workers have global ids 1
// and 2 and group indexes 1 and 2. knownHosts picks the known_hosts file.
func startRemote(t *testing.T, pc *proccensus.Census, knownHosts func(*sshtest.Server) string, tweaks ...func(*cluster.GroupConfig)) *remoteRig {
	t.Helper()
	srv := sshtest.Start(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h := cluster.RemoteHost{
		SSH: srv.User + "@" + sshtest.Host, Port: srv.Port, Count: 2,
		Identity: srv.ClientKey, KnownHosts: knownHosts(srv), Binary: exe,
	}
	g := &cluster.GroupConfig{
		Name: "web", Program: exe, Args: []string{"-test.run=^$"}, Count: 1,
		Params: []byte(`{"k":"v"}`), Env: agentEnv(pc), Listen: []string{"127.0.0.1:0"},
		ShutdownTimeout: 5 * time.Second,
		Backoff:         supervise.Backoff{Min: 200 * time.Millisecond, Max: time.Second},
		Remote:          []cluster.RemoteHost{h},
	}
	for _, tweak := range tweaks {
		tweak(g)
	}
	log := newRecHandler()
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1, 2}, 1, slog.New(log), []string{pc.Env()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rigHeartbeatTimeout > 0 {
		rg.SetHeartbeatTimeout(rigHeartbeatTimeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	r := &remoteRig{t: t, srv: srv, g: g, h: &g.Remote[0], rg: rg, log: log, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		rg.Run(ctx)
	}()
	t.Cleanup(r.stop)
	return r
}

// stop cancels Run and waits for it: the agent stops its workers, then ssh
// exits.
func (r *remoteRig) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(20 * time.Second):
		r.t.Errorf("remote group Run did not return after cancel")
	}
}

// waitStatus polls Status until ok accepts it, within 15 s.
func (r *remoteRig) waitStatus(what string, ok func(cluster.ControlRemote) bool) cluster.ControlRemote {
	r.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st := r.rg.Status()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("waiting for %s: status %+v\nlog:\n%s", what, st, r.log.dump())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *remoteRig) waitReady() {
	r.t.Helper()
	select {
	case <-r.rg.Ready():
	case <-time.After(15 * time.Second):
		r.t.Fatalf("remote workers not ready: %+v\nlog:\n%s", r.rg.Status(), r.log.dump())
	}
}

func pidsOf(st cluster.ControlRemote) []int {
	var out []int
	for _, s := range st.Slots {
		if s.PID != 0 {
			out = append(out, s.PID)
		}
	}
	return out
}

func remoteAllReady(n int) func(cluster.ControlRemote) bool {
	return func(st cluster.ControlRemote) bool {
		return st.Connected && st.ReadyWorkers == n && len(pidsOf(st)) == n
	}
}

// TestRemoteGroupRunsWorkers: a group's two workers on an ssh host run with
// their global ids, group indexes, group size and params; their output
// reaches the master's logger with group, host, slot, pid and stream; the
// status shows them ready with their ids; stopping leaves no process on
// either side (both censuses). The master's pings keep the idle session
// up beyond the agent's master-silence limit.
func TestRemoteGroupRunsWorkers(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	began := time.Now()
	// A short heartbeat timeout: the agent's limit is 3 s plus 2 s.
	rigHeartbeatTimeout = 3 * time.Second
	r := startRemote(t, pc, func(s *sshtest.Server) string { return s.WriteKnownHosts(t) })
	rigHeartbeatTimeout = 0
	r.waitReady()
	st := r.waitStatus("two ready workers", remoteAllReady(2))

	type slotView struct{ Slot, ID, Index int }
	var got []slotView
	for _, s := range st.Slots {
		got = append(got, slotView{s.Slot, s.ID, s.Index})
	}
	if diff := cmp.Diff([]slotView{{0, 1, 1}, {1, 2, 2}}, got); diff != "" {
		t.Errorf("slots (-want +got):\n%s", diff)
	}
	if st.AgentPID <= 0 || st.Sessions != 1 || st.Host != r.h.SSH || st.Port != r.h.Port || st.Workers != 2 {
		t.Errorf("status %+v", st)
	}

	// Output lines come from the workers' pids, slot by slot.
	want := map[string]int{
		`agent-worker id=1 group=web index=1 size=3 params={"k":"v"}`: 0,
		`agent-worker id=2 group=web index=2 size=3 params={"k":"v"}`: 1,
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(want) > 0 && time.Now().Before(deadline) {
		for _, rec := range r.log.records() {
			slot, ok := want[rec.Msg]
			if !ok {
				continue
			}
			a := rec.Attrs
			if a["group"] != "web" || a["host"] != r.h.SSH || a["slot"] != int64(slot) || a["stream"] != "stdout" ||
				a["pid"] != int64(st.Slots[slot].PID) || len(rec.Dups) > 0 {
				t.Errorf("record %q has attributes %v (repeated: %v)", rec.Msg, a, rec.Dups)
			}
			delete(want, rec.Msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(want) > 0 {
		t.Errorf("worker output not relayed: %v\nlog:\n%s", want, r.log.dump())
	}
	// No worker holds the ssh session's stdin, stdout (the wire) or
	// stderr: a pipe's two ends share an inode, so none of the worker's
	// descriptors may name a pipe that sshd, the agent's parent, holds.
	if agent, ok := proccensus.Stat(st.AgentPID); !ok {
		t.Errorf("agent %d not found", st.AgentPID)
	} else {
		session := slices.Collect(maps.Values(fdTargets(t, agent.PPID)))
		if in := fdTargets(t, st.AgentPID)[0]; !slices.Contains(session, in) {
			t.Errorf("the agent's stdin %s is not a pipe of its sshd %d: %v", in, agent.PPID, session)
		}
		for _, pid := range pidsOf(st) {
			for fd, target := range fdTargets(t, pid) {
				if strings.HasPrefix(target, "pipe:") && slices.Contains(session, target) {
					t.Errorf("worker %d holds the ssh session's %s as fd %d", pid, target, fd)
				}
			}
		}
	}
	// The agent gives up on a master silent for the heartbeat timeout
	// plus 2 s (5 s); the master sends no command here, only pings.
	time.Sleep(time.Until(began.Add(6 * time.Second)))
	if now := r.rg.Status(); now.Sessions != 1 || !now.Connected || !slices.Equal(pidsOf(now), pidsOf(st)) {
		t.Errorf("idle session not kept up: %+v\nlog:\n%s", now, r.log.dump())
	}
	workers := pidsOf(st)
	r.stop()
	st = r.rg.Status()
	if st.Connected || len(st.Slots) != 0 || st.AgentPID != 0 {
		t.Errorf("after stop: %+v", st)
	}
	for _, pid := range workers {
		if unix.Kill(pid, 0) == nil {
			if p, ok := proccensus.Stat(pid); ok && p.State != 'Z' {
				t.Errorf("worker %d survives the stop", pid)
			}
		}
	}
	// The workers said goodbye: they were stopped gracefully.
	bye := 0
	for _, rec := range r.log.records() {
		if rec.Msg == "agent-worker bye" {
			bye++
		}
	}
	if bye != 2 {
		t.Errorf("%d workers said goodbye, want 2\nlog:\n%s", bye, r.log.dump())
	}
}

// TestRemoteGroupCommands: restart, suspend and resume reach the agent.
func TestRemoteGroupCommands(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := startRemote(t, pc, func(s *sshtest.Server) string { return s.WriteKnownHosts(t) })
	r.waitReady()
	before := pidsOf(r.waitStatus("two ready workers", remoteAllReady(2)))

	if err := r.rg.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	r.waitStatus("a new generation of two", func(st cluster.ControlRemote) bool {
		now := pidsOf(st)
		return remoteAllReady(2)(st) && !slices.Contains(now, before[0]) && !slices.Contains(now, before[1]) &&
			st.Slots[0].Generation == 2 && st.Slots[1].Generation == 2
	})

	suspend(t, r.rg)
	r.waitStatus("no worker while suspended", func(st cluster.ControlRemote) bool {
		return st.Connected && len(pidsOf(st)) == 0 && st.ReadyWorkers == 0
	})
	if err := r.rg.Suspend(); err != nil {
		t.Errorf("second Suspend: %v", err)
	}
	if err := r.rg.Resume(); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	resumed := pidsOf(r.waitStatus("two ready workers after resume", remoteAllReady(2)))
	// A maximum running time set on the master reaches the agent: both
	// workers are recycled.
	if err := r.rg.SetMaxRunningTime(time.Second); err != nil {
		t.Fatalf("SetMaxRunningTime: %v", err)
	}
	r.waitStatus("both workers recycled", func(st cluster.ControlRemote) bool {
		now := pidsOf(st)
		return st.ReadyWorkers == 2 && len(now) == 2 && !slices.Contains(now, resumed[0]) && !slices.Contains(now, resumed[1])
	})
	if err := r.rg.SetMaxRunningTime(0); err != nil {
		t.Fatalf("SetMaxRunningTime(0): %v", err)
	}
	// A value the agent's decoder refuses (it would end the session as a
	// protocol error) never goes out.
	if err := r.rg.SetMaxRunningTime(500 * time.Millisecond); !errors.Is(err, cluster.ErrControlInvalid) {
		t.Errorf("SetMaxRunningTime(500ms): %v, want ErrControlInvalid", err)
	}
	if st := r.rg.Status(); st.Sessions != 1 {
		t.Errorf("commands took %d sessions, want 1", st.Sessions)
	}
}

// suspend suspends rg, retrying while the agent refuses because the
// restart before is still finishing (its last old worker stopping).
func suspend(t *testing.T, rg *cluster.RemoteGroup) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := rg.Suspend()
		if err == nil {
			return
		}
		if !errors.Is(err, cluster.ErrAgentFailed) || !strings.Contains(err.Error(), "restart") || time.Now().After(deadline) {
			t.Fatalf("Suspend: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRemoteGroupReconnects: when the ssh client dies (a dropped session),
// the agent stops its workers and exits, and the master starts a new
// session with new workers. A group suspended meanwhile comes back
// suspended.
func TestRemoteGroupReconnects(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := startRemote(t, pc, func(s *sshtest.Server) string { return s.WriteKnownHosts(t) })
	r.waitReady()
	first := r.waitStatus("two ready workers", remoteAllReady(2))
	ssh := r.rg.SSHPID()
	if ssh == 0 {
		t.Fatal("no ssh client pid")
	}
	if err := unix.Kill(ssh, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	second := r.waitStatus("a second session with two ready workers", func(st cluster.ControlRemote) bool {
		return st.Sessions == 2 && remoteAllReady(2)(st)
	})
	if second.AgentPID == first.AgentPID {
		t.Errorf("same agent pid %d in both sessions", first.AgentPID)
	}
	if second.LastError != "" {
		t.Errorf("LastError %q after a successful reconnect", second.LastError)
	}
	for _, pid := range pidsOf(first) {
		if slices.Contains(pidsOf(second), pid) {
			t.Errorf("worker %d of the dropped session still serves", pid)
		}
		if p, ok := proccensus.Stat(pid); ok && p.State != 'Z' {
			t.Errorf("worker %d of the dropped session is alive: %v", pid, p)
		}
	}
	found := false
	for _, rec := range r.log.records() {
		if rec.Msg == "agent session ended; reconnecting" {
			found = true
		}
	}
	if !found {
		t.Errorf("the dropped session was not logged\nlog:\n%s", r.log.dump())
	}

	// Suspend, drop the session again: the third session starts suspended.
	if err := r.rg.Suspend(); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	r.waitStatus("suspended", func(st cluster.ControlRemote) bool { return len(pidsOf(st)) == 0 })
	if err := unix.Kill(r.rg.SSHPID(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r.waitStatus("a third session", func(st cluster.ControlRemote) bool { return st.Sessions == 3 && st.Connected })
	time.Sleep(time.Second) // a worker started by mistake would show by now
	if st := r.rg.Status(); !st.Connected || len(pidsOf(st)) != 0 {
		t.Errorf("third session not suspended: %+v", st)
	}
}

// TestRemoteGroupWrongHostKey: a host whose key differs from known_hosts is
// refused by ssh; the error is classified as a host-key failure in the
// status and the log, and no agent ever runs.
func TestRemoteGroupWrongHostKey(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := startRemote(t, pc, func(s *sshtest.Server) string { return s.WriteWrongKnownHosts(t) })
	st := r.waitStatus("a host key error", func(st cluster.ControlRemote) bool { return st.LastError != "" })
	if !strings.Contains(st.LastError, "host key") || st.Connected || st.AgentPID != 0 {
		t.Errorf("status %+v, want a host key error", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	var rec *logRecord
	for rec == nil && time.Now().Before(deadline) {
		for _, x := range r.log.records() {
			if err, ok := x.Attrs["err"].(error); ok && errors.Is(err, sshlaunch.ErrHostKey) {
				rec = &x
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rec == nil {
		t.Fatalf("no log record with a host-key error\nlog:\n%s", r.log.dump())
	}
	if rec.Level != slog.LevelError || rec.Attrs["group"] != "web" || rec.Attrs["host"] != r.h.SSH {
		t.Errorf("record %+v", *rec)
	}
	select {
	case <-r.rg.Ready():
		t.Error("Ready closed without an agent")
	default:
	}
	if err := r.rg.Restart(); !errors.Is(err, cluster.ErrRemoteDown) {
		t.Errorf("Restart while disconnected: %v, want ErrRemoteDown", err)
	}
}

// TestRemoteGroupAgentSignal: SIGTERM to the agent on its host stops its
// workers gracefully (they say goodbye) and ends the session cleanly; the
// master then starts a new one.
func TestRemoteGroupAgentSignal(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := startRemote(t, pc, func(s *sshtest.Server) string { return s.WriteKnownHosts(t) })
	r.waitReady()
	first := r.waitStatus("two ready workers", remoteAllReady(2))
	if err := unix.Kill(first.AgentPID, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	second := r.waitStatus("a second session with two ready workers", func(st cluster.ControlRemote) bool {
		return st.Sessions == 2 && remoteAllReady(2)(st)
	})
	if second.AgentPID == first.AgentPID {
		t.Errorf("same agent pid %d in both sessions", first.AgentPID)
	}
	bye := 0
	for _, rec := range r.log.records() {
		if rec.Msg == "agent-worker bye" {
			bye++
		}
	}
	if bye != 2 {
		t.Errorf("%d workers said goodbye, want 2\nlog:\n%s", bye, r.log.dump())
	}
}

// TestRemoteReadFramesHostile feeds the master's frame reader what a
// confused or lying agent may send: repeated acks must not block it, a
// status naming slots beyond the host's ids must not crash it, and relayed
// log records cannot replace the group and host the master names them by,
// nor the record's time, level, message or source, nor repeat a key.
func TestRemoteReadFramesHostile(t *testing.T) {
	g := &cluster.GroupConfig{Name: "web", Program: "srv", Listen: []string{"127.0.0.1:0"},
		Remote: []cluster.RemoteHost{{SSH: "u@h1", Count: 1, Identity: "id", KnownHosts: "kh"}}}
	log := newRecHandler()
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{3}, 1, slog.New(log), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var wire bytes.Buffer
	w := ipcframe.NewWriter(&wire, nil)
	for _, f := range []string{
		`{"type":"started","version":1,"pid":42,"addrs":[]}`,
		`{"type":"ack","seq":5}`, `{"type":"ack","seq":5}`, `{"type":"ack","seq":5,"error":"again"}`,
		`{"type":"status","ready":true,"suspended":false,"dropped":0,"status":{"pid":42,"generation":1,"restarting":false,` +
			`"workers":1,"ready_workers":1,"slots":[{"slot":4096,"pid":7,"generation":1,"state":"ready"}]}}`,
		`{"type":"log","level":0,"msg":"hello","attrs":{"group":"db","host":"other","slot":0,"time":"1999-01-01T00:00:00Z",` +
			`"level":"ERROR","msg":"forged","source":"x.go:1","agent.msg":"second","slot":1}}`,
		`{"type":"exit","error":""}`,
	} {
		if err := w.WriteFrame([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- cluster.RemoteReadFrames(rg, &wire, []int64{5}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("readFrames: %v, want nil after an exit frame", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("readFrames blocked on a repeated ack")
	}
	var got *logRecord
	for _, rec := range log.records() {
		if rec.Msg == "hello" {
			got = &rec
		}
	}
	if got == nil {
		t.Fatalf("relayed record not logged\nlog:\n%s", log.dump())
	}
	// The handler's own time, level, msg and source keys are not taken
	// from another host either (a JSON log would hold them twice, and
	// readers keep the last): they come prefixed; a repeated key keeps
	// its first value.
	want := map[string]any{"group": "web", "host": "u@h1", "slot": int64(0), "agent.time": "1999-01-01T00:00:00Z",
		"agent.level": "ERROR", "agent.msg": "forged", "agent.source": "x.go:1"}
	if diff := cmp.Diff(want, got.Attrs); diff != "" || len(got.Dups) > 0 {
		t.Errorf("relayed record attributes (-want +got):\n%s\nrepeated: %v", diff, got.Dups)
	}
	if st := rg.Status(); len(st.Slots) != 1 || st.Slots[0].Index != 1+4096 {
		t.Errorf("status %+v", st)
	}
}

// TestRemoteStartedForwardsMaxRunningTime: a maximum running time set
// while a session's agent was starting (its spec built, no session to
// forward to yet) is sent to the agent once it reports "started", as a
// suspend is; otherwise that agent would run with the old value until the
// next reconnect.
func TestRemoteStartedForwardsMaxRunningTime(t *testing.T) {
	fdcensus.Verify(t)
	g := &cluster.GroupConfig{Name: "web", Program: "srv", Listen: []string{"127.0.0.1:0"},
		Remote: []cluster.RemoteHost{{SSH: "u@h1", Count: 1, Identity: "id", KnownHosts: "kh"}}}
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{3}, 1, slog.New(slog.DiscardHandler), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// No session: remembered only.
	if err := rg.SetMaxRunningTime(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inR.Close()
	defer inW.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	defer outW.Close()
	done := make(chan error, 1)
	// The session's spec carried no maximum running time.
	go func() { done <- cluster.RemoteSession(rg, inR, outW, false, 0, nil) }()
	w := ipcframe.NewWriter(inW, nil)
	if err := w.WriteFrame([]byte(`{"type":"started","version":1,"pid":42,"addrs":[]}`)); err != nil {
		t.Fatal(err)
	}
	outR.SetReadDeadline(time.Now().Add(10 * time.Second))
	frame, err := ipcframe.NewReader(outR, nil).ReadFrame(nil)
	var p fastjson.Parser
	v, perr := p.ParseBytes(frame)
	if err != nil || perr != nil || string(v.GetStringBytes("type")) != "max_running_time" || v.GetInt("max_running_time_ms") != 2000 {
		t.Fatalf("command after started: %s, %v, %v; want max_running_time 2000 ms", frame, err, perr)
	}
	for _, f := range []string{`{"type":"ack","seq":` + strconv.Itoa(v.GetInt("seq")) + `}`, `{"type":"exit"}`} {
		if err := w.WriteFrame([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	inW.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("readFrames: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("readFrames did not return at EOF")
	}
}

// fdTargets maps each open descriptor of pid to its link target.
func fdTargets(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[int]string, len(ents))
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink(dir + "/" + e.Name()); err == nil {
			out[fd] = target
		}
	}
	return out
}

// TestRemoteGroupKill: after a stop, remote workers that ignore SIGTERM
// would keep the session for their whole grace period (30 s here); kill,
// the fleet's second stop signal, ends it at once and leaves nothing
// running on the host.
func TestRemoteGroupKill(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := startRemote(t, pc, func(s *sshtest.Server) string { return s.WriteKnownHosts(t) }, func(g *cluster.GroupConfig) {
		g.Env = append(g.Env, "AGENT_WORKER_STUBBORN=1")
		g.ShutdownTimeout = 30 * time.Second
	})
	r.waitReady()
	r.cancel()
	time.Sleep(500 * time.Millisecond) // the agent got "stop"; its workers ignore it
	r.rg.Kill()
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("remote group still running 15 s after kill\nlog:\n%s", r.log.dump())
	}
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}
