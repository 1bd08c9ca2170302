package main

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fixture builds the results of a two-round run with made-up figures.
func fixture() *Results {
	res := &Results{
		Rounds: 2,
		Env: Env{Date: "2026-11-21 08:00 UTC", OS: "linux/amd64", Kernel: "6.18", CPUs: 2, Go: "go1.26.8",
			CC: "cc 12", LoadBefore: "0.5 0.4 0.3", LoadAfter: "1.5 0.6 0.4"},
	}
	add := func(c Case, variant string, round int, metrics map[string]float64) {
		var cr *CaseResult
		for _, x := range res.Cases {
			if x.Name == c.Name {
				cr = x
			}
		}
		if cr == nil {
			cr = &CaseResult{Case: c}
			res.Cases = append(res.Cases, cr)
		}
		cr.Add(round, Line{Name: "Benchmark" + c.Name + "/" + variant, N: 100, Metrics: metrics})
	}
	for _, c := range Cases(true) {
		for round := 1; round <= 2; round++ {
			drift := float64(round)
			switch c.Group {
			case "scm":
				msgs := map[string]float64{"c": 400e3, "naive": 260e3, "scm": 360e3, "batched": 420e3}
				for _, v := range scmVariants {
					m := msgs[v] * drift / float64(c.K)
					add(c, v, round, map[string]float64{"msgs/s": m, "fds/s": m * float64(c.K), "allocs/op": 0, "recv-allocs/op": 0, "send-allocs/op": 0.001})
				}
			case "frame":
				add(c, "raw", round, map[string]float64{"msgs/s": 1e6 * drift, "allocs/op": 0, "frame-allocs/op": 0.0001})
				add(c, "ipcframe", round, map[string]float64{"msgs/s": 0.8e6 * drift, "allocs/op": 0, "frame-allocs/op": 0})
			case "accept":
				for i, v := range acceptVariants {
					// cpu-x-inplace, x-inplace-c and x-handoff-c as
					// a benchmark that ran in another order would
					// have them: the runner's per-round ratios
					// replace them.
					add(c, v, round, map[string]float64{"conns/s": 20e3 * drift * (1 - 0.05*float64(i)),
						"server-cpu-us/conn": 30 * drift * (1 + 0.5*float64(i)), "cpu-x-inplace": 99,
						"x-inplace-c": 99, "x-handoff-c": 99})
				}
			case "hello":
				add(c, "conns=8", round, map[string]float64{helloRatio: []float64{0.96, 0.99}[round-1],
					"cluster-req/s": 30e3, "standalone-req/s": 31e3, "master-RSS-KiB": 12e3})
			case "cluster":
				if c.Name == "cluster/respawn" {
					continue
				}
				add(c, "restart", round, map[string]float64{"ms/restart": 20 + drift})
			}
		}
	}
	for _, cr := range res.Cases {
		cr.Finish()
	}
	res.Cases = append(res.Cases, &CaseResult{Case: Cases(true)[len(Cases(true))-1], Skipped: "go build ./cmd/mini-cluster failed: a | b"})
	res.Perf = []PerfResult{{Case: "scm/seqpacket/K=1/P=64", Variant: "c", Messages: 1000,
		PerMsg: map[string]float64{"context-switches": 0.004, "recvmsg": 1.0}}}
	res.Failures = []string{"accept round 2: exit status 1"}
	return res
}

func TestMarkdown(t *testing.T) {
	md := Markdown(fixture(), "plot.svg")
	tests := []struct{ name, want string }{
		{"environment", "| load average (1, 5, 15 min) before → after | 0.5 0.4 0.3 → 1.5 0.6 0.4 |"},
		{"plot linked", "![fds/s against fds per message](plot.svg)"},
		{"scm header", "| case | variant | msgs/s | × c | fds/s | x-naive | recv-allocs/op | send-allocs/op | target | met |"},
		{"baseline row with spread", "| scm/stream/K=1/P=64 | c | 600k [400k–800k] | 1 | 600k [400k–800k] |  | 0 | 0.001 | anchor ~405k msgs/s |  |"},
		{"ratio met", "| scm/stream/K=1/P=64 | scm | 540k [360k–720k] | 0.90 | 540k [360k–720k] | 1.38 | 0 | 0.001 | ≥ 0.85× C, > naive, 0 allocs | yes |"},
		{"ratio not met", "| scm/seqpacket/K=253/P=64 | scm | 2134 [1423–2846] | 0.90 | 540k [360k–720k] | 1.38 | 0 | 0.001 | ≥ 0.95× C, > naive, 0 allocs | **no** |"},
		{"batched", "| scm/stream/K=1/P=64 | batched | 630k [420k–840k] | 1.05 | 630k [420k–840k] |  | 0 | 0.001 | ≥ 1.0× C | yes |"},
		{"frame", "| frame/stream/256B | ipcframe | 1.20M [800k–1.60M] | 0.80 |  | 0 | ≥ 0.9× raw, 0 allocs | **no** |"},
		{"accept header", "| case | variant | conns/s | × inplace | server-cpu-us/conn | cpu-x-inplace | conns/msg | x-inplace-c | cpu-x-inplace-c | x-handoff-c | target | met |"},
		{"accept baseline, Go over C in place", "| accept | inplace | 30.0k [20.0k–40.0k] | 1 | 45.0 [30.0–60.0] |  |  | 1.05 |  |  |  |  |"},
		{"accept, C hand-off over C in place", "| accept | handoff-c | 27.0k [18.0k–36.0k] | 0.90 | 90.0 [60.0–120] | 2.00 |  | 0.94 | 1.34 |  | anchor: C reaches 0.83× C in place (x-inplace-c) |  |"},
		// Fast enough, but 2.5× in place's CPU per connection: issue 10's
		// second target missed.
		{"accept, cpu ratio per round, Go over C hand-off", "| accept | handoff | 25.5k [17.0k–34.0k] | 0.85 | 112 [75.0–150] | 2.50 |  |  |  | 0.94 | ≥ 0.83× in place, CPU ≤ 1.5× in place (cpu-x-inplace) | **no** |"},
		{"accept, the benchmark's ratios to C dropped", "| accept | shared | 22.5k [15.0k–30.0k] | 0.75 | 158 [105–210] | 3.50 |  |  |  |  |  |  |"},
		{"accept, Go hand-off line", "- Go hand-off ÷ Go in place: 0.85 (target ≥ 0.83)\n"},
		{"accept, C hand-off line", "- C hand-off ÷ C in place: 0.94 (the brief: a C implementation reaches 0.83)\n"},
		{"accept, Go over C hand-off line", "- Go hand-off ÷ C hand-off: 0.94 (above 1: Go's outruns C's)\n"},
		{"accept, CPU lines", "- Go server CPU per connection, hand-off ÷ in place: 2.50 (target ≤ 1.5)\n- C server CPU per connection, hand-off ÷ in place: 1.34 (C's own cost of handing off)\n"},
		{"hello header", "| case | variant | cluster/standalone | cluster-req/s | standalone-req/s | busiest-worker-share | master-RSS-KiB | target | met |"},
		// 0.975 prints 0.97, and is ≥ 0.97.
		{"hello", "| hello | conns=8 | 0.97 [0.96–0.99] | 30.0k | 31.0k |  | 12.0k | ≥ 0.97× standalone | yes |"},
		{"cluster, unit in cell", "| cluster/restart | restart | 21.5 [21.0–22.0] ms/restart |"},
		{"skipped case in its table", "| cluster/respawn | all | skipped: go build ./cmd/mini-cluster failed: a \\| b |"},
		{"perf", "| scm/seqpacket/K=1/P=64 | c | 0.004 | 1.00 |"},
		{"failures", "```\naccept round 2: exit status 1\n```"},
	}
	for _, tt := range tests {
		if !strings.Contains(md, tt.want) {
			t.Errorf("%s: report lacks %q", tt.name, tt.want)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", md)
	}
	// Every table row has as many cells as its header.
	cols := 0
	for _, line := range strings.Split(md, "\n") {
		if !strings.HasPrefix(line, "|") {
			cols = 0
			continue
		}
		n := strings.Count(strings.ReplaceAll(line, `\|`, ""), "|") - 1
		if cols == 0 {
			cols = n
		} else if n != cols {
			t.Errorf("row has %d cells, header %d: %s", n, cols, line)
		}
	}
}

func TestFmtNum(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"}, {0.001, "0.001"}, {0.25, "0.250"}, {1.5, "1.50"}, {12.34, "12.3"}, {405, "405"},
		{9999, "9999"}, {12345, "12.3k"}, {405123, "405k"}, {2.5e6, "2.50M"}, {3.2e9, "3.20G"}, {-12345, "-12.3k"},
	}
	for _, tt := range tests {
		if got := fmtNum(tt.in); got != tt.want {
			t.Errorf("fmtNum(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// svgDoc is the part of the plot the tests read back.
type svgDoc struct {
	XMLName   xml.Name `xml:"svg"`
	Polylines []struct {
		Points string `xml:"points,attr"`
	} `xml:"polyline"`
	Texts []string `xml:"text"`
}

// parseSVG checks that s is well-formed XML, token by token, and decodes it.
func parseSVG(t *testing.T, s string) svgDoc {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	for {
		_, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, s)
		}
	}
	var doc svgDoc
	if err := xml.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatalf("SVG: %v", err)
	}
	return doc
}

func TestPlotSVG(t *testing.T) {
	doc := parseSVG(t, PlotSVG(fixture()))
	// Two socket types × four variants, each over K = 1 and 253.
	if got := len(doc.Polylines); got != 8 {
		t.Fatalf("%d polylines, want 8", got)
	}
	for _, p := range doc.Polylines {
		if n := len(strings.Fields(p.Points)); n != 2 {
			t.Errorf("polyline has %d points, want 2: %q", n, p.Points)
		}
	}
	var legend []string
	for _, tx := range doc.Texts {
		if strings.HasPrefix(tx, "stream ") || strings.HasPrefix(tx, "seqpacket ") {
			legend = append(legend, tx)
		}
	}
	want := []string{"stream c", "stream naive", "stream scm", "stream batched",
		"seqpacket c", "seqpacket naive", "seqpacket scm", "seqpacket batched"}
	if diff := cmp.Diff(want, legend); diff != "" {
		t.Errorf("legend (-want +got):\n%s", diff)
	}
	// The x axis is logarithmic: K = 1 at the left edge, 253 at the right.
	first := strings.Fields(doc.Polylines[0].Points)
	if !strings.HasPrefix(first[0], fmt.Sprintf("%d.0,", marginL)) || !strings.HasPrefix(first[1], fmt.Sprintf("%d.0,", marginL+innerW)) {
		t.Errorf("points %q do not span the x axis", first)
	}
}

func TestPlotSVGWithoutData(t *testing.T) {
	for _, res := range []*Results{{}, {Cases: []*CaseResult{{Case: Case{Name: "accept", Group: "accept"}}}}} {
		doc := parseSVG(t, PlotSVG(res))
		if len(doc.Polylines) != 0 || !strings.Contains(strings.Join(doc.Texts, " "), plotNoData) {
			t.Errorf("empty plot: %d polylines, texts %q", len(doc.Polylines), doc.Texts)
		}
	}
}

func TestJSONHasNoNaN(t *testing.T) {
	b, err := json.Marshal(fixture())
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	// The baseline's ratio is empty and must come out as null.
	if !strings.Contains(string(b), `"ratio":null`) {
		t.Errorf("empty ratio not encoded as null: %.300s", b)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"zero rounds", []string{"-rounds", "0"}, "-rounds 0"},
		{"bad filter", []string{"-run", "("}, "-run"},
		{"filter matches nothing", []string{"-run", "^nothing$"}, "matches no case"},
		{"stray argument", []string{"extra"}, "unexpected arguments"},
		{"unknown flag", []string{"-nope"}, "not defined"},
		{"-from with -quick", []string{"-from", "x.json", "-quick"}, "-from measures nothing: -quick"},
		{"-from with -perf and -rounds", []string{"-from", "x.json", "-perf", "-rounds", "3"}, "-from measures nothing: -perf, -rounds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			err := run(t.Context(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("run(%q) wrote a report: %q", tt.args, stdout.String())
			}
		})
	}
}

func TestPlotLink(t *testing.T) {
	tests := []struct{ report, plot, want string }{
		{"docs/benchmarks.md", "bench/latest.svg", "../bench/latest.svg"},
		{"out/r.md", "out/p.svg", "p.svg"},
		{"", "p.svg", "p.svg"},
		{"r.md", "", ""},
	}
	for _, tt := range tests {
		if got := plotLink(tt.report, tt.plot); got != tt.want {
			t.Errorf("plotLink(%q, %q) = %q, want %q", tt.report, tt.plot, got, tt.want)
		}
	}
}

// TestPlotSVGLogScale checks that the x axis is logarithmic, not just
// spanned: with K = 1, 16 and 256, K = 16 sits exactly half way.
func TestPlotSVGLogScale(t *testing.T) {
	res := &Results{}
	for _, k := range []int{256, 1, 16} {
		cr := &CaseResult{Case: Case{Name: fmt.Sprintf("scm/stream/K=%d/P=64", k), Group: "scm", Baseline: "c",
			Metric: "msgs/s", Socket: "stream", K: k, P: 64}}
		cr.Add(1, Line{Name: "BenchmarkSCM/c", N: 1, Metrics: map[string]float64{"msgs/s": 1e4, "fds/s": 1e4 * float64(k)}})
		cr.Finish()
		res.Cases = append(res.Cases, cr)
	}
	doc := parseSVG(t, PlotSVG(res))
	if len(doc.Polylines) != 1 {
		t.Fatalf("%d polylines, want 1", len(doc.Polylines))
	}
	var xs []string
	for _, p := range strings.Fields(doc.Polylines[0].Points) {
		x, _, _ := strings.Cut(p, ",")
		xs = append(xs, x)
	}
	want := []string{fmt.Sprintf("%.1f", float64(marginL)), fmt.Sprintf("%.1f", marginL+innerW/2.0), fmt.Sprintf("%.1f", float64(marginL+innerW))}
	if diff := cmp.Diff(want, xs); diff != "" {
		t.Errorf("x of K = 1, 16, 256 (-want +got):\n%s", diff)
	}
	// A tick and its label at every K.
	for _, k := range []string{"1", "16", "256"} {
		if !slices.Contains(doc.Texts, k) {
			t.Errorf("no tick label %q on the x axis: %q", k, doc.Texts)
		}
	}
}

// TestMarkdownQuickDecidesNothing checks that -quick's smoke runs, whose
// tiny counts measure nothing, print no verdicts.
func TestMarkdownQuickDecidesNothing(t *testing.T) {
	res := fixture()
	res.Quick = true
	md := Markdown(res, "")
	for _, bad := range []string{"| met |", "| yes |", "| **no** |"} {
		if strings.Contains(md, bad) {
			t.Errorf("-quick report has %q", bad)
		}
	}
	for _, want := range []string{
		"decide no target",
		"| case | variant | msgs/s | × c | fds/s | x-naive | recv-allocs/op | send-allocs/op | target |\n",
		"| scm/stream/K=1/P=64 | scm | 540k [360k–720k] | 0.90 | 540k [360k–720k] | 1.38 | 0 | 0.001 | ≥ 0.85× C, > naive, 0 allocs |\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("-quick report lacks %q", want)
		}
	}
}

func TestMarkdownInterrupted(t *testing.T) {
	res := fixture()
	if md := Markdown(res, ""); strings.Contains(md, "Interrupted") {
		t.Errorf("complete run's report says it was interrupted")
	}
	res.Interrupted = true
	if md := Markdown(res, ""); !strings.Contains(md, "**Interrupted**: a partial run.") {
		t.Errorf("interrupted run's report does not say so")
	}
}

// TestFmtRatio checks that a ratio is rounded toward the side that fails
// its target, so that what prints as meeting a threshold meets it: "0.83"
// never stands for a figure below 0.83 (or "1.50" for one above 1.5).
func TestFmtRatio(t *testing.T) {
	tests := []struct {
		in   float64
		cost bool
		want string
	}{
		{0.83, false, "0.83"},
		{0.8299, false, "0.82"},
		{0.82999999999, false, "0.82"},
		{0.8301, false, "0.83"},
		{830.0 / 1000, false, "0.83"},
		{1.0, false, "1.00"},
		{0.9999, false, "0.99"},
		{2.5, false, "2.50"},
		{1.5, true, "1.50"},
		{1.5001, true, "1.51"},
		{1.4999, true, "1.50"},
		{0, false, "0.00"},
		{math.NaN(), false, "—"},
	}
	for _, tt := range tests {
		if got := fmtRatio(tt.in, tt.cost); got != tt.want {
			t.Errorf("fmtRatio(%v, cost %v) = %q, want %q", tt.in, tt.cost, got, tt.want)
		}
	}
	// Around every threshold of the brief, in steps finer than the
	// printed digits: printed and exact figure agree on the verdict.
	for _, th := range []float64{0.83, 0.85, 0.9, 0.95, 0.97, 1.0, 1.5} {
		for i := -100; i <= 100; i++ {
			x := th + float64(i)*1e-5
			printed, err := strconv.ParseFloat(fmtRatio(x, false), 64)
			if err != nil {
				t.Fatal(err)
			}
			if (x >= th) != (printed >= th) {
				t.Errorf("speed %v against ≥ %v prints %v", x, th, printed)
			}
			printed, err = strconv.ParseFloat(fmtRatio(x, true), 64)
			if err != nil {
				t.Fatal(err)
			}
			if (x <= th) != (printed <= th) {
				t.Errorf("cost %v against ≤ %v prints %v", x, th, printed)
			}
		}
	}
}
