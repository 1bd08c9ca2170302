//go:build linux

package main_test

import (
	"flag"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

func TestInOrder(t *testing.T) {
	tests := []struct {
		rotate string
		want   []string
	}{
		{"", []string{"a", "b", "c"}},
		{"0", []string{"a", "b", "c"}},
		{"1", []string{"b", "c", "a"}},
		{"2", []string{"c", "a", "b"}},
		{"4", []string{"b", "c", "a"}},
		{"-1", []string{"a", "b", "c"}},
		{"x", []string{"a", "b", "c"}},
	}
	for _, tt := range tests {
		t.Run("rotate="+tt.rotate, func(t *testing.T) {
			t.Setenv(RotateVar, tt.rotate)
			in := []string{"a", "b", "c"}
			if diff := cmp.Diff(tt.want, inOrder(in...)); diff != "" {
				t.Errorf("inOrder (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"a", "b", "c"}, in); diff != "" {
				t.Errorf("inOrder changed its argument (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSCMNsPerOpIsTheLoop runs the C and scm variants for 100 messages and
// checks that ns/op and MB/s, which benchstat compares, are the timed
// loop's (from msgs/s) and not the benchmark timer's, which for the C
// loop also covers starting both C processes; and that the receiver's
// exact allocation count is reported.
func TestSCMNsPerOpIsTheLoop(t *testing.T) {
	fdcensus.Verify(t)
	cbin, whyNot := buildCLoop(t)
	if cbin == "" {
		t.Skip(whyNot)
	}
	bt := flag.Lookup("test.benchtime")
	old := bt.Value.String()
	if err := bt.Value.Set("100x"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = bt.Value.Set(old) }()
	for _, impl := range []string{"c", "scm"} {
		r := testing.Benchmark(func(b *testing.B) { benchSCM(b, cbin, unix.SOCK_SEQPACKET, 1, 64, impl) })
		if r.N != 100 {
			t.Fatalf("%s: ran %d messages, want 100 (did the benchmark fail?)", impl, r.N)
		}
		// What benchstat reads: the figures as go test prints them,
		// "N value unit value unit ...".
		f := strings.Fields(r.String())
		metrics := map[string]float64{}
		for i := 1; i+1 < len(f); i += 2 {
			x, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				t.Fatalf("%s: result %q: %v", impl, r.String(), err)
			}
			metrics[f[i+1]] = x
		}
		msgs := metrics["msgs/s"]
		// 1 %: the line rounds its figures; start-up would add several
		// times the loop's time over 100 messages.
		if loop := 1e9 / msgs; math.Abs(metrics["ns/op"]-loop) > 0.01*loop {
			t.Errorf("%s: ns/op %v, want the loop's %v (1e9 / %v msgs/s)", impl, metrics["ns/op"], loop, msgs)
		}
		if mbs := 64 * msgs / 1e6; math.Abs(metrics["MB/s"]-mbs) > 0.01*mbs {
			t.Errorf("%s: MB/s %v, want the loop's %v (64 B × %v msgs/s)", impl, metrics["MB/s"], mbs, msgs)
		}
		if _, ok := r.Extra["recv-allocs/op"]; ok != (impl != "c") {
			t.Errorf("%s: recv-allocs/op reported = %v, want %v", impl, ok, impl != "c")
		}
	}
}

// TestAllocsOnlyWhereTheyAreTheServers runs benchmarks in a copy of this
// binary and checks where testing's allocs/op is reported: it counts this
// process alone, which is the Go receiver of the scm variants, but only the
// load client, log reader or launcher of the accept, mini-cluster and C
// loop benchmarks, whose servers are other processes.
func TestAllocsOnlyWhereTheyAreTheServers(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		bench, benchtime, result string
		allocs                   bool
	}{
		{"^BenchmarkSCM$/^seqpacket$/^K=1$/^P=1$/^scm$", "20x", "BenchmarkSCM/seqpacket/K=1/P=1/scm", true},
		{"^BenchmarkSCM$/^seqpacket$/^K=1$/^P=1$/^c$", "20x", "BenchmarkSCM/seqpacket/K=1/P=1/c", false},
		{"^BenchmarkAccept$/^inplace$", "20x", "BenchmarkAccept/inplace", false},
		{"^BenchmarkMiniCluster$/^restart$", "1x", "BenchmarkMiniCluster/restart", false},
	}
	for _, tt := range tests {
		t.Run(tt.result, func(t *testing.T) {
			cmd := exec.Command(bin, "-test.run=^$", "-test.bench="+tt.bench, "-test.benchtime="+tt.benchtime, "-test.v", "-test.timeout=2m")
			cmd.Env = append(os.Environ(), pc.Env())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			var line string
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, tt.result+"-") || strings.HasPrefix(l, tt.result+" ") || strings.HasPrefix(l, tt.result+"\t") {
					line = l
				}
			}
			if line == "" {
				if strings.Contains(string(out), "--- SKIP: "+tt.result) {
					t.Skipf("skipped:\n%s", out)
				}
				t.Fatalf("no result line for %s:\n%s", tt.result, out)
			}
			if got := strings.Contains(line, "allocs/op"); got != tt.allocs {
				t.Errorf("allocs/op reported = %v, want %v: %s", got, tt.allocs, line)
			}
		})
	}
}
