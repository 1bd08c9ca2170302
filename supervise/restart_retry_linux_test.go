package supervise_test

import (
	"errors"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestRestartRetriesShortSpawn is TESTPLAN E2 at the supervisor: a graceful
// restart whose replacement cannot be spawned for lack of descriptors (a
// Prepare hook failing with EMFILE, as cluster's socketpair does) stays in
// flight and is retried with the backoff while the old workers serve; once
// descriptors are back the new generation comes up. Past QuickFailures
// failures in a row it fails, and the replacements already spawned are
// stopped. A stop during the wait ends it (ErrStopping) without another
// spawn; a failure that is no shortage (ENOENT) fails it at once.
func TestRestartRetriesShortSpawn(t *testing.T) {
	tests := []struct {
		name     string
		strategy supervise.Strategy
		errno    syscall.Errno
		short    int // slot that cannot be spawned; -1: every slot
		quick    int // Backoff.QuickFailures
		end      string
	}{
		{name: "rolling recovers", strategy: supervise.Rolling, errno: syscall.EMFILE, short: -1, end: "recover"},
		{name: "parallel recovers", strategy: supervise.Parallel, errno: syscall.EMFILE, short: 1, end: "recover"},
		{name: "parallel gives up", strategy: supervise.Parallel, errno: syscall.ENFILE, short: 1, quick: 3, end: "give up"},
		// A negative QuickFailures lets a slot's crash loop go on, but a
		// restart's retries stay bounded by the default (5).
		{name: "rolling gives up despite negative QuickFailures", strategy: supervise.Rolling, errno: syscall.ENOMEM, short: -1, quick: -1, end: "give up"},
		{name: "rolling stopped while waiting", strategy: supervise.Rolling, errno: syscall.EMFILE, short: 0, end: "stop"},
		{name: "not a shortage", strategy: supervise.Rolling, errno: syscall.ENOENT, short: -1, end: "fail at once"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			b := supervise.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond, QuickFailures: tc.quick}
			var env []string
			stopTimeout := time.Duration(0) // testOptions' default
			if tc.end == "stop" {
				// The loop must outlive the retry's delay after Stop, or a
				// stale retry timer could not fire into it: workers that
				// ignore SIGTERM keep it stopping for StopTimeout, well
				// past the delay, which is long enough for the Stop to
				// come first.
				b.Min, b.Max = 300*time.Millisecond, 300*time.Millisecond
				env = []string{"HANG_ON_TERM=1"}
				stopTimeout = time.Second
			}
			spec := workerSpec(t, c, env...)
			var short atomic.Bool
			short.Store(true)
			spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
				if id.Generation > 1 && short.Load() && (tc.short < 0 || tc.short == id.Slot) {
					return supervise.Launch{}, os.NewSyscallError("socketpair", tc.errno)
				}
				return supervise.Launch{}, nil
			}
			r := start(t, spec, testOptions(supervise.Options{Workers: 2, Backoff: b, StopTimeout: stopTimeout}))
			before := pids(r.waitReady(2, 10*time.Second))
			if err := r.sup.Restart(tc.strategy); err != nil {
				t.Fatal(err)
			}
			spawnFailed := func() {
				t.Helper()
				e := r.waitKind(supervise.SpawnFailed, 10*time.Second)
				var se *supervise.SpawnError
				if !errors.As(e.Err, &se) || !errors.Is(e.Err, tc.errno) || e.ID.Generation != 2 {
					t.Fatalf("SpawnFailed %+v, want a SpawnError of generation 2 wrapping %v", e, tc.errno)
				}
			}
			// The old generation serves, untouched, while the restart waits.
			serving := func() {
				t.Helper()
				st := r.sup.Status()
				if d := cmp.Diff(before, pids(st)); d != "" || st.ReadyWorkers != 2 || st.Generation != 1 {
					t.Errorf("old generation disturbed (-before +now):\n%s\nstatus %+v", d, st)
				}
			}
			switch tc.end {
			case "fail at once":
				spawnFailed()
				f := r.waitKind(supervise.RestartFailed, 10*time.Second)
				if !errors.Is(f.Err, tc.errno) || f.Generation != 2 {
					t.Errorf("RestartFailed %+v, want generation 2 and %v", f, tc.errno)
				}
				if n := len(project(r.all(), supervise.SpawnFailed)); n != 1 {
					t.Errorf("%d failed spawns, want 1 (no retry)\n%s", n, r.dump())
				}
				serving()
			case "recover":
				for range 2 {
					spawnFailed()
				}
				if st := r.sup.Status(); !st.Restarting {
					t.Errorf("restart no longer in flight after a short spawn: %+v\n%s", st, r.dump())
				}
				serving()
				short.Store(false)
				if d := r.waitKind(supervise.RestartDone, 10*time.Second); d.Generation != 2 {
					t.Errorf("RestartDone %+v, want generation 2", d)
				}
				st := r.waitReady(2, 10*time.Second)
				for _, s := range st.Slots {
					if s.ID.Generation != 2 || slices.Contains(before, s.PID) {
						t.Errorf("slot %d served by %+v (pid %d) after the restart, want generation 2, not one of %v", s.Slot, s.ID, s.PID, before)
					}
				}
				if n := len(project(r.all(), supervise.RestartFailed)); n != 0 {
					t.Errorf("%d failed restarts, want 0\n%s", n, r.dump())
				}
			case "give up":
				f := r.waitKind(supervise.RestartFailed, 10*time.Second)
				if !errors.Is(f.Err, tc.errno) || f.Generation != 2 {
					t.Errorf("RestartFailed %+v, want generation 2 and %v", f, tc.errno)
				}
				want := tc.quick
				if want <= 0 {
					want = 5
				}
				if n := len(project(r.all(), supervise.SpawnFailed)); n != want {
					t.Errorf("%d failed spawns, want %d (QuickFailures)\n%s", n, want, r.dump())
				}
				if tc.short > 0 {
					// Slot 0's replacement was spawned: stopped, as asked.
					e := r.wait("exit of slot 0's replacement", 10*time.Second, func(e supervise.Event) bool {
						return e.Kind == supervise.Exited && e.ID.Generation == 2
					})
					if e.ID.Slot != 0 || !e.Requested {
						t.Errorf("exit %+v, want slot 0's replacement, requested", e)
					}
				}
				serving()
			case "stop":
				spawnFailed()
				if err := r.sup.Stop(); err != nil {
					t.Fatal(err)
				}
				if f := r.waitKind(supervise.RestartFailed, 10*time.Second); !errors.Is(f.Err, supervise.ErrStopping) {
					t.Errorf("RestartFailed.Err = %v, want ErrStopping", f.Err)
				}
				// Stopped comes after StopTimeout (the workers ignore
				// SIGTERM), past the retry's delay: a retry timer still
				// armed would have spawned again before it.
				r.waitKind(supervise.Stopped, 10*time.Second)
				for _, e := range project(r.all(), supervise.Exited) {
					if e.Signal != syscall.SIGKILL {
						t.Errorf("exit %+v, want SIGKILL after StopTimeout (the premise: the loop outlives the retry delay)", e)
					}
				}
				n := 0
				for _, e := range r.all() {
					if (e.Kind == supervise.Started || e.Kind == supervise.SpawnFailed) && e.ID.Generation == 2 {
						n++
					}
				}
				if n != 1 {
					t.Errorf("%d spawns of generation 2 after the stop, want none\n%s", n-1, r.dump())
				}
			}
		})
	}
}
