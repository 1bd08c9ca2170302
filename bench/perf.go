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

// runPerf counts the events of one variant of c under perf stat, per
// message: the difference between a run of 2×msgs messages and one of msgs,
// divided by msgs. Everything else the two runs share cancels out: the
// processes' start-up, the warm-up messages, testing's b.N = 1 run, and the
// Go harness's own runtime (the whole count of futex and epoll calls of the
// C variant, whose processes make none).
func (r *runner) runPerf(ctx context.Context, c Case, variant string, msgs int) (PerfResult, error) {
	var counts [2]map[string]float64
	for i, n := range []int{msgs, 2 * msgs} {
		out := filepath.Join(r.tmp, "perf.csv")
		args := []string{"stat", "-x", ",", "-o", out, "-e", strings.Join(perfEvents, ","), "--", r.bin}
		args = append(args, r.testArgs(c.Bench+"/"+anchored(variant), strconv.Itoa(n)+"x")...)
		if _, err := r.exec(ctx, r.dir, nil, "perf", args...); err != nil {
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
