//go:build linux

package cluster_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// TestFleetProgramInGroupPath: a bare program name is looked up in the
// PATH the group's "env" gives its workers, not in mini-cluster's own: a
// program of the same name earlier in mini-cluster's PATH (here "sleep")
// must not run instead.
func TestFleetProgramInGroupPath(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	script := "#!/bin/sh\necho from-group-path\nexec /bin/sleep 300\n"
	if err := os.WriteFile(filepath.Join(dir, "sleep"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	g := shGroup("p", 1)
	g.Program, g.Args = "sleep", []string{"300"}
	g.Env = []string{"PATH=" + dir + ":/usr/bin:/bin"}
	var out syncBuffer
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{g}},
		&cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler), Stdout: &out, Stderr: &out, Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	waitUntil(t, "the group's program to print", 20*time.Second, func() bool {
		return strings.Contains(out.String(), "from-group-path")
	})
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestFleetProgramNotInGroupPath: a program missing from the group's PATH
// is a start-up error naming that PATH, even if mini-cluster's own PATH has
// it.
func TestFleetProgramNotInGroupPath(t *testing.T) {
	fdcensus.Verify(t)
	g := shGroup("p", 1)
	g.Program = "sh"
	g.Env = []string{"PATH=" + t.TempDir()}
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{g}}, &cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		f.Close()
		t.Fatal("NewFleet: nil error, want the program not found in the group's PATH")
	}
	if !strings.Contains(err.Error(), "workers' PATH") {
		t.Errorf("NewFleet: %v, want an error naming the workers' PATH", err)
	}
}

// TestFleetNewValidates: NewFleet holds a FileConfig built in Go to
// ParseConfig's rules; each case names the offending value.
func TestFleetNewValidates(t *testing.T) {
	fdcensus.Verify(t)
	reuse := func(name string) cluster.GroupConfig {
		g := shGroup(name, 1, "127.0.0.1:18080")
		g.Mode = cluster.ModeReuseport
		return g
	}
	named := func(name string) cluster.GroupConfig { return shGroup(name, 1) }
	noWorkers := shGroup("a", 0)
	noListen := shGroup("a", 1)
	noListen.Listen = []string{}
	unixReuse := shGroup("a", 1, "unix:/tmp/x.sock")
	unixReuse.Mode = cluster.ModeReuseport
	noProgram := shGroup("a", 1)
	noProgram.Program = ""
	for _, tc := range []struct {
		name   string
		groups []cluster.GroupConfig
		want   string
	}{
		{"two reuseport groups on one address", []cluster.GroupConfig{reuse("a"), reuse("b")}, "groups[1].listen[0]"},
		{"bad name", []cluster.GroupConfig{named("x y")}, "groups[0].name"},
		{"name starting with a dash", []cluster.GroupConfig{named("-x")}, "groups[0].name"},
		{"no workers", []cluster.GroupConfig{noWorkers}, "groups[0].count"},
		{"no listen address", []cluster.GroupConfig{noListen}, "groups[0].listen"},
		{"unix socket with reuseport", []cluster.GroupConfig{unixReuse}, "groups[0].listen[0]"},
		{"no program", []cluster.GroupConfig{noProgram}, "groups[0].command"},
		{"no groups", nil, "groups"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := cluster.NewFleet(&cluster.FileConfig{Groups: tc.groups}, &cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler)})
			if f != nil {
				f.Close()
			}
			if !errors.Is(err, cluster.ErrConfig) || !strings.Contains(err.Error(), tc.want+": ") {
				t.Errorf("NewFleet: %v, want ErrConfig naming %s", err, tc.want)
			}
		})
	}
}

// TestFleetSIGHUPConfigChanged: SIGHUP restarts the workers but never
// re-reads the file; once the file's contents changed since start-up, it
// logs a warning saying so (not before).
func TestFleetSIGHUPConfigChanged(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(t.TempDir(), "groups.json")
	const cfg = `{"groups": [{"name": "a", "command": ["/bin/sh", "-c", "exec sleep 300"], "listen": ["127.0.0.1:0"], "ready": "started", "shutdown_timeout": "5s"}]}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	fc, err := cluster.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	var log syncBuffer
	f, err := cluster.NewFleet(fc, &cluster.FleetOptions{Logger: slog.New(slog.NewTextHandler(&log, nil)), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stopSignals, err := f.HandleSignals()
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	defer stopSignals()
	select {
	case <-f.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("fleet not ready within 20 s")
	}
	const warning = "configuration file changed since start-up"
	hup := func(n int) {
		t.Helper()
		if err := unix.Kill(os.Getpid(), unix.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the restart signal logged", 10*time.Second, func() bool {
			return strings.Count(log.String(), "restart signal: restarting every group") >= n
		})
	}
	hup(1)
	if strings.Contains(log.String(), warning) {
		t.Errorf("SIGHUP with the file unchanged logged %q", warning)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(cfg, "5s", "6s", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	hup(2)
	if !strings.Contains(log.String(), warning) {
		t.Errorf("SIGHUP with the file edited: no %q in the log:\n%s", warning, log.String())
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}
