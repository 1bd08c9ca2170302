package main

import (
	"testing"
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
