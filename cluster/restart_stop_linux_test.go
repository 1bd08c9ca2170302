//go:build linux

package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestStopDuringRestartLogsNoFailure: a stop while a restart waits for its
// new workers ends the restart, and the master says so plainly; it used to
// log an error claiming the previous workers keep serving, next to a
// supervise warning, for what the operator asked.
func TestStopDuringRestartLogsNoFailure(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	marker := filepath.Join(t.TempDir(), "noready")
	g := newGroupMaster(t, pc, cluster.Config{Workers: 1, StartTimeout: 30 * time.Second}, false, "G_NOREADY="+marker)
	g.ready()
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.m.Restart(); err != nil {
		t.Fatal(err)
	}
	g.waitStatus("restart waiting for its worker", func(st supervise.Status) bool { return st.Restarting && st.Processes == 2 })
	g.stop()
	if n := len(g.log.find("restart abandoned: stopping")); n != 1 {
		t.Errorf("%d \"restart abandoned\" records, want 1", n)
	}
	for _, r := range g.log.records() {
		if r["level"] == "ERROR" || r["level"] == "WARN" {
			t.Errorf("record at %v: %v", r["level"], r)
		}
	}
}

// TestStartupSlotFailed: a program that dies at once in every start makes
// its slot fail (the start burst) before the cluster was ever ready; the
// master then stops and Run returns the cause, as for a program that
// cannot be executed, instead of running on without workers until a
// restart signal.
func TestStartupSlotFailed(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	log := &syncBuffer{}
	m, err := cluster.New(&cluster.Config{
		Program: "/bin/sh",
		Args:    []string{"-c", "exit 3"},
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Env:     append(os.Environ(), pc.Env()),
		Logger:  slog.New(slog.NewJSONHandler(log, nil)),
		Backoff: supervise.Backoff{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = m.Run(ctx)
	if !errors.Is(err, supervise.ErrBurst) || !strings.Contains(fmt.Sprint(err), "start-up failed") {
		t.Errorf("Run: %v, want a start-up failure wrapping ErrBurst", err)
	}
	if ctx.Err() != nil {
		t.Errorf("Run returned only when its context ended")
	}
	if n := len(log.find("worker slot failed before the cluster was ready; start-up failed, stopping")); n != 1 {
		t.Errorf("%d start-up failure records, want 1:\n%s", n, log.String())
	}
}
