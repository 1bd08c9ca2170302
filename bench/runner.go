package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Environment variables understood by the benchmark binary (see
// main_linux_test.go and cluster_linux_test.go): prebuilt helpers, so that
// every invocation does not build them again.
const (
	cloopVar       = "HANDOFF_BENCH_CLOOP"
	cacceptVar     = "HANDOFF_BENCH_CACCEPT"
	miniClusterVar = "HANDOFF_BENCH_MINICLUSTER"
	helloVar       = "HANDOFF_BENCH_HELLO"
	// rotateVar rotates the order in which a benchmark runs its variants;
	// the runner sets it to the round number, so that no variant always
	// runs first (right after the process starts) or last.
	rotateVar = "HANDOFF_BENCH_ROTATE"
	// pdeathsigVar makes the benchmark binary, and the helpers it
	// re-executes, die with their parent (PR_SET_PDEATHSIG): a runner
	// killed outright kills its child through Pdeathsig, and that child
	// may be perf stat, whose own child the benchmark binary is.
	pdeathsigVar = "HANDOFF_BENCH_PDEATHSIG"
)

// runner builds the benchmark binary once and runs cases with it.
type runner struct {
	goTool string
	root   string // module root
	dir    string // the bench package: the binary runs here, for testdata
	tmp    string
	bin    string
	// pkgBins are the test binaries of other packages' benchmarks (Case.Pkg),
	// pkgSkip why one could not be built.
	pkgBins map[string]string
	pkgSkip map[string]string
	env     []string
	log     io.Writer
	// perfTool is the perf command, "perf" (on PATH) when empty.
	perfTool string
	// clusterSkip says why the mini-cluster cases cannot run.
	clusterSkip string
}

// moduleRoot finds the handoff module from the working directory.
func moduleRoot(ctx context.Context, goTool string) (string, error) {
	out, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the benchmarks from inside the handoff module (go run ./bench)")
	}
	root := filepath.Dir(mod)
	if _, err := os.Stat(filepath.Join(root, "bench", "testdata", "cloop.c")); err != nil {
		return "", fmt.Errorf("%s is not the handoff module: %w", root, err)
	}
	return root, nil
}

// exec runs a command in dir with the runner's environment and returns
// its standard output; on failure the error carries the tail of its
// standard error. Processes the command leaves running are killed, and
// are an error too. The runner runs one command at a time: every other
// child it has then is such a leftover.
func (r *runner) exec(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(slices.Clip(r.env), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// On interrupt the benchmark binary dies without running its cleanups:
	// its own group is killed with it, helpers and mini-cluster included.
	ownGroup(cmd)
	cmd.WaitDelay = 10 * time.Second
	fail := func(err error) error {
		return fmt.Errorf("%s: %w\n%s", filepath.Base(name), err, tail(stderr.String()+stdout.String(), 15))
	}
	if err := cmd.Start(); err != nil {
		return "", fail(err)
	}
	// A binary that exits by itself (a panic, its -test.timeout, the OOM
	// killer) runs no cleanups either, and its helpers would hold the
	// output pipes open until WaitDelay: kill them before waiting, while
	// the unreaped leader still holds the group's id.
	var left []string
	if err := waitExited(cmd); err == nil {
		left = killLeftovers(cmd)
	}
	err := cmd.Wait()
	if err == nil && len(left) > 0 && ctx.Err() == nil {
		err = fmt.Errorf("left processes running (killed): %s", strings.Join(left, ", "))
	}
	if err != nil {
		return stdout.String(), fail(err)
	}
	return stdout.String(), nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// testArgs are the benchmark binary's flags for one pattern.
func (r *runner) testArgs(bench, benchtime string) []string {
	return []string{
		"-test.run=^$", "-test.bench=" + bench, "-test.benchtime=" + benchtime,
		"-test.v", "-test.timeout=10m",
	}
}

// build compiles the benchmark binary and the helpers the benchmarks use,
// and the test binaries of pkgs (Case.Pkg). A helper or another package's
// binary that cannot be built is reported in the results, not fatal.
func (r *runner) build(ctx context.Context, cc string, needCluster bool, pkgs []string) error {
	fmt.Fprintln(r.log, "bench: go test -c ./bench")
	r.bin = filepath.Join(r.tmp, "bench.test")
	cmd := exec.CommandContext(ctx, r.goTool, "test", "-c", "-o", r.bin, "./bench")
	cmd.Dir = r.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go test -c ./bench: %w\n%s", err, out)
	}
	if cc != "" {
		for _, c := range []struct{ name, env string }{{"cloop", cloopVar}, {"caccept", cacceptVar}} {
			out := filepath.Join(r.tmp, c.name)
			// The flags of the benchmark's own build (buildC): caccept
			// runs a control thread.
			cmd := exec.CommandContext(ctx, cc, "-O2", "-pthread", "-o", out, filepath.Join(r.dir, "testdata", c.name+".c"))
			if msg, err := cmd.CombinedOutput(); err == nil {
				r.env = append(r.env, c.env+"="+out)
			} else {
				// The benchmark tries again and skips the C baseline,
				// saying why.
				fmt.Fprintf(r.log, "bench: compiling testdata/%s.c failed: %v\n%s\n", c.name, err, msg)
			}
		}
	}
	for _, pkg := range pkgs {
		if _, done := r.pkgBins[pkg]; done {
			continue
		}
		fmt.Fprintf(r.log, "bench: go test -c %s\n", pkg)
		out := filepath.Join(r.tmp, strings.ReplaceAll(strings.Trim(pkg, "./"), "/", "-")+".test")
		cmd := exec.CommandContext(ctx, r.goTool, "test", "-c", "-o", out, pkg)
		cmd.Dir = r.root
		if msg, err := cmd.CombinedOutput(); err != nil {
			if r.pkgSkip == nil {
				r.pkgSkip = map[string]string{}
			}
			r.pkgSkip[pkg] = fmt.Sprintf("go test -c %s failed: %v: %s", pkg, err, tail(string(msg), 3))
			continue
		}
		if r.pkgBins == nil {
			r.pkgBins = map[string]string{}
		}
		r.pkgBins[pkg] = out
	}
	if needCluster {
		fmt.Fprintln(r.log, "bench: go build ./cmd/mini-cluster ./examples/hello")
		for _, b := range []struct{ pkg, out, env string }{
			{"./cmd/mini-cluster", "mini-cluster", miniClusterVar},
			{"./examples/hello", "hello", helloVar},
		} {
			out := filepath.Join(r.tmp, b.out)
			cmd := exec.CommandContext(ctx, r.goTool, "build", "-o", out, b.pkg)
			cmd.Dir = r.root
			if msg, err := cmd.CombinedOutput(); err != nil {
				r.clusterSkip = fmt.Sprintf("go build %s failed: %v: %s", b.pkg, err, tail(string(msg), 3))
				break
			}
			r.env = append(r.env, b.env+"="+out)
		}
	}
	return nil
}

// progress prints "case i/n, round, ETA" lines on the log.
type progress struct {
	w     io.Writer
	total int
	done  int
	start time.Time
}

func (p *progress) step(round, rounds int, name string) {
	p.done++
	eta := "?"
	if p.done > 1 {
		per := time.Since(p.start) / time.Duration(p.done-1)
		eta = (per * time.Duration(p.total-p.done+1)).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "bench: [%d/%d] round %d/%d %-28s elapsed %s, ETA %s\n",
		p.done, p.total, round, rounds, name, time.Since(p.start).Round(time.Second), eta)
}

// runCase runs one case once and records what it measured in round.
func (r *runner) runCase(ctx context.Context, c Case, round int, cr *CaseResult, res *Results) {
	bin, dir := r.bin, r.dir
	if c.Pkg != "" {
		bin, dir = r.pkgBins[c.Pkg], filepath.Join(r.root, filepath.FromSlash(c.Pkg))
	}
	out, err := r.exec(ctx, dir, []string{rotateVar + "=" + strconv.Itoa(round-1)}, bin, r.testArgs(c.Bench, c.Benchtime)...)
	if ctx.Err() != nil {
		// Interrupted: what the killed binary printed is no measurement
		// of the round, and its death no failure of the benchmark.
		return
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	seen := 0
	for sc.Scan() {
		l, ok, perr := ParseLine(sc.Text())
		if perr != nil {
			res.Failures = append(res.Failures, fmt.Sprintf("%s round %d: %v", c.Name, round, perr))
			continue
		}
		if ok {
			cr.Add(round, l)
			seen++
		}
	}
	for _, s := range ParseSkips(out) {
		cr.AddSkip(s.Name[strings.LastIndexByte(s.Name, '/')+1:], s.Reason)
	}
	if err != nil {
		res.Failures = append(res.Failures, fmt.Sprintf("%s round %d: %v", c.Name, round, err))
	} else if seen == 0 && len(ParseSkips(out)) == 0 {
		res.Failures = append(res.Failures, fmt.Sprintf("%s round %d: no benchmark matched %s", c.Name, round, c.Bench))
	}
}

// Run measures every case in rounds rounds, interleaved: each round runs
// every case once, and every case runs its baseline and variants back to
// back, so that drift over the run hits all of them alike, starting with a
// different variant each round (rotateVar), so that order does not favour
// one.
func (r *runner) Run(ctx context.Context, cases []Case, rounds int, res *Results) {
	crs := make([]*CaseResult, len(cases))
	for i, c := range cases {
		crs[i] = &CaseResult{Case: c}
		if c.Group == "cluster" && r.clusterSkip != "" {
			crs[i].Skipped = r.clusterSkip
		}
		if why := r.pkgSkip[c.Pkg]; c.Pkg != "" && why != "" {
			crs[i].Skipped = why
		}
	}
	p := &progress{w: r.log, total: rounds * len(cases), start: time.Now()}
	for round := 1; round <= rounds && ctx.Err() == nil; round++ {
		for i, c := range cases {
			if ctx.Err() != nil {
				break
			}
			p.step(round, rounds, c.Name)
			if crs[i].Skipped != "" {
				continue
			}
			r.runCase(ctx, c, round, crs[i], res)
		}
	}
	for _, cr := range crs {
		cr.Finish()
		if res.Quick {
			cr.Undecide("-quick")
		}
	}
	res.Cases = crs
}
