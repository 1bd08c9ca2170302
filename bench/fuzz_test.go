package main

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParseLine checks that ParseLine never panics, that every result it
// accepts is complete, and that formatting a result again and parsing it
// gives the same result. Seeds: testdata/fuzz/FuzzParseLine.
func FuzzParseLine(f *testing.F) {
	for _, s := range []string{
		"BenchmarkSCM/stream/K=1/P=64/c-2   \t     200\t      5290 ns/op\t  12.10 MB/s\t    189120 msgs/s",
		"BenchmarkAccept/handoff-naive-8 2000 103325 ns/op 9678 conns/s",
		"BenchmarkX 1 5.4e-05 send-allocs/op",
		"BenchmarkX-2 100 5290 ns/op 12",
		"--- SKIP: BenchmarkX",
		"PASS",
		"    BenchmarkX-2 100 5290 ns/op",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, ok, err := ParseLine(s)
		if err != nil || !ok {
			if ok {
				t.Fatalf("ParseLine(%q): ok with error %v", s, err)
			}
			return
		}
		if !strings.HasPrefix(s, "Benchmark") {
			t.Fatalf("ParseLine(%q) accepted a line that does not start in column 0 with Benchmark", s)
		}
		if !strings.HasPrefix(l.Name, "Benchmark") || l.Name == "Benchmark" || l.N <= 0 || l.Procs <= 0 || len(l.Metrics) == 0 {
			t.Fatalf("ParseLine(%q) accepted an incomplete result %+v", s, l)
		}
		var b strings.Builder
		b.WriteString(l.Name + "-" + strconv.Itoa(l.Procs) + " " + strconv.FormatInt(l.N, 10))
		for unit, v := range l.Metrics {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("ParseLine(%q) accepted %v %s", s, v, unit)
			}
			b.WriteString(" " + strconv.FormatFloat(v, 'g', -1, 64) + " " + unit)
		}
		again, ok, err := ParseLine(b.String())
		if err != nil || !ok {
			t.Fatalf("ParseLine(%q) = %v, %v after formatting %q", b.String(), ok, err, s)
		}
		if diff := cmp.Diff(l, again); diff != "" {
			t.Fatalf("round trip of %q (-first +second):\n%s", s, diff)
		}
	})
}

// FuzzParsePerfCSV checks that perf stat output never makes the parser
// panic and that what it accepts is numbers.
func FuzzParsePerfCSV(f *testing.F) {
	f.Add("# started on Sat Nov 21 07:40:51 2026\n\n905,,context-switches,905049,100.00,,\n0,,syscalls:sys_enter_sendmsg,905049,100.00,,\n")
	f.Add("<not supported>,,syscalls:sys_enter_sendmsg,0,100.00,,\n")
	f.Add("1,2\n")
	f.Fuzz(func(t *testing.T, s string) {
		counts, err := ParsePerfCSV(s)
		if err != nil {
			return
		}
		if len(counts) == 0 {
			t.Fatalf("ParsePerfCSV(%q): no counts and no error", s)
		}
	})
}

// FuzzParseSkips checks that ParseSkips never panics, finds one skip per
// "--- SKIP: " line and returns single-line reasons. Seeds:
// testdata/fuzz/FuzzParseSkips, among them real -test.v output.
func FuzzParseSkips(f *testing.F) {
	f.Add("BenchmarkX\n    x_test.go:1: why\n--- SKIP: BenchmarkX\n")
	f.Fuzz(func(t *testing.T, s string) {
		skips := ParseSkips(s)
		want := 0
		for _, line := range strings.Split(s, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "--- SKIP: ") {
				want++
			}
		}
		if len(skips) != want {
			t.Fatalf("ParseSkips(%q): %d skips, want %d", s, len(skips), want)
		}
		for _, sk := range skips {
			if strings.Contains(sk.Reason, "\n") || strings.Contains(sk.Name, " ") {
				t.Fatalf("ParseSkips(%q): skip %+v", s, sk)
			}
		}
	})
}
