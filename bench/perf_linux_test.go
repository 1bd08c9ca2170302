//go:build linux

package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// fakePerf writes a shell script standing in for perf stat: it writes
// made-up counts to the -o file and runs the command after --, as perf
// does. It sets r.perfTool to it.
func fakePerf(t *testing.T, r *runner) {
	t.Helper()
	perf := filepath.Join(t.TempDir(), "perf")
	script := `#!/bin/sh
while [ "$1" != -- ]; do
	[ "$1" = -o ] && out=$2
	shift
done
shift
printf '5,,context-switches,,\n7,,syscalls:sys_enter_sendmsg,,\n' >"$out"
exec "$@"
`
	if err := os.WriteFile(perf, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	r.perfTool = perf
}

// variantScript is the part of a fake benchmark binary that sets $v to
// the variant its -test.bench pattern selects ("^...$/^c$" gives c).
const variantScript = `v=${2##*/^}; v=${v%$}
`

// TestPerfSkippedAndFailedVariants runs -perf's counting over a fake
// benchmark that skips the C loop (no compiler), prints no result for
// naive and runs scm and batched: only those two may have counts; the C
// loop is a skip and naive a failure, not rows of the idle harness's
// counts.
func TestPerfSkippedAndFailedVariants(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := fakeBench(t, pc, variantScript+`
case $v in
c) echo "BenchmarkSCM/seqpacket/K=1/P=64/c"
   echo "    scm_linux_test.go:68: C baseline unavailable: no C compiler (cc or gcc) on PATH"
   echo "--- SKIP: BenchmarkSCM/seqpacket/K=1/P=64/c" ;;
naive) echo PASS ;;
*) echo "BenchmarkSCM/seqpacket/K=1/P=64/$v-2 1 5 ns/op" ;;
esac
`)
	fakePerf(t, r)
	c := Case{Name: "scm/seqpacket/K=1/P=64", Group: "scm", Bench: "^SCM$/^seqpacket$/^K=1$/^P=64$"}
	res := &Results{}
	r.perfCount(t.Context(), []Case{c}, 10, res)
	var counted []string
	for _, pr := range res.Perf {
		counted = append(counted, pr.Variant)
	}
	if diff := cmp.Diff([]string{"scm", "batched"}, counted); diff != "" {
		t.Errorf("variants counted (-want +got):\n%s", diff)
	}
	want := []string{"scm/seqpacket/K=1/P=64/c: C baseline unavailable: no C compiler (cc or gcc) on PATH"}
	if diff := cmp.Diff(want, res.PerfSkips); diff != "" {
		t.Errorf("perf skips (-want +got):\n%s", diff)
	}
	if len(res.Failures) != 1 || !strings.Contains(res.Failures[0], "perf scm/seqpacket/K=1/P=64/naive: no result line") {
		t.Errorf("failures %q, want naive's", res.Failures)
	}
	md := Markdown(res, "")
	if !strings.Contains(md, "Not counted, skipped by the benchmark:\n\n- scm/seqpacket/K=1/P=64/c: C baseline") {
		t.Errorf("report does not list the skipped variant:\n%s", md)
	}
	if strings.Contains(md, "| scm/seqpacket/K=1/P=64 | c |") || strings.Contains(md, "| scm/seqpacket/K=1/P=64 | naive |") {
		t.Errorf("report has perf rows of variants that did not run:\n%s", md)
	}
}

// TestPerfInterrupted interrupts -perf's counting while the first variant
// runs: it must stop at once, with no failure, neither for the killed run
// nor for the variants after it.
func TestPerfInterrupted(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := fakeBench(t, pc, "exec sleep 30\n")
	fakePerf(t, r)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go cancelOnSleep(pc, cancel)
	c := Case{Name: "scm/seqpacket/K=1/P=64", Group: "scm", Bench: "^SCM$/^seqpacket$/^K=1$/^P=64$"}
	res := &Results{}
	start := time.Now()
	r.perfCount(ctx, []Case{c, c}, 10, res)
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("perf counting returned %v after it started: it did not stop at the interrupt", d)
	}
	if len(res.Failures) != 0 || len(res.Perf) != 0 || len(res.PerfSkips) != 0 {
		t.Errorf("interrupted: failures %q, perf %v, skips %q; want nothing", res.Failures, res.Perf, res.PerfSkips)
	}
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestRunQuickDecidesNothing runs a -quick round of a case whose target
// the figures meet: the results, JSON included, must carry no verdict.
func TestRunQuickDecidesNothing(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := fakeBench(t, pc, `
echo "BenchmarkFrame/pipe/256B/raw-2 1 100 msgs/s 0 frame-allocs/op"
echo "BenchmarkFrame/pipe/256B/ipcframe-2 1 100 msgs/s 0 frame-allocs/op"
`)
	var c Case
	for _, x := range Cases(true) {
		if x.Name == "frame/pipe/256B" {
			c = x
		}
	}
	if c.Name == "" {
		t.Fatal("no frame/pipe/256B case in -quick")
	}
	for _, quick := range []bool{false, true} {
		res := &Results{Rounds: 1, Quick: quick}
		r.Run(t.Context(), []Case{c}, 1, res)
		v := res.Cases[0].Variant("ipcframe")
		if v == nil {
			t.Fatalf("quick %v: no ipcframe variant: %+v", quick, res.Cases[0])
		}
		switch {
		case !quick && (v.Met == nil || !*v.Met):
			t.Errorf("full run: met %v (%q), want the target met: the fixture is wrong", v.Met, v.Undecided)
		case quick && (v.Met != nil || v.Undecided != "-quick"):
			t.Errorf("-quick: met %v, undecided %q; want no verdict, undecided \"-quick\"", v.Met, v.Undecided)
		}
	}
}
