//go:build linux

package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
)

// TestFromJSON renders a report from -json output without measuring: the
// result must be the report of the original run.
func TestFromJSON(t *testing.T) {
	fdcensus.Verify(t)
	dir := t.TempDir()
	res := fixture()
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	in := dir + "/results.json"
	if err := os.WriteFile(in, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	if err := run(t.Context(), []string{"-from", in, "-o", dir + "/report.md", "-svg", dir + "/plot.svg"}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	got, err := os.ReadFile(dir + "/report.md")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Markdown(res, "plot.svg"), string(got)); diff != "" {
		t.Errorf("report from JSON (-want +got):\n%s", diff)
	}
	svg, err := os.ReadFile(dir + "/plot.svg")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(PlotSVG(res), string(svg)); diff != "" {
		t.Errorf("plot from JSON (-want +got):\n%s", diff)
	}
}

// TestFromJSONRun applies -run to the cases of the results read, not to
// the current suite: a case since renamed is still found, and a pattern
// matching none of the file's cases is an error.
func TestFromJSONRun(t *testing.T) {
	fdcensus.Verify(t)
	dir := t.TempDir()
	res := fixture()
	old := &CaseResult{Case: Case{Name: "old/case", Group: "frame", Metric: "msgs/s"}}
	old.Add(1, Line{Name: "BenchmarkOld/raw", N: 1, Metrics: map[string]float64{"msgs/s": 5}})
	old.Finish()
	res.Cases = append(res.Cases, old)
	res.Failures = append(res.Failures, "old/case round 1: exit status 1")
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	in := dir + "/results.json"
	if err := os.WriteFile(in, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	if err := run(t.Context(), []string{"-from", in, "-run", "^old/"}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	md := stdout.String()
	for _, want := range []string{"| old/case | raw | 5.00 |", "old/case round 1: exit status 1"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, unwanted := range []string{"| accept |", "scm/stream", "accept round 2"} {
		if strings.Contains(md, unwanted) {
			t.Errorf("report has %q, which -run excludes", unwanted)
		}
	}
	stdout.Reset()
	err = run(t.Context(), []string{"-from", in, "-run", "^nothing$"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "matches no case of") {
		t.Errorf("-run matching nothing in the file: %v", err)
	}
}
