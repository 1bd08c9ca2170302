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
// is written (to -o and -json, which do not depend on the terminal) and the
// temporary directory removed. SIGHUP too, since a closed terminal would
// otherwise kill the runner outright, leaving neither. And SIGPIPE, which
// a write to standard output or error raises once their reader is gone
// (ssh without a terminal closes the pipes and sends no SIGHUP; "| head"
// exits): unless notified, Go dies of it. Notified, the write fails with
// EPIPE instead, and the run stops as a pipeline's writer does when its
// reader is gone, but with its report saved. The runner writes to no other
// pipe, so no other SIGPIPE can stop it.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals...)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		// Still notified: on a closed stderr this fails with EPIPE rather
		// than killing the runner.
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	}
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
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
// marked as partial, and returns why the run did not succeed: an output
// that failed, and the interruption or the failures, all of them, so that
// one bad path hides neither.
func finish(ctx context.Context, res *Results, stdout, stderr io.Writer, outPath, svgPath, jsonPath string) error {
	interrupted := ctx.Err()
	res.Interrupted = interrupted != nil
	werr := write(res, stdout, stderr, outPath, svgPath, jsonPath)
	// Also here: the report may have gone to /dev/null (CI's -quick), or
	// not have been written at all.
	for _, f := range res.Failures {
		fmt.Fprintf(stderr, "bench: failed: %s\n", f)
	}
	var status error
	switch {
	case interrupted != nil && werr == nil:
		status = fmt.Errorf("interrupted, partial report written: %w", interrupted)
	case interrupted != nil:
		status = fmt.Errorf("interrupted: %w", interrupted)
	case len(res.Failures) > 0:
		status = errFailures
	}
	if werr == nil {
		return status
	}
	return errors.Join(werr, status)
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
// written: each regular file is opened for writing, created if need be
// (and removed again, so that a run that fails leaves no empty file) but
// not truncated. A FIFO, a device or a socket is not opened: opening a
// FIFO blocks until a reader comes, and closing it then ends that reader's
// input before the report is written. Two outputs naming one file, through
// a symbolic or hard link too, are refused, as one would overwrite the
// other.
func checkOutputs(outPath, svgPath, jsonPath string) error {
	type output struct {
		flag, path string
		fi         os.FileInfo // an existing file
		created    string      // the name a new file gets
	}
	var outs []output
	for _, o := range []output{{flag: "-o", path: outPath}, {flag: "-svg", path: svgPath}, {flag: "-json", path: jsonPath}} {
		if o.path == "" || (o.flag == "-json" && o.path == "-") {
			continue
		}
		fi, err := os.Stat(o.path)
		switch {
		case err == nil:
			o.fi = fi
		case errors.Is(err, os.ErrNotExist):
			// Also a dangling symbolic link: writing it creates its target.
			o.created = createdName(o.path)
		default:
			return fmt.Errorf("%s: %w", o.flag, err)
		}
		for _, other := range outs {
			if (o.fi != nil && other.fi != nil && os.SameFile(o.fi, other.fi)) || (o.fi == nil && other.fi == nil && o.created == other.created) {
				return fmt.Errorf("%s and %s both write %s", other.flag, o.flag, o.path)
			}
		}
		outs = append(outs, o)
	}
	for _, o := range outs {
		if o.fi == nil {
			// O_EXCL: the file removed is the one this check created,
			// never one that appeared meanwhile.
			f, err := os.OpenFile(o.created, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				// Named as given: the resolved name may surprise.
				var pe *os.PathError
				if errors.As(err, &pe) {
					err = &os.PathError{Op: pe.Op, Path: o.path, Err: pe.Err}
				}
				return fmt.Errorf("%s: %w", o.flag, err)
			}
			f.Close()
			os.Remove(o.created)
			continue
		}
		if o.fi.Mode()&(os.ModeNamedPipe|os.ModeDevice|os.ModeSocket) != 0 {
			continue
		}
		// O_NONBLOCK: should a FIFO have replaced the file since the
		// Stat, the open fails (ENXIO) rather than wait for a reader.
		f, err := os.OpenFile(o.path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("%s: %w", o.flag, err)
		}
		f.Close()
	}
	return nil
}

// maxSymlinks is how many symbolic links createdName follows, as Linux
// does (MAXSYMLINKS).
const maxSymlinks = 40

// createdName returns the absolute name, free of symbolic links, of the
// file that creating path makes: path itself, or what it points to when it
// is a dangling symbolic link. Where a link cannot be read, the name
// reached so far is returned; creating the file then fails as it would.
// Names are split by hand, not cleaned (filepath.Abs, Dir, Join): "l/.."
// is not the directory that holds l when l is a link to a directory.
func createdName(path string) string {
	p := path
	if !filepath.IsAbs(p) {
		wd, err := os.Getwd()
		if err != nil {
			return path
		}
		p = wd + string(filepath.Separator) + p
	}
	for range maxSymlinks {
		i := strings.LastIndexByte(p, filepath.Separator)
		dir, err := filepath.EvalSymlinks(p[:i+1])
		if err != nil {
			return p
		}
		// dir has no links left, so cleaning it is exact.
		p = filepath.Join(dir, p[i+1:])
		target, err := os.Readlink(p)
		if err != nil {
			return p // not a link
		}
		if !filepath.IsAbs(target) {
			// Relative to the link's own directory.
			target = dir + string(filepath.Separator) + target
		}
		p = target
	}
	return p
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
