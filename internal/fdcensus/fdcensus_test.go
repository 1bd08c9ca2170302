//go:build linux

package fdcensus_test

import (
	"errors"
	"os"
	"testing"

	"github.com/handoff-go/handoff/internal/fdcensus"
)

func TestCompareSeesLeakAndClose(t *testing.T) {
	before, err := fdcensus.Take(0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	leaked, _ := fdcensus.Take(0)
	if got := leaked.Count("/dev/null") - before.Count("/dev/null"); got != 1 {
		t.Errorf("census counted %d more /dev/null, want 1", got)
	}
	if d := fdcensus.Diff(before, leaked); d == "" {
		t.Error("Diff missed an open descriptor")
	}
	f.Close()
	if err := fdcensus.Compare(0, before); err != nil {
		t.Errorf("after closing: %v", err)
	}
	// A descriptor swapped for another object under the same number is a
	// change, not equality.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	withPipe, _ := fdcensus.Take(0)
	r.Close()
	g, err := os.Open(os.DevNull) // reuses r's number
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	after, _ := fdcensus.Take(0)
	if fdcensus.Diff(withPipe, after) == "" {
		t.Error("census equal after a descriptor changed object")
	}
}

func TestCompareReportsLeakOfChild(t *testing.T) {
	before, _ := fdcensus.Take(os.Getpid())
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := fdcensus.Compare(os.Getpid(), before); !errors.Is(err, fdcensus.ErrLeak) {
		t.Errorf("Compare with a leak = %v, want ErrLeak", err)
	}
}
