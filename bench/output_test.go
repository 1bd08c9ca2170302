package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRunChecksOutputsFirst gives run an output path it cannot write: it
// must refuse before measuring anything. The context is cancelled, so a
// runner that went on to build the benchmarks fails there instead, with
// another error.
func TestRunChecksOutputsFirst(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nonexistent", "x")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"-svg in a missing directory", []string{"-svg", missing + ".svg", "-o", filepath.Join(dir, "r.md")}, "-svg: open " + missing + ".svg"},
		{"-o in a missing directory", []string{"-o", missing + ".md"}, "-o: open " + missing + ".md"},
		{"-json in a missing directory", []string{"-json", missing + ".json"}, "-json: open " + missing + ".json"},
		{"-json is a directory", []string{"-json", dir}, "-json: open " + dir},
		{"-o and -json one file", []string{"-o", filepath.Join(dir, "r"), "-json", filepath.Join(dir, ".", "r")}, "-o and -json both write"},
		{"with -from", []string{"-from", "x.json", "-o", missing + ".md"}, "-o: open " + missing + ".md"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			var stdout, stderr strings.Builder
			err := run(ctx, append([]string{"-run", "^frame/pipe/16B$"}, tt.args...), &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run: %v, want an error containing %q", err, tt.want)
			}
			// The check leaves no file behind and keeps none it did not make.
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 0 {
				t.Errorf("files left in the output directory: %v", entries)
			}
		})
	}
}

// TestCheckOutputsKeepsExisting checks that the check before a run does
// not truncate an existing output: the earlier report stays until the
// new one replaces it.
func TestCheckOutputsKeepsExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.md")
	if err := os.WriteFile(path, []byte("earlier report"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkOutputs(path, "", "-"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "earlier report" {
		t.Errorf("after the check: %q, %v; want the earlier report", b, err)
	}
}

// TestWriteKeepsGoing writes a run's outputs with one of them failing:
// the others must all be written, and the error name the one that failed.
// When the results were saved nowhere, they go to stderr as JSON.
func TestWriteKeepsGoing(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "nonexistent", "x")
	tests := []struct {
		name             string
		out, svg, json   string
		wantErr          []string
		wantFiles        []string // written, of "out", "svg", "json"
		wantJSONOnStderr bool
	}{
		{"bad -svg", "out", bad, "json", []string{"-svg: open " + bad}, []string{"out", "json"}, false},
		{"bad -json", "out", "svg", bad, []string{"-json: open " + bad, "standard error"}, []string{"out", "svg"}, true},
		{"bad -o, JSON saved", bad, "svg", "json", []string{"report: open " + bad, "-from "}, []string{"svg", "json"}, false},
		{"bad -o, no JSON asked for", bad, "svg", "", []string{"report: open " + bad, "standard error"}, []string{"svg"}, true},
		{"bad -o and -json", bad, "svg", bad + "j", []string{"report: open " + bad, "-json: open " + bad + "j", "standard error"}, []string{"svg"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := func(p string) string {
				if p == "" || filepath.IsAbs(p) {
					return p
				}
				return filepath.Join(dir, p)
			}
			res := fixture()
			var stdout, stderr strings.Builder
			err := write(res, &stdout, &stderr, path(tt.out), path(tt.svg), path(tt.json))
			for _, want := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("write: %v, want an error containing %q", err, want)
				}
			}
			var written []string
			for _, name := range []string{"out", "svg", "json"} {
				if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Size() > 0 {
					written = append(written, name)
				}
			}
			if diff := cmp.Diff(tt.wantFiles, written); diff != "" {
				t.Errorf("files written (-want +got):\n%s", diff)
			}
			if tt.wantJSONOnStderr {
				var back Results
				if err := json.Unmarshal([]byte(stderr.String()), &back); err != nil || len(back.Cases) != len(res.Cases) {
					t.Errorf("stderr does not hold the results: %v: %.200q", err, stderr.String())
				}
			} else if stderr.Len() != 0 {
				t.Errorf("stderr: %.200q, want nothing", stderr.String())
			}
		})
	}
}

// TestRunQuickRounds checks that -quick with an explicit -rounds is
// refused, an invalid one too, before anything is built (the cancelled
// context fails a runner that went on).
func TestRunQuickRounds(t *testing.T) {
	for _, args := range [][]string{
		{"-quick", "-rounds", "-3"},
		{"-rounds", "0", "-quick"},
		{"-quick", "-rounds", "9"},
		{"-quick", "-rounds", "1"},
	} {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		var stdout, stderr strings.Builder
		err := run(ctx, args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), "-rounds") {
			t.Errorf("run(%q) = %v, want an error about -rounds", args, err)
		}
	}
}

// TestKeepPerfSkips checks that -from's -run keeps the perf skips of the
// cases it keeps, and only those.
func TestKeepPerfSkips(t *testing.T) {
	res := &Results{
		Cases: []*CaseResult{{Case: Case{Name: "scm/stream/K=1/P=64"}}, {Case: Case{Name: "scm/seqpacket/K=1/P=64"}}},
		PerfSkips: []string{
			"scm/stream/K=1/P=64/c: C baseline unavailable: no C compiler (cc or gcc) on PATH",
			"scm/seqpacket/K=1/P=64/c: C baseline unavailable: no C compiler (cc or gcc) on PATH",
		},
	}
	res.Keep(func(name string) bool { return strings.Contains(name, "seqpacket") })
	want := []string{"scm/seqpacket/K=1/P=64/c: C baseline unavailable: no C compiler (cc or gcc) on PATH"}
	if diff := cmp.Diff(want, res.PerfSkips); diff != "" {
		t.Errorf("perf skips kept (-want +got):\n%s", diff)
	}
}

// TestFinishPrintsFailures: a run with failures names them on stderr as
// well as in the report, which CI's -quick sends to /dev/null.
func TestFinishPrintsFailures(t *testing.T) {
	res := &Results{Failures: []string{"accept round 1: exit status 1", "hello round 1: signal: killed"}}
	var stdout, stderr strings.Builder
	err := finish(t.Context(), res, &stdout, &stderr, os.DevNull, "", "")
	if err != errFailures {
		t.Fatalf("finish: %v, want errFailures", err)
	}
	for _, f := range res.Failures {
		if !strings.Contains(stderr.String(), "bench: failed: "+f+"\n") {
			t.Errorf("stderr %q does not name %q", stderr.String(), f)
		}
	}
}
