package main

import (
	"slices"
	"sort"
	"strings"
)

// Results is everything one run of the runner measured.
type Results struct {
	Env    Env  `json:"env"`
	Rounds int  `json:"rounds"`
	Quick  bool `json:"quick"`
	// Interrupted is true for a run stopped by a signal: the results are
	// those of the rounds that completed.
	Interrupted bool          `json:"interrupted,omitempty"`
	Cases       []*CaseResult `json:"cases"`
	// Perf holds per-message syscall and context-switch counts, PerfNote
	// why there are none, PerfSkips the variants the benchmark skipped
	// under perf ("case/variant: reason"), which have no counts.
	Perf      []PerfResult `json:"perf,omitempty"`
	PerfNote  string       `json:"perf_note,omitempty"`
	PerfSkips []string     `json:"perf_skips,omitempty"`
	// Failures lists invocations that failed, with their output's tail.
	Failures []string `json:"failures,omitempty"`
}

// CaseResult is the measurements of one case over every round.
type CaseResult struct {
	Case
	Variants []*VariantResult `json:"variants"`
	// Skipped says why the whole case did not run.
	Skipped string `json:"skipped,omitempty"`
}

// VariantResult is one variant of a case over every round.
type VariantResult struct {
	Name    string   `json:"name"`
	Samples []Sample `json:"samples"`
	// Metrics summarises every unit over the rounds.
	Metrics map[string]Summary `json:"metrics"`
	// Ratio summarises the per-round ratios to the case's baseline on the
	// case's Metric (above 1 is better than the baseline).
	Ratio Summary `json:"ratio"`
	// Target is the design brief's figure; Met is nil when it is not a
	// checkable target, nothing was measured, or the figure it needs is
	// missing, which Undecided then names ("no baseline").
	Target    string `json:"target,omitempty"`
	Met       *bool  `json:"met,omitempty"`
	Undecided string `json:"undecided,omitempty"`
	// Skipped says why the variant did not run.
	Skipped string `json:"skipped,omitempty"`
}

// Sample is one round's measurement of a variant.
type Sample struct {
	Round   int                `json:"round"`
	N       int64              `json:"n"`
	Metrics map[string]float64 `json:"metrics"`
}

// Variant returns the named variant, or nil.
func (c *CaseResult) Variant(name string) *VariantResult {
	for _, v := range c.Variants {
		if v.Name == name {
			return v
		}
	}
	return nil
}

func (c *CaseResult) variant(name string) *VariantResult {
	if v := c.Variant(name); v != nil {
		return v
	}
	v := &VariantResult{Name: name}
	c.Variants = append(c.Variants, v)
	return v
}

// Add records a result line measured in round.
func (c *CaseResult) Add(round int, l Line) {
	v := c.variant(l.Variant())
	v.Samples = append(v.Samples, Sample{Round: round, N: l.N, Metrics: l.Metrics})
}

// AddSkip records that a variant was skipped, keeping the first reason.
func (c *CaseResult) AddSkip(variant, reason string) {
	v := c.variant(variant)
	if v.Skipped == "" {
		v.Skipped = reason
	}
}

// byRound returns a variant's values of unit by round.
func (v *VariantResult) byRound(unit string) map[int]float64 {
	m := make(map[int]float64, len(v.Samples))
	for _, s := range v.Samples {
		if x, ok := s.Metrics[unit]; ok {
			m[s.Round] = x
		}
	}
	return m
}

// Finish computes the summaries, ratios and targets of every variant.
func (c *CaseResult) Finish() {
	var base *VariantResult
	if c.Baseline != "" {
		base = c.Variant(c.Baseline)
	}
	if base != nil {
		for unit, src := range c.CostRatios {
			baseBy := base.byRound(src)
			for _, v := range c.Variants {
				for i := range v.Samples {
					m := v.Samples[i].Metrics
					delete(m, unit)
					x, ok := m[src]
					b, okBase := baseBy[v.Samples[i].Round]
					if v != base && ok && okBase && b != 0 {
						m[unit] = x / b
					}
				}
			}
		}
	}
	for _, rr := range c.RefRatios {
		var refBy map[int]float64
		if ref := c.Variant(rr.Ref); ref != nil {
			refBy = ref.byRound(rr.Src)
		}
		for _, v := range c.Variants {
			for i := range v.Samples {
				m := v.Samples[i].Metrics
				// The benchmark's own figure divides by whatever ran
				// before it in its process, or is missing.
				delete(m, rr.Unit)
				x, ok := m[rr.Src]
				r, okRef := refBy[v.Samples[i].Round]
				if slices.Contains(rr.Variants, v.Name) && ok && okRef && r != 0 {
					m[rr.Unit] = x / r
				}
			}
		}
	}
	for _, v := range c.Variants {
		units := map[string][]float64{}
		for _, s := range v.Samples {
			for u, x := range s.Metrics {
				units[u] = append(units[u], x)
			}
		}
		v.Metrics = make(map[string]Summary, len(units))
		for u, xs := range units {
			v.Metrics[u] = Summarize(xs)
		}
		v.Ratio = Summarize(nil)
		if base != nil {
			v.Ratio = Summarize(RoundRatios(v.byRound(c.Metric), base.byRound(c.Metric), c.LowerBetter))
		}
	}
	// Targets last: some compare with another variant's ratio.
	for _, v := range c.Variants {
		t := TargetFor(c.Case, v.Name)
		v.Target = t.Text
		v.Met, v.Undecided = nil, ""
		if t.Check != nil && len(v.Samples) > 0 {
			met, why := t.Check(v, c)
			if why != "" {
				v.Undecided = why
			} else {
				v.Met = &met
			}
		}
	}
	order := map[string]int{}
	for i, n := range append(slices.Clone(scmVariants), acceptVariants...) {
		order[n] = i + 1
	}
	order["raw"], order["ipcframe"] = 1, 2
	sort.SliceStable(c.Variants, func(i, j int) bool {
		return order[c.Variants[i].Name] < order[c.Variants[j].Name]
	})
}

// Undecide withdraws every verdict, saying why: -quick's smoke runs
// decide no target, in the JSON as in the report.
func (c *CaseResult) Undecide(why string) {
	for _, v := range c.Variants {
		if v.Met != nil || v.Undecided != "" {
			v.Met, v.Undecided = nil, why
		}
	}
}

// Keep drops the cases whose name keep rejects, with their perf counts
// and failures.
func (res *Results) Keep(keep func(name string) bool) {
	res.Cases = slices.DeleteFunc(res.Cases, func(c *CaseResult) bool { return !keep(c.Name) })
	res.Perf = slices.DeleteFunc(res.Perf, func(p PerfResult) bool { return !keep(p.Case) })
	res.PerfSkips = slices.DeleteFunc(res.PerfSkips, func(s string) bool {
		name, _, _ := strings.Cut(s, ": ")
		return !keep(name[:max(strings.LastIndexByte(name, '/'), 0)])
	})
	res.Failures = slices.DeleteFunc(res.Failures, func(f string) bool {
		// "name round 2: ..." and "perf name/variant: ...", as runCase
		// and perf write them.
		f = strings.TrimPrefix(f, "perf ")
		for _, c := range res.Cases {
			if strings.HasPrefix(f, c.Name+" round ") || strings.HasPrefix(f, c.Name+"/") {
				return false
			}
		}
		return true
	})
}
