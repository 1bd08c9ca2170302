//go:build linux

package supervise_test

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// drainerRole is a server that drains for DRAIN after SIGTERM: it prints
// UP, and DRAINED once drained.
func drainerRole() int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	fmt.Println("UP")
	select {
	case <-term:
	case <-time.After(time.Minute):
		return 3
	}
	time.Sleep(envDuration("DRAIN"))
	fmt.Println("DRAINED")
	return 0
}

// hopperRole starts a child that ignores SIGTERM in its own process group,
// and another in a new group, then moves itself into that second group of
// its session and prints READY: the worker's first group keeps a member
// while the worker itself is no longer in it.
func hopperRole() int {
	self, _ := os.Executable()
	stay := exec.Command(self, "-test.run=^$")
	stay.Env = append(os.Environ(), helperproc.RoleVar+"=worker", "HANG_ON_TERM=1", "NEVER_READY=1")
	away := exec.Command(self, "-test.run=^$")
	away.Env = append(os.Environ(), helperproc.RoleVar+"=sleeper")
	// Dies with us: it is in no group the supervisor signals.
	away.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	for _, c := range []*exec.Cmd{stay, away} {
		if err := c.Start(); err != nil {
			fmt.Println("ERROR", err)
			return 1
		}
	}
	// The child must ignore SIGTERM before the stop comes.
	for i := 0; ; i++ {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", stay.Process.Pid))
		if ignoresTERM(string(b)) {
			break
		}
		if i == 1000 {
			fmt.Println("ERROR child never ignored SIGTERM")
			return 1
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := unix.Setpgid(0, away.Process.Pid); err != nil {
		fmt.Println("ERROR setpgid", err)
		return 1
	}
	fmt.Println("READY")
	time.Sleep(time.Hour)
	return 0
}

// ignoresTERM reports whether /proc/<pid>/status text shows SIGTERM in
// SigIgn.
func ignoresTERM(status string) bool {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && m&(1<<(syscall.SIGTERM-1)) != 0
		}
	}
	return false
}

// pidReadRole prints what ReadPIDFile reports for its argument.
func pidReadRole() int {
	pid, live, err := supervise.ReadPIDFile(helperproc.Args()[0])
	fmt.Printf("%d %v %v\n", pid, live, err)
	return 0
}

// drainerSpec runs the drainer under a shell that does not exec it, as a
// wrapper script would: SIGTERM kills the shell at once.
func drainerSpec(t *testing.T, c *proccensus.Census, drain time.Duration) supervise.Spec {
	t.Helper()
	cmd := helperproc.Command(t, "drainer", &helperproc.Options{Env: []string{c.Env(), noRaceExitSleep, "DRAIN=" + drain.String()}})
	env := append(cmd.Env, "DRAINER_BIN="+cmd.Path)
	return supervise.Spec{Path: "/bin/sh", Args: []string{"-c", `"$DRAINER_BIN" -test.run='^$'; echo wrapper-done`}, Env: env}
}

// waitLine waits for a captured line with text, failing after timeout.
func (r *run) waitLine(text string, timeout time.Duration) supervise.Line {
	r.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-r.lines:
			if l.Text == text {
				return l
			}
		case <-deadline:
			r.t.Fatalf("no line %q within %v; events:\n%s", text, timeout, r.dump())
		}
	}
}

// waitRun waits up to timeout for Run to return and reports whether it did.
func (r *run) waitRun(timeout time.Duration) bool {
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			r.t.Errorf("Run: %v", err)
		}
		return true
	case <-time.After(timeout):
		return false
	}
}

// TestStopGraceOutlivesLeader: when a worker asked to stop exits first, the
// rest of its process group keeps the rest of StopTimeout (systemd's
// control-group mode): a shell wrapper's draining server is not SIGKILLed
// because the shell died of SIGTERM at once; Run waits for it. Covers Stop
// and a rolling restart's retirement of the old generation (TESTPLAN C5,
// C15).
func TestStopGraceOutlivesLeader(t *testing.T) {
	for _, how := range []string{"stop", "rolling-restart"} {
		t.Run(how, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			r := start(t, drainerSpec(t, c, 300*time.Millisecond), testOptions(supervise.Options{ReadyOnStart: true, StopTimeout: time.Minute}))
			r.waitLine("UP", 10*time.Second)
			switch how {
			case "stop":
				if err := r.sup.Stop(); err != nil {
					t.Fatal(err)
				}
			case "rolling-restart":
				if err := r.sup.Restart(supervise.Rolling); err != nil {
					t.Fatal(err)
				}
			}
			l := r.waitLine("DRAINED", 10*time.Second)
			if l.ID.Generation != 1 {
				t.Errorf("DRAINED from %+v, want generation 1", l.ID)
			}
			if how == "stop" && !r.waitRun(15*time.Second) {
				t.Fatalf("Run did not return after the drain; events:\n%s", r.dump())
			}
		})
	}
}

// TestStopGraceEnds: a lingering group is SIGKILLed by Kill at once, or when
// StopTimeout ends; Run waits for it either way, and nothing is left.
func TestStopGraceEnds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		kill    bool
	}{
		{"kill", time.Minute, true},
		{"timeout", 500 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			r := start(t, drainerSpec(t, c, time.Hour), testOptions(supervise.Options{ReadyOnStart: true, StopTimeout: tc.timeout}))
			r.waitLine("UP", 10*time.Second)
			if err := r.sup.Stop(); err != nil {
				t.Fatal(err)
			}
			ex := r.waitKind(supervise.Exited, 10*time.Second)
			if !ex.Requested {
				t.Errorf("Exited not Requested: %+v", ex)
			}
			if tc.kill {
				// The drainer drains for an hour: Run must still be
				// waiting for the group.
				if r.waitRun(300 * time.Millisecond) {
					t.Fatal("Run returned while the worker's group was in its grace period")
				}
				if err := r.sup.Kill(); err != nil {
					t.Fatal(err)
				}
			}
			if !r.waitRun(15 * time.Second) {
				t.Fatalf("Run did not return; events:\n%s", r.dump())
			}
			if err := c.WaitGone(5 * time.Second); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestStopWorkerThatLeftItsGroup: a worker that moved itself into another
// process group of its session, while a child that ignores SIGTERM stays in
// its first group, is still stopped (or killed): it is signalled through its
// pidfd, not only through a group it is no longer in.
func TestStopWorkerThatLeftItsGroup(t *testing.T) {
	for _, how := range []string{"stop", "kill"} {
		t.Run(how, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			cmd := helperproc.Command(t, "hopper", &helperproc.Options{Env: []string{c.Env(), noRaceExitSleep}})
			spec := supervise.Spec{Path: cmd.Path, Args: cmd.Args[1:], Env: cmd.Env}
			r := start(t, spec, testOptions(supervise.Options{StopTimeout: 500 * time.Millisecond}))
			ready := r.waitKind(supervise.Ready, 10*time.Second)
			if how == "stop" {
				_ = r.sup.Stop()
			} else {
				_ = r.sup.Kill()
			}
			if !r.waitRun(20 * time.Second) {
				// Unblock Run so the test can end.
				_ = unix.Kill(ready.PID, unix.SIGKILL)
				t.Fatalf("Run did not return after %s; events:\n%s", how, r.dump())
			}
			if err := c.WaitGone(5 * time.Second); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestIgnoredSignalsStayReset: with SIGHUP ignored (nohup), one supervisor's
// Run returning neither makes another supervisor of the process start
// workers with SIGHUP ignored again, nor unregisters the program's own
// signal.Notify (TESTPLAN C18; cluster runs a supervisor per group).
func TestIgnoredSignalsStayReset(t *testing.T) {
	fdcensus.Verify(t)
	sleep, err := execLookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	const hup = 1 << (syscall.SIGHUP - 1)
	ignoreForChildren(t, syscall.SIGHUP)
	c := proccensus.New(t)
	spec := supervise.Spec{Path: sleep, Args: []string{"30"}, Env: append(os.Environ(), c.Env())}
	opts := func() *supervise.Options {
		return testOptions(supervise.Options{ReadyOnStart: true, StopTimeout: time.Second})
	}
	a := start(t, spec, opts())
	b := start(t, spec, opts())
	a.waitKind(supervise.Started, 10*time.Second)
	b.waitKind(supervise.Started, 10*time.Second)
	own := make(chan os.Signal, 1)
	signal.Notify(own, syscall.SIGHUP)
	defer signal.Stop(own)

	_ = a.sup.Stop()
	if !a.waitRun(15 * time.Second) {
		t.Fatal("supervisor A did not stop")
	}
	if err := b.sup.ScaleBy(1); err != nil {
		t.Fatal(err)
	}
	st := b.wait("Started slot 1", 10*time.Second, func(ev supervise.Event) bool {
		return ev.Kind == supervise.Started && ev.ID.Slot == 1
	})
	if m := sigIgn(t, st.PID) & hup; m != 0 {
		t.Errorf("worker started after another supervisor stopped: SigIgn & HUP = %x, want 0", m)
	}
	_ = b.sup.Stop()
	if !b.waitRun(15 * time.Second) {
		t.Fatal("supervisor B did not stop")
	}
	_ = unix.Kill(os.Getpid(), unix.SIGHUP)
	select {
	case <-own:
	case <-time.After(5 * time.Second):
		t.Error("the program's own signal.Notify for SIGHUP got nothing after Run returned")
	}
}

// TestPermanentNoneIgnoresReapedElsewhere: with PermanentExitCode -1 (none),
// a worker reaped by something else in the process (reported with code -1)
// does not fail its slot as permanent.
func TestPermanentNoneIgnoresReapedElsewhere(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	supervise.SetHookWatch(func(pid int) {
		// Something else in the process reaps the worker (blocks until
		// it exits) before its watcher sees the exit.
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
	})
	spec := supervise.Spec{Path: "/bin/sh", Args: []string{"-c", "exit 3"}, Env: append(os.Environ(), c.Env())}
	r := start(t, spec, testOptions(supervise.Options{ReadyOnStart: true, PermanentExitCode: -1, Restart: supervise.RestartNever}))
	r.wait("Done or Failed", 10*time.Second, func(ev supervise.Event) bool {
		return ev.Kind == supervise.Done || ev.Kind == supervise.Failed
	})
	r.shutdown()
	supervise.SetHookWatch(nil)
	got := project(r.all(), supervise.Exited, supervise.Done, supervise.Failed)
	want := []ev{{Kind: "exited", Gen: 1, Code: -1}, {Kind: "done", Gen: 1}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// TestScaleByClamps: ScaleBy clamps to 0..4096 whatever delta, without
// overflow. Slots past the first three cannot spawn (Prepare fails) and
// back off for an hour, so scaling to 4096 starts no process.
func TestScaleByClamps(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	spec := supervise.Spec{Path: "/bin/sleep", Args: []string{"30"}, Env: append(os.Environ(), c.Env()),
		Prepare: func(id supervise.ID) (supervise.Launch, error) {
			if id.Slot >= 3 {
				return supervise.Launch{}, errors.New("no room")
			}
			return supervise.Launch{}, nil
		}}
	r := start(t, spec, testOptions(supervise.Options{Workers: 3, ReadyOnStart: true,
		Backoff: supervise.Backoff{Min: time.Hour, Max: time.Hour, QuickFailures: -1}, EventBuffer: 1 << 14}))
	r.waitReady(3, 10*time.Second)
	for _, tc := range []struct {
		delta, want int
	}{
		{math.MaxInt, 4096},
		{math.MaxInt - 1, 4096},
		{-4093, 3},
		{math.MinInt, 0},
		{3, 3},
	} {
		if err := r.sup.ScaleBy(tc.delta); err != nil {
			t.Fatal(err)
		}
		if got := r.sup.Status().Workers; got != tc.want {
			t.Errorf("ScaleBy(%d): %d workers, want %d", tc.delta, got, tc.want)
		}
	}
}

// TestNewRejectsHugeBuffers: New returns ErrInvalid for buffers it could not
// allocate, rather than panicking in make.
func TestNewRejectsHugeBuffers(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts supervise.Options
		ok   bool
	}{
		{"events-max", supervise.Options{EventBuffer: math.MaxInt}, false},
		{"events-over", supervise.Options{EventBuffer: 1<<20 + 1}, false},
		{"lines-max", supervise.Options{OutputBuffer: math.MaxInt}, false},
		{"limit", supervise.Options{EventBuffer: 1 << 20, OutputBuffer: 1 << 20}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("New panicked: %v", p)
				}
			}()
			_, err := supervise.New(supervise.Spec{Path: "/bin/true"}, &tc.opts)
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, supervise.ErrInvalid) {
				t.Errorf("New: %v, want ok=%v or ErrInvalid", err, tc.ok)
			}
		})
	}
}

// TestReadRootPIDFileAsOtherUser: a pid file written by root is readable by
// another user, live included: readers accept root's files and the lock file
// is readable by all.
func TestReadRootPIDFileAsOtherUser(t *testing.T) {
	fdcensus.Verify(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	c := proccensus.New(t)
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// An umask that would leave the lock file unreadable to others.
	old := unix.Umask(0o077)
	path := filepath.Join(dir, "r.pid")
	p, err := supervise.CreatePIDFile(path)
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Write(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	cmd := helperproc.Command(t, "pidread", &helperproc.Options{AsNobody: true, Args: []string{path}, Env: []string{c.Env()}})
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reader: %v", err)
	}
	want := fmt.Sprintf("%d true <nil>", os.Getpid())
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("ReadPIDFile as nobody = %q, want %q", got, want)
	}
}
