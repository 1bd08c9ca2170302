package main

import (
	"encoding/json"
	"math"
	"slices"
)

// Summary is the median, minimum and maximum of a set of samples.
type Summary struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// MarshalJSON writes null for an empty summary, whose figures are NaN,
// which JSON cannot carry.
func (s Summary) MarshalJSON() ([]byte, error) {
	if s.N == 0 {
		return []byte("null"), nil
	}
	type plain Summary
	return json.Marshal(plain(s))
}

// Summarize returns the summary of xs, ignoring NaNs; N is 0 when nothing
// is left. The median of an even count is the mean of the middle two.
func Summarize(xs []float64) Summary {
	v := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Summary{Median: m, Min: v[0], Max: v[len(v)-1], N: len(v)}
}

// RoundRatios pairs a variant's samples with its baseline's by round and
// returns one ratio per round in which both were measured: v/base, or
// base/v when lower is better, so that above 1 always means "better than
// the baseline". Rounds missing on either side, and zero denominators, are
// left out rather than guessed.
func RoundRatios(variant, base map[int]float64, lowerBetter bool) []float64 {
	rounds := make([]int, 0, len(variant))
	for r := range variant {
		rounds = append(rounds, r)
	}
	slices.Sort(rounds)
	var out []float64
	for _, r := range rounds {
		v := variant[r]
		b, ok := base[r]
		if !ok {
			continue
		}
		num, den := v, b
		if lowerBetter {
			num, den = b, v
		}
		if den == 0 || math.IsNaN(num) || math.IsNaN(den) {
			continue
		}
		out = append(out, num/den)
	}
	return out
}
