package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
)

// stopSignals end a run the way Ctrl-C does: the report of what completed
// is written and the temporary directory removed. SIGHUP too, since a
// closed terminal or ssh session would otherwise kill the runner outright,
// leaving both behind.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals...)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// errFailures is returned when some benchmark invocations failed; the
// report was still written and lists them.
var errFailures = errors.New("some benchmarks failed (listed above and in the report)")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rounds := fs.Int("rounds", 5, "rounds; each round runs every case once (at least 1; not with -quick, which runs 1)")
	quick := fs.Bool("quick", false, "one round of a small subset with tiny iteration counts, for CI (< 60 s on 2 cores)")
	outPath := fs.String("o", "", "write the Markdown report to this file (default standard output)")
	svgPath := fs.String("svg", "", "write an SVG plot of fds/s against fds per message to this file")
	jsonPath := fs.String("json", "", "write machine-readable results to this file (- for standard output, instead of the report)")
	perf := fs.Bool("perf", false, "also count syscalls and context switches per message with perf stat, where it works")
	filter := fs.String("run", "", "only the cases whose name matches this regular expression (e.g. 'scm/stream|accept')")
	from := fs.String("from", "", "measure nothing: render the report and plot from the results of an earlier -json run")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./bench [flags]\n\nRuns the fd-handoff benchmark suite and writes a Markdown report.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var re *regexp.Regexp
	if *filter != "" {
		var err error
		if re, err = regexp.Compile(*filter); err != nil {
			return fmt.Errorf("-run: %w", err)
		}
	}
	// Before anything is measured: a path that cannot be written would
	// otherwise be found only after the whole run.
	if err := checkOutputs(*outPath, *svgPath, *jsonPath); err != nil {
		return err
	}
	if *from != "" {
		return fromJSON(fs, *from, re, stdout, *outPath, *svgPath, *jsonPath)
	}
	if err := benchmarksSupported(); err != nil {
		return err
	}
	if *rounds < 1 {
		return fmt.Errorf("-rounds %d: want at least 1", *rounds)
	}
	if *quick {
		// -quick is one round of a subset: a -rounds beside it would be
		// silently ignored, so it is refused.
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "rounds" })
		if explicit {
			return errors.New("-quick runs one round: -rounds does not apply")
		}
		*rounds = 1
	}
	cases := Cases(*quick)
	if re != nil {
		var kept []Case
		for _, c := range cases {
			if re.MatchString(c.Name) {
				kept = append(kept, c)
			}
		}
		if len(kept) == 0 {
			return fmt.Errorf("-run %q matches no case", *filter)
		}
		cases = kept
	}

	goTool, err := exec.LookPath("go")
	if err != nil {
		return errors.New("the go command is not on PATH")
	}
	root, err := moduleRoot(ctx, goTool)
	if err != nil {
		return err
	}
	cc := ""
	for _, name := range []string{"cc", "gcc"} {
		if p, err := exec.LookPath(name); err == nil {
			cc = p
			break
		}
	}
	tmp, err := os.MkdirTemp("", "handoff-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	res := &Results{Rounds: *rounds, Quick: *quick}
	res.Env = CollectEnv(ctx, goTool, cc)
	r := &runner{
		goTool: goTool, root: root, dir: root + "/bench", tmp: tmp, log: stderr,
		env: append(os.Environ(), "GORACE=atexit_sleep_ms=0", pdeathsigVar+"=1"),
	}
	needCluster := false
	var pkgs []string
	for _, c := range cases {
		needCluster = needCluster || c.Group == "cluster"
		if c.Pkg != "" && !slices.Contains(pkgs, c.Pkg) {
			pkgs = append(pkgs, c.Pkg)
		}
	}
	// Orphans of a benchmark that left its process group come here, to
	// be killed after each case, instead of to init.
	if undo, err := becomeSubreaper(); err != nil {
		fmt.Fprintf(stderr, "bench: %v: helpers that leave a benchmark's process group may outlive it\n", err)
	} else {
		defer undo()
	}
	if err := r.build(ctx, cc, needCluster, pkgs); err != nil {
		return err
	}
	r.Run(ctx, cases, *rounds, res)
	if *perf && ctx.Err() == nil {
		r.perf(ctx, cases, *quick, res)
	}
	res.Env.LoadAfter = LoadAverage()
	return finish(ctx, res, stdout, stderr, *outPath, *svgPath, *jsonPath)
}

// finish writes the results of a run, those of an interrupted one too,
// marked as partial, and returns why the run did not succeed.
func finish(ctx context.Context, res *Results, stdout, stderr io.Writer, outPath, svgPath, jsonPath string) error {
	interrupted := ctx.Err()
	res.Interrupted = interrupted != nil
	if err := write(res, stdout, stderr, outPath, svgPath, jsonPath); err != nil {
		return err
	}
	if interrupted != nil {
		return fmt.Errorf("interrupted, partial report written: %w", interrupted)
	}
	if len(res.Failures) > 0 {
		// Also here: the report may have gone to /dev/null (CI's -quick).
		for _, f := range res.Failures {
			fmt.Fprintf(stderr, "bench: failed: %s\n", f)
		}
		return errFailures
	}
	return nil
}

// fromJSON renders the report of an earlier -json run, keeping the cases
// re matches (all when re is nil). Flags that say how to measure are
// refused rather than silently ignored.
func fromJSON(fs *flag.FlagSet, path string, re *regexp.Regexp, stdout io.Writer, outPath, svgPath, jsonPath string) error {
	var measuring []string
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "rounds" || f.Name == "quick" || f.Name == "perf" {
			measuring = append(measuring, "-"+f.Name)
		}
	})
	if len(measuring) > 0 {
		return fmt.Errorf("-from measures nothing: %s would not apply", strings.Join(measuring, ", "))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("-from %s: %w", path, err)
	}
	if re != nil {
		res.Keep(re.MatchString)
		if len(res.Cases) == 0 {
			return fmt.Errorf("-run %q matches no case of %s", re, path)
		}
	}
	// The results are in path already: nothing to rescue on stderr.
	return write(&res, stdout, nil, outPath, svgPath, jsonPath)
}

// checkOutputs checks, before a run, that the output files can be
// written: each is opened for writing, created if need be (and removed
// again, so that a run that fails leaves no empty file) but not truncated.
// Two outputs naming one file are refused, as one would overwrite the
// other.
func checkOutputs(outPath, svgPath, jsonPath string) error {
	seen := map[string]string{}
	for _, o := range []struct{ flag, path string }{{"-o", outPath}, {"-svg", svgPath}, {"-json", jsonPath}} {
		if o.path == "" || (o.flag == "-json" && o.path == "-") {
			continue
		}
		abs, err := filepath.Abs(o.path)
		if err != nil {
			return fmt.Errorf("%s: %w", o.flag, err)
		}
		if other, dup := seen[abs]; dup {
			return fmt.Errorf("%s and %s both write %s", other, o.flag, o.path)
		}
		seen[abs] = o.flag
		_, statErr := os.Lstat(o.path)
		f, err := os.OpenFile(o.path, os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("%s: %w", o.flag, err)
		}
		f.Close()
		if errors.Is(statErr, os.ErrNotExist) {
			os.Remove(o.path)
		}
	}
	return nil
}

// write writes the JSON results, the Markdown report and the plot where
// the flags say; the report goes to stdout unless -o names a file or the
// JSON took stdout. The results come first and one output that fails
// stops none of the others; the error names every failure. When the
// results could be saved nowhere (the JSON asked for failed, or the report
// failed and no JSON was asked for), the JSON goes to stderr, unless it is
// nil, so that a run's measurements are not lost to a path.
func write(res *Results, stdout, stderr io.Writer, outPath, svgPath, jsonPath string) error {
	var errs []error
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	jsonSaved, jsonFailed := false, false
	if jsonPath != "" {
		if jsonPath == "-" {
			_, err = stdout.Write(b)
		} else {
			err = os.WriteFile(jsonPath, b, 0o644)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("-json: %w", err))
			jsonFailed = true
		} else {
			jsonSaved = true
		}
	}
	reportFailed := false
	if jsonPath != "-" || outPath != "" {
		md := Markdown(res, plotLink(outPath, svgPath))
		if outPath == "" {
			_, err = io.WriteString(stdout, md)
		} else {
			err = os.WriteFile(outPath, []byte(md), 0o644)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("report: %w", err))
			reportFailed = true
		}
	}
	if svgPath != "" {
		if err := os.WriteFile(svgPath, []byte(PlotSVG(res)), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("-svg: %w", err))
		}
	}
	if stderr != nil && (jsonFailed || (reportFailed && !jsonSaved)) {
		if _, err := stderr.Write(b); err == nil {
			errs = append(errs, errors.New("the results (JSON) were written to standard error instead; render them with -from"))
		}
	} else if reportFailed && jsonSaved && jsonPath != "-" {
		errs = append(errs, fmt.Errorf("the report can be rendered from the results with -from %s", jsonPath))
	}
	return errors.Join(errs...)
}

// perf runs the perf cases' variants under perf stat, or notes why not.
func (r *runner) perf(ctx context.Context, cases []Case, quick bool, res *Results) {
	pcs := perfCases(cases)
	if len(pcs) == 0 {
		res.PerfNote = "no perf case was selected (they are scm/stream/K=1/P=64, scm/seqpacket/K=1/P=64 and scm/seqpacket/K=253/P=64)"
		return
	}
	if err := PerfAvailable(ctx); err != nil {
		if ctx.Err() != nil {
			return
		}
		res.PerfNote = "unavailable: " + err.Error()
		fmt.Fprintf(r.log, "bench: -perf: %s\n", res.PerfNote)
		return
	}
	msgs := 20000
	if quick {
		msgs = 2000
	}
	r.perfCount(ctx, pcs, msgs, res)
}

// plotLink is how the report refers to the plot: relative to the report's
// directory when both are files.
func plotLink(report, plot string) string {
	if plot == "" || report == "" {
		return plot
	}
	absReport, err1 := filepath.Abs(report)
	absPlot, err2 := filepath.Abs(plot)
	if err1 != nil || err2 != nil {
		return plot
	}
	rel, err := filepath.Rel(filepath.Dir(absReport), absPlot)
	if err != nil {
		return plot
	}
	return filepath.ToSlash(rel)
}
