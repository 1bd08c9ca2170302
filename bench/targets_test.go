package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestTargetsMet checks the met/not met verdicts against the design
// brief's targets, each built from one round of made-up figures.
func TestTargetsMet(t *testing.T) {
	type subject struct {
		cr *CaseResult
		v  string
	}
	scm := func(k int, variant string, ratio, naiveRatio float64, allocs map[string]float64) subject {
		cr := &CaseResult{Case: caseNamed(t, fmt.Sprintf("scm/stream/K=%d/P=64", k))}
		add := func(v string, msgs float64, extra map[string]float64) {
			m := map[string]float64{"msgs/s": msgs}
			for u, x := range extra {
				m[u] = x
			}
			cr.Add(1, Line{Name: "BenchmarkSCM/" + v, N: 1, Metrics: m})
		}
		add("c", 1000, nil)
		add("naive", 1000*naiveRatio, map[string]float64{"allocs/op": 1, "recv-allocs/op": 1, "send-allocs/op": 1})
		if variant != "naive" {
			add(variant, 1000*ratio, allocs)
		}
		return subject{cr, variant}
	}
	zero := map[string]float64{"allocs/op": 0, "recv-allocs/op": 0, "send-allocs/op": 0.0001}
	frame := func(ratio float64, allocs map[string]float64) subject {
		cr := &CaseResult{Case: Case{Name: "frame", Group: "frame", Baseline: "raw", Metric: "msgs/s"}}
		cr.Add(1, Line{Name: "BenchmarkFrame/raw", N: 1, Metrics: map[string]float64{"msgs/s": 1000}})
		m := map[string]float64{"msgs/s": 1000 * ratio}
		for u, x := range allocs {
			m[u] = x
		}
		cr.Add(1, Line{Name: "BenchmarkFrame/ipcframe", N: 1, Metrics: m})
		return subject{cr, "ipcframe"}
	}
	accept := func(ratio, cpu float64) subject {
		cr := &CaseResult{Case: caseNamed(t, "accept")}
		cr.Add(1, Line{Name: "BenchmarkAccept/inplace", N: 1, Metrics: map[string]float64{"conns/s": 1000, "server-cpu-us/conn": 20}})
		cr.Add(1, Line{Name: "BenchmarkAccept/handoff", N: 1, Metrics: map[string]float64{"conns/s": 1000 * ratio, "server-cpu-us/conn": 20 * cpu}})
		return subject{cr, "handoff"}
	}
	hello := func(ratio float64) subject {
		cr := &CaseResult{Case: caseNamed(t, "hello")}
		cr.Add(1, Line{Name: "BenchmarkHello/conns=8", N: 1, Metrics: map[string]float64{helloRatio: ratio, "master-RSS-KiB": 12000}})
		return subject{cr, "conns=8"}
	}
	tests := []struct {
		name string
		in   subject
		want bool
	}{
		{"K=1: 0.9× C, naive 0.65×", scm(1, "scm", 0.9, 0.65, zero), true},
		{"K=1: 0.9× C but naive faster", scm(1, "scm", 0.9, 0.95, zero), false},
		{"K=1: 0.8× C", scm(1, "scm", 0.8, 0.65, zero), false},
		{"K=1: testing rounds 0.5 allocs/msg down to 0", scm(1, "scm", 0.9, 0.65, map[string]float64{"allocs/op": 0, "recv-allocs/op": 0.5, "send-allocs/op": 0}), false},
		{"K=1: sender allocates", scm(1, "scm", 0.9, 0.65, map[string]float64{"allocs/op": 0, "recv-allocs/op": 0, "send-allocs/op": 0.2}), false},
		{"K=253: 0.96× C, naive 0.9×", scm(253, "scm", 0.96, 0.9, zero), true},
		{"K=253: 0.96× C but naive 0.97×", scm(253, "scm", 0.96, 0.97, zero), false},
		{"K=8: beats naive", scm(8, "scm", 0.7, 0.65, zero), true},
		{"K=8: does not beat naive", scm(8, "scm", 0.6, 0.65, zero), false},
		{"batched 1.0× C", scm(1, "batched", 1.0, 0.65, zero), true},
		{"batched 0.99× C", scm(1, "batched", 0.99, 0.65, zero), false},
		{"ipcframe 0.9× raw, 0 allocs", frame(0.9, map[string]float64{"allocs/op": 0, "frame-allocs/op": 0.001}), true},
		{"ipcframe rounds 0.3 allocs/frame down to 0", frame(0.95, map[string]float64{"allocs/op": 0, "frame-allocs/op": 0.3}), false},
		{"ipcframe 0.89× raw", frame(0.89, nil), false},
		// Issue 10's second target: the -quick run that read "yes".
		{"handoff 0.95× in place, CPU 1.84×", accept(0.95, 1.84), false},
		{"handoff 0.90× in place, CPU 1.4×", accept(0.90, 1.4), true},
		{"handoff 0.90× in place, CPU 1.5×", accept(0.90, 1.5), true},
		{"handoff 0.80× in place, CPU 1.2×", accept(0.80, 1.2), false},
		{"hello 0.98× standalone", hello(0.98), true},
		{"hello 0.96× standalone", hello(0.96), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.in.cr.Finish()
			v := tt.in.cr.Variant(tt.in.v)
			if v.Met == nil {
				t.Fatalf("%s: no verdict for target %q", tt.in.v, v.Target)
			}
			if *v.Met != tt.want {
				t.Errorf("%s: target %q met = %v, want %v (ratio %+v)", tt.in.v, v.Target, *v.Met, tt.want, v.Ratio)
			}
		})
	}
}

// TestAcceptRefRatios checks the accept case's ratios to the C variants:
// computed within each round (a round without the reference gives none),
// only for the variants that have them, replacing the benchmark's own
// figures; and that C's hand-off ratio is an anchor, not a verdict.
func TestAcceptRefRatios(t *testing.T) {
	var accept Case
	for _, c := range Cases(false) {
		if c.Name == "accept" {
			accept = c
		}
	}
	cr := &CaseResult{Case: accept}
	add := func(round int, variant string, conns, cpu float64) {
		// 99: what a benchmark that ran in another order reports.
		cr.Add(round, Line{Name: "BenchmarkAccept/" + variant, N: 1, Metrics: map[string]float64{
			"conns/s": conns, "server-cpu-us/conn": cpu, "x-inplace-c": 99, "cpu-x-inplace-c": 99, "x-handoff-c": 99}})
	}
	add(1, "inplace", 900, 20)
	add(1, "inplace-c", 1000, 10)
	add(1, "handoff-c", 830, 15)
	add(1, "handoff", 800, 30)
	add(1, "shared", 700, 25)
	// Round 2 lost inplace-c (a failed run): no ratio to it that round.
	add(2, "inplace", 950, 20)
	add(2, "handoff-c", 900, 16)
	add(2, "handoff", 950, 30)
	cr.Finish()
	tests := []struct {
		variant, unit string
		want          []float64 // by round, absent rounds left out
	}{
		{"inplace", "x-inplace-c", []float64{900.0 / 1000}},
		{"handoff-c", "x-inplace-c", []float64{830.0 / 1000}},
		{"handoff-c", "cpu-x-inplace-c", []float64{15.0 / 10}},
		{"handoff", "x-handoff-c", []float64{800.0 / 830, 950.0 / 900}},
		{"handoff", "x-inplace-c", nil},
		{"shared", "x-handoff-c", nil},
		{"inplace-c", "x-inplace-c", nil},
	}
	for _, tt := range tests {
		t.Run(tt.variant+"/"+tt.unit, func(t *testing.T) {
			v := cr.Variant(tt.variant)
			var got []float64
			for _, s := range v.Samples {
				if x, ok := s.Metrics[tt.unit]; ok {
					got = append(got, x)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%s of %s per round (-want +got):\n%s", tt.unit, tt.variant, diff)
			}
		})
	}
	if v := cr.Variant("handoff-c"); v.Met != nil || v.Target == "" {
		t.Errorf("handoff-c: target %q, verdict %v: want an anchor without a verdict", v.Target, v.Met)
	}
	if v := cr.Variant("handoff"); v.Met == nil || !*v.Met {
		t.Errorf("handoff at 0.89 and 1.0× in place: verdict %v, want met", v.Met)
	}
}

// caseNamed returns the full suite's case of that name.
func caseNamed(t *testing.T, name string) Case {
	t.Helper()
	for _, c := range Cases(false) {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no case %q", name)
	return Case{}
}

// TestTargetsOverRounds checks verdicts that depend on how rounds are
// combined: scm against naive within each round, allocations in any round,
// and the accept path's rate and CPU together.
func TestTargetsOverRounds(t *testing.T) {
	type round struct{ c, naive, scm, scmAllocs float64 }
	scm := func(rounds ...round) *CaseResult {
		cr := &CaseResult{Case: caseNamed(t, "scm/stream/K=8/P=64")}
		for i, r := range rounds {
			cr.Add(i+1, Line{Name: "BenchmarkSCM/c", N: 1, Metrics: map[string]float64{"msgs/s": r.c}})
			cr.Add(i+1, Line{Name: "BenchmarkSCM/naive", N: 1, Metrics: map[string]float64{"msgs/s": r.naive, "recv-allocs/op": 1}})
			cr.Add(i+1, Line{Name: "BenchmarkSCM/scm", N: 1, Metrics: map[string]float64{"msgs/s": r.scm, "recv-allocs/op": r.scmAllocs, "allocs/op": 0}})
		}
		return cr
	}
	tests := []struct {
		name string
		cr   *CaseResult
		want bool
	}{
		// Medians over rounds: scm 0.80× C, naive 0.75×, but scm is
		// slower than naive in rounds 1 and 2.
		{"scm loses to naive in 2 of 3 rounds", scm(round{1000, 750, 700, 0}, round{1000, 850, 800, 0}, round{1000, 600, 900, 0}), false},
		{"scm beats naive in 2 of 3 rounds", scm(round{1000, 650, 700, 0}, round{1000, 750, 800, 0}, round{1000, 950, 900, 0}), true},
		// The median allocation count is 0, the maximum is not.
		{"scm allocates in 2 of 5 rounds", scm(round{1000, 600, 900, 0}, round{1000, 600, 900, 0.5}, round{1000, 600, 900, 0},
			round{1000, 600, 900, 0.5}, round{1000, 600, 900, 0}), false},
		{"scm allocates in no round", scm(round{1000, 600, 900, 0.001}, round{1000, 600, 900, 0}), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cr.Finish()
			v := tt.cr.Variant("scm")
			if v.Met == nil {
				t.Fatalf("no verdict for target %q (undecided: %q)", v.Target, v.Undecided)
			}
			if *v.Met != tt.want {
				t.Errorf("target %q met = %v, want %v (x-naive %+v)", v.Target, *v.Met, tt.want, v.Metrics[xNaive])
			}
		})
	}
}

// TestTargetsWithoutBaseline checks that a ratio target whose baseline
// never ran (no C compiler, or C failing every round) is undecided, not
// missed, unless another part of the target is missed anyway.
func TestTargetsWithoutBaseline(t *testing.T) {
	scm := func(recvAllocs float64) *CaseResult {
		cr := &CaseResult{Case: caseNamed(t, "scm/stream/K=1/P=64")}
		cr.AddSkip("c", "C baseline unavailable: no C compiler")
		for round := 1; round <= 2; round++ {
			cr.Add(round, Line{Name: "BenchmarkSCM/naive", N: 1, Metrics: map[string]float64{"msgs/s": 600}})
			cr.Add(round, Line{Name: "BenchmarkSCM/scm", N: 1, Metrics: map[string]float64{"msgs/s": 900, "recv-allocs/op": recvAllocs}})
			cr.Add(round, Line{Name: "BenchmarkSCM/batched", N: 1, Metrics: map[string]float64{"msgs/s": 1000}})
		}
		return cr
	}
	// C ran, scm beat it, but no exact allocation count was parsed: a
	// missing figure must not read as zero allocations.
	noAllocs := &CaseResult{Case: caseNamed(t, "scm/stream/K=1/P=64")}
	for round := 1; round <= 2; round++ {
		noAllocs.Add(round, Line{Name: "BenchmarkSCM/c", N: 1, Metrics: map[string]float64{"msgs/s": 1000}})
		noAllocs.Add(round, Line{Name: "BenchmarkSCM/naive", N: 1, Metrics: map[string]float64{"msgs/s": 600}})
		noAllocs.Add(round, Line{Name: "BenchmarkSCM/scm", N: 1, Metrics: map[string]float64{"msgs/s": 950, "allocs/op": 0}})
	}
	noInplace := &CaseResult{Case: caseNamed(t, "accept")}
	noInplace.Add(1, Line{Name: "BenchmarkAccept/handoff", N: 1, Metrics: map[string]float64{"conns/s": 900, "server-cpu-us/conn": 20}})
	cpuOver := &CaseResult{Case: caseNamed(t, "accept")}
	cpuOver.Add(1, Line{Name: "BenchmarkAccept/inplace", N: 1, Metrics: map[string]float64{"conns/s": 1000}})
	cpuOver.Add(1, Line{Name: "BenchmarkAccept/handoff", N: 1, Metrics: map[string]float64{"conns/s": 900, "server-cpu-us/conn": 20}})
	type verdict struct {
		Met       *bool
		Undecided string
	}
	no := false
	tests := []struct {
		name    string
		cr      *CaseResult
		variant string
		want    verdict
	}{
		{"scm without C", scm(0), "scm", verdict{Undecided: noBaseline}},
		{"batched without C", scm(0), "batched", verdict{Undecided: noBaseline}},
		{"scm without C, allocating", scm(0.5), "scm", verdict{Met: &no}},
		{"handoff without inplace", noInplace, "handoff", verdict{Undecided: noBaseline}},
		{"scm without an exact allocation count", noAllocs, "scm", verdict{Undecided: "no exact allocation count"}},
		{"handoff without inplace's CPU", cpuOver, "handoff", verdict{Undecided: noBaseline}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cr.Finish()
			v := tt.cr.Variant(tt.variant)
			if diff := cmp.Diff(tt.want, verdict{v.Met, v.Undecided}); diff != "" {
				t.Errorf("%s, target %q (-want +got):\n%s", tt.variant, v.Target, diff)
			}
		})
	}
	// The report says so in the met column.
	cr := scm(0)
	cr.Finish()
	var b strings.Builder
	writeTable(&b, []*CaseResult{cr}, true)
	want := "| ≥ 0.85× C, > naive, 0 allocs | no baseline |"
	if !strings.Contains(b.String(), want) {
		t.Errorf("table lacks %q:\n%s", want, b.String())
	}
}
