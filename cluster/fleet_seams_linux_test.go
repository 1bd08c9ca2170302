//go:build linux

package cluster_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// closedPort returns a loopback port nothing listens on: an ssh session to
// it fails at once (connection refused).
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// TestFleetRemoteDownSeams: a group whose remote host is down still
// restarts its local workers, and the restart is not reported as failed
// (the host's next session starts new workers anyway); a suspended group
// counts the workers resume starts, locally as for its remote host, in
// its status and in the process's sums.
func TestFleetRemoteDownSeams(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	for _, name := range []string{"id", "known_hosts"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mix := shGroup("mix", 1)
	mix.Remote = []cluster.RemoteHost{{SSH: "nobody@127.0.0.1", Port: closedPort(t), Count: 2,
		Identity: filepath.Join(dir, "id"), KnownHosts: filepath.Join(dir, "known_hosts")}}
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{shGroup("a", 1), mix}},
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
	for _, group := range []string{"", "mix"} {
		if err := f.Restart(group); err != nil {
			t.Errorf("Restart(%q) with the remote host down: %v, want nil", group, err)
		}
	}
	waitUntil(t, "group mix's local workers restarted", 20*time.Second, func() bool {
		g := f.Status().Groups[1]
		return g.Generation >= 2 && !g.Restarting && len(slotIDs(g)) == 1
	})

	if err := f.Suspend("mix"); err != nil {
		t.Fatal(err)
	}
	type counts struct{ Total, Group, Remote int }
	st := f.Status()
	got := counts{st.Workers, st.Groups[1].Workers, st.Groups[1].Remote[0].Workers}
	// a: 1; mix: 1 local to resume + 2 on the host.
	if diff := cmp.Diff(counts{Total: 2, Group: 3, Remote: 2}, got); diff != "" {
		t.Errorf("worker counts of a suspended group (-want +got):\n%s", diff)
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestControlAnswerTooLarge: a status answer beyond what a client reads,
// even with every slot left out, is replaced by an error that says so
// (silence would read as a refused peer), and the connection goes on
// serving. (A status too large for its slots is cut instead:
// TestControlStatusFitsResponse.)
func TestControlAnswerTooLarge(t *testing.T) {
	fdcensus.Verify(t)
	path := controlPath(t)
	var huge atomic.Bool
	huge.Store(true)
	stop, err := cluster.ServeControlSocket(path, func() *cluster.ControlStatus {
		st := &cluster.ControlStatus{PID: 1, Generation: 1, Slots: []cluster.ControlSlot{}}
		if huge.Load() {
			// 256 remote hosts whose last errors take 4 KiB each: over
			// 1 MiB with no slot at all.
			g := cluster.ControlGroup{Name: "big", Slots: make([]cluster.ControlSlot, 20000)}
			for range 256 {
				g.Remote = append(g.Remote, cluster.ControlRemote{Host: "u@h", LastError: strings.Repeat("e", 4096)})
			}
			st.Groups = []cluster.ControlGroup{g}
		}
		return st
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c, err := cluster.DialControl(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Status()
	var ce *cluster.ControlError
	if !errors.As(err, &ce) || ce.Code != cluster.ControlCodeFailed || !strings.Contains(ce.Message, "exceeds the 1048576-byte limit") {
		t.Errorf("oversized status: %v, want a %q error naming the limit", err, cluster.ControlCodeFailed)
	}
	huge.Store(false)
	if st, err := c.Status(); err != nil || st.PID != 1 {
		t.Errorf("status on the same connection afterwards: %+v, %v", st, err)
	}
}
