//go:build linux

package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/ipcframe"
)

// stalledGroup is a group of one remote host, served by fakeSSH running
// the fake agent, which never acknowledges a restart: a restart of the
// group waits shutdown + 10 s for its answer.
func stalledGroup(name string, shutdown time.Duration) cluster.GroupConfig {
	return cluster.GroupConfig{Name: name, Program: "/bin/true", Listen: []string{"127.0.0.1:0"}, Ready: cluster.ReadyStarted,
		ShutdownTimeout: shutdown,
		Remote:          []cluster.RemoteHost{{SSH: "u@127.0.0.1", Count: 1, Identity: "/i", KnownHosts: "/k"}}}
}

// TestFleetRestartHostsDoNotDelayOthers: a fleet-wide restart does not
// wait for one group's remote host before restarting the next group. The
// host's agent never answers (its wait lasts 50 s); the local group after
// it must restart while the request still waits for that answer.
func TestFleetRestartHostsDoNotDelayOthers(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	fakeSSH(t, "exec "+fakeAgentBin(t))
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{stalledGroup("far", 40*time.Second), shGroup("b", 1)}},
		&cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	<-f.Ready()
	waitUntil(t, "far's agent connected", 20*time.Second, func() bool { return f.Status().Groups[0].Remote[0].Connected })
	errc := make(chan error, 1)
	go func() { errc <- f.Restart("") }()
	// Well before far's wait ends (40 s + 10 s).
	waitUntil(t, "b restarted while far's host has not answered", 30*time.Second, func() bool { return f.Status().Groups[1].Generation == 2 })
	select {
	case err := <-errc:
		t.Fatalf("Restart(\"\") returned (%v) before far's host answered", err)
	default:
	}
	// Stopping ends far's session, and with it the wait.
	stop()
	select {
	case <-errc:
	case <-time.After(30 * time.Second):
		t.Fatal("Restart did not return once the fleet stopped")
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestFleetControlHangupFreesPlace: restarts waiting for a host that never
// answers, whose clients gave up, do not keep the control socket's places:
// status of every group still answers.
func TestFleetControlHangupFreesPlace(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	fakeSSH(t, "exec "+fakeAgentBin(t))
	path := controlPath(t)
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{stalledGroup("far", 40*time.Second), shGroup("b", 1)}},
		&cluster.FleetOptions{Control: path, Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	<-f.Ready()
	waitUntil(t, "far's agent connected", 20*time.Second, func() bool { return f.Status().Groups[0].Remote[0].Connected })
	// As many restarts as the socket has places (8), each given up after
	// a second: before the fix each held its place for 50 s.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			c, err := cluster.DialControl(context.Background(), path, &cluster.ControlOptions{Timeout: time.Second})
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			if err := c.RestartGroup("far"); err == nil {
				errs[i] = errors.New("restart of far answered, though its agent never acknowledges")
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
	c, err := cluster.DialControl(context.Background(), path, &cluster.ControlOptions{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Status()
	c.Close()
	if err != nil {
		t.Fatalf("status after 8 abandoned restarts of far: %v", err)
	}
	if len(st.Groups) != 2 {
		t.Errorf("status lists %d groups, want 2", len(st.Groups))
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestFleetSameAddressTwoSpellings: two reuseport groups on one address
// written two ways pass the file's check, but not the fleet's check of
// the bound addresses: with SO_REUSEPORT on both, the kernel would split
// the address's connections between unrelated programs.
func TestFleetSameAddressTwoSpellings(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	for _, tc := range []struct{ probe, a, b string }{
		{"127.0.0.1:0", "127.0.0.1", "localhost"},
		{"[::1]:0", "[::1]", "[0::1]"},
		{"127.0.0.1:0", "127.0.0.1", "udp://127.0.0.1"}, // not the same: udp
	} {
		t.Run(tc.a+"_"+tc.b, func(t *testing.T) {
			l, err := net.Listen("tcp", tc.probe)
			if err != nil {
				t.Skipf("no loopback at %s: %v", tc.probe, err)
			}
			port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
			l.Close()
			a, b := shGroup("a", 1, tc.a+":"+port), shGroup("b", 1, tc.b+":"+port)
			a.Mode, b.Mode = cluster.ModeReuseport, cluster.ModeReuseport
			f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{a, b}},
				&cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
			same := !strings.HasPrefix(tc.b, "udp://")
			if !same {
				if err != nil {
					t.Fatalf("NewFleet with tcp and udp on one port: %v", err)
				}
				f.Close()
				return
			}
			if err == nil {
				f.Close()
				t.Fatalf("NewFleet accepted two reuseport groups on %s:%s (also as %s:%s)", tc.a, port, tc.b, port)
			}
			if !errors.Is(err, cluster.ErrConfig) || !strings.Contains(err.Error(), "bound twice") {
				t.Errorf("NewFleet: %v, want ErrConfig naming the address bound twice", err)
			}
		})
	}
}

// TestFleetRestartSuspendedRemoteOnly: restarting a suspended group of
// remote hosts only fails with ErrSuspended, as for any group, even when
// its host is down (which a restart otherwise passes over).
func TestFleetRestartSuspendedRemoteOnly(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	fakeSSH(t, "echo 'ssh: connect to host 127.0.0.1 port 22: Connection refused' >&2; exit 255")
	far := stalledGroup("far", 2*time.Second)
	far.Suspended = true
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{far, shGroup("b", 1)}},
		&cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	<-f.Ready()
	if err := f.Restart("far"); !errors.Is(err, cluster.ErrSuspended) {
		t.Errorf("Restart(far) of a suspended group: %v, want ErrSuspended", err)
	}
	if err := f.Restart(""); err != nil {
		t.Errorf("Restart of every running group: %v", err)
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestFleetRemoteOnlyGeneration: the status of a group of remote hosts
// only follows its hosts' restarts (the highest generation an agent
// reported). The restart goes through the control socket, whose client
// stays to get the agent's answer.
func TestFleetRemoteOnlyGeneration(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fakeSSH(t, "exec env "+pc.Env()+" '"+exe+"' "+cluster.AgentArg)
	far := stalledGroup("far", 2*time.Second)
	far.Program, far.Args = "/bin/sh", []string{"-c", "exec sleep 300"}
	path := controlPath(t)
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{far}},
		&cluster.FleetOptions{Control: path, Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	waitUntil(t, "far ready", 30*time.Second, func() bool {
		r := f.Status().Groups[0].Remote[0]
		return r.Connected && r.ReadyWorkers == 1
	})
	if g := f.Status().Groups[0]; g.Generation != 1 {
		t.Errorf("far before restart: generation %d, want 1", g.Generation)
	}
	c, err := cluster.DialControl(context.Background(), path, &cluster.ControlOptions{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = c.RestartGroup("far")
	c.Close()
	if err != nil {
		t.Fatalf("restart of far through the control socket: %v", err)
	}
	waitUntil(t, "far's status at generation 2, not restarting", 30*time.Second, func() bool {
		g := f.Status().Groups[0]
		return g.Generation == 2 && !g.Restarting && g.Remote[0].ReadyWorkers == 1
	})
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestRemoteStartedTwice: an agent says "started" once per session; a
// second one (each started a goroutine) ends the session as a protocol
// error.
func TestRemoteStartedTwice(t *testing.T) {
	g := fakeGroup(`{}`)
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1}, 0, slog.New(slog.DiscardHandler), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := ipcframe.NewWriter(&buf, nil)
	for _, frame := range []string{
		`{"type":"started","version":1,"pid":42,"addrs":[]}`,
		`{"type":"started","version":1,"pid":42,"addrs":[]}`,
		`{"type":"exit"}`,
	} {
		if err := w.WriteFrame([]byte(frame)); err != nil {
			t.Fatal(err)
		}
	}
	if err := cluster.RemoteReadFrames(rg, &buf, nil); !errors.Is(err, cluster.ErrAgentProtocol) {
		t.Errorf("a second started frame: %v, want ErrAgentProtocol", err)
	}
}

// TestRemoteReconnectFloor: a group backoff of 1 ms (fine for local
// workers, whose burst limit throttles them) does not have a host that
// refuses at once reconnected in a loop: sessions are at least 1 s apart.
func TestRemoteReconnectFloor(t *testing.T) {
	pc := proccensus.New(t)
	fakeSSH(t, "echo 'ssh: connect to host 127.0.0.1 port 22: Connection refused' >&2; exit 255")
	g := fakeGroup(`{}`)
	g.Backoff.Min, g.Backoff.Max = time.Millisecond, time.Millisecond
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1}, 0, slog.New(slog.DiscardHandler), []string{pc.Env()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	cancel, done := runGroup(t, rg)
	// A slow machine only makes fewer sessions: the bound cannot be
	// missed by slowness (before the floor: hundreds).
	time.Sleep(2500 * time.Millisecond)
	cancel()
	<-done
	if n := rg.Status().Sessions; n < 1 || n > 4 {
		t.Errorf("%d sessions in 2.5 s, want 1 to 4 (at least 1 s apart)", n)
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestRemoteDroppedPerSession: the count of log records an agent dropped
// starts from 0 with each agent; the next session's drops are reported in
// full, not hidden by the last session's count.
func TestRemoteDroppedPerSession(t *testing.T) {
	g := fakeGroup(`{}`)
	h := newRecHandler()
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{1}, 0, slog.New(h), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	session := func(dropped ...int) {
		var buf bytes.Buffer
		w := ipcframe.NewWriter(&buf, nil)
		frames := []string{`{"type":"started","version":1,"pid":42,"addrs":[]}`}
		for _, d := range dropped {
			frames = append(frames, `{"type":"status","ready":true,"suspended":false,"dropped":`+strconv.Itoa(d)+
				`,"status":{"pid":42,"generation":1,"restarting":false,"workers":1,"ready_workers":1,"slots":[]}}`)
		}
		for _, fr := range append(frames, `{"type":"exit"}`) {
			if err := w.WriteFrame([]byte(fr)); err != nil {
				t.Fatal(err)
			}
		}
		if err := cluster.RemoteReadFrames(rg, &buf, nil); err != nil {
			t.Fatal(err)
		}
	}
	session(500)      // the first agent dropped 500
	session(100, 400) // the second one 400, in two reports
	var got []int64
	for _, r := range h.records() {
		if d, ok := r.Attrs["dropped"].(int64); ok {
			got = append(got, d)
		}
	}
	if diff := cmp.Diff([]int64{500, 100, 300}, got); diff != "" {
		t.Errorf("dropped records logged (-want +got):\n%s", diff)
	}
}
