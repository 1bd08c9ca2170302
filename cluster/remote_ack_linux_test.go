//go:build linux

package cluster_test

import (
	"errors"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/valyala/fastjson"
)

// pipedAgent is the agent's end of a session the master runs on pipes
// (cluster.RemoteSession): frames go to the master, commands come back.
type pipedAgent struct {
	t       *testing.T
	w       *ipcframe.Writer
	cmdR    *os.File
	rd      *ipcframe.Reader
	aborted chan error // why the master ended the session
}

// startPipedAgent runs a session of rg whose start spec asked for
// suspended (and no maximum running time), its agent reporting "started"
// at once; the session is connected on return. Cleanup ends it.
func startPipedAgent(t *testing.T, rg *cluster.RemoteGroup, suspended bool) *pipedAgent {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		t.Fatal(err)
	}
	a := &pipedAgent{t: t, w: ipcframe.NewWriter(inW, nil), cmdR: outR, rd: ipcframe.NewReader(outR, nil), aborted: make(chan error, 1)}
	done := make(chan error, 1)
	go func() { done <- cluster.RemoteSession(rg, inR, outW, suspended, 0, a.aborted) }()
	t.Cleanup(func() {
		inW.Close() // EOF ends the master's reader
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the master's reader did not return at EOF")
		}
		inR.Close()
		outR.Close()
		outW.Close()
	})
	a.send(`{"type":"started","version":1,"pid":42,"addrs":[]}`)
	if !waitFor(10*time.Second, func() bool { return rg.Status().Connected }) {
		t.Fatal("the session did not start")
	}
	return a
}

func (a *pipedAgent) send(frame string) {
	a.t.Helper()
	if err := a.w.WriteFrame([]byte(frame)); err != nil {
		a.t.Fatal(err)
	}
}

// command reads the master's next command within wait: its type and seq,
// ok false if none came.
func (a *pipedAgent) command(wait time.Duration) (typ string, seq int, ok bool) {
	a.t.Helper()
	a.cmdR.SetReadDeadline(time.Now().Add(wait))
	frame, err := a.rd.ReadFrame(nil)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "", 0, false
	}
	if err != nil {
		a.t.Fatalf("reading the master's command: %v", err)
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(frame)
	if err != nil {
		a.t.Fatalf("command %q: %v", frame, err)
	}
	return string(v.GetStringBytes("type")), v.GetInt("seq"), true
}

// waitAborted returns why the master ended the session, failing the test
// if it did not within 10 s.
func (a *pipedAgent) waitAborted(what string) error {
	a.t.Helper()
	select {
	case err := <-a.aborted:
		return err
	case <-time.After(10 * time.Second):
		a.t.Fatalf("%s: the master did not end the session", what)
		return nil
	}
}

// quickAckGroup is a remote group whose commands wait 300 ms for an ack.
func quickAckGroup(t *testing.T) *cluster.RemoteGroup {
	t.Helper()
	g := fakeGroup(`{}`)
	g.ShutdownTimeout = 100 * time.Millisecond
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{3}, 1, slog.New(slog.DiscardHandler), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	rg.SetAckTimeout(200 * time.Millisecond)
	return rg
}

// remembered is what a remote group's next session starts with.
type remembered struct {
	Suspended  bool
	MaxRunning time.Duration
}

func rememberedOf(rg *cluster.RemoteGroup) remembered {
	on, d := rg.Remembered()
	return remembered{on, d}
}

// TestRemoteLateAckEndsSession: a suspend the agent acknowledges only
// after the master gave up waiting is reported as failed; the agent may
// have applied it all the same, so the master ends the session (the next
// one starts from the remembered state, the one the operator was told
// stands: running) instead of reporting a running group whose host's
// workers are suspended. Commands while the session ends are only
// remembered, for the next session.
func TestRemoteLateAckEndsSession(t *testing.T) {
	fdcensus.Verify(t)
	rg := quickAckGroup(t)
	a := startPipedAgent(t, rg, false)
	got := make(chan error, 1)
	go func() { got <- rg.Suspend() }()
	typ, seq, ok := a.command(10 * time.Second)
	if !ok || typ != "suspend" {
		t.Fatalf("command %q (sent: %v), want a suspend", typ, ok)
	}
	select {
	case err := <-got:
		if !errors.Is(err, cluster.ErrAgentFailed) {
			t.Fatalf("Suspend left without an answer: %v, want ErrAgentFailed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Suspend did not return after its ack timeout")
	}
	// The busy agent suspends its workers now, too late.
	a.send(`{"type":"ack","seq":` + strconv.Itoa(seq) + `}`)
	if err := a.waitAborted("a suspend acknowledged late"); !errors.Is(err, cluster.ErrAgentFailed) {
		t.Errorf("session ended with %v, want the unanswered suspend", err)
	}
	if diff := cmp.Diff(remembered{}, rememberedOf(rg)); diff != "" {
		t.Errorf("state for the next session after a failed suspend (-want +got):\n%s", diff)
	}
	if err := rg.SetMaxRunningTime(time.Hour); err != nil {
		t.Errorf("SetMaxRunningTime while the session ends: %v", err)
	}
	if typ, _, ok := a.command(500 * time.Millisecond); ok {
		t.Errorf("the master sent %q to a session it is ending", typ)
	}
	if diff := cmp.Diff(remembered{MaxRunning: time.Hour}, rememberedOf(rg)); diff != "" {
		t.Errorf("state for the next session (-want +got):\n%s", diff)
	}
}

// TestRemoteSyncTimeoutEndsSession: a new agent that does not answer the
// forwarding of a suspend set while it was starting has its session ended
// at the first ack timeout, not retried: a retry would hold every suspend
// and resume of the group for another timeout. A resume waiting meanwhile
// goes through once that one timeout passed, remembered for the next
// session, and nothing more is sent to the silent agent.
func TestRemoteSyncTimeoutEndsSession(t *testing.T) {
	fdcensus.Verify(t)
	rg := quickAckGroup(t)
	if err := rg.Suspend(); err != nil { // no session: remembered only
		t.Fatal(err)
	}
	a := startPipedAgent(t, rg, false)
	typ, _, ok := a.command(10 * time.Second)
	if !ok || typ != "suspend" {
		t.Fatalf("command %q (sent: %v), want the remembered suspend", typ, ok)
	}
	// The forwarding holds the group's commands until its ack timeout.
	got := make(chan error, 1)
	go func() { got <- rg.Resume() }()
	if err := a.waitAborted("an unanswered suspend"); !errors.Is(err, cluster.ErrAgentFailed) {
		t.Errorf("session ended with %v, want the unanswered suspend", err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("Resume while the session ends: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Resume still blocked 10 s after the forwarding timed out")
	}
	if typ, _, ok := a.command(500 * time.Millisecond); ok {
		t.Errorf("the master sent %q after its first command timed out", typ)
	}
	if diff := cmp.Diff(remembered{}, rememberedOf(rg)); diff != "" {
		t.Errorf("state for the next session (-want +got):\n%s", diff)
	}
}
