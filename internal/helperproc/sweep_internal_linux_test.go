//go:build linux

package helperproc

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
)

// TestSweepNobodyCopies: a copy left by a test binary that died is removed
// the next time a copy is made; the copy of a live binary and anything else
// in the directory are kept.
func TestSweepNobodyCopies(t *testing.T) {
	fdcensus.Verify(t)
	parent := t.TempDir()
	// A pid that is surely gone: a child already reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	names := []string{
		"helperproc-" + strconv.Itoa(dead) + "-123",
		"helperproc-" + strconv.Itoa(os.Getpid()) + "-456",
		"helperproc-x-789",
		"other",
	}
	for _, n := range names {
		if err := os.Mkdir(filepath.Join(parent, n), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(parent, n, "helper.test"), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sweepNobodyCopies(parent)
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if diff := cmp.Diff(names[1:], got); diff != "" {
		t.Errorf("left in the directory (-want +got):\n%s", diff)
	}
}
