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
