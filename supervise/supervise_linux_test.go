package supervise_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec supervise.Spec
		opts *supervise.Options
	}{
		{"empty path", supervise.Spec{}, nil},
		{"not in PATH", supervise.Spec{Path: "no-such-program-handoff"}, nil},
		{"negative workers", supervise.Spec{Path: "/bin/true"}, &supervise.Options{Workers: -1}},
		{"too many workers", supervise.Spec{Path: "/bin/true"}, &supervise.Options{Workers: 1 << 20}},
		{"bad policy", supervise.Spec{Path: "/bin/true"}, &supervise.Options{Restart: 7}},
		{"negative first generation", supervise.Spec{Path: "/bin/true"}, &supervise.Options{FirstGeneration: -1}},
	}
	for _, tc := range tests {
		if _, err := supervise.New(tc.spec, tc.opts); !errors.Is(err, supervise.ErrInvalid) {
			t.Errorf("%s: New error %v, want ErrInvalid", tc.name, err)
		}
	}
}

func TestControlBeforeRun(t *testing.T) {
	t.Parallel()
	sup, err := supervise.New(supervise.Spec{Path: "/bin/true"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"Restart":   sup.Restart(supervise.Rolling),
		"Scale":     sup.Scale(2),
		"Stop":      sup.Stop(),
		"MarkReady": sup.MarkReady(supervise.ID{}),
	} {
		if !errors.Is(err, supervise.ErrNotRunning) {
			t.Errorf("%s before Run: %v, want ErrNotRunning", name, err)
		}
	}
	if st := sup.Status(); st.Running || st.Workers != 1 {
		t.Errorf("Status before Run = %+v", st)
	}
}

// TestLifecycle: start, readiness, own process groups (C15), graceful stop.
func TestLifecycle(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c, "READY_DELAY=50ms"), testOptions(supervise.Options{Workers: 2}))
	st := r.waitReady(2, 10*time.Second)
	if st.Generation != 1 || st.Workers != 2 || st.Processes != 2 {
		t.Errorf("status %+v", st)
	}
	for _, s := range st.Slots {
		if s.State != supervise.SlotReady || s.ID.Generation != 1 || s.ID.Incarnation != 1 {
			t.Errorf("slot %+v", s)
		}
		// C15: each worker leads its own process group, so a terminal's
		// Ctrl-C to the foreground group does not reach it.
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.PID))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		if pgrp, _ := strconv.Atoi(f[2]); pgrp != s.PID || pgrp == syscall.Getpgrp() {
			t.Errorf("worker %d in process group %d", s.PID, pgrp)
		}
	}
	_ = r.sup.Stop()
	r.waitKind(supervise.Stopped, 10*time.Second)
	got := project(r.all(), supervise.Started, supervise.Ready, supervise.Exited, supervise.Stopped)
	want := []ev{
		{Kind: "started", Slot: 0, Gen: 1}, {Kind: "started", Slot: 1, Gen: 1},
		{Kind: "ready", Slot: 0, Gen: 1}, {Kind: "ready", Slot: 1, Gen: 1},
		{Kind: "exited", Slot: 0, Gen: 1, Code: -1, Signal: syscall.SIGTERM, Requested: true},
		{Kind: "exited", Slot: 1, Gen: 1, Code: -1, Signal: syscall.SIGTERM, Requested: true},
		{Kind: "stopped"},
	}
	byOrder := cmpopts.SortSlices(func(a, b ev) bool {
		return a.Kind+strconv.Itoa(a.Slot) < b.Kind+strconv.Itoa(b.Slot)
	})
	if d := cmp.Diff(want, got, byOrder); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
	if st := r.sup.Status(); st.Running || st.Processes != 0 {
		t.Errorf("status after stop %+v", st)
	}
}

// TestFirstGeneration: generations start at Options.FirstGeneration and a
// graceful restart continues from there, as after an in-place Exec.
func TestFirstGeneration(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c), testOptions(supervise.Options{Workers: 1, FirstGeneration: 7}))
	st := r.waitReady(1, 10*time.Second)
	if st.Generation != 7 || st.Slots[0].ID.Generation != 7 {
		t.Fatalf("status before restart %+v", st)
	}
	if err := r.sup.Restart(supervise.Rolling); err != nil {
		t.Fatal(err)
	}
	if ev := r.waitKind(supervise.RestartDone, 10*time.Second); ev.Generation != 8 {
		t.Errorf("restart done to generation %d, want 8", ev.Generation)
	}
	if st := r.sup.Status(); st.Generation != 8 || st.Slots[0].ID.Generation != 8 {
		t.Errorf("status after restart %+v", st)
	}
	_ = r.sup.Stop()
	r.waitKind(supervise.Stopped, 10*time.Second)
}

// TestCrashLoopFails: a worker that exits 1 at once, forever, is respawned
// no sooner than Backoff.Min apart and the slot fails after the burst
// (TESTPLAN C1).
func TestCrashLoopFails(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	min := 100 * time.Millisecond
	r := start(t, workerSpec(t, c, "EXIT_CODE=1"), testOptions(supervise.Options{
		Backoff: supervise.Backoff{Min: min, Max: 150 * time.Millisecond, Burst: 4, Window: 5 * time.Second},
	}))
	failed := r.waitKind(supervise.Failed, 10*time.Second)
	if !errors.Is(failed.Err, supervise.ErrBurst) {
		t.Errorf("Failed.Err = %v, want ErrBurst", failed.Err)
	}
	evs := r.all()
	want := []ev{}
	for i := range 4 {
		want = append(want, ev{Kind: "started", Gen: 1}, ev{Kind: "exited", Gen: 1, Code: 1})
		if i < 3 {
			want = append(want, ev{Kind: "restarting", Gen: 1})
		}
	}
	want = append(want, ev{Kind: "failed", Gen: 1})
	if d := cmp.Diff(want, project(evs)); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
	var last time.Time
	for _, e := range evs {
		if e.Kind != supervise.Started {
			continue
		}
		if !last.IsZero() && e.Time.Sub(last) < min {
			t.Errorf("spawns %v apart, want >= %v", e.Time.Sub(last), min)
		}
		last = e.Time
	}
	// Failed stays failed: no more spawns.
	time.Sleep(300 * time.Millisecond)
	st := r.sup.Status()
	if st.Slots[0].State != supervise.SlotFailed || !errors.Is(st.Slots[0].Err, supervise.ErrBurst) || st.Processes != 0 {
		t.Errorf("status %+v", st)
	}
	if n := len(project(r.all(), supervise.Started)); n != 4 {
		t.Errorf("%d starts, want 4", n)
	}
	// A restart revives the failed slot.
	if err := r.sup.Restart(supervise.Rolling); err != nil {
		t.Fatal(err)
	}
	r.waitKind(supervise.RestartFailed, 10*time.Second)
}

// TestExitPolicies covers the restart policies and the permanent-failure
// exit code (TESTPLAN C13).
func TestExitPolicies(t *testing.T) {
	tests := []struct {
		name   string
		policy supervise.Policy
		env    []string
		want   []ev
		state  supervise.SlotState
	}{
		{"never", supervise.RestartNever, []string{"EXIT_AFTER=100ms", "EXIT_CODE=3"},
			[]ev{{Kind: "started", Gen: 1}, {Kind: "ready", Gen: 1}, {Kind: "exited", Gen: 1, Code: 3}, {Kind: "done", Gen: 1}}, supervise.SlotDone},
		{"on-failure, clean exit", supervise.RestartOnFailure, []string{"EXIT_AFTER=100ms"},
			[]ev{{Kind: "started", Gen: 1}, {Kind: "ready", Gen: 1}, {Kind: "exited", Gen: 1}, {Kind: "done", Gen: 1}}, supervise.SlotDone},
		{"permanent exit code 125, policy always", supervise.RestartAlways, []string{"EXIT_CODE=125"},
			[]ev{{Kind: "started", Gen: 1}, {Kind: "exited", Gen: 1, Code: 125}, {Kind: "failed", Gen: 1}}, supervise.SlotFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			r := start(t, workerSpec(t, c, tc.env...), testOptions(supervise.Options{Restart: tc.policy}))
			last := tc.want[len(tc.want)-1].Kind
			r.wait(last, 10*time.Second, func(e supervise.Event) bool { return e.Kind.String() == last })
			time.Sleep(200 * time.Millisecond) // nothing may follow
			if d := cmp.Diff(tc.want, project(r.all())); d != "" {
				t.Errorf("events (-want +got):\n%s", d)
			}
			if st := r.sup.Status(); st.Slots[0].State != tc.state {
				t.Errorf("slot state %v, want %v", st.Slots[0].State, tc.state)
			}
		})
	}
	t.Run("on-failure restarts a failure", func(t *testing.T) {
		fdcensus.Verify(t)
		c := proccensus.New(t)
		r := start(t, workerSpec(t, c, "EXIT_CODE=2"), testOptions(supervise.Options{Restart: supervise.RestartOnFailure}))
		r.waitKind(supervise.Restarting, 10*time.Second)
		r.waitKind(supervise.Started, 10*time.Second)
	})
	t.Run("permanent failure of a ready worker", func(t *testing.T) {
		fdcensus.Verify(t)
		c := proccensus.New(t)
		r := start(t, workerSpec(t, c, "EXIT_AFTER_READY=1", "EXIT_CODE=125"), testOptions(supervise.Options{}))
		f := r.waitKind(supervise.Failed, 10*time.Second)
		if !errors.Is(f.Err, supervise.ErrPermanent) {
			t.Errorf("Failed.Err = %v, want ErrPermanent", f.Err)
		}
	})
}

// TestReadyWorkerReplacedAtOnce: a worker ready for longer than Min that is
// SIGKILLed is respawned without delay (TESTPLAN C2).
func TestReadyWorkerReplacedAtOnce(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c), testOptions(supervise.Options{Workers: 2}))
	st := r.waitReady(2, 10*time.Second)
	time.Sleep(100 * time.Millisecond) // past Backoff.Min of uptime
	p, err := os.FindProcess(st.Slots[1].PID)
	if err != nil {
		t.Fatal(err)
	}
	_ = p.Kill()
	// Its pidfd is closed now, not whenever the GC runs (fd census).
	_ = p.Release()
	e := r.waitKind(supervise.Exited, 10*time.Second)
	if e.ID.Slot != 1 || e.Signal != syscall.SIGKILL || e.Requested {
		t.Errorf("exit event %+v", e)
	}
	if re := r.waitKind(supervise.Restarting, 10*time.Second); re.Delay != 0 {
		t.Errorf("respawn delay %v, want 0", re.Delay)
	}
	s := r.waitKind(supervise.Started, 10*time.Second)
	if s.ID != (supervise.ID{Slot: 1, Generation: 1, Incarnation: 2}) {
		t.Errorf("replacement %+v", s.ID)
	}
	st = r.waitReady(2, 10*time.Second)
	if st.Slots[1].Restarts != 1 || st.Slots[0].PID == 0 {
		t.Errorf("status %+v", st)
	}
}

// TestStartTimeout: a worker that never reports ready is killed after
// StartTimeout and counts as a quick failure (TESTPLAN C3).
func TestStartTimeout(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c, "NEVER_READY=1"), testOptions(supervise.Options{StartTimeout: 200 * time.Millisecond}))
	e := r.waitKind(supervise.Exited, 10*time.Second)
	if e.Signal != syscall.SIGKILL || !e.Requested || e.Uptime < 200*time.Millisecond {
		t.Errorf("exit %+v", e)
	}
	if re := r.waitKind(supervise.Restarting, 10*time.Second); re.Delay < 50*time.Millisecond {
		t.Errorf("delay %v after a worker that never got ready, want >= Min", re.Delay)
	}
}

// TestExtendStartPID: EXTEND_TIMEOUT_USEC's semantics. A later deadline
// moves the start timeout; an earlier one never shortens it; an unknown pid
// is refused.
func TestExtendStartPID(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c, "NEVER_READY=1"), testOptions(supervise.Options{StartTimeout: 200 * time.Millisecond}))
	st := r.waitKind(supervise.Started, 10*time.Second)
	if err := r.sup.ExtendStartPID(st.PID, time.Millisecond); err != nil {
		t.Fatalf("ExtendStartPID 1ms: %v", err)
	}
	if err := r.sup.ExtendStartPID(st.PID, 1500*time.Millisecond); err != nil {
		t.Fatalf("ExtendStartPID 1.5s: %v", err)
	}
	if err := r.sup.ExtendStartPID(1<<30, time.Second); !errors.Is(err, supervise.ErrUnknownWorker) {
		t.Errorf("ExtendStartPID of no worker: %v, want ErrUnknownWorker", err)
	}
	e := r.waitKind(supervise.Exited, 10*time.Second)
	if e.PID != st.PID || e.Signal != syscall.SIGKILL || !e.Requested || e.Uptime < 1500*time.Millisecond {
		t.Errorf("exit %+v, want pid %d SIGKILLed after at least 1.5 s", e, st.PID)
	}
}

// TestStopEscalates: a worker that ignores SIGTERM is SIGKILLed with its
// process group after StopTimeout, and Stop completes within the timeout
// plus a second (TESTPLAN C4).
func TestStopEscalates(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	stopTimeout := 300 * time.Millisecond
	r := start(t, workerSpec(t, c, "HANG_ON_TERM=1", "FORK_GRANDCHILD=stdout"), testOptions(supervise.Options{StopTimeout: stopTimeout}))
	r.waitReady(1, 10*time.Second)
	begin := time.Now()
	_ = r.sup.Stop()
	e := r.waitKind(supervise.Exited, 10*time.Second)
	r.waitKind(supervise.Stopped, 10*time.Second)
	if took := time.Since(begin); took > stopTimeout+time.Second {
		t.Errorf("stop took %v", took)
	}
	if e.Signal != syscall.SIGKILL || !e.Requested {
		t.Errorf("exit %+v, want SIGKILL", e)
	}
}

// TestGrandchildHoldsStdout: the worker's exit is processed at once although
// a grandchild holds its stdout pipe; a grandchild in the group is killed,
// one that left it cannot hold the output reader, and so Run, past
// WaitDelay: Run returns while that grandchild is still alive (TESTPLAN C5).
func TestGrandchildHoldsStdout(t *testing.T) {
	for _, mode := range []string{"stdout", "setsid-stdout"} {
		t.Run(mode, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			const waitDelay = 200 * time.Millisecond
			r := start(t, workerSpec(t, c, "FORK_GRANDCHILD="+mode, "EXIT_AFTER=100ms", "EXIT_CODE=4"),
				testOptions(supervise.Options{Restart: supervise.RestartNever, WaitDelay: waitDelay}))
			var gc int
			select {
			case l := <-r.lines:
				if _, err := fmt.Sscanf(l.Text, "GRANDCHILD %d", &gc); err != nil {
					t.Fatalf("line %q", l.Text)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no grandchild line")
			}
			killGC := func() {
				if p, err := os.FindProcess(gc); err == nil {
					_ = p.Kill()
					_ = p.Release()
				}
			}
			if mode == "setsid-stdout" {
				// It left the group, so only the test can clean it up.
				t.Cleanup(killGC)
			}
			e := r.waitKind(supervise.Exited, 10*time.Second)
			if e.Code != 4 || e.Uptime > 5*time.Second {
				t.Errorf("exit %+v", e)
			}
			r.waitKind(supervise.Done, 10*time.Second)
			if mode == "setsid-stdout" {
				// Run must not wait for the grandchild's pipe beyond
				// WaitDelay; it is killed only after the check.
				begin := time.Now()
				_ = r.sup.Stop()
				select {
				case err := <-r.done:
					r.done <- err
				case <-time.After(waitDelay + 3*time.Second):
					t.Errorf("Run did not return within WaitDelay+3 s while a grandchild holds stdout")
					killGC()
				}
				if !procAlive(gc) {
					t.Errorf("grandchild %d died before Run returned (after %v): the check proved nothing", gc, time.Since(begin))
				}
				killGC()
			}
			if mode == "stdout" {
				deadline := time.Now().Add(2 * time.Second)
				for procAlive(gc) && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if procAlive(gc) {
					t.Errorf("grandchild %d in the worker's group survived it", gc)
				}
			}
		})
	}
}

// copyBinary copies the test binary so a test can break it.
func copyBinary(t *testing.T, spec *supervise.Spec) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "w")
	copyFile(t, spec.Path, dst)
	spec.Path = dst
	return dst
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// breakages make a worker binary unusable the three ways of TESTPLAN C12.
var breakages = []struct {
	name  string
	errno syscall.Errno
	fn    func(t *testing.T, path string)
}{
	{"missing", syscall.ENOENT, func(t *testing.T, path string) {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}},
	{"not executable", syscall.EACCES, func(t *testing.T, path string) {
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
	}},
	{"ETXTBSY", syscall.ETXTBSY, func(t *testing.T, path string) {
		// golang/go#22315: the binary at path is open for writing. A new
		// file replaces it, as a deploy would, since the running workers'
		// binary itself cannot be opened for writing.
		tmp := path + ".old"
		if err := os.Rename(path, tmp); err != nil {
			t.Fatal(err)
		}
		copyFile(t, tmp, path)
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
	}},
}

// TestSpawnFailure: a worker that cannot be spawned is retried with backoff
// and never brings the supervisor down (TESTPLAN C12).
func TestSpawnFailure(t *testing.T) {
	for _, b := range breakages {
		t.Run(b.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			spec := workerSpec(t, c)
			path := copyBinary(t, &spec)
			b.fn(t, path)
			r := start(t, spec, testOptions(supervise.Options{}))
			for range 2 {
				e := r.waitKind(supervise.SpawnFailed, 10*time.Second)
				var se *supervise.SpawnError
				if !errors.As(e.Err, &se) || !errors.Is(e.Err, b.errno) {
					t.Fatalf("SpawnFailed.Err = %v, want a SpawnError wrapping %v", e.Err, b.errno)
				}
				r.waitKind(supervise.Restarting, 10*time.Second)
			}
			if st := r.sup.Status(); !st.Running {
				t.Errorf("supervisor not running: %+v", st)
			}
		})
	}
}

// TestRestartWithBrokenBinary: a graceful restart whose new binary is
// missing, not executable or busy fails with a clear error and the old
// generation keeps serving (TESTPLAN C12).
func TestRestartWithBrokenBinary(t *testing.T) {
	for _, b := range breakages {
		t.Run(b.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			spec := workerSpec(t, c)
			path := copyBinary(t, &spec)
			r := start(t, spec, testOptions(supervise.Options{Workers: 2}))
			before := pids(r.waitReady(2, 10*time.Second))
			b.fn(t, path)
			if err := r.sup.Restart(supervise.Parallel); err != nil {
				t.Fatal(err)
			}
			f := r.waitKind(supervise.RestartFailed, 10*time.Second)
			if !errors.Is(f.Err, b.errno) || f.Generation != 2 {
				t.Errorf("RestartFailed %+v, want generation 2 and %v", f, b.errno)
			}
			st := r.sup.Status()
			if d := cmp.Diff(before, pids(st)); d != "" || st.ReadyWorkers != 2 || st.Generation != 1 {
				t.Errorf("old generation disturbed (-before +after):\n%s\nstatus %+v", d, st)
			}
		})
	}
}

// TestGracefulRestart runs both strategies to success and to the two
// failures of a new generation: never ready (C3) and crashing during
// initialisation (C11). On failure the old workers keep serving untouched.
func TestGracefulRestart(t *testing.T) {
	type outcome int
	const (
		ok outcome = iota
		neverReady
		crashes
	)
	for _, strategy := range []supervise.Strategy{supervise.Rolling, supervise.Parallel} {
		for _, oc := range []struct {
			name string
			o    outcome
			knob string
			err  error
		}{
			{"ok", ok, "", nil},
			{"new generation never ready", neverReady, "NEVER_READY=1", supervise.ErrStartTimeout},
			{"new generation crashes", crashes, "EXIT_CODE=1", supervise.ErrExitedBeforeReady},
		} {
			t.Run(strategy.String()+"/"+oc.name, func(t *testing.T) {
				fdcensus.Verify(t)
				c := proccensus.New(t)
				spec := workerSpec(t, c)
				spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
					env := []string{"HANDOFF_WORKER_ID=" + strconv.Itoa(id.Slot), "HANDOFF_WORKER_GENERATION=" + strconv.Itoa(id.Generation)}
					if id.Generation > 1 && oc.knob != "" {
						env = append(env, oc.knob)
					}
					return supervise.Launch{Env: env}, nil
				}
				opts := testOptions(supervise.Options{Workers: 3})
				if oc.o == neverReady {
					opts.StartTimeout = time.Second
				}
				r := start(t, spec, opts)
				// Generation 1 is marked ready as soon as it is started,
				// so a 1 s StartTimeout cannot catch a slow (-race)
				// start-up of the workers that are to keep serving.
				for range 3 {
					s := r.wait("gen-1 started", 10*time.Second, func(e supervise.Event) bool {
						return e.Kind == supervise.Started && e.ID.Generation == 1
					})
					if err := r.sup.MarkReady(s.ID); err != nil {
						t.Fatalf("MarkReady(%+v): %v", s.ID, err)
					}
				}
				before := pids(r.waitReady(3, 10*time.Second))
				if err := r.sup.Restart(strategy); err != nil {
					t.Fatal(err)
				}
				r.waitKind(supervise.RestartBegun, 10*time.Second)
				if oc.o == ok {
					r.waitKind(supervise.RestartDone, 20*time.Second)
					st := r.waitReady(3, 10*time.Second)
					for i, s := range st.Slots {
						if s.ID.Generation != 2 || s.PID == before[i] {
							t.Errorf("slot %d after restart: %+v (old pid %d)", i, s, before[i])
						}
					}
					if st.Generation != 2 {
						t.Errorf("generation %d, want 2", st.Generation)
					}
					checkStrategyOrder(t, strategy, r.all())
					// Every old worker was stopped on request.
					deadline := time.Now().Add(10 * time.Second)
					for {
						var old []ev
						for _, e := range project(r.all(), supervise.Exited) {
							if e.Gen == 1 {
								old = append(old, e)
							}
						}
						if len(old) == 3 {
							for _, e := range old {
								if !e.Requested {
									t.Errorf("old worker exit not requested: %+v", e)
								}
							}
							return
						}
						if time.Now().After(deadline) {
							t.Fatalf("old workers not stopped:\n%s", r.dump())
						}
						time.Sleep(20 * time.Millisecond)
					}
				}
				f := r.waitKind(supervise.RestartFailed, 20*time.Second)
				if !errors.Is(f.Err, oc.err) {
					t.Errorf("RestartFailed.Err = %v, want %v", f.Err, oc.err)
				}
				st := r.sup.Status()
				if d := cmp.Diff(before, pids(st)); d != "" || st.ReadyWorkers != 3 || st.Generation != 1 {
					t.Errorf("old generation disturbed (-before +after):\n%s\nstatus %+v", d, st)
				}
				for _, e := range project(r.all(), supervise.Exited) {
					if e.Gen == 1 {
						t.Errorf("an old worker exited: %+v", e)
					}
				}
				// A retry is allowed and is a new generation.
				if err := r.sup.Restart(strategy); err != nil {
					t.Fatal(err)
				}
				if b := r.waitKind(supervise.RestartBegun, 10*time.Second); b.Generation != 3 {
					t.Errorf("retry generation %d, want 3", b.Generation)
				}
			})
		}
	}
}

// checkStrategyOrder tells the strategies apart by the order of the new
// generation's Started and Ready events: rolling readies slot i's new worker
// before it starts slot i+1's; parallel starts every new worker before any
// is ready.
func checkStrategyOrder(t *testing.T, strategy supervise.Strategy, evs []supervise.Event) {
	t.Helper()
	type se struct {
		Kind string
		Slot int
	}
	var got []se
	for _, e := range evs {
		if (e.Kind == supervise.Started || e.Kind == supervise.Ready) && e.ID.Generation == 2 {
			got = append(got, se{e.Kind.String(), e.ID.Slot})
		}
	}
	var want []se
	if strategy == supervise.Rolling {
		for i := range 3 {
			want = append(want, se{"started", i}, se{"ready", i})
		}
	} else {
		want = []se{{"started", 0}, {"started", 1}, {"started", 2}, {"ready", 0}, {"ready", 1}, {"ready", 2}}
		// Ready order among parallel workers is up to the workers.
		if len(got) == 6 {
			slices.SortFunc(got[3:], func(a, b se) int { return a.Slot - b.Slot })
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("%v restart: generation-2 events (-want +got):\n%s", strategy, d)
	}
}

// TestRestartCoalescing: ten restart requests while a restart is in flight
// give exactly two restarts, never two new generations at once (TESTPLAN
// C10, C17). The new workers' readiness is held until every request was
// sent, so the count does not depend on timing.
func TestRestartCoalescing(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	spec := workerSpec(t, c)
	spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
		if id.Generation > 1 {
			return supervise.Launch{Env: []string{"NEVER_READY=1"}}, nil
		}
		return supervise.Launch{}, nil
	}
	r := start(t, spec, testOptions(supervise.Options{Workers: 2}))
	r.waitReady(2, 10*time.Second)
	for range 10 {
		if err := r.sup.Restart(supervise.Rolling); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := r.sup.Status(); !st.Restarting || !st.RestartQueued {
		t.Fatalf("after 10 requests: status %+v, want one restart running and one queued", st)
	}
	// Two slots times two generations: release each new worker in turn.
	for range 4 {
		e := r.wait("new worker started", 10*time.Second, func(e supervise.Event) bool {
			return e.Kind == supervise.Started && e.ID.Generation > 1
		})
		if err := r.sup.MarkReady(e.ID); err != nil {
			t.Fatalf("MarkReady(%+v): %v", e.ID, err)
		}
	}
	r.wait("second restart-done", 20*time.Second, func(e supervise.Event) bool {
		return e.Kind == supervise.RestartDone && e.Generation == 3
	})
	time.Sleep(300 * time.Millisecond)
	got := project(r.all(), supervise.RestartBegun, supervise.RestartDone, supervise.RestartFailed)
	want := []ev{{Kind: "restart-begun", Gen: 2}, {Kind: "restart-done", Gen: 2}, {Kind: "restart-begun", Gen: 3}, {Kind: "restart-done", Gen: 3}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("restarts (-want +got):\n%s", d)
	}
	if st := r.waitReady(2, 10*time.Second); st.Generation != 3 || st.Restarting || st.RestartQueued {
		t.Errorf("status %+v", st)
	}
}

// TestScale adds slots with the next indexes and stops removed ones
// gracefully.
func TestScale(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c), testOptions(supervise.Options{Workers: 1}))
	r.waitReady(1, 10*time.Second)
	if err := r.sup.Scale(3); err != nil {
		t.Fatal(err)
	}
	st := r.waitReady(3, 10*time.Second)
	for i, s := range st.Slots {
		if s.Slot != i {
			t.Errorf("slot %d has index %d", i, s.Slot)
		}
	}
	if err := r.sup.ScaleBy(-2); err != nil {
		t.Fatal(err)
	}
	exits := map[int]bool{}
	for range 2 {
		e := r.waitKind(supervise.Exited, 10*time.Second)
		if !e.Requested || e.Signal != syscall.SIGTERM {
			t.Errorf("scaled-down exit %+v", e)
		}
		exits[e.ID.Slot] = true
	}
	if d := cmp.Diff(map[int]bool{1: true, 2: true}, exits); d != "" {
		t.Errorf("removed slots (-want +got):\n%s", d)
	}
	time.Sleep(100 * time.Millisecond)
	if st := r.sup.Status(); st.Workers != 1 || st.Processes != 1 || st.ReadyWorkers != 1 {
		t.Errorf("status %+v", st)
	}
	if err := r.sup.Scale(-1); !errors.Is(err, supervise.ErrInvalid) {
		t.Errorf("Scale(-1) = %v", err)
	}
}

// TestSimultaneousExits: four workers exiting in the same millisecond are
// all detected and replaced, each status recorded (TESTPLAN C14).
func TestSimultaneousExits(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	at := time.Now().Add(1500 * time.Millisecond).UnixNano()
	spec := workerSpec(t, c)
	spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
		if id.Incarnation == 1 {
			return supervise.Launch{Env: []string{"EXIT_AT=" + strconv.FormatInt(at, 10), "EXIT_CODE=7"}}, nil
		}
		return supervise.Launch{}, nil
	}
	r := start(t, spec, testOptions(supervise.Options{Workers: 4, ReadyOnStart: true}))
	slots := map[int]int{}
	for range 4 {
		e := r.waitKind(supervise.Exited, 10*time.Second)
		if e.Code != 7 {
			t.Errorf("exit %+v", e)
		}
		slots[e.ID.Slot]++
	}
	if len(slots) != 4 {
		t.Errorf("exits per slot %v", slots)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := r.sup.Status()
		n := 0
		for _, s := range st.Slots {
			if s.ID.Incarnation == 2 && s.State == supervise.SlotReady {
				n++
			}
		}
		if n == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not all replaced: %+v\n%s", st, r.dump())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReadyThenExit: READY from a worker that has already exited (its exit
// not yet processed) is refused through the pidfd check, and the worker is
// never counted live (TESTPLAN C20).
func TestReadyThenExit(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	hold := make(chan struct{})
	held := make(chan int, 4)
	supervise.SetHookExited(func(pid int) {
		held <- pid
		<-hold
	})
	t.Cleanup(func() { supervise.SetHookExited(nil) })
	spec := workerSpec(t, c, "EXIT_AFTER_READY=1", "EXIT_CODE=0")
	sup, err := supervise.New(spec, testOptions(supervise.Options{Restart: supervise.RestartNever}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sup.Run(t.Context()) }()
	go func() {
		for range sup.Events() {
		}
	}()
	var line supervise.Line
	for line = range sup.Lines() {
		if line.Text == "READY" {
			break
		}
	}
	pid := <-held // exited, unreaped, exit not yet posted
	if pid != line.PID {
		t.Fatalf("held pid %d, READY from %d", pid, line.PID)
	}
	if err := sup.MarkReady(line.ID); !errors.Is(err, supervise.ErrExited) {
		t.Errorf("MarkReady after exit = %v, want ErrExited", err)
	}
	if st := sup.Status(); st.ReadyWorkers != 0 {
		t.Errorf("ready workers %d, want 0", st.ReadyWorkers)
	}
	close(hold)
	if err := sup.MarkReady(supervise.ID{Slot: 5}); !errors.Is(err, supervise.ErrUnknownWorker) {
		t.Errorf("MarkReady(unknown) = %v", err)
	}
	_ = sup.Stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	for range sup.Lines() {
	}
}

// TestExitPostedBeforeReap: the reap of an exited worker can be slow (the
// kernel prunes its /proc dentries then) and must hold back neither the
// Exited event, with the worker's real exit code, nor the close of its
// pidfd. The watcher is held between posting and reaping: the event
// arrives while the worker is still a zombie, and its pidfd is closed.
func TestExitPostedBeforeReap(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	hold := make(chan struct{})
	held := make(chan int, 1)
	supervise.SetHookBeforeReap(func(pid int) {
		held <- pid
		<-hold
	})
	t.Cleanup(func() { supervise.SetHookBeforeReap(nil) })
	before := pidfds(t)
	spec := workerSpec(t, c, "EXIT_AFTER_READY=1", "EXIT_CODE=7")
	sup, err := supervise.New(spec, testOptions(supervise.Options{Restart: supervise.RestartNever, ReadyOnStart: true}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sup.Run(t.Context()) }()
	go func() {
		for range sup.Lines() {
		}
	}()
	released := false
	release := func() {
		if !released {
			released = true
			close(hold)
		}
	}
	defer release()
	timeout := time.After(10 * time.Second)
	var exit supervise.Event
wait:
	for {
		select {
		case e, ok := <-sup.Events():
			if !ok {
				t.Fatal("events closed before Exited")
			}
			if e.Kind == supervise.Exited {
				exit = e
				break wait
			}
		case <-timeout:
			t.Fatal("no Exited event while the reap is held")
		}
	}
	if pid := <-held; pid != exit.PID {
		t.Fatalf("reap held for pid %d, Exited for %d", pid, exit.PID)
	}
	if exit.Code != 7 || exit.Signal != 0 {
		t.Errorf("Exited code %d signal %v, want code 7", exit.Code, exit.Signal)
	}
	if p, ok := proccensus.Stat(exit.PID); !ok || p.State != 'Z' {
		t.Errorf("worker %d not a zombie while its reap is held: %+v %v", exit.PID, p, ok)
	}
	if got := pidfds(t); got != before {
		t.Errorf("%d pidfds open while the reap is held, want %d as before the worker", got, before)
	}
	release()
	_ = sup.Stop()
	for range sup.Events() {
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if z := proccensus.Zombies(os.Getpid()); len(z) != 0 {
		t.Errorf("zombies after Run: %v", z)
	}
}

// pidfds counts this process's open pidfds.
func pidfds(t *testing.T) int {
	t.Helper()
	snap, err := fdcensus.Take(0)
	if err != nil {
		t.Fatal(err)
	}
	return snap.Count("anon_inode:[pidfd]")
}

// TestSlowOutputConsumer: nobody reads Lines, the worker writes 1.2 MiB,
// far more than the line buffer and a pipe (64 KiB) hold, and is never
// blocked: it exits; drops are counted.
func TestSlowOutputConsumer(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	opts := testOptions(supervise.Options{Restart: supervise.RestartNever, OutputBuffer: 8, ReadyOnStart: true})
	sup, err := supervise.New(workerSpec(t, c, "LINES=5000", "LINE_BYTES=250", "EXIT_AFTER_READY=1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sup.Run(t.Context()) }()
	// A blocked worker would never exit: bound the wait.
	watchdog := time.AfterFunc(20*time.Second, func() {
		t.Errorf("worker did not exit within 20 s: blocked by the slow reader?")
		_ = sup.Kill()
	})
	defer watchdog.Stop()
	var exited bool
	for e := range sup.Events() {
		if e.Kind == supervise.Exited {
			exited = true
			if e.Code != 0 {
				t.Errorf("exit %+v", e)
			}
			_ = sup.Stop()
		}
	}
	<-done
	st := sup.Status()
	if !exited || st.DroppedLines == 0 {
		t.Errorf("exited %v, dropped %d lines", exited, st.DroppedLines)
	}
	n := 0
	for range sup.Lines() {
		n++
	}
	if n != 8 || uint64(n)+st.DroppedLines != 5001 {
		t.Errorf("%d delivered + %d dropped, want 8 + 4993", n, st.DroppedLines)
	}
}

// TestLockedThreadExitKeepsWorkers: a goroutine of the supervisor's process
// that locks its OS thread and returns (so the runtime kills the thread)
// must not trigger the workers' Pdeathsig (TESTPLAN C9).
func TestLockedThreadExitKeepsWorkers(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c), testOptions(supervise.Options{Workers: 2, ReadyOnStart: true}))
	before := pids(r.waitReady(2, 10*time.Second))
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			lockAndExit()
		}()
	}
	for range 8 {
		<-done
	}
	time.Sleep(1500 * time.Millisecond)
	st := r.sup.Status()
	if d := cmp.Diff(before, pids(st)); d != "" {
		t.Errorf("workers changed (-before +after):\n%s", d)
	}
	for _, pid := range before {
		if !procAlive(pid) {
			t.Errorf("worker %d died", pid)
		}
	}
	if ex := project(r.all(), supervise.Exited); len(ex) != 0 {
		t.Errorf("exits %+v", ex)
	}
}

// lockAndExit runs a goroutine that locks its thread and returns without
// unlocking, so the runtime terminates that thread.
func lockAndExit() {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		lockOSThread()
	}()
	<-ch
}

// helperSupervisor starts the supervisor role and reads its stdout lines.
func helperSupervisor(t *testing.T, c *proccensus.Census, env ...string) (*os.Process, <-chan string, func() error) {
	t.Helper()
	cmd := helperCommand(t, "supervisor", append([]string{c.Env(), noRaceExitSleep}, env...))
	lines, wait := startHelper(t, cmd)
	return cmd.Process, lines, wait
}

// startHelper starts cmd and delivers its stdout lines; the channel closes at
// EOF. Read what you need before calling wait, which reaps the helper once;
// cleanup kills and reaps it.
func startHelper(t *testing.T, cmd *exec.Cmd) (<-chan string, func() error) {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 256)
	go func() {
		defer close(lines)
		buf := make([]byte, 0, 4096)
		chunk := make([]byte, 4096)
		for {
			n, err := out.Read(chunk)
			buf = append(buf, chunk[:n]...)
			for {
				i := strings.IndexByte(string(buf), '\n')
				if i < 0 {
					break
				}
				lines <- string(buf[:i])
				buf = buf[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	var once sync.Once
	var werr error
	wait := func() error {
		once.Do(func() {
			// Wait closes the pipe once the helper exited, even if its
			// children still hold the write end.
			werr = cmd.Wait()
			for range lines {
			}
		})
		return werr
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = wait()
	})
	return lines, wait
}

// readPIDs reads n "PID slot pid" lines.
func readPIDs(t *testing.T, lines <-chan string, n int) []int {
	t.Helper()
	var out []int
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("helper ended after %d pids", len(out))
			}
			var slot, pid int
			if _, err := fmt.Sscanf(l, "PID %d %d", &slot, &pid); err == nil {
				out = append(out, pid)
			}
		case <-timeout:
			t.Fatalf("only %d of %d pids", len(out), n)
		}
	}
	return out
}

// TestParentDeathKillsWorkers: SIGKILL the supervisor; its workers (the
// processes it forked) die within a second through Pdeathsig from the
// spawner's locked thread (TESTPLAN C8). It proves nothing about the
// workers' own children: Pdeathsig does not reach them, and they survive
// unless the worker arranges their death (see doc.go, "Supervisor death").
func TestParentDeathKillsWorkers(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	proc, lines, wait := helperSupervisor(t, c, "SUP_WORKERS=2")
	workers := readPIDs(t, lines, 2)
	time.Sleep(200 * time.Millisecond) // the workers settle into their sleep
	if err := proc.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = wait()
	deadline := time.Now().Add(time.Second)
	for _, pid := range workers {
		for procAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if procAlive(pid) {
			t.Errorf("worker %d alive 1 s after its supervisor was killed", pid)
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
				_ = p.Release()
			}
		}
	}
}

// sigIgn returns the SigIgn mask of pid.
func sigIgn(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	t.Fatal("no SigIgn")
	return 0
}

// TestWorkersGetDefaultSignals: a supervisor started with SIGHUP and SIGPIPE
// ignored (nohup) starts workers with default dispositions (TESTPLAN C18,
// golang/go#20479); with KeepIgnoredSignals they inherit SIG_IGN, which
// shows the scenario is real. The worker is /usr/bin/sleep, a non-Go
// program, so its SigIgn shows exactly what it inherited.
func TestWorkersGetDefaultSignals(t *testing.T) {
	sleep, err := execLookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	const hup, pipe = 1 << (syscall.SIGHUP - 1), 1 << (syscall.SIGPIPE - 1)
	ignoreForChildren(t, syscall.SIGHUP, syscall.SIGPIPE)
	if m := sigIgn(t, os.Getpid()); m&(hup|pipe) != hup|pipe {
		t.Fatalf("precondition: this process does not ignore SIGHUP and SIGPIPE (SigIgn %x)", m)
	}
	for _, tc := range []struct {
		name string
		env  string
		want uint64
	}{
		{"default", "", 0},
		// The Go runtime of the supervisor always handles SIGPIPE itself,
		// so only SIGHUP stays ignored.
		{"KeepIgnoredSignals", "SUP_KEEP_IGNORED=1", hup},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			proc, lines, wait := helperSupervisor(t, c, "SUP_WORKERS=1", "SUP_PATH="+sleep, "SUP_ARGS=30", tc.env)
			worker := readPIDs(t, lines, 1)[0]
			if m := sigIgn(t, worker) & (hup | pipe); m != tc.want {
				t.Errorf("worker SigIgn & (HUP|PIPE) = %x, want %x", m, tc.want)
			}
			_ = proc.Signal(syscall.SIGTERM)
			if err := wait(); err != nil {
				t.Errorf("supervisor exit: %v", err)
			}
		})
	}
}

// TestSubreaperReapsOrphans: with Subreaper, a worker's double-forked
// daemon re-parents to the supervisor and is reaped when it exits, while
// every worker's own exit status still reaches its watcher (TESTPLAN C6).
// TestSubreaperLeavesOwnChild: a child the caller waits for itself is not
// taken by the orphan reaper, so its exit status reaches the caller.
func TestSubreaperLeavesOwnChild(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	got := helperReport(t, c, []string{"OWNCHILD ", "ZOMBIES "}, "SUP_WORKERS=1", "SUP_SUBREAPER=1", "SUP_OWN_CHILD=1", "SUP_DURATION=1s")
	if d := cmp.Diff([]string{"OWNCHILD 7", "ZOMBIES 0"}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

// helperReport runs the supervisor helper with env and returns its output
// lines that start with one of prefixes, failing t if the helper failed.
func helperReport(t *testing.T, c *proccensus.Census, prefixes []string, env ...string) []string {
	t.Helper()
	_, lines, wait := helperSupervisor(t, c, env...)
	var got []string
	for l := range lines {
		if slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(l, p) }) {
			got = append(got, l)
		}
	}
	if err := wait(); err != nil {
		t.Errorf("supervisor: %v", err)
	}
	return got
}

func TestSubreaperReapsOrphans(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	exits, reaped, zombies := orphanRun(t, c, "SUP_WORKERS=3", "SUP_STOP_AFTER_EXITS=3")
	if d := cmp.Diff([]string{"3/0", "3/0", "3/0"}, exits); d != "" {
		t.Errorf("worker exit code/signal (-want +got):\n%s", d)
	}
	if reaped != 3 || zombies != 0 {
		t.Errorf("reaped %d orphans (want 3), %d zombies left (want 0)", reaped, zombies)
	}
}

// orphanRun runs the supervisor role as a subreaper with workers that
// exit 3 after 200 ms, each leaving a daemon grandchild, and returns the
// exits ("code/signal"), the orphans reaped and the zombies left.
func orphanRun(t *testing.T, c *proccensus.Census, env ...string) (exits []string, reaped, zombies int) {
	t.Helper()
	_, lines, wait := helperSupervisor(t, c, append([]string{"SUP_SUBREAPER=1", "FORK_GRANDCHILD=daemon", "EXIT_AFTER=200ms", "EXIT_CODE=3"}, env...)...)
	zombies = -1
	for l := range lines {
		switch {
		case strings.HasPrefix(l, "EXIT "):
			f := strings.Fields(l)
			exits = append(exits, f[2]+"/"+f[3])
		case strings.Contains(l, "reaped orphan"):
			reaped++
		case strings.HasPrefix(l, "ZOMBIES "):
			zombies, _ = strconv.Atoi(strings.TrimPrefix(l, "ZOMBIES "))
		}
	}
	if err := wait(); err != nil {
		t.Errorf("supervisor: %v", err)
	}
	return exits, reaped, zombies
}

// TestSubreapersInOneProcess: two supervisors in one process, both
// subreapers (cluster's groups as PID 1), never reap each other's workers:
// every exit is reported with its real code, none as -1 (reaped
// elsewhere), and the orphans are still reaped.
func TestSubreapersInOneProcess(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	exits, reaped, zombies := orphanRun(t, c, "SUP_TWO=1", "SUP_WORKERS=3", "SUP_STOP_AFTER_EXITS=6")
	if d := cmp.Diff([]string{"3/0", "3/0", "3/0", "3/0", "3/0", "3/0"}, exits); d != "" {
		t.Errorf("worker exit code/signal (-want +got):\n%s", d)
	}
	if reaped != 6 || zombies != 0 {
		t.Errorf("reaped %d orphans (want 6), %d zombies left (want 0)", reaped, zombies)
	}
}

// TestSubreaperReapsOrphansWhileReaping: the last worker's exit is posted
// before it is reaped, so Run's loop ends while the worker is still being
// reaped (held here for 2 s, as a slow reap of a worker with many /proc
// entries would be). An orphan (the worker's daemon grandchild, which
// outlives it by about 500 ms) that dies meanwhile is still reaped before
// Run returns: the orphan reaper must not have stopped before the watchers
// were done.
func TestSubreaperReapsOrphansWhileReaping(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	got := helperReport(t, c, []string{"EXIT ", "ZOMBIES "}, "SUP_WORKERS=1", "SUP_SUBREAPER=1", "SUP_DURATION=200ms",
		"SUP_HOLD_REAP=2s", "FORK_GRANDCHILD=daemon")
	if d := cmp.Diff([]string{"EXIT 0 -1 15", "ZOMBIES 0"}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

// TestHandleSignals drives the signal mapping with real signals to this
// process: HUP restarts, TTIN/TTOU scale, TERM stops.
func TestHandleSignals(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c), testOptions(supervise.Options{Workers: 1, ReadyOnStart: true}))
	r.waitReady(1, 10*time.Second)
	stop, err := supervise.HandleSignals(r.sup, supervise.Parallel)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	self := os.Getpid()
	_ = syscall.Kill(self, syscall.SIGHUP)
	r.waitKind(supervise.RestartDone, 10*time.Second)
	_ = syscall.Kill(self, syscall.SIGTTIN)
	if e := r.waitKind(supervise.Scaled, 10*time.Second); e.Workers != 2 {
		t.Errorf("scaled to %d, want 2", e.Workers)
	}
	_ = syscall.Kill(self, syscall.SIGTTOU)
	if e := r.waitKind(supervise.Scaled, 10*time.Second); e.Workers != 1 {
		t.Errorf("scaled to %d, want 1", e.Workers)
	}
	_ = syscall.Kill(self, syscall.SIGTERM)
	r.waitKind(supervise.Stopped, 10*time.Second)
}

// TestExtraFilesAndPrepare: Spec.ExtraFiles and Prepare's per-worker files
// arrive as fds 3, 4 and nothing else of the supervisor leaks into a worker;
// Done sees each worker's pid; a shared listening socket stays non-blocking
// in the supervisor (no (*os.File).Fd on it).
func TestExtraFilesAndPrepare(t *testing.T) {
	sleep, err := execLookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	fdcensus.Verify(t)
	c := proccensus.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	var mu sync.Mutex
	done := map[int]supervise.ID{}
	var readEnds []*os.File
	defer func() {
		for _, f := range readEnds {
			f.Close()
		}
	}()
	spec := supervise.Spec{Path: sleep, Args: []string{"30"}, Env: append(os.Environ(), c.Env()), ExtraFiles: []*os.File{lf},
		Prepare: func(id supervise.ID) (supervise.Launch, error) {
			r, w, err := os.Pipe()
			if err != nil {
				return supervise.Launch{}, err
			}
			readEnds = append(readEnds, r)
			return supervise.Launch{ExtraFiles: []*os.File{w}, Done: func(pid int, err error) {
				w.Close()
				mu.Lock()
				done[pid] = id
				mu.Unlock()
			}}, nil
		}}
	opts := testOptions(supervise.Options{Workers: 2, ReadyOnStart: true})
	opts.CaptureOutput = false
	r := start(t, spec, opts)
	st := r.waitReady(2, 10*time.Second)
	lnSnap, err := fdcensus.Take(0)
	if err != nil {
		t.Fatal(err)
	}
	var lnTarget string
	for _, fd := range lnSnap {
		if fd.Target != "" && strings.HasPrefix(fd.Target, "socket:") {
			if st, err := lf.Stat(); err == nil {
				if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Ino == fd.Ino {
					lnTarget = fd.Target
				}
			}
		}
	}
	for i, s := range st.Slots {
		snap, err := fdcensus.Take(s.PID)
		if err != nil {
			t.Fatal(err)
		}
		var nums []int
		for n, fd := range snap {
			// sleep(1) itself opens locale files while it starts.
			if !strings.HasPrefix(fd.Target, "/usr/") {
				nums = append(nums, n)
			}
		}
		slices.Sort(nums)
		want := append([]int{0, 1, 2, 3, 4}, inheritable(t)...)
		slices.Sort(want)
		if d := cmp.Diff(want, nums); d != "" {
			t.Errorf("worker %d descriptors (-want +got):\n%s\n%v", i, d, snap)
		}
		if snap[3].Target != lnTarget || !strings.HasPrefix(snap[4].Target, "pipe:") || snap[0].Target != "/dev/null" {
			t.Errorf("worker %d fds %v, want fd 3 = %s", i, snap, lnTarget)
		}
		mu.Lock()
		if done[s.PID] != s.ID {
			t.Errorf("Done for pid %d saw %+v, want %+v", s.PID, done[s.PID], s.ID)
		}
		mu.Unlock()
	}
	rc, err := lf.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	_ = rc.Control(func(fd uintptr) { flags, _ = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if flags&unix.O_NONBLOCK == 0 {
		t.Error("the shared listener was switched to blocking mode")
	}
}

// TestMarkReadyPIDAndContext: readiness by pid, and cancelling Run's
// context stops the workers gracefully.
func TestMarkReadyPIDAndContext(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	sup, err := supervise.New(workerSpec(t, c, "NEVER_READY=1"), testOptions(supervise.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	go func() {
		for range sup.Lines() {
		}
	}()
	var kinds []string
	for e := range sup.Events() {
		kinds = append(kinds, e.Kind.String())
		switch e.Kind {
		case supervise.Started:
			if err := sup.MarkReadyPID(e.PID); err != nil {
				t.Errorf("MarkReadyPID: %v", err)
			}
			if err := sup.MarkReadyPID(e.PID + 1000000); !errors.Is(err, supervise.ErrUnknownWorker) {
				t.Errorf("MarkReadyPID(unknown) = %v", err)
			}
		case supervise.Ready:
			if st := sup.Status(); st.ReadyWorkers != 1 {
				t.Errorf("status %+v", st)
			}
			cancel()
		}
	}
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if d := cmp.Diff([]string{"started", "ready", "exited", "stopped"}, kinds); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
}

// TestStopDuringRestart: Stop abandons a restart in flight (reported) and
// nothing new is spawned afterwards.
func TestStopDuringRestart(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	spec := workerSpec(t, c)
	spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
		if id.Generation > 1 {
			return supervise.Launch{Env: []string{"NEVER_READY=1"}}, nil
		}
		return supervise.Launch{}, nil
	}
	r := start(t, spec, testOptions(supervise.Options{Workers: 2}))
	r.waitReady(2, 10*time.Second)
	_ = r.sup.Restart(supervise.Parallel)
	_ = r.sup.Restart(supervise.Parallel) // queued
	_ = r.sup.Scale(4)                    // deferred
	r.waitKind(supervise.RestartBegun, 10*time.Second)
	_ = r.sup.Stop()
	if f := r.waitKind(supervise.RestartFailed, 10*time.Second); !errors.Is(f.Err, supervise.ErrStopping) {
		t.Errorf("RestartFailed.Err = %v", f.Err)
	}
	r.waitKind(supervise.Stopped, 10*time.Second)
	if n := len(project(r.all(), supervise.Started)); n != 4 {
		t.Errorf("%d spawns, want 4 (2 + 2 replacements)\n%s", n, r.dump())
	}
	if err := r.sup.Restart(supervise.Rolling); !errors.Is(err, supervise.ErrNotRunning) {
		t.Errorf("Restart after Run: %v", err)
	}
}

// inheritable lists this process's descriptors above 4 without
// close-on-exec (inherited from go test itself): every child gets those.
func inheritable(t *testing.T) []int {
	t.Helper()
	snap, err := fdcensus.Take(0)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for n := range snap {
		if n <= 4 {
			continue
		}
		if flags, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			out = append(out, n)
		}
	}
	return out
}

// TestPIDReuseNeverSignalled: a decoy that took a reaped worker's pid, and
// leads a process group with that id, is never signalled by the stop and
// kill escalation aimed at the worker (TESTPLAN C7), nor by the watcher's
// kill of the worker's leftover group, also when the worker was reaped
// (by something else in the process) before its watcher saw it exit. Runs in a fresh pid namespace, where the decoy's pid
// can be chosen through ns_last_pid.
func TestPIDReuseNeverSignalled(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for a pid namespace")
	}
	for _, tc := range []struct {
		name string
		env  string
	}{
		{"reaped after the exit was seen", "PIDREUSE_EARLY=0"},
		{"reaped before the exit was seen", "PIDREUSE_EARLY=1"},
		{"reaped before the exit was seen, then stopped", "PIDREUSE_EARLY=stop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			cmd := helperCommand(t, "pidreuse", []string{c.Env(), noRaceExitSleep, tc.env})
			cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("helper: %v\n%s", err, out)
			}
			var want, got int
			var alive bool
			if _, err := fmt.Sscanf(lastLine(string(out)), "DECOY %d %d %t", &want, &got, &alive); err != nil {
				t.Fatalf("helper output %q", out)
			}
			if want != got {
				t.Fatalf("decoy got pid %d, not the worker's %d: inconclusive", got, want)
			}
			if !alive {
				t.Errorf("decoy with the recycled pid %d was killed", got)
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestCredential runs a worker as nobody.
func TestCredential(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	fdcensus.Verify(t)
	c := proccensus.New(t)
	cmd := helperproc.Command(t, "worker", &helperproc.Options{AsNobody: true, Env: []string{c.Env(), noRaceExitSleep}})
	spec := supervise.Spec{Path: cmd.Path, Args: cmd.Args[1:], Env: cmd.Env, Dir: cmd.Dir,
		Credential: &supervise.Credential{UID: 65534, GID: 65534}}
	r := start(t, spec, testOptions(supervise.Options{}))
	st := r.waitReady(1, 10*time.Second)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.Slots[0].PID))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 5 && (f[0] == "Uid:" || f[0] == "Gid:") {
			if d := cmp.Diff([]string{"65534", "65534", "65534", "65534"}, f[1:]); d != "" {
				t.Errorf("%s (-want +got):\n%s", f[0], d)
			}
		}
	}
}

// TestCtrlCReachesOnlySupervisor: SIGINT to the supervisor's process group,
// as a terminal's Ctrl-C, does not hit the workers (each in its own group);
// the supervisor stops them in order with SIGTERM (TESTPLAN C15).
func TestCtrlCReachesOnlySupervisor(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	cmd := helperCommand(t, "supervisor", []string{c.Env(), noRaceExitSleep, "SUP_WORKERS=2", "SUP_SIGNALS=1"})
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // the "foreground group"
	lines, wait := startHelper(t, cmd)
	readPIDs(t, lines, 2)
	time.Sleep(200 * time.Millisecond) // the workers reached their sleep
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var exits []string
	for l := range lines {
		if strings.HasPrefix(l, "EXIT ") {
			exits = append(exits, strings.Join(strings.Fields(l)[2:], "/"))
		}
	}
	if err := wait(); err != nil {
		t.Errorf("supervisor: %v", err)
	}
	want := []string{"-1/15", "-1/15"} // code -1, SIGTERM: stopped by the supervisor
	if d := cmp.Diff(want, exits); d != "" {
		t.Errorf("worker exits code/signal (-want +got):\n%s", d)
	}
}

// TestWorkerRlimit: workers get the soft RLIMIT_NOFILE this process was
// started with (Go raised its own and restores the original for children),
// the same as any os/exec child (TESTPLAN C19).
func TestWorkerRlimit(t *testing.T) {
	sleep, err := execLookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	fdcensus.Verify(t)
	c := proccensus.New(t)
	ref, err := exec.Command("sh", "-c", "ulimit -Sn").Output()
	if err != nil {
		t.Skip("no sh")
	}
	opts := testOptions(supervise.Options{ReadyOnStart: true})
	opts.CaptureOutput = false
	r := start(t, supervise.Spec{Path: sleep, Args: []string{"30"}, Env: append(os.Environ(), c.Env())}, opts)
	st := r.waitReady(1, 10*time.Second)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", st.Slots[0].PID))
	if err != nil {
		t.Fatal(err)
	}
	var soft string
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			soft = strings.Fields(rest)[0]
		}
	}
	if want := strings.TrimSpace(string(ref)); soft != want {
		t.Errorf("worker soft RLIMIT_NOFILE %s, want %s as for any child", soft, want)
	}
}

// TestScaleDownThenUp: a slot removed by Scale and re-added while its old
// worker still drains gets a worker with a new ID (IDs never repeat), the
// draining worker refuses readiness, and readiness reaches the new worker.
func TestScaleDownThenUp(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	// HANG_ON_TERM: the removed worker drains until the SIGKILL.
	r := start(t, workerSpec(t, c, "HANG_ON_TERM=1"), testOptions(supervise.Options{Workers: 2, StopTimeout: 2 * time.Second}))
	old := r.waitReady(2, 10*time.Second).Slots[1].ID
	if err := r.sup.Scale(1); err != nil {
		t.Fatal(err)
	}
	if err := r.sup.Scale(2); err != nil {
		t.Fatal(err)
	}
	if err := r.sup.MarkReady(old); !errors.Is(err, supervise.ErrUnknownWorker) {
		t.Errorf("MarkReady(%+v) of the draining worker = %v, want ErrUnknownWorker", old, err)
	}
	st := r.waitReady(2, 10*time.Second)
	if st.Slots[1].ID == old {
		t.Errorf("re-added slot 1 reuses ID %+v", old)
	}
	seen := map[supervise.ID]bool{}
	for _, e := range r.all() {
		if e.Kind == supervise.Started {
			if seen[e.ID] {
				t.Errorf("ID %+v started twice\n%s", e.ID, r.dump())
			}
			seen[e.ID] = true
		}
	}
	// The old worker is finally killed; the new one keeps serving.
	e := r.wait("old worker exit", 10*time.Second, func(e supervise.Event) bool { return e.Kind == supervise.Exited })
	if e.ID != old || e.Signal != syscall.SIGKILL || !e.Requested {
		t.Errorf("exit %+v, want the drained %+v SIGKILLed", e, old)
	}
	if st := r.sup.Status(); st.ReadyWorkers != 2 || st.Slots[1].ID == old {
		t.Errorf("status %+v", st)
	}
}

// TestFailedRestartsKeepSlotServing: replacements spawned by graceful
// restarts that fail do not count as starts of the serving slot, so a later
// crash of the serving worker is respawned, not failed by the burst limit.
func TestFailedRestartsKeepSlotServing(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	spec := workerSpec(t, c)
	spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
		if id.Generation > 1 {
			return supervise.Launch{Env: []string{"EXIT_CODE=1"}}, nil
		}
		return supervise.Launch{}, nil
	}
	r := start(t, spec, testOptions(supervise.Options{
		Backoff: supervise.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond, Burst: 3, Window: time.Minute},
	}))
	st := r.waitReady(1, 10*time.Second)
	for range 3 {
		if err := r.sup.Restart(supervise.Rolling); err != nil {
			t.Fatal(err)
		}
		r.waitKind(supervise.RestartFailed, 10*time.Second)
	}
	time.Sleep(100 * time.Millisecond) // past Backoff.Min of uptime
	if err := syscall.Kill(st.Slots[0].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e := r.wait("restarting or failed", 10*time.Second, func(e supervise.Event) bool {
		return e.Kind == supervise.Restarting || e.Kind == supervise.Failed
	})
	if e.Kind != supervise.Restarting {
		t.Fatalf("serving worker's crash gave %v (%v), want restarting\n%s", e.Kind, e.Err, r.dump())
	}
	if st := r.waitReady(1, 10*time.Second); st.Slots[0].ID.Generation != 1 {
		t.Errorf("status %+v", st)
	}
}

// TestStoppedNeverDropped: with a full event buffer and no reader, events
// are dropped and counted, but the terminal Stopped event is delivered.
func TestStoppedNeverDropped(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	sup, err := supervise.New(workerSpec(t, c), testOptions(supervise.Options{Workers: 2, ReadyOnStart: true, EventBuffer: 1}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sup.Run(t.Context()) }()
	go func() {
		for range sup.Lines() {
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for sup.Status().Processes != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("workers not started: %+v", sup.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = sup.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		_ = sup.Kill()
		<-done
		t.Fatal("Run did not return after Stop")
	}
	var kinds []string
	for e := range sup.Events() {
		kinds = append(kinds, e.Kind.String())
	}
	if d := cmp.Diff([]string{"started", "stopped"}, kinds); d != "" || sup.Status().DroppedEvents == 0 {
		t.Errorf("events delivered (-want +got):\n%s\ndropped %d", d, sup.Status().DroppedEvents)
	}
}

// TestHandleSignalsSecondKills: the first SIGTERM stops gracefully; a worker
// that ignores it is SIGKILLed by the second SIGTERM long before
// StopTimeout.
func TestHandleSignalsSecondKills(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c, "HANG_ON_TERM=1"), testOptions(supervise.Options{StopTimeout: time.Minute}))
	r.waitReady(1, 10*time.Second) // READY comes after it ignored SIGTERM
	stop, err := supervise.HandleSignals(r.sup, supervise.Rolling)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for r.sup.Status().Running {
		if time.Now().After(deadline) {
			t.Fatal("first SIGTERM did not stop the supervisor")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if ex := project(r.all(), supervise.Exited); len(ex) != 0 {
		t.Fatalf("worker ignoring SIGTERM exited after the first signal: %+v", ex)
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	e := r.waitKind(supervise.Exited, 10*time.Second) // StopTimeout is a minute
	if e.Signal != syscall.SIGKILL || !e.Requested {
		t.Errorf("exit %+v, want SIGKILL", e)
	}
	r.waitKind(supervise.Stopped, 10*time.Second)
}

// TestHandleSignalsBeforeRun: a SIGTERM that arrives after HandleSignals
// but before Run is not lost: Run stops at once without starting workers.
func TestHandleSignalsBeforeRun(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	sup, err := supervise.New(workerSpec(t, c), testOptions(supervise.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	stop, err := supervise.HandleSignals(sup, supervise.Rolling)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond) // the handler has taken it
	done := make(chan error, 1)
	go func() { done <- sup.Run(t.Context()) }()
	go func() {
		for range sup.Lines() {
		}
	}()
	var kinds []string
	timeout := time.After(10 * time.Second)
	for events := sup.Events(); events != nil; {
		select {
		case e, ok := <-events:
			if !ok {
				events = nil
				break
			}
			kinds = append(kinds, e.Kind.String())
		case <-timeout:
			t.Errorf("Run still running 10 s after a SIGTERM before it; events %v", kinds)
			_ = sup.Kill()
			timeout = nil
		}
	}
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if d := cmp.Diff([]string{"stopped"}, kinds); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
}

// TestHandleSignalsAfterRun: a SIGINT after Run returned, with the handler
// still installed, terminates the process as the default action would,
// instead of being swallowed.
func TestHandleSignalsAfterRun(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	// SIGINT: the supervisor role handles SIGTERM itself.
	proc, lines, wait := helperSupervisor(t, c, "SUP_WORKERS=1", "SUP_SIGNALS=1", "SUP_DURATION=300ms", "SUP_LINGER=1")
	timeout := time.After(10 * time.Second)
	for returned := false; !returned; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("helper ended before Run returned")
			}
			returned = l == "RETURNED"
		case <-timeout:
			t.Fatal("Run did not return in the helper")
		}
	}
	if err := proc.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	kill := time.AfterFunc(5*time.Second, func() { _ = proc.Kill() })
	defer kill.Stop()
	err := wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("helper exit: %v", err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Errorf("helper ended with %v, want death by SIGINT", ee)
	}
}

// TestDisownKeepsRecycledPID: when a reaped worker's pid is recycled for a
// new worker before the old watcher disowns it, the new worker stays owned,
// so the subreaper's orphan reaper does not steal its exit status (TESTPLAN
// C6). Runs in a fresh pid namespace, where ns_last_pid picks the pid; the
// export test DisownRecycled checks the same bookkeeping without one.
func TestDisownKeepsRecycledPID(t *testing.T) {
	if !supervise.DisownRecycled() {
		t.Error("disowning a reaped worker dropped the new worker that got its pid")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root for a pid namespace")
	}
	fdcensus.Verify(t)
	c := proccensus.New(t)
	cmd := helperCommand(t, "disownrace", []string{c.Env(), noRaceExitSleep})
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var a, b, code int
	var reaped bool
	if _, err := fmt.Sscanf(lastLine(string(out)), "RESULT %d %d %d %t", &a, &b, &code, &reaped); err != nil {
		t.Fatalf("helper output %q", out)
	}
	if a != b {
		// A thread of the helper took the pid first; rare, and not a
		// verdict either way.
		t.Skipf("new worker did not get the reaped worker's pid %d (got %d): inconclusive", a, b)
	}
	if code != 3 {
		t.Errorf("worker with recycled pid %d reported exit code %d, want 3", b, code)
	}
	if !reaped {
		t.Errorf("worker with recycled pid %d was not reaped by its watcher (status stolen by the orphan reaper)", b)
	}
}
