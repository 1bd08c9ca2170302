//go:build linux

package cluster_test

import (
	"os"
	"path/filepath"
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
