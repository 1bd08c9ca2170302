package main

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Line is one result line of `go test -bench` output:
//
//	BenchmarkSCM/stream/K=1/P=64/c-2   200   5290 ns/op   189120 msgs/s
type Line struct {
	// Name is the benchmark's full name without the -GOMAXPROCS suffix.
	Name string
	// Procs is the GOMAXPROCS suffix, 1 when there is none.
	Procs int
	// N is the iteration count.
	N int64
	// Metrics maps each unit ("ns/op", "msgs/s", "allocs/op") to its value.
	Metrics map[string]float64
}

// Variant returns the last element of the benchmark's name, which names
// the variant within a case ("c", "scm", "inplace").
func (l Line) Variant() string {
	return l.Name[strings.LastIndexByte(l.Name, '/')+1:]
}

// ErrMalformed is returned by ParseLine for a line that starts like a
// benchmark result but is not one.
var ErrMalformed = errors.New("malformed benchmark line")

// ParseLine parses one line of benchmark output. ok is false, with a nil
// error, for lines that are not results: the bare names that -test.v
// prints before running a benchmark, PASS, ok, log output. A line that
// starts with "Benchmark" and has fields after the name must be a complete
// result; anything else is an error wrapping ErrMalformed.
func ParseLine(s string) (l Line, ok bool, err error) {
	// Results start in column 0; an indented line is a benchmark's log
	// output (b.Log, a helper's message), whatever it looks like.
	if !strings.HasPrefix(s, "Benchmark") {
		return Line{}, false, nil
	}
	f := strings.Fields(s)
	if len(f) == 1 {
		return Line{}, false, nil // -test.v announces the benchmark
	}
	bad := func(format string, args ...any) (Line, bool, error) {
		return Line{}, false, fmt.Errorf("%w: %s: %q", ErrMalformed, fmt.Sprintf(format, args...), s)
	}
	if len(f)%2 != 0 {
		return bad("a value without a unit")
	}
	l.Name, l.Procs = splitProcs(f[0])
	if l.Name == "Benchmark" {
		return bad("no benchmark name")
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || n <= 0 {
		return bad("iteration count %q", f[1])
	}
	l.N = n
	l.Metrics = make(map[string]float64, (len(f)-2)/2)
	for i := 2; i < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return bad("value %q", f[i])
		}
		unit := f[i+1]
		if _, dup := l.Metrics[unit]; dup {
			return bad("unit %q twice", unit)
		}
		if _, err := strconv.ParseFloat(unit, 64); err == nil {
			return bad("unit %q is a number", unit)
		}
		l.Metrics[unit] = v
	}
	if len(l.Metrics) == 0 {
		return bad("no measurements")
	}
	return l, true, nil
}

// splitProcs splits "Name-8" into "Name" and 8. The testing package adds
// the suffix only when GOMAXPROCS is not 1, so a name without one has 1.
func splitProcs(s string) (string, int) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 || strings.LastIndexByte(s, '/') > i {
		return s, 1
	}
	p, err := strconv.Atoi(s[i+1:])
	if err != nil || p <= 0 || s[i+1] == '+' {
		return s, 1
	}
	return s[:i], p
}

// Skip is a benchmark the output reported as skipped, with its reason.
type Skip struct {
	Name   string
	Reason string
}

// ParseSkips finds "--- SKIP: Name" lines in benchmark output and the
// reason logged with each. With -test.v (as the runner runs) the testing
// package prints a benchmark's name, then its log lines indented, then
// "--- SKIP": the reason is the indented lines just before. Without -v the
// log lines follow the "--- SKIP" line instead; those are taken when none
// precede it.
func ParseSkips(out string) []Skip {
	var skips []Skip
	lines := strings.Split(out, "\n")
	var before []string // indented lines since the last line in column 0
	for i := 0; i < len(lines); i++ {
		t := strings.TrimSpace(lines[i])
		name, ok := strings.CutPrefix(t, "--- SKIP: ")
		if !ok {
			if indented(lines[i]) {
				before = append(before, lines[i])
			} else {
				before = nil
			}
			continue
		}
		if j := strings.IndexByte(name, ' '); j >= 0 {
			name = name[:j] // " (0.00s)"
		}
		reason := before
		before = nil
		if len(reason) == 0 {
			for i+1 < len(lines) && indented(lines[i+1]) && !strings.HasPrefix(strings.TrimSpace(lines[i+1]), "--- ") {
				i++
				reason = append(reason, lines[i])
			}
		}
		msg := make([]string, len(reason))
		for k, r := range reason {
			msg[k] = logText(r)
		}
		skips = append(skips, Skip{Name: name, Reason: strings.Join(msg, " ")})
	}
	return skips
}

// indented reports whether a line is log output: the testing package
// indents a benchmark's log lines by four spaces, their continuation
// lines by eight.
func indented(s string) bool {
	return strings.HasPrefix(s, "    ") || strings.HasPrefix(s, "\t")
}

// logText is the text of a log line: without its indentation and, on the
// first line of a message (indented by four spaces, its continuation lines
// by more), without the "file.go:12: " the testing package puts before it.
func logText(line string) string {
	s := strings.TrimSpace(line)
	if !strings.HasPrefix(line, "    ") || strings.HasPrefix(line, "     ") || strings.HasPrefix(line, "    \t") {
		return s
	}
	k := strings.Index(s, ".go:")
	if k <= 0 || strings.ContainsAny(s[:k], " \t") {
		return s
	}
	rest := s[k+len(".go:"):]
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if after, ok := strings.CutPrefix(rest[n:], ": "); ok && n > 0 {
		return after
	}
	return s
}
