package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseLine(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Line
		ok      bool
		wantErr bool
	}{
		{
			name: "result with custom metrics",
			in:   "BenchmarkSCM/stream/K=1/P=64/c-2   \t     200\t      5290 ns/op\t  12.10 MB/s\t    189120 msgs/s\t         1.000 xC",
			want: Line{Name: "BenchmarkSCM/stream/K=1/P=64/c", Procs: 2, N: 200,
				Metrics: map[string]float64{"ns/op": 5290, "MB/s": 12.10, "msgs/s": 189120, "xC": 1}},
			ok: true,
		},
		{
			name: "no procs suffix (GOMAXPROCS=1)",
			in:   "BenchmarkAppendFrame 1000 12.5 ns/op 0 B/op 0 allocs/op",
			want: Line{Name: "BenchmarkAppendFrame", Procs: 1, N: 1000,
				Metrics: map[string]float64{"ns/op": 12.5, "B/op": 0, "allocs/op": 0}},
			ok: true,
		},
		{
			name: "hyphenated variant keeps its name",
			in:   "BenchmarkAccept/handoff-naive-8 2000 103325 ns/op 9678 conns/s",
			want: Line{Name: "BenchmarkAccept/handoff-naive", Procs: 8, N: 2000,
				Metrics: map[string]float64{"ns/op": 103325, "conns/s": 9678}},
			ok: true,
		},
		{
			name: "hyphenated variant without procs suffix",
			in:   "BenchmarkAccept/handoff-naive 2000 103325 ns/op",
			want: Line{Name: "BenchmarkAccept/handoff-naive", Procs: 1, N: 2000,
				Metrics: map[string]float64{"ns/op": 103325}},
			ok: true,
		},
		{
			name: "exponent notation",
			in:   "BenchmarkSCM/seqpacket/K=1/P=1/scm-2 100 4196 ns/op 5.4e-05 send-allocs/op",
			want: Line{Name: "BenchmarkSCM/seqpacket/K=1/P=1/scm", Procs: 2, N: 100,
				Metrics: map[string]float64{"ns/op": 4196, "send-allocs/op": 5.4e-05}},
			ok: true,
		},
		{name: "name announced by -test.v", in: "BenchmarkSCM/stream/K=1/P=64/c"},
		{name: "empty", in: ""},
		{name: "PASS", in: "PASS"},
		{name: "ok line", in: "ok  \tgithub.com/handoff-go/handoff/bench\t1.043s"},
		{name: "log output", in: "    cluster_linux_test.go:198: cannot build"},
		{name: "indented log line that looks like a result", in: "    BenchmarkX-2 100 5290 ns/op"},
		{name: "indented malformed log line", in: "\tBenchmark results follow: 3 of them"},
		{name: "skip line", in: "--- SKIP: BenchmarkMiniCluster/respawn"},
		{name: "value without unit", in: "BenchmarkX-2 100 5290 ns/op 12", wantErr: true},
		{name: "iterations not a number", in: "BenchmarkX-2 many 5290 ns/op", wantErr: true},
		{name: "zero iterations", in: "BenchmarkX-2 0 5290 ns/op", wantErr: true},
		{name: "negative iterations", in: "BenchmarkX-2 -5 5290 ns/op", wantErr: true},
		{name: "value not a number", in: "BenchmarkX-2 100 fast ns/op", wantErr: true},
		{name: "NaN value", in: "BenchmarkX-2 100 NaN ns/op", wantErr: true},
		{name: "infinite value", in: "BenchmarkX-2 100 +Inf ns/op", wantErr: true},
		{name: "unit twice", in: "BenchmarkX-2 100 1 ns/op 2 ns/op", wantErr: true},
		{name: "unit is a number", in: "BenchmarkX-2 100 1 2", wantErr: true},
		{name: "iterations only", in: "BenchmarkX-2 100", wantErr: true},
		{name: "no name", in: "Benchmark-2 100 1 ns/op", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := ParseLine(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("ParseLine(%q) error = %v, want ErrMalformed", tt.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseLine(%q): %v", tt.in, err)
			}
			if ok != tt.ok {
				t.Fatalf("ParseLine(%q) ok = %v, want %v", tt.in, ok, tt.ok)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseLine(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestLineVariant(t *testing.T) {
	tests := []struct{ name, want string }{
		{"BenchmarkSCM/stream/K=1/P=64/batched", "batched"},
		{"BenchmarkAccept/handoff-naive", "handoff-naive"},
		{"BenchmarkAppendFrame", "BenchmarkAppendFrame"},
	}
	for _, tt := range tests {
		if got := (Line{Name: tt.name}).Variant(); got != tt.want {
			t.Errorf("Variant of %q = %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestParseSkips reads skips from real -test.v output of Go 1.26 (the
// testdata files were captured from the benchmark binary: skip-c.txt with
// no C compiler on PATH, skip-cluster.txt with GOOS=plan9 failing the
// build of mini-cluster), where the reason comes before "--- SKIP", and
// from the order without -v, where it follows.
func TestParseSkips(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tests := []struct {
		name string
		out  string
		want []Skip
	}{
		{"-test.v, no C compiler", read("skip-c.txt"), []Skip{{
			Name:   "BenchmarkSCM/stream/K=1/P=64/c",
			Reason: "C baseline unavailable: no C compiler (cc or gcc) on PATH; install one to get the C sendmsg/recvmsg loop",
		}}},
		{"-test.v, multi-line reason", read("skip-cluster.txt"), []Skip{{
			Name: "BenchmarkMiniCluster/restart",
			Reason: "cannot build ../cmd/mini-cluster: exit status 1: # github.com/handoff-go/handoff/supervise " +
				"../supervise/supervise.go:367:17: undefined: syscall.Signal ../supervise/supervise.go:554:36: undefined: syscall.Signal",
		}}},
		{"without -v", "--- SKIP: BenchmarkSCM/stream/K=1/P=64/c (0.00s)\n    main_linux_test.go:45: C baseline unavailable: no C compiler\n" +
			"--- SKIP: BenchmarkBare\nPASS\n", []Skip{
			{Name: "BenchmarkSCM/stream/K=1/P=64/c", Reason: "C baseline unavailable: no C compiler"},
			{Name: "BenchmarkBare"},
		}},
		{"-test.v, a logging benchmark before the skip", "BenchmarkX/a\n    x_test.go:1: round 1\nBenchmarkX/a-2 1 5 ns/op\n" +
			"BenchmarkX/b\n--- SKIP: BenchmarkX/b\nBenchmarkX/c\n    x_test.go:9: why\n--- SKIP: BenchmarkX/c\n", []Skip{
			{Name: "BenchmarkX/b"},
			{Name: "BenchmarkX/c", Reason: "why"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, ParseSkips(tt.out)); diff != "" {
				t.Errorf("ParseSkips (-want +got):\n%s", diff)
			}
		})
	}
}
