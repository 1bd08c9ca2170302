package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// benchChildVar makes TestBenchDiesWithRunner, in the test binary the
// bench-runner role starts, play the benchmark binary.
const benchChildVar = "MC_TEST_BENCH_CHILD"

// TestBenchDiesWithRunner starts a stand-in for the bench runner (the
// bench-runner role), which runs this binary as the runner runs
// BenchmarkHello from it: in a process group of its own, with
// benchPdeathsigVar set. That binary starts what BenchmarkHello starts, a
// standalone server and a master with 2 workers, through the same
// helpers. The runner is then SIGKILLed: every one of them must die with
// it. The runner sets Pdeathsig on the binary too; the stand-in does not,
// so that the binary's own PR_SET_PDEATHSIG (TestMain) is tested as well.
func TestBenchDiesWithRunner(t *testing.T) {
	if os.Getenv(benchChildVar) != "" {
		benchChild(t)
		return
	}
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	// Orphans re-parent to this process instead of init, where they can be
	// seen, and reaped, or killed if they outlive the runner. They carry
	// the binary's own census marker, not pc's.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("prctl(PR_SET_CHILD_SUBREAPER): %v", err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	before := children()

	// The killed binary's temporary directories (its t.TempDir, the
	// master's notify directory) are never cleaned up by their owners:
	// under TMPDIR they go with this test's.
	tmp := t.TempDir()
	runner := helperproc.Command(t, "bench-runner", &helperproc.Options{Env: []string{pc.Env(), "TMPDIR=" + tmp}})
	out, err := runner.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helperproc.Start(t, runner)
	ready := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			if line, ok := strings.CutPrefix(s.Text(), "ready "); ok {
				ready <- line
				break
			}
		}
		close(ready)
	}()
	var pids string
	select {
	case pids = <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("the benchmark binary did not start its processes within 60 s")
	}
	if pids == "" {
		t.Fatal("the benchmark binary ended before starting its processes")
	}
	t.Logf("standalone, master, workers: %s", pids)
	if err := runner.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = runner.Wait()

	// The binary, the standalone server, the master and its workers all
	// re-parent here once their parent is gone; reap them as they die.
	if live := reapOrphans(before, false, 10*time.Second); len(live) > 0 {
		t.Errorf("left running 10 s after the runner was SIGKILLed:\n  %s", strings.Join(live, "\n  "))
		if live := reapOrphans(before, true, 10*time.Second); len(live) > 0 {
			t.Errorf("still running after SIGKILL:\n  %s", strings.Join(live, "\n  "))
		}
	}
	for _, f := range strings.Fields(pids) {
		pid, _ := strconv.Atoi(f)
		if p, ok := proccensus.Stat(pid); ok && p.State != 'Z' {
			t.Errorf("pid %d still there: %v", pid, p)
		}
	}
}

// benchChild is TestBenchDiesWithRunner in the benchmark binary: it starts
// what BenchmarkHello starts, prints their pids and waits to be killed.
func benchChild(t *testing.T) {
	pc := proccensus.New(t)
	alone := startStandalone(t, pc, "sleep", "60")
	defer func() { _ = alone.Process.Kill(); _ = alone.Wait() }()
	m := startMaster(t, pc, nil, append([]string{"-n", "2", "-listen", "127.0.0.1:0", "--"}, fakeSrvCmd(t)...)...)
	m.waitReady()
	workers := m.workers()
	if len(workers) != 2 {
		t.Fatalf("workers %v, want 2", workers)
	}
	fmt.Printf("ready %d %d %d %d\n", alone.Process.Pid, m.cmd.Process.Pid, workers[0], workers[1])
	time.Sleep(time.Minute)
	t.Error("not killed within a minute of starting")
}

// roleBenchRunner stands in for the bench runner: it runs this binary's
// TestBenchDiesWithRunner as the benchmark binary, in a process group of
// its own and with benchPdeathsigVar set, then waits to be SIGKILLed.
func roleBenchRunner() int {
	bin, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd := exec.Command(bin, "-test.run=^TestBenchDiesWithRunner$", "-test.timeout=2m")
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, helperproc.RoleVar+"=") })
	cmd.Env = append(cmd.Env, benchPdeathsigVar+"=1", benchChildVar+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	time.Sleep(2 * time.Minute)
	return 1
}

// children returns the processes whose parent is this process, by pid.
func children() map[int]proccensus.Proc {
	out := map[int]proccensus.Proc{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := proccensus.Stat(pid); ok && p.PPID == os.Getpid() {
			out[pid] = p
		}
	}
	return out
}

// reapOrphans reaps the children of this process not in before as they
// exit, killing them first if kill, until none is left or d has passed;
// it returns those still running then. A process re-parents its children
// here before it can be reaped, so none is missed.
func reapOrphans(before map[int]proccensus.Proc, kill bool, d time.Duration) []string {
	deadline := time.Now().Add(d)
	for {
		found := false
		var live []string
		for pid, p := range children() {
			if _, ok := before[pid]; ok {
				continue
			}
			found = true
			if p.State != 'Z' {
				live = append(live, p.String())
				if kill {
					_ = unix.Kill(pid, unix.SIGKILL) // unreaped: the pid is still this one's
				}
				continue
			}
			for {
				if _, err := unix.Wait4(pid, nil, 0, nil); !errors.Is(err, unix.EINTR) {
					break
				}
			}
		}
		if !found || time.Now().After(deadline) {
			return live
		}
		time.Sleep(20 * time.Millisecond)
	}
}
