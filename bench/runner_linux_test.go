//go:build linux

package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// fakeBench writes a shell script standing in for the benchmark binary and
// returns a runner that runs it with pc's marker in its environment.
func fakeBench(t *testing.T, pc *proccensus.Census, script string) *runner {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bench.test")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return &runner{bin: bin, dir: dir, tmp: dir, log: io.Discard, env: append(os.Environ(), pc.Env())}
}

// TestRunnerRotatesAndRecordsFailures runs three rounds of a fake case: each
// round must get its own rotation, every round's figures must be kept, and
// the round whose binary fails must be listed as a failure (which makes the
// runner exit non-zero).
func TestRunnerRotatesAndRecordsFailures(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := fakeBench(t, pc, `
echo "BenchmarkX/a-2 1 $((HANDOFF_BENCH_ROTATE + 10)) rot/op"
echo "BenchmarkX/b-2 1 5 rot/op"
[ "$HANDOFF_BENCH_ROTATE" != 1 ] || { echo "--- FAIL: BenchmarkX/b" ; exit 1 ; }
`)
	c := Case{Name: "x", Group: "frame", Bench: "X", Benchtime: "1x", Baseline: "b", Metric: "rot/op"}
	res := &Results{}
	r.Run(t.Context(), []Case{c}, 3, res)
	if len(res.Cases) != 1 {
		t.Fatalf("%d cases, want 1", len(res.Cases))
	}
	a := res.Cases[0].Variant("a")
	if a == nil {
		t.Fatalf("variant a missing: %+v", res.Cases[0])
	}
	var got []float64
	for _, s := range a.Samples {
		got = append(got, s.Metrics["rot/op"])
	}
	if diff := cmp.Diff([]float64{10, 11, 12}, got); diff != "" {
		t.Errorf("rotation per round (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Summary{Median: 2.2, Min: 2, Max: 2.4, N: 3}, a.Ratio); diff != "" {
		t.Errorf("per-round ratios (-want +got):\n%s", diff)
	}
	if len(res.Failures) != 1 || !strings.Contains(res.Failures[0], "x round 2: bench.test: exit status 1") {
		t.Errorf("failures %q, want the one of round 2", res.Failures)
	}
}

// TestRunnerNoResults checks that a binary that succeeds without printing
// a result or a skip is a failure, not an empty row.
func TestRunnerNoResults(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := fakeBench(t, pc, "echo PASS\n")
	res := &Results{}
	r.Run(t.Context(), []Case{{Name: "x", Group: "frame", Bench: "X", Benchtime: "1x", Metric: "rot/op"}}, 1, res)
	if len(res.Failures) != 1 || !strings.Contains(res.Failures[0], "no benchmark matched") {
		t.Errorf("failures %q, want one saying nothing matched", res.Failures)
	}
}

// TestRunnerInterruptKillsGroup interrupts a benchmark binary that has a
// child of its own (as helpers and the mini-cluster master are): the child
// must die with it, and the runner must not wait for it.
func TestRunnerInterruptKillsGroup(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := fakeBench(t, pc, "sleep 60 &\necho started\nwait\n")
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.exec(ctx, nil, r.bin)
	if err == nil {
		t.Fatal("interrupted binary: no error")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("exec returned %v after the interrupt: it waited for the orphan's output", d)
	}
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}
