//go:build linux

package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	bench "github.com/handoff-go/handoff/bench"
	"github.com/handoff-go/handoff/internal/helperproc"
	"golang.org/x/sys/unix"
)

// TestMain routes helper roles: every benchmark runs its peers (senders,
// accepting servers, workers) as re-executed copies of this test binary, so
// that sender and receiver never share a Go scheduler.
func TestMain(m *testing.M) {
	if os.Getenv(PdeathsigVar) != "" {
		// Die with the parent (the runner, perf stat, or for a helper
		// the benchmark binary), which may be SIGKILLed and clean up
		// nothing. A parent gone before this call is missed: the window
		// is the process's start-up.
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
			fmt.Fprintf(os.Stderr, "bench: prctl(PR_SET_PDEATHSIG): %v\n", err)
		}
	}
	helperproc.Main(m, map[string]func() int{
		"scm-send":              roleSCMSend,
		"accept-server":         roleAcceptServer,
		"bench-runner":          func() int { return bench.RunnerRole(false, "sleep", "60") },
		"bench-runner-progress": func() int { return bench.RunnerRole(true, "sleep", "60") },
	})
}

// fatalf is a helper role's way out: the message on stderr, exit status 1.
func fatalf(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "bench helper: "+format+"\n", args...)
	return 1
}

// RotateVar rotates the order in which a benchmark runs its variants. The
// runner sets it to the round number, so that no variant always runs first
// (right after the process started) or last.
const RotateVar = "HANDOFF_BENCH_ROTATE"

// inOrder returns variants rotated left by $RotateVar; unset or not a
// number, it returns them as given.
func inOrder(variants ...string) []string {
	n, err := strconv.Atoi(os.Getenv(RotateVar))
	if err != nil || n < 0 || len(variants) == 0 {
		return variants
	}
	n %= len(variants)
	return append(variants[n:len(variants):len(variants)], variants[:n]...)
}

// PdeathsigVar, set by the runner, makes this binary die with its parent.
const PdeathsigVar = "HANDOFF_BENCH_PDEATHSIG"

// dieWithUs makes cmd, not yet started, die with this process (Pdeathsig)
// when PdeathsigVar is set: a program other than this binary does not
// read the variable, and a mini-cluster master left running keeps its
// workers too. Pdeathsig fires when the forking thread exits, not the
// process: the benchmarks lock no goroutine to a thread, so the threads
// that fork live as long as the process.
func dieWithUs(cmd *exec.Cmd) {
	if os.Getenv(PdeathsigVar) == "" {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

// CLoopVar and CAcceptVar name prebuilt C baselines. The runner compiles
// testdata/cloop.c and testdata/caccept.c once and sets them, so that each
// benchmark process does not compile them again.
const (
	CLoopVar   = "HANDOFF_BENCH_CLOOP"
	CAcceptVar = "HANDOFF_BENCH_CACCEPT"
)

// buildCLoop returns the C sendmsg/recvmsg loop of BenchmarkSCM, or "" and
// why not.
func buildCLoop(b testing.TB) (path, whyNot string) {
	b.Helper()
	return buildC(b, "cloop", CLoopVar, "the C sendmsg/recvmsg loop")
}

// buildCAccept returns the C accept servers of BenchmarkAccept, or "" and
// why not.
func buildCAccept(b testing.TB) (path, whyNot string) {
	b.Helper()
	return buildC(b, "caccept", CAcceptVar, "the C in-place and hand-off servers")
}

// buildC returns a C baseline binary: the one named by envVar, or
// testdata/name.c compiled now with the system C compiler (the runner's
// flags: -O2 -pthread) into a directory removed when b ends. When no
// compiler works it returns "" and why, naming what is missing.
func buildC(b testing.TB, name, envVar, what string) (path, whyNot string) {
	b.Helper()
	if p := os.Getenv(envVar); p != "" {
		return p, ""
	}
	cc, err := exec.LookPath("cc")
	if err != nil {
		if cc, err = exec.LookPath("gcc"); err != nil {
			return "", "C baseline unavailable: no C compiler (cc or gcc) on PATH; install one to get " + what
		}
	}
	src := filepath.Join("testdata", name+".c")
	out := filepath.Join(b.TempDir(), name)
	if msg, err := exec.Command(cc, "-O2", "-pthread", "-o", out, src).CombinedOutput(); err != nil {
		return "", fmt.Sprintf("C baseline unavailable: compiling %s with %s: %v: %s", src, cc, err, strings.TrimSpace(string(msg)))
	}
	return out, ""
}
