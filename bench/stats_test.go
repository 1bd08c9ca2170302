package main

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name string
		in   []float64
		want Summary
	}{
		{"odd count", []float64{3, 1, 2}, Summary{Median: 2, Min: 1, Max: 3, N: 3}},
		{"even count averages the middle two", []float64{4, 1, 3, 2}, Summary{Median: 2.5, Min: 1, Max: 4, N: 4}},
		{"one sample", []float64{7}, Summary{Median: 7, Min: 7, Max: 7, N: 1}},
		{"NaNs ignored", []float64{nan, 5, nan, 1, 3}, Summary{Median: 3, Min: 1, Max: 5, N: 3}},
		{"empty", nil, Summary{Median: nan, Min: nan, Max: nan}},
		{"only NaN", []float64{nan}, Summary{Median: nan, Min: nan, Max: nan}},
		{"outlier does not move the median", []float64{1, 1.1, 0.9, 1000, 1}, Summary{Median: 1, Min: 0.9, Max: 1000, N: 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.in...)
			got := Summarize(in)
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateNaNs()); diff != "" {
				t.Errorf("Summarize(%v) (-want +got):\n%s", tt.in, diff)
			}
			if diff := cmp.Diff(tt.in, in, cmpopts.EquateNaNs()); diff != "" {
				t.Errorf("Summarize changed its input (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRoundRatios(t *testing.T) {
	tests := []struct {
		name        string
		variant     map[int]float64
		base        map[int]float64
		lowerBetter bool
		want        []float64
	}{
		{
			name:    "paired by round, in round order",
			variant: map[int]float64{1: 80, 2: 90, 3: 50},
			base:    map[int]float64{1: 100, 2: 100, 3: 200},
			want:    []float64{0.8, 0.9, 0.25},
		},
		{
			name:    "rounds missing on either side are left out",
			variant: map[int]float64{1: 80, 2: 90, 4: 10},
			base:    map[int]float64{1: 100, 3: 100, 4: 20},
			want:    []float64{0.8, 0.5},
		},
		{
			name:        "lower is better inverts",
			variant:     map[int]float64{1: 20},
			base:        map[int]float64{1: 10},
			lowerBetter: true,
			want:        []float64{0.5},
		},
		{
			name:    "zero baseline is left out",
			variant: map[int]float64{1: 5, 2: 6},
			base:    map[int]float64{1: 0, 2: 3},
			want:    []float64{2},
		},
		{name: "nothing", variant: nil, base: map[int]float64{1: 1}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RoundRatios(tt.variant, tt.base, tt.lowerBetter)
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
				t.Errorf("RoundRatios (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRatioIsMedianOfRoundRatios checks that a variant's ratio is the
// median of the per-round ratios, not the ratio of the medians: the two
// differ when drift moves baseline and variant together.
func TestRatioIsMedianOfRoundRatios(t *testing.T) {
	cr := &CaseResult{Case: Case{Name: "x", Group: "frame", Baseline: "raw", Metric: "msgs/s"}}
	// The machine slows down over the rounds; the variant is always 0.9×.
	for round, base := range []float64{100, 50, 200} {
		cr.Add(round+1, Line{Name: "BenchmarkFrame/x/raw", N: 1, Metrics: map[string]float64{"msgs/s": base}})
		cr.Add(round+1, Line{Name: "BenchmarkFrame/x/ipcframe", N: 1, Metrics: map[string]float64{"msgs/s": base * 0.9, "allocs/op": 0, "frame-allocs/op": 0}})
	}
	cr.Finish()
	v := cr.Variant("ipcframe")
	want := Summary{Median: 0.9, Min: 0.9, Max: 0.9, N: 3}
	if diff := cmp.Diff(want, v.Ratio, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
		t.Errorf("ratio (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Summary{Median: 90, Min: 45, Max: 180, N: 3}, v.Metrics["msgs/s"], cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("msgs/s (-want +got):\n%s", diff)
	}
	if v.Met == nil || !*v.Met {
		t.Errorf("target %q: met = %v, want true", v.Target, v.Met)
	}
	if cr.Variants[0].Name != "raw" {
		t.Errorf("baseline not first: %q", cr.Variants[0].Name)
	}
}

func TestPerMessage(t *testing.T) {
	tests := []struct {
		name    string
		small   map[string]float64
		large   map[string]float64
		msgs    int
		want    map[string]float64
		wantErr bool
	}{
		{
			name:  "fixed part cancels out",
			small: map[string]float64{"context-switches": 900, "syscalls:sys_enter_recvmsg": 1010, "syscalls:sys_enter_futex": 420},
			large: map[string]float64{"context-switches": 1000, "syscalls:sys_enter_recvmsg": 2010, "syscalls:sys_enter_futex": 420},
			msgs:  1000,
			want:  map[string]float64{"context-switches": 0.1, "recvmsg": 1, "futex": 0},
		},
		{
			name:  "noise above the count stays visible",
			small: map[string]float64{"context-switches": 500},
			large: map[string]float64{"context-switches": 400},
			msgs:  1000,
			want:  map[string]float64{"context-switches": -0.1},
		},
		{name: "event of one run only", small: map[string]float64{"a": 1}, large: map[string]float64{"b": 1}, msgs: 1, wantErr: true},
		{name: "events missing", small: map[string]float64{"a": 1}, large: map[string]float64{"a": 2, "b": 1}, msgs: 1, wantErr: true},
		{name: "no messages", small: map[string]float64{"a": 1}, large: map[string]float64{"a": 1}, msgs: 0, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PerMessage(tt.small, tt.large, tt.msgs)
			if (err != nil) != tt.wantErr {
				t.Fatalf("PerMessage: error %v, want error %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
				t.Errorf("PerMessage (-want +got):\n%s", diff)
			}
		})
	}
}
