package main

import (
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
		cr := &CaseResult{Case: Case{Name: "scm", Group: "scm", Baseline: "c", Metric: "msgs/s", K: k, P: 64}}
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
