package main

import (
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
)

// groupTitles are the report's sections, in order.
var groupTitles = []struct{ group, title, about string }{
	{"scm", "scmrights: descriptor passing between two processes",
		"Each message carries P payload bytes and K copies of one descriptor; the receiver closes every descriptor. " +
			"Sender and receiver are separate processes. Variants: **c** a blocking sendmsg/recvmsg loop in C " +
			"(bench/testdata/cloop.c, both sides C), the limit; **naive** WriteMsgUnix+UnixRights / " +
			"ReadMsgUnix+ParseSocketControlMessage; **scm** scmrights Conn.Send/Recv; **batched** Conn.SendBatch/RecvBatch, " +
			"64 messages per call. Ratio: msgs/s over the C loop's; x-naive is scm's msgs/s over naive's in the same round. recv-allocs/op and send-allocs/op are each side's " +
			"allocations per message, counted exactly around its loop (testing's allocs/op rounds down to an integer); " +
			"\"0 allocs\" means below 0.01."},
	{"frame", "ipcframe: frames against raw bytes",
		"Writer and reader in two goroutines of one process; **raw** is one Write per frame's bytes and reads into a " +
			"64 KiB buffer. Ratio: frames/s over raw's. frame-allocs/op counts both sides' allocations per frame exactly; " +
			"\"0 allocs\" means below 0.01."},
	{"accept", "Accept path",
		"New TCP connections on loopback from 4 client goroutines; each server turns the connection into a net.Conn and " +
			"closes it. **inplace** one process accepting; **handoff** a master accepting every queued connection " +
			"(non-blocking accept4 until EAGAIN) and sending the batch in one scmrights message over SOCK_SEQPACKET to the " +
			"next of N workers; **handoff-naive** Accept and one WriteMsgUnix per connection; **shared** N workers on one " +
			"listening socket; **reuseport** N workers on a reuseport group. The C baseline (bench/testdata/caccept.c, every " +
			"server process C, blocking in the kernel): **inplace-c** accept4 and close; **handoff-c** a master's blocking " +
			"accept4 and one sendmsg/SCM_RIGHTS per connection over SOCK_SEQPACKET to the next of N workers, which recvmsg " +
			"and close. Server CPU is getrusage(RUSAGE_SELF) of every server process (master and workers). Ratio: conns/s " +
			"over in place's; cpu-x-inplace is server CPU per connection over in place's in the same round; x-inplace-c " +
			"and cpu-x-inplace-c the same over inplace-c's, x-handoff-c conns/s over handoff-c's."},
	{"hello", "mini-cluster against standalone (examples/hello)",
		"BenchmarkHello of cmd/mini-cluster (its test binary, run like the others): requests/s of examples/hello under " +
			"`mini-cluster -n 2` (shared mode) and standalone, with the same keep-alive load client (internal/loadclient) " +
			"over 8 or 64 connections, in 4 interleaved rounds of at least 10000 requests a side within each run, the side " +
			"going first alternating. cluster/standalone is the median of those rounds' ratios (the figure here its median " +
			"over the runner's rounds); busiest-worker-share is the share of a cluster round's requests the busier worker " +
			"served; master-RSS-KiB is the master's VmRSS after the load."},
	{"cluster", "mini-cluster",
		"`mini-cluster -n 2 -log-format json -- hello` (examples/hello). **restart**: SIGHUP → the master's " +
			"\"restart done\" record of the new generation (every new worker sent READY=1). **respawn**: SIGKILL to a worker → " +
			"its replacement's \"serving\" line (hello writes it just before READY=1); respawn-ms-started is the time to the " +
			"\"worker started\" record."},
}

// fmtNum formats a figure with three significant digits and an SI suffix.
func fmtNum(x float64) string {
	if !finite(x) {
		return "—"
	}
	a := math.Abs(x)
	switch {
	case a == 0:
		return "0"
	case a >= 1e9:
		return strconv.FormatFloat(x/1e9, 'f', digits(a/1e9), 64) + "G"
	case a >= 1e6:
		return strconv.FormatFloat(x/1e6, 'f', digits(a/1e6), 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(x/1e3, 'f', digits(a/1e3), 64) + "k"
	case a >= 0.01:
		return strconv.FormatFloat(x, 'f', digits(a), 64)
	}
	return strconv.FormatFloat(x, 'g', 2, 64)
}

// digits is how many decimals leave three significant digits of x ≥ 0.01.
func digits(x float64) int {
	switch {
	case x >= 100:
		return 0
	case x >= 10:
		return 1
	case x >= 1:
		return 2
	}
	return 3
}

// fmtSummary formats "median [min–max]", or just the median for one sample.
func fmtSummary(s Summary, format func(float64) string) string {
	if s.N == 0 {
		return "—"
	}
	if s.N == 1 || s.Min == s.Max {
		return format(s.Median)
	}
	return fmt.Sprintf("%s [%s–%s]", format(s.Median), format(s.Min), format(s.Max))
}

// fmtRatio formats a ratio with two decimals, rounded toward the side
// that fails a target, so that a figure that misses one never prints as
// if it met it: down for speed ("≥ 0.83": 0.8299 prints 0.82), up when
// cost says so ("≤ 1.5": 1.5001 prints 1.51). The rounding is of the
// figure's exact decimal value, the one the verdict compares.
func fmtRatio(x float64, cost bool) string {
	if !finite(x) {
		return "—"
	}
	r, ok := new(big.Rat).SetString(strconv.FormatFloat(x, 'f', -1, 64))
	if !ok {
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	r.Mul(r, big.NewRat(100, 1))
	// Quo truncates toward zero; floor and ceiling differ from it only
	// when there is a remainder.
	q, m := new(big.Int).QuoRem(r.Num(), r.Denom(), new(big.Int))
	if m.Sign() != 0 {
		switch {
		case cost && m.Sign() > 0:
			q.Add(q, big.NewInt(1))
		case !cost && m.Sign() < 0:
			q.Sub(q, big.NewInt(1))
		}
	}
	return new(big.Rat).SetFrac(q, big.NewInt(100)).FloatString(2)
}

// speedRatio and costRatio are fmtRatio for fmtSummary.
func speedRatio(x float64) string { return fmtRatio(x, false) }
func costRatio(x float64) string  { return fmtRatio(x, true) }

// unitFormat is how a unit's figures are printed: ratios (the runner's
// per-round ones, x-… and cpu-x-…, and BenchmarkHello's) with fmtRatio,
// costs rounded up; the rest with fmtNum.
func unitFormat(unit string) func(float64) string {
	switch {
	case strings.HasPrefix(unit, "cpu-x-"):
		return costRatio
	case strings.HasPrefix(unit, "x-"), unit == helloRatio:
		return speedRatio
	}
	return fmtNum
}

// cell escapes text for a Markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

// Markdown renders the report. plot, when not empty, is the link to the
// SVG plot.
func Markdown(res *Results, plot string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	mode := fmt.Sprintf("%d rounds", res.Rounds)
	if res.Quick {
		mode = "-quick: 1 round of a subset, tiny iteration counts; figures are a smoke test, not measurements, and decide no target"
	}
	w("## Report (`go run ./bench`, %s)\n\n", mode)
	if res.Interrupted {
		w("**Interrupted**: a partial run. Cases and rounds after the interruption are missing, and the figures are " +
			"of the rounds that completed.\n\n")
	}
	w("| environment | |\n|---|---|\n")
	w("| date | %s |\n", cell(res.Env.Date))
	w("| OS, kernel | %s, %s |\n", cell(res.Env.OS), cell(res.Env.Kernel))
	cpu := strconv.Itoa(res.Env.CPUs) + " CPUs"
	if res.Env.CPUModel != "" {
		cpu += ", " + res.Env.CPUModel
	}
	w("| CPU | %s |\n", cell(cpu))
	w("| Go | %s |\n", cell(res.Env.Go))
	w("| C compiler | %s |\n", cell(res.Env.CC))
	w("| load average (1, 5, 15 min) before → after | %s → %s |\n\n", cell(res.Env.LoadBefore), cell(res.Env.LoadAfter))
	w("Every figure is the median [min–max] over the rounds. Each round runs a case's variants back to back in one " +
		"benchmark process, starting with a different variant each round. A ratio is computed within each round " +
		"against the baseline measured in the same round by the same process; the table gives the median " +
		"[min–max] of those per-round ratios (above 1 is better than the baseline). Ratios are printed with two " +
		"decimals rounded toward the side that fails a target (speed down, CPU cost up), so that a figure printed as " +
		"meeting a threshold meets it. Targets are the design brief's; the met column judges the median alone (the " +
		"[min–max] beside it shows how near a thing it was), and \"no baseline\" there means the " +
		"figure it compares with was not measured, so nothing is decided.\n\n")
	if plot != "" {
		w("![fds/s against fds per message](%s)\n\n", plot)
	}
	for _, g := range groupTitles {
		var crs []*CaseResult
		for _, c := range res.Cases {
			if c.Group == g.group {
				crs = append(crs, c)
			}
		}
		if len(crs) == 0 {
			continue
		}
		w("### %s\n\n%s\n\n", g.title, g.about)
		writeTable(&b, crs, !res.Quick)
		if g.group == "accept" {
			for _, cr := range crs {
				b.WriteString(acceptLines(cr))
			}
		}
	}
	if res.PerfNote != "" || len(res.Perf) > 0 || len(res.PerfSkips) > 0 {
		w("### Syscalls and context switches per message (perf stat)\n\n")
		if res.PerfNote != "" {
			w("perf: %s\n\n", res.PerfNote)
		}
		if len(res.Perf) > 0 {
			writePerf(&b, res.Perf)
		}
		if len(res.PerfSkips) > 0 {
			w("Not counted, skipped by the benchmark:\n\n- %s\n\n", strings.Join(res.PerfSkips, "\n- "))
		}
	}
	var skips []string
	for _, c := range res.Cases {
		if c.Skipped != "" {
			skips = append(skips, fmt.Sprintf("- %s: %s", c.Name, c.Skipped))
		}
		for _, v := range c.Variants {
			if v.Skipped != "" && len(v.Samples) == 0 {
				skips = append(skips, fmt.Sprintf("- %s/%s: %s", c.Name, v.Name, v.Skipped))
			}
		}
	}
	if len(skips) > 0 {
		w("### Skipped\n\n%s\n\n", strings.Join(skips, "\n"))
	}
	if len(res.Failures) > 0 {
		w("### Failures\n\n")
		for _, f := range res.Failures {
			w("```\n%s\n```\n\n", strings.TrimSpace(f))
		}
	}
	return b.String()
}

// writeTable writes one section's table: a row per variant of each case,
// and a verdict column when verdicts says so (not for -quick's smoke runs,
// whose tiny counts decide nothing).
func writeTable(b *strings.Builder, crs []*CaseResult, verdicts bool) {
	c0 := crs[0]
	hasRatio := c0.Baseline != ""
	// Cases of a section share the compared metric, or the cells name it.
	metricHeader, unitInCell := c0.Metric, false
	var extra []string
	for _, cr := range crs {
		if cr.Metric != c0.Metric {
			metricHeader, unitInCell = "figure", true
		}
		for _, u := range cr.Extra {
			if !slices.Contains(extra, u) {
				extra = append(extra, u)
			}
		}
	}
	header := []string{"case", "variant", metricHeader}
	if hasRatio {
		header = append(header, "× "+c0.Baseline)
	}
	header = append(header, extra...)
	header = append(header, "target")
	if verdicts {
		header = append(header, "met")
	}
	fmt.Fprintf(b, "| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat("---|", len(header)))
	for _, cr := range crs {
		if cr.Skipped != "" {
			fmt.Fprintf(b, "| %s | all | skipped: %s |%s\n", cell(cr.Name), cell(cr.Skipped), strings.Repeat(" |", len(header)-3))
			continue
		}
		for _, v := range cr.Variants {
			row := []string{cr.Name, v.Name}
			if len(v.Samples) == 0 {
				row = append(row, "skipped: "+cell(v.Skipped))
				for len(row) < len(header) {
					row = append(row, "")
				}
				fmt.Fprintf(b, "| %s |\n", strings.Join(row, " | "))
				continue
			}
			fig := fmtSummary(v.Metrics[cr.Metric], unitFormat(cr.Metric))
			if unitInCell {
				fig += " " + cr.Metric
			}
			row = append(row, fig)
			if hasRatio {
				if v.Name == cr.Baseline {
					row = append(row, "1")
				} else {
					row = append(row, fmtSummary(v.Ratio, speedRatio))
				}
			}
			for _, u := range extra {
				s, ok := v.Metrics[u]
				if !ok {
					row = append(row, "")
					continue
				}
				row = append(row, fmtSummary(s, unitFormat(u)))
			}
			row = append(row, cell(v.Target))
			if verdicts {
				met := v.Undecided
				if v.Met != nil {
					met = "**no**"
					if *v.Met {
						met = "yes"
					}
				}
				row = append(row, cell(met))
			}
			fmt.Fprintf(b, "| %s |\n", strings.Join(row, " | "))
		}
	}
	b.WriteString("\n")
}

// acceptLines states the accept path's ratios that the brief's targets
// and anchors name, Go beside C, each the median [min–max] of per-round
// ratios; "" without a measurement of either handoff variant.
func acceptLines(cr *CaseResult) string {
	// A missing variant or unit is an empty summary (N = 0): no line.
	metric := func(name, unit string) Summary {
		v := cr.Variant(name)
		switch {
		case v == nil:
			return Summary{}
		case unit == "":
			return v.Ratio
		}
		return v.Metrics[unit]
	}
	var lines []string
	for _, l := range []struct {
		label string
		s     Summary
		cost  bool
		note  string
	}{
		{"Go hand-off ÷ Go in place", metric("handoff", ""), false, "target ≥ 0.83"},
		{"C hand-off ÷ C in place", metric("handoff-c", "x-inplace-c"), false, "the brief: a C implementation reaches 0.83"},
		{"Go hand-off ÷ C hand-off", metric("handoff", "x-handoff-c"), false, "above 1: Go's outruns C's"},
		{"naive Go hand-off ÷ Go in place", metric("handoff-naive", ""), false, "the brief: 0.59"},
		{"Go server CPU per connection, hand-off ÷ in place", metric("handoff", "cpu-x-inplace"), true, "target ≤ 1.5"},
		{"C server CPU per connection, hand-off ÷ in place", metric("handoff-c", "cpu-x-inplace-c"), true, "C's own cost of handing off"},
	} {
		if l.s.N > 0 {
			format := speedRatio
			if l.cost {
				format = costRatio
			}
			lines = append(lines, fmt.Sprintf("- %s: %s (%s)", l.label, fmtSummary(l.s, format), l.note))
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return "Hand-off against in place, Go beside C (median [min–max] of the per-round ratios):\n\n" +
		strings.Join(lines, "\n") + "\n\n"
}

// writePerf writes the perf table: one row per case and variant.
func writePerf(b *strings.Builder, prs []PerfResult) {
	var events []string
	for _, pr := range prs {
		for ev := range pr.PerMsg {
			if !slices.Contains(events, ev) {
				events = append(events, ev)
			}
		}
	}
	slices.Sort(events)
	fmt.Fprintf(b, "Counts per message over every process of the benchmark (both sides): the counts of a run of %d messages "+
		"minus those of a run of %d, divided by %[2]d, so that start-up, warm-up and the Go harness's own runtime cancel out "+
		"(a negative figure means noise exceeded the count).\n\n", 2*prs[0].Messages, prs[0].Messages)
	fmt.Fprintf(b, "| case | variant | %s |\n|%s\n", strings.Join(events, " | "), strings.Repeat("---|", len(events)+2))
	for _, pr := range prs {
		row := []string{pr.Case, pr.Variant}
		for _, ev := range events {
			row = append(row, fmtNum(pr.PerMsg[ev]))
		}
		fmt.Fprintf(b, "| %s |\n", strings.Join(row, " | "))
	}
	b.WriteString("\n")
}
