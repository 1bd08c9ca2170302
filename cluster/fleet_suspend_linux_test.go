//go:build linux

package cluster_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshtest"
	"github.com/handoff-go/handoff/supervise"
)

// TestFleetSuspendRefusedLocally: a suspend the local master refuses (a
// restart in flight) is not forwarded to the group's remote hosts: a host
// that is down would otherwise remember it and start suspended, while the
// operator was told the group is not suspended.
func TestFleetSuspendRefusedLocally(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	for _, name := range []string{"id", "known_hosts"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mix := shGroup("mix", 2)
	// The first generation is ready, the second never: its restart stays
	// in flight until stopped.
	mix.Args = []string{"-c", `if [ "$HANDOFF_WORKER_GENERATION" = 1 ]; then systemd-notify --ready; fi; exec sleep 300`}
	mix.Ready = cluster.ReadyNotify
	mix.Remote = []cluster.RemoteHost{{SSH: "nobody@127.0.0.1", Port: closedPort(t), Count: 1,
		Identity: filepath.Join(dir, "id"), KnownHosts: filepath.Join(dir, "known_hosts")}}
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{mix}},
		&cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	select {
	case <-f.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("fleet not ready within 20 s")
	}
	if err := f.Restart("mix"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "restart in flight", 10*time.Second, func() bool { return f.Status().Groups[0].Restarting })
	if err := f.Suspend("mix"); !errors.Is(err, supervise.ErrBusy) {
		t.Errorf("Suspend during a restart: %v, want ErrBusy", err)
	}
	type state struct {
		Suspended bool
		Remote    []bool
	}
	got := state{f.Status().Groups[0].Suspended, cluster.FleetRemoteSuspended(f, "mix")}
	if diff := cmp.Diff(state{Suspended: false, Remote: []bool{false}}, got); diff != "" {
		t.Errorf("state after a refused suspend (-want +got):\n%s", diff)
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestFleetRemoteRefusalUndone: a remote host's agent refusing suspend or
// max_running_time undoes what the local master already did, so the
// group's state is what the error says: not suspended, the previous
// maximum running time.
func TestFleetRemoteRefusalUndone(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	srv := sshtest.Start(t)
	bin := fakeAgentBin(t, "FAKE_REFUSE=1")
	mix := shGroup("mix", 1)
	mix.Remote = []cluster.RemoteHost{{SSH: srv.User + "@" + sshtest.Host, Port: srv.Port, Count: 1, Identity: srv.ClientKey, KnownHosts: srv.WriteKnownHosts(t), Binary: bin}}
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{mix}},
		&cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	waitUntil(t, "the fake agent connected and the local worker ready", 20*time.Second, func() bool {
		g := f.Status().Groups[0]
		return len(g.Remote) == 1 && g.Remote[0].Connected && len(g.Slots) == 1 && g.Slots[0].State == supervise.SlotReady
	})
	var ae *cluster.AgentError
	if err := f.Suspend("mix"); !errors.As(err, &ae) {
		t.Errorf("Suspend refused by the agent: %v, want an *AgentError", err)
	}
	if err := f.SetMaxRunningTime("mix", time.Hour); !errors.As(err, &ae) {
		t.Errorf("SetMaxRunningTime refused by the agent: %v, want an *AgentError", err)
	}
	type state struct {
		Suspended bool
		MaxRun    time.Duration
		Remote    []bool
	}
	g := f.Status().Groups[0]
	got := state{g.Suspended, g.MaxRunningTime, cluster.FleetRemoteSuspended(f, "mix")}
	if diff := cmp.Diff(state{Suspended: false, MaxRun: 0, Remote: []bool{false}}, got); diff != "" {
		t.Errorf("state after refusals (-want +got):\n%s", diff)
	}
	waitUntil(t, "the local worker running again", 20*time.Second, func() bool {
		s := f.Status().Groups[0].Slots
		return len(s) == 1 && s[0].State == supervise.SlotReady
	})
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}
