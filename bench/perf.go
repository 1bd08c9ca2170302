package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// perfEvents are counted by -perf: the syscalls a descriptor-passing loop
// makes, the ones the Go runtime makes when it parks and wakes goroutines,
// and the scheduler's context switches.
var perfEvents = []string{
	"context-switches",
	"syscalls:sys_enter_sendmsg",
	"syscalls:sys_enter_recvmsg",
	"syscalls:sys_enter_sendmmsg",
	"syscalls:sys_enter_recvmmsg",
	"syscalls:sys_enter_epoll_pwait",
	"syscalls:sys_enter_futex",
	"syscalls:sys_enter_nanosleep",
}

// PerfResult is perf stat's counts of one variant of a case per message
// (see runPerf). The counts cover every process of the benchmark (perf
// follows children), the C pair and the Go sender included.
type PerfResult struct {
	Case     string             `json:"case"`
	Variant  string             `json:"variant"`
	Messages int                `json:"messages"`
	PerMsg   map[string]float64 `json:"per_msg"`
}

// PerfAvailable checks that perf exists and that syscall tracepoints can be
// counted (they need tracefs and perf_event_paranoid permitting it). The
// error says why not.
func PerfAvailable(ctx context.Context) error {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return errors.New("perf is not installed")
	}
	dir, err := os.MkdirTemp("", "handoff-perf")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "out")
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	msg, err := exec.CommandContext(ctx, perf, "stat", "-x", ",", "-o", out, "-e", strings.Join(perfEvents, ","), "--", "true").CombinedOutput()
	if err != nil {
		return fmt.Errorf("perf stat cannot count syscall tracepoints: %v: %s", err, strings.TrimSpace(string(msg)))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	if _, err := ParsePerfCSV(string(b)); err != nil {
		return err
	}
	return nil
}

// ParsePerfCSV parses `perf stat -x ,` output: "value,unit,event,...".
// Comment and blank lines are skipped; an event perf could not count is an
// error.
func ParsePerfCSV(s string) (map[string]float64, error) {
	counts := map[string]float64{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) < 3 {
			return nil, fmt.Errorf("perf stat line %q: too few fields", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("perf stat could not count %s: %s", f[2], f[0])
		}
		counts[f[2]] = v
	}
	if len(counts) == 0 {
		return nil, errors.New("perf stat printed no counts")
	}
	return counts, nil
}

// perfCases are the cases measured under perf: one message of each
// socket type at one descriptor, and the largest batch of descriptors.
func perfCases(cases []Case) []Case {
	want := map[string]bool{"scm/stream/K=1/P=64": true, "scm/seqpacket/K=1/P=64": true, "scm/seqpacket/K=253/P=64": true}
	var out []Case
	for _, c := range cases {
		if want[c.Name] {
			out = append(out, c)
		}
	}
	return out
}

// errPerfSkipped is returned by runPerf when the benchmark skipped the
// variant (no C compiler for the C loop): its counts are those of the
// idle harness, no measurement.
type errPerfSkipped struct{ reason string }

func (e *errPerfSkipped) Error() string { return "skipped: " + e.reason }

// perfCount counts the events of every variant of cases with perf stat.
// A variant the benchmark skipped goes to res.PerfSkips and one that
// failed to res.Failures, neither to res.Perf. An interrupt stops it at
// once, and the run it killed is no failure.
func (r *runner) perfCount(ctx context.Context, cases []Case, msgs int, res *Results) {
	for _, c := range cases {
		for _, v := range scmVariants {
			if ctx.Err() != nil {
				return
			}
			fmt.Fprintf(r.log, "bench: perf stat %s/%s, %d messages\n", c.Name, v, msgs)
			pr, err := r.runPerf(ctx, c, v, msgs)
			var skip *errPerfSkipped
			switch {
			case ctx.Err() != nil:
				// Killed by the interrupt: nothing measured, nothing failed.
				return
			case errors.As(err, &skip):
				res.PerfSkips = append(res.PerfSkips, fmt.Sprintf("%s/%s: %s", c.Name, v, skip.reason))
			case err != nil:
				res.Failures = append(res.Failures, fmt.Sprintf("perf %s/%s: %v", c.Name, v, err))
			default:
				res.Perf = append(res.Perf, pr)
			}
		}
	}
}

// runPerf counts the events of one variant of c under perf stat, per
// message: the difference between a run of 2×msgs messages and one of msgs,
// divided by msgs. Everything else the two runs share cancels out: the
// processes' start-up, the warm-up messages, testing's b.N = 1 run, and the
// Go harness's own runtime (the whole count of futex and epoll calls of the
// C variant, whose processes make none). Each run must print the variant's
// result line: perf counts a skipped or unmatched benchmark too, as the
// harness's idle run.
func (r *runner) runPerf(ctx context.Context, c Case, variant string, msgs int) (PerfResult, error) {
	perf := r.perfTool
	if perf == "" {
		perf = "perf"
	}
	var counts [2]map[string]float64
	for i, n := range []int{msgs, 2 * msgs} {
		out := filepath.Join(r.tmp, "perf.csv")
		args := []string{"stat", "-x", ",", "-o", out, "-e", strings.Join(perfEvents, ","), "--", r.bin}
		args = append(args, r.testArgs(c.Bench+"/"+anchored(variant), strconv.Itoa(n)+"x")...)
		stdout, err := r.exec(ctx, r.dir, nil, perf, args...)
		if err != nil {
			return PerfResult{}, err
		}
		if err := variantRan(stdout, variant); err != nil {
			return PerfResult{}, err
		}
		b, err := os.ReadFile(out)
		if err != nil {
			return PerfResult{}, err
		}
		if counts[i], err = ParsePerfCSV(string(b)); err != nil {
			return PerfResult{}, err
		}
	}
	per, err := PerMessage(counts[0], counts[1], msgs)
	if err != nil {
		return PerfResult{}, err
	}
	return PerfResult{Case: c.Name, Variant: variant, Messages: msgs, PerMsg: per}, nil
}

// variantRan checks that benchmark output holds a result line of variant:
// an *errPerfSkipped when the benchmark skipped it, an error when it
// printed none or a malformed one.
func variantRan(out, variant string) error {
	for line := range strings.SplitSeq(out, "\n") {
		l, ok, err := ParseLine(line)
		if err != nil {
			return err
		}
		if ok && l.Variant() == variant {
			return nil
		}
	}
	for _, s := range ParseSkips(out) {
		if s.Name[strings.LastIndexByte(s.Name, '/')+1:] == variant {
			return &errPerfSkipped{reason: s.Reason}
		}
	}
	return fmt.Errorf("no result line of variant %s in the benchmark's output", variant)
}

// PerMessage returns (large − small) / msgs for every event, named without
// the "syscalls:sys_enter_" prefix: large counted msgs more messages than
// small, and everything else alike. A difference can come out negative
// when the fixed part varies more than the messages add; it is kept, as
// the sign that the count says nothing.
func PerMessage(small, large map[string]float64, msgs int) (map[string]float64, error) {
	if msgs <= 0 {
		return nil, fmt.Errorf("per message of %d messages", msgs)
	}
	if len(small) != len(large) {
		return nil, fmt.Errorf("perf counted %d events in one run and %d in the other", len(small), len(large))
	}
	per := make(map[string]float64, len(large))
	for ev, n := range large {
		m, ok := small[ev]
		if !ok {
			return nil, fmt.Errorf("perf counted %s in one run only", ev)
		}
		per[strings.TrimPrefix(ev, "syscalls:sys_enter_")] = (n - m) / float64(msgs)
	}
	return per, nil
}
