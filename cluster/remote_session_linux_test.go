//go:build linux

package cluster_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshtest"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/valyala/fastjson"
	"golang.org/x/sys/unix"
)

// fakeSSH puts an "ssh" running script (a POSIX sh body) first in PATH
// for the rest of the test: a remote group's session runs it instead of
// the ssh client.
func fakeSSH(t *testing.T, script string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ssh"), []byte("#!/bin/sh\n"+script+"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
}

// fakeGroup is a group of one worker on a host that only fakeSSH serves.
func fakeGroup(params string) *cluster.GroupConfig {
	return &cluster.GroupConfig{
		Name: "web", Program: "srv", Listen: []string{"127.0.0.1:0"}, Params: []byte(params),
		ShutdownTimeout: 5 * time.Second,
		Remote:          []cluster.RemoteHost{{SSH: "u@127.0.0.1", Count: 1, Identity: "/i", KnownHosts: "/k"}},
	}
}

// runGroup runs rg until the returned function cancels it; done is closed
// when Run returned.
func runGroup(t *testing.T, rg *cluster.RemoteGroup) (cancel context.CancelFunc, done chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	done = make(chan struct{})
	go func() {
		defer close(done)
		rg.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		rg.Kill()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("remote group Run did not return")
		}
	})
	return cancel, done
}

// waitFor polls cond every 20 ms for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// TestRemoteStopWhileSpecBlocked: ssh reads its stdin only once the session
// is open, so a start spec beyond the pipe's 64 KiB waits; stop and kill
// must still end the session at once instead of when ssh exits (here: a
// client that never reads, for 30 s).
func TestRemoteStopWhileSpecBlocked(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	fakeSSH(t, "exec sleep 30")
	g := fakeGroup(`{"k":"` + strings.Repeat("x", 70<<10) + `"}`)
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1}, 0, slog.New(slog.DiscardHandler), []string{pc.Env()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	cancel, done := runGroup(t, rg)
	if !waitFor(10*time.Second, func() bool { return rg.SSHPID() != 0 }) {
		t.Fatal("no session started")
	}
	time.Sleep(500 * time.Millisecond) // the spec write is blocked by now
	cancel()
	rg.Kill()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10 s after stop and kill, with the start spec unsent")
	}
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestRemoteBadFrameLiveAgent: an agent stream with a bad frame header
// from a peer that stays open ends the session with the protocol error at
// once (not after the silence watchdog, not after draining), and the exit
// status 255 of the ssh client the master killed does not replace it.
func TestRemoteBadFrameLiveAgent(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	// Exits 255 on SIGTERM, as ssh does ("Killed by signal 15"); the
	// master can only send that after the bad header, by when the trap
	// is set and the sleep started.
	fakeSSH(t, `sleep 30 &
trap 'kill $! 2>/dev/null; exit 255' TERM
printf 'XXXXXXXXXXXXXXXXXXXXXXXX'
wait`)
	g := fakeGroup(`{}`)
	g.Backoff.Min, g.Backoff.Max = 30*time.Second, 30*time.Second
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1}, 0, slog.New(slog.DiscardHandler), []string{pc.Env()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	runGroup(t, rg)
	var last string
	if !waitFor(10*time.Second, func() bool { last = rg.Status().LastError; return last != "" }) {
		t.Fatal("no session error within 10 s")
	}
	if !strings.Contains(last, "agent protocol error") || !strings.Contains(last, "bad frame header") || strings.Contains(last, "sshlaunch") {
		t.Errorf("LastError %q, want the bad frame header alone", last)
	}
}

// TestRemoteReadFramesLivePeer: the frame reader gives up on a bad header
// at once, while the peer still holds its end open.
func TestRemoteReadFramesLivePeer(t *testing.T) {
	fdcensus.Verify(t)
	g := fakeGroup(`{}`)
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1}, 0, slog.New(slog.DiscardHandler), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := w.Write([]byte("XXXXXXXXXXXXXXXXXXXXXXXX")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cluster.RemoteReadFrames(rg, r, nil) }()
	select {
	case err := <-done:
		if !errors.Is(err, cluster.ErrAgentProtocol) || !errors.Is(err, ipcframe.ErrBadHeader) {
			t.Errorf("readFrames: %v, want ErrAgentProtocol and ErrBadHeader", err)
		}
	case <-time.After(10 * time.Second):
		w.Close() // lets the old reader's drain end
		<-done
		t.Fatal("readFrames did not return on a bad header while the peer stays open")
	}
}

// TestRemoteStartedSyncRefused: a suspend set while a session's agent was
// starting is forwarded once it reports "started"; if that agent keeps
// refusing it, the master retries, then ends the session (the next one
// starts suspended) instead of reporting a suspended group whose host's
// workers run. The remembered state stays what the operator set.
func TestRemoteStartedSyncRefused(t *testing.T) {
	fdcensus.Verify(t)
	g := fakeGroup(`{}`)
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{3}, 1, slog.New(slog.DiscardHandler), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := rg.Suspend(); err != nil { // no session: remembered only
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
	aborted := make(chan error, 1)
	go func() { done <- cluster.RemoteSession(rg, inR, outW, false, 0, aborted) }()
	w := ipcframe.NewWriter(inW, nil)
	if err := w.WriteFrame([]byte(`{"type":"started","version":1,"pid":42,"addrs":[]}`)); err != nil {
		t.Fatal(err)
	}
	rd := ipcframe.NewReader(outR, nil)
	var p fastjson.Parser
	for i := range cluster.RemoteSyncTries {
		outR.SetReadDeadline(time.Now().Add(10 * time.Second))
		frame, err := rd.ReadFrame(nil)
		if err != nil {
			t.Fatalf("suspend %d: %v", i+1, err)
		}
		v, err := p.ParseBytes(frame)
		if err != nil || string(v.GetStringBytes("type")) != "suspend" {
			t.Fatalf("command %d: %s, %v; want a suspend", i+1, frame, err)
		}
		ack := `{"type":"ack","seq":` + strconv.Itoa(v.GetInt("seq")) + `,"error":"supervise: supervisor not running"}`
		if err := w.WriteFrame([]byte(ack)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-aborted:
		if !errors.Is(err, cluster.ErrAgentFailed) {
			t.Errorf("session ended with %v, want the agent's refusal", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a session whose agent refuses the group's state was not ended")
	}
	if on, _ := rg.Remembered(); !on {
		t.Error("the group's suspension was dropped after the agent's refusal")
	}
	inW.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("readFrames did not return at EOF")
	}
}

// TestRemoteGroupLinkStall: a link that stalls for 4 s (ssh stopped, as
// while TCP retransmits on a WAN) is ridden out: the session and the
// host's workers stay.
func TestRemoteGroupLinkStall(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := startRemote(t, pc, func(s *sshtest.Server) string { return s.WriteKnownHosts(t) })
	r.waitReady()
	before := r.waitStatus("two ready workers", remoteAllReady(2))
	ssh := r.rg.SSHPID()
	if err := unix.Kill(ssh, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	if err := unix.Kill(ssh, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the frames held up arrive
	after := r.rg.Status()
	if after.Sessions != 1 || !after.Connected || !slices.Equal(pidsOf(after), pidsOf(before)) {
		t.Errorf("after a 4 s stall: %+v, want the first session's workers %v\nlog:\n%s", after, pidsOf(before), r.log.dump())
	}
}

// TestRemoteGroupMissingBinary: a remote binary that does not exist is
// reported as such, with the remote shell's own line, not as "exit status
// 127" alone or as a failed ssh session.
func TestRemoteGroupMissingBinary(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	const missing = "/nonexistent/mini-cluster"
	r := startRemote(t, pc, func(s *sshtest.Server) string { return s.WriteKnownHosts(t) }, func(g *cluster.GroupConfig) {
		g.Remote[0].Binary = missing
	})
	st := r.waitStatus("a session error", func(st cluster.ControlRemote) bool { return st.LastError != "" })
	if !strings.Contains(st.LastError, "was not found (exit status 127)") || !strings.Contains(st.LastError, missing+": ") ||
		strings.Contains(st.LastError, "sshlaunch") {
		t.Errorf("LastError %q, want the missing binary with the shell's message", st.LastError)
	}
}

// TestRemoteGroupNoSSHClient: without an ssh client no session can start:
// the remote group is refused when it is made (so is a fleet), not retried
// for ever.
func TestRemoteGroupNoSSHClient(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	g := fakeGroup(`{}`)
	_, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1}, 0, slog.New(slog.DiscardHandler), nil, 0)
	if !errors.Is(err, cluster.ErrConfig) || !strings.Contains(err.Error(), "no ssh client") || !strings.Contains(err.Error(), "group web") {
		t.Errorf("NewRemoteGroup without ssh: %v, want ErrConfig naming the group and the missing client", err)
	}
}

// TestRemoteGroupSpecBeyondAgent: a group (built in Go) whose start spec
// the agent would refuse is refused when its remote group is made, with
// the group and host named, instead of failing every session.
func TestRemoteGroupSpecBeyondAgent(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*cluster.GroupConfig)
		msg    string
	}{
		{"args", func(g *cluster.GroupConfig) { g.Args = make([]string, 1025) }, "1025 command arguments"},
		{"env", func(g *cluster.GroupConfig) {
			for i := range 1025 {
				g.Env = append(g.Env, "V"+strconv.Itoa(i)+"=")
			}
		}, "1025 env variables"},
		{"listen", func(g *cluster.GroupConfig) {
			for i := range 64 {
				g.Listen = append(g.Listen, "127.0.0.1:"+strconv.Itoa(10000+i))
			}
		}, "65 listen addresses"},
		{"frame", func(g *cluster.GroupConfig) { g.Args = []string{strings.Repeat("\x7f", 200_000)} }, "frames of at most"},
	}
	for _, tt := range tests {
		g := fakeGroup(`{}`)
		tt.modify(g)
		_, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1}, 0, slog.New(slog.DiscardHandler), nil, 0)
		if !errors.Is(err, cluster.ErrConfig) || !strings.Contains(err.Error(), tt.msg) ||
			!strings.Contains(err.Error(), "group web") || !strings.Contains(err.Error(), "u@127.0.0.1") {
			t.Errorf("%s: NewRemoteGroup: %v, want ErrConfig with %q naming group and host", tt.name, err, tt.msg)
		}
	}
}

// TestRemoteHeartbeatTimeoutSent: a host's heartbeat timeout is the
// session's and goes to its agent in the start spec.
func TestRemoteHeartbeatTimeoutSent(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	spec := filepath.Join(t.TempDir(), "spec")
	// fd 3 keeps the session's stdout open: no EOF ends the session.
	fakeSSH(t, "exec 3>&1; exec cat > "+spec)
	g := fakeGroup(`{}`)
	g.Remote[0].HeartbeatTimeout = 7 * time.Second
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1}, 0, slog.New(slog.DiscardHandler), []string{pc.Env()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	runGroup(t, rg)
	var got []byte
	if !waitFor(10*time.Second, func() bool {
		got, _ = os.ReadFile(spec)
		return strings.Contains(string(got), `"suspended"`)
	}) {
		t.Fatalf("no start spec written: %q", got)
	}
	if !strings.Contains(string(got), `"heartbeat_timeout_ms":7000`) {
		t.Errorf("start spec %q lacks the host's heartbeat timeout", got)
	}
	// Ends the session now instead of after the stop grace.
	if err := unix.Kill(rg.SSHPID(), unix.SIGKILL); err != nil {
		t.Error(err)
	}
}
