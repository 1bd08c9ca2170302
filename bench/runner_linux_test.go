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
	_, err := r.exec(ctx, r.dir, nil, r.bin)
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

// TestRunnerKillsLeftovers runs benchmark binaries that exit by themselves
// (as on a panic, -test.timeout or the OOM killer) with a helper still
// running: the helper must be killed, whether it kept the output pipes
// (which would hold the runner in WaitDelay) or left the process group
// (setsid, found through the child subreaper), and be an error.
func TestRunnerKillsLeftovers(t *testing.T) {
	undo, err := becomeSubreaper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(undo)
	tests := []struct {
		name, script, want string
	}{
		// The reviewer's repro: the census reported "left behind: sleep 30".
		{"fails, helper in the group", "sleep 30 >/dev/null 2>&1 &\nexit 2\n", "exit status 2"},
		{"succeeds, helper in the group", "sleep 30 >/dev/null 2>&1 &\necho BenchmarkX/a-2 1 5 ns/op\n", "left processes running (killed): "},
		{"helper holds stderr", "sleep 30 &\nexit 2\n", "exit status 2"},
		{"helper left the group", "setsid sleep 30 >/dev/null 2>&1 &\nexit 0\n", "left processes running (killed): "},
		{"helper's own child left behind", "sh -c 'sleep 30 & sleep 30' >/dev/null 2>&1 &\nexit 0\n", "left processes running (killed): "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			r := fakeBench(t, pc, tt.script)
			start := time.Now()
			_, err := r.exec(t.Context(), r.dir, nil, r.bin)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("exec: %v, want an error containing %q", err, tt.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("exec returned after %v: it waited for the helper", d)
			}
			// Gone at once, not only once the test's cleanups ran.
			if err := pc.WaitGone(2 * time.Second); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestRunnerInterrupted interrupts a run in its second round: the first
// round's figures are kept, the killed round is no failure, and the report
// is written, marked as partial, with an error.
func TestRunnerInterrupted(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := fakeBench(t, pc, `
[ "$HANDOFF_BENCH_ROTATE" = 0 ] || exec sleep 30
echo "BenchmarkX/a-2 1 7 rot/op"
`)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// The second round's binary runs once the first round's figures are
	// in: interrupt it then.
	go cancelOnSleep(pc, cancel)
	res := &Results{Rounds: 3}
	r.Run(ctx, []Case{{Name: "x", Group: "frame", Bench: "X", Benchtime: "1x", Metric: "rot/op"}}, 3, res)
	if len(res.Failures) != 0 {
		t.Errorf("failures %q, want none: the interrupted round is not a failure", res.Failures)
	}
	var stdout strings.Builder
	err := finish(ctx, res, &stdout, io.Discard, "", "", "")
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Errorf("finish: %v, want an interrupted error", err)
	}
	for _, want := range []string{"**Interrupted**", "| x | a | 7.00 |"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("partial report lacks %q:\n%s", want, stdout.String())
		}
	}
}

// TestRunnerOtherPackage runs a case of another package's test binary
// (Case.Pkg) in that package's directory, and skips it, saying why, when
// the binary could not be built.
func TestRunnerOtherPackage(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r := fakeBench(t, pc, "exit 1\n")
	r.root = t.TempDir()
	if err := os.Mkdir(filepath.Join(r.root, "pkg"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(r.tmp, "pkg.test")
	script := "#!/bin/sh\n[ \"${PWD##*/}\" = pkg ] || exit 3\necho \"BenchmarkHello/conns=8-2 1 0.99 cluster/standalone\"\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	r.pkgBins = map[string]string{"./pkg": bin}
	r.pkgSkip = map[string]string{"./broken": "go test -c ./broken failed"}
	res := &Results{}
	hello := Case{Name: "hello", Group: "hello", Pkg: "./pkg", Bench: "X", Benchtime: "1x", Metric: helloRatio}
	broken := Case{Name: "broken", Group: "hello", Pkg: "./broken", Bench: "X", Benchtime: "1x", Metric: helloRatio}
	r.Run(t.Context(), []Case{hello, broken}, 1, res)
	if len(res.Failures) != 0 {
		t.Errorf("failures %q", res.Failures)
	}
	v := res.Cases[0].Variant("conns=8")
	if v == nil || v.Met == nil || !*v.Met {
		t.Errorf("hello: %+v, want conns=8 measured and the target met", res.Cases[0])
	}
	if got := res.Cases[1].Skipped; got != "go test -c ./broken failed" {
		t.Errorf("broken: skipped %q", got)
	}
}

// TestRunnerReportsSkipReason runs a binary that prints real -test.v
// output of a skipped C baseline: the report's Skipped section must name
// it with its reason.
func TestRunnerReportsSkipReason(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	captured, err := filepath.Abs(filepath.Join("testdata", "skip-c.txt"))
	if err != nil {
		t.Fatal(err)
	}
	r := fakeBench(t, pc, "cat '"+captured+"'\n")
	res := &Results{Rounds: 1}
	var c Case
	for _, x := range Cases(false) {
		if x.Name == "scm/stream/K=1/P=64" {
			c = x
		}
	}
	r.Run(t.Context(), []Case{c}, 1, res)
	md := Markdown(res, "")
	want := "### Skipped\n\n- scm/stream/K=1/P=64/c: C baseline unavailable: no C compiler (cc or gcc) on PATH"
	if !strings.Contains(md, want) {
		t.Errorf("report lacks %q:\n%s", want, md)
	}
}

// cancelOnSleep calls cancel once a process of pc's runs sleep (a fake
// benchmark that hangs: the moment to interrupt the runner), or after 20 s.
func cancelOnSleep(pc *proccensus.Census, cancel context.CancelFunc) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range pc.Marked() {
			if strings.HasPrefix(p.Cmdline, "sleep") {
				cancel()
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
}
