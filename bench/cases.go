package main

import (
	"fmt"
	"math"
	"regexp"
	"strings"
)

// Case is one invocation of the benchmark binary: a -test.bench filter
// that selects a baseline and its variants, which then run one after the
// other in one process, so that they share the machine's state.
type Case struct {
	// Name identifies the case in the report: "scm/stream/K=1/P=64".
	Name string `json:"name"`
	// Group is the report section: scm, frame, accept or cluster.
	Group string `json:"group"`
	// Bench is the -test.bench pattern, one anchored element per level.
	Bench string `json:"bench"`
	// Benchtime is the -test.benchtime of the case.
	Benchtime string `json:"benchtime"`
	// Baseline is the variant the others are compared with, "" for none.
	Baseline string `json:"baseline,omitempty"`
	// Metric is the unit of the figure compared: msgs/s, conns/s, ms/op.
	Metric string `json:"metric"`
	// LowerBetter is true for latencies, where a ratio is baseline/variant.
	LowerBetter bool `json:"lower_better,omitempty"`
	// Extra are further units shown beside Metric.
	Extra []string `json:"extra,omitempty"`
	// CostRatios are further per-round ratios the runner computes: unit
	// (a key) is the variant's source unit (the value) over the
	// baseline's of the same round, so above 1 costs more. They replace
	// any figure of that unit the benchmark reported itself, which needs
	// the baseline to have run first in its process.
	CostRatios map[string]string `json:"cost_ratios,omitempty"`
	// RefRatios are per-round ratios to a variant other than the
	// baseline, computed by the runner like CostRatios (and replacing the
	// benchmark's own figures of their units).
	RefRatios []RefRatio `json:"ref_ratios,omitempty"`
	// Pkg is the package whose test binary holds the benchmark, "" for
	// ./bench; it runs in that package's directory.
	Pkg string `json:"pkg,omitempty"`
	// Socket, K and P describe a scm case, for the plot.
	Socket string `json:"socket,omitempty"`
	K      int    `json:"k,omitempty"`
	P      int    `json:"p,omitempty"`
}

// RefRatio is a per-round ratio to a variant other than the case's
// baseline: Unit, recorded on each of Variants, is the variant's Src over
// Ref's Src in the same round (for conns/s above 1 is faster than Ref, for
// a cost above 1 costs more).
type RefRatio struct {
	Unit     string   `json:"unit"`
	Src      string   `json:"src"`
	Ref      string   `json:"ref"`
	Variants []string `json:"variants"`
}

// helloRatio is BenchmarkHello's (cmd/mini-cluster) requests/s under
// mini-cluster -n 2 over standalone hello's: the median of its own
// interleaved rounds' ratios.
const helloRatio = "cluster/standalone"

// Variants in the order the benchmarks run them.
var (
	scmVariants    = []string{"c", "naive", "scm", "batched"}
	acceptVariants = []string{"inplace", "inplace-c", "handoff-c", "handoff", "handoff-naive", "shared", "reuseport"}
)

// acceptRefRatios set the accept path's Go against its C baseline
// (bench/testdata/caccept.c), each ratio within a round: C hand-off over C
// in place (the brief's 0.83), its CPU per connection likewise, Go's in
// place over C's, and Go's hand-offs over C's.
var acceptRefRatios = []RefRatio{
	{Unit: "x-inplace-c", Src: "conns/s", Ref: "inplace-c", Variants: []string{"inplace", "handoff-c"}},
	{Unit: "cpu-x-inplace-c", Src: "server-cpu-us/conn", Ref: "inplace-c", Variants: []string{"handoff-c"}},
	{Unit: "x-handoff-c", Src: "conns/s", Ref: "handoff-c", Variants: []string{"handoff", "handoff-naive"}},
}

func anchored(elems ...string) string {
	out := make([]string, len(elems))
	for i, e := range elems {
		out[i] = "^" + regexp.QuoteMeta(e) + "$"
	}
	return strings.Join(out, "/")
}

// Cases returns the suite: the full one, or the small subset of -quick
// with tiny fixed iteration counts.
func Cases(quick bool) []Case {
	var cs []Case
	ks, ps := []int{1, 8, 64, 253}, []int{1, 64, 4096}
	scmTime, frameTime, acceptTime := "250ms", "250ms", "3000x"
	restartTime, respawnTime := "5x", "3x"
	sizes := []string{"16B", "256B", "4KiB", "64KiB"}
	// BenchmarkHello runs its own interleaved rounds of at least 10000
	// requests a side whatever -benchtime says; -quick keeps 8 connections.
	hello := anchored("BenchmarkHello")
	if quick {
		hello = anchored("BenchmarkHello", "conns=8")
		ks, ps = []int{1, 253}, []int{64}
		scmTime, frameTime, acceptTime = "1000x", "20000x", "300x"
		restartTime, respawnTime = "2x", "1x"
		sizes = []string{"256B"}
	}
	for _, sock := range []string{"stream", "seqpacket"} {
		for _, k := range ks {
			for _, p := range ps {
				kk, pp := fmt.Sprintf("K=%d", k), fmt.Sprintf("P=%d", p)
				cs = append(cs, Case{
					Name: "scm/" + sock + "/" + kk + "/" + pp, Group: "scm",
					Bench: anchored("BenchmarkSCM", sock, kk, pp), Benchtime: scmTime,
					Baseline: "c", Metric: "msgs/s", Extra: []string{"fds/s", xNaive, "recv-allocs/op", "send-allocs/op"},
					RefRatios: []RefRatio{{Unit: xNaive, Src: "msgs/s", Ref: "naive", Variants: []string{"scm"}}},
					Socket:    sock, K: k, P: p,
				})
			}
		}
	}
	for _, tr := range []string{"stream", "pipe"} {
		for _, size := range sizes {
			cs = append(cs, Case{
				Name: "frame/" + tr + "/" + size, Group: "frame",
				Bench: anchored("BenchmarkFrame", tr, size), Benchtime: frameTime,
				Baseline: "raw", Metric: "msgs/s", Extra: []string{"MB/s", "frame-allocs/op"},
			})
		}
	}
	cs = append(cs,
		Case{
			Name: "accept", Group: "accept", Bench: anchored("BenchmarkAccept"), Benchtime: acceptTime,
			Baseline: "inplace", Metric: "conns/s",
			Extra:      []string{"server-cpu-us/conn", "cpu-x-inplace", "conns/msg", "x-inplace-c", "cpu-x-inplace-c", "x-handoff-c"},
			CostRatios: map[string]string{"cpu-x-inplace": "server-cpu-us/conn"},
			RefRatios:  acceptRefRatios,
		},
		Case{
			Name: "hello", Group: "hello", Pkg: "./cmd/mini-cluster", Bench: hello, Benchtime: "1x",
			Metric: helloRatio, Extra: []string{"cluster-req/s", "standalone-req/s", "busiest-worker-share", "master-RSS-KiB"},
		},
		Case{
			Name: "cluster/restart", Group: "cluster", Bench: anchored("BenchmarkMiniCluster", "restart"),
			Benchtime: restartTime, Metric: "ms/restart", LowerBetter: true,
		},
		Case{
			Name: "cluster/respawn", Group: "cluster", Bench: anchored("BenchmarkMiniCluster", "respawn"),
			Benchtime: respawnTime, Metric: "ms/respawn", LowerBetter: true, Extra: []string{"respawn-ms-started"},
		},
	)
	return cs
}

// Target is a figure from the design brief's performance table, shown
// beside a measurement. Check is nil for anchors that are not targets.
type Target struct {
	Text  string
	Check Check
}

// Check decides a target: met, or, when undecided is not "", neither (the
// figure it needs is missing, as a baseline that did not run) and why.
type Check func(v *VariantResult, c *CaseResult) (met bool, undecided string)

// noBaseline is why a ratio to a baseline that never ran decides nothing.
const noBaseline = "no baseline"

// allOf is met when every check is met. A check that fails decides, even
// beside one that cannot: a variant that allocates misses its target
// whether or not its baseline ran.
func allOf(checks ...Check) Check {
	return func(v *VariantResult, c *CaseResult) (bool, string) {
		undecided := ""
		for _, ch := range checks {
			met, why := ch(v, c)
			switch {
			case why != "":
				if undecided == "" {
					undecided = why
				}
			case !met:
				return false, ""
			}
		}
		return undecided == "", undecided
	}
}

// ratioAtLeast checks the median of the per-round ratios to the baseline.
func ratioAtLeast(x float64) Check {
	return func(v *VariantResult, _ *CaseResult) (bool, string) {
		if v.Ratio.N == 0 {
			return false, noBaseline
		}
		return v.Ratio.Median >= x, ""
	}
}

// unitAtMost checks the median of a per-round ratio unit (CostRatios,
// RefRatios): at most x.
func unitAtMost(unit string, x float64) Check {
	return func(v *VariantResult, _ *CaseResult) (bool, string) {
		s := v.Metrics[unit]
		if s.N == 0 {
			return false, noBaseline
		}
		return s.Median <= x, ""
	}
}

// unitAtLeast checks the median of a figure the benchmark reports itself.
func unitAtLeast(unit string, x float64) Check {
	return func(v *VariantResult, _ *CaseResult) (bool, string) {
		s := v.Metrics[unit]
		if s.N == 0 {
			return false, "no " + unit
		}
		return s.Median >= x, ""
	}
}

// xNaive is the scm cases' per-round ratio of scm's msgs/s over naive's.
const xNaive = "x-naive"

// beatsNaive checks that the median of the per-round ratios to the naive
// variant (x-naive, msgs/s over naive's of the same round) is above 1:
// comparing each side's median ratio to C would pair rounds that never ran
// together.
func beatsNaive(v *VariantResult, _ *CaseResult) (bool, string) {
	s := v.Metrics[xNaive]
	if s.N == 0 {
		return false, "no naive"
	}
	return s.Median > 1, ""
}

// exactAllocs are allocations per message counted with runtime.MemStats
// around the measured loop only (set-up excluded), unlike testing's
// allocs/op, which is rounded down to an integer and so reads 0 up to 0.99
// per message.
var exactAllocs = []string{"recv-allocs/op", "send-allocs/op", "frame-allocs/op"}

// allocsZero is the most an exact count may be and still be 0 allocations
// per message: the runtime's own occasional allocations (a timer, a GC
// cycle's bookkeeping) spread over a run, never one per message.
const allocsZero = 0.01

// zeroAllocs checks that every side allocates nothing per message in every
// round (exact counts below allocsZero, testing's rounded allocs/op below
// 1): the maximum, since a variant that allocates in some rounds only still
// allocates.
func zeroAllocs(v *VariantResult, _ *CaseResult) (bool, string) {
	if s, ok := v.Metrics["allocs/op"]; ok && !(s.Max < 1) {
		return false, ""
	}
	measured := false
	for _, unit := range exactAllocs {
		s, ok := v.Metrics[unit]
		if ok && !(s.Max < allocsZero) {
			return false, ""
		}
		measured = measured || ok
	}
	if !measured {
		// A renamed or unparsed figure must not read as zero.
		return false, "no exact allocation count"
	}
	return true, ""
}

// TargetFor returns the design brief's target for a variant of a case.
func TargetFor(c Case, variant string) Target {
	switch c.Group {
	case "scm":
		switch variant {
		case "c":
			if c.K == 1 && c.P == 64 {
				return Target{Text: "anchor ~405k msgs/s"}
			}
			if c.K == 253 {
				return Target{Text: "anchor ~2.5M fds/s"}
			}
			return Target{Text: "the limit"}
		case "naive":
			return Target{Text: "anchor 0.62–0.65× C"}
		case "scm":
			// The brief's naive row ("beat it clearly") holds at every K,
			// beside the ×C figure of K = 1 and 253.
			switch c.K {
			case 1:
				return Target{Text: "≥ 0.85× C, > naive, 0 allocs", Check: allOf(ratioAtLeast(0.85), beatsNaive, zeroAllocs)}
			case 253:
				return Target{Text: "≥ 0.95× C, > naive, 0 allocs", Check: allOf(ratioAtLeast(0.95), beatsNaive, zeroAllocs)}
			}
			return Target{Text: "> naive, 0 allocs", Check: allOf(beatsNaive, zeroAllocs)}
		case "batched":
			return Target{Text: "≥ 1.0× C", Check: ratioAtLeast(1.0)}
		}
	case "frame":
		if variant == "ipcframe" {
			return Target{Text: "≥ 0.9× raw, 0 allocs", Check: allOf(ratioAtLeast(0.9), zeroAllocs)}
		}
	case "accept":
		switch variant {
		case "handoff":
			// Issue 10's two targets: rate and server CPU per connection.
			return Target{Text: "≥ 0.83× in place, CPU ≤ 1.5× in place (cpu-x-inplace)",
				Check: allOf(ratioAtLeast(0.83), unitAtMost("cpu-x-inplace", 1.5))}
		case "handoff-naive":
			return Target{Text: "anchor 0.59× (C 0.83×)"}
		case "inplace-c":
			return Target{Text: "baseline of x-inplace-c"}
		case "handoff-c":
			// The brief's claim about C, checked on this machine: not a
			// target of this code, so no verdict.
			return Target{Text: "anchor: C reaches 0.83× C in place (x-inplace-c)"}
		}
	case "hello":
		return Target{Text: "≥ 0.97× standalone", Check: unitAtLeast(helloRatio, 0.97)}
	case "cluster":
		if c.Name == "cluster/respawn" {
			// supervise's own target; the mini-cluster adds its crash backoff.
			return Target{Text: "none (supervise alone: < 10 ms)"}
		}
	}
	return Target{}
}

// finite reports whether x is a usable figure.
func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
