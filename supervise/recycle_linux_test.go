//go:build linux

package supervise_test

import (
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestRecycle: Recycle replaces one serving worker, replacement first
// (same generation, next incarnation), and stops the old one only once the
// replacement is ready; a replacement that never becomes ready or crashes
// leaves the old worker serving (TESTPLAN C3, C11) and may be tried again.
func TestRecycle(t *testing.T) {
	for _, tc := range []struct {
		name         string
		knob         string // environment of the replacements
		readyOnStart bool
		replaced     bool
	}{
		{"ok", "", false, true},
		{"ready on start", "", true, true},
		{"replacement never ready", "NEVER_READY=1", false, false},
		{"replacement crashes", "EXIT_CODE=1", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			spec := workerSpec(t, c)
			spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
				if id.Incarnation > 1 && tc.knob != "" {
					return supervise.Launch{Env: []string{tc.knob}}, nil
				}
				return supervise.Launch{}, nil
			}
			r := start(t, spec, testOptions(supervise.Options{Workers: 2, StartTimeout: time.Second, ReadyOnStart: tc.readyOnStart}))
			before := r.waitReady(2, 10*time.Second)
			old := before.Slots[0]
			if err := r.sup.Recycle(old.ID); err != nil {
				t.Fatalf("Recycle(%+v): %v", old.ID, err)
			}
			want := supervise.ID{Slot: 0, Generation: 1, Incarnation: 2}
			r.wait("replacement started", 10*time.Second, func(e supervise.Event) bool { return e.Kind == supervise.Started && e.ID == want })
			var gone supervise.Event
			if tc.replaced {
				gone = r.wait("old worker exited", 10*time.Second, func(e supervise.Event) bool { return e.Kind == supervise.Exited && e.PID == old.PID })
			} else {
				gone = r.wait("replacement exited", 10*time.Second, func(e supervise.Event) bool { return e.Kind == supervise.Exited && e.ID == want })
			}
			if tc.replaced != gone.Requested && tc.knob != "NEVER_READY=1" {
				t.Errorf("exit %+v: requested %v", gone, gone.Requested)
			}
			st := r.waitReady(2, 10*time.Second)
			for deadline := time.Now().Add(10 * time.Second); st.Recycling && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				st = r.sup.Status()
			}
			wantSlot0 := old.ID
			if tc.replaced {
				wantSlot0 = want
				if st.Slots[0].PID == old.PID {
					t.Errorf("slot 0 still served by pid %d", old.PID)
				}
				// The replacement was ready before the old worker was
				// stopped.
				evs := r.all()
				ready := slices.IndexFunc(evs, func(e supervise.Event) bool { return e.Kind == supervise.Ready && e.ID == want })
				exited := slices.IndexFunc(evs, func(e supervise.Event) bool { return e.Kind == supervise.Exited && e.PID == old.PID })
				if ready < 0 || ready > exited {
					t.Errorf("replacement ready at event %d, old worker exited at %d:\n%s", ready, exited, r.dump())
				}
			} else if st.Slots[0].PID != old.PID {
				t.Errorf("slot 0 pid %d, want the old %d still serving", st.Slots[0].PID, old.PID)
			}
			got := []supervise.ID{st.Slots[0].ID, st.Slots[1].ID}
			if diff := cmp.Diff([]supervise.ID{wantSlot0, before.Slots[1].ID}, got); diff != "" {
				t.Errorf("slot IDs after Recycle (-want +got):\n%s", diff)
			}
			if st.Recycling || st.Generation != 1 || st.Slots[0].Restarts != 0 {
				t.Errorf("status %+v: want no recycle in flight, generation 1, no restart counted", st)
			}
			if !tc.replaced {
				// Not busy any more: it may be tried again.
				if err := r.sup.Recycle(old.ID); err != nil {
					t.Errorf("second Recycle: %v", err)
				}
			}
		})
	}
}

// TestRecycleErrors: Recycle refuses unknown workers, a second recycle in
// flight and a graceful restart in flight; a restart begun during a
// recycle stops the replacement and replaces every slot.
func TestRecycleErrors(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	spec := workerSpec(t, c)
	spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
		if id.Incarnation > 1 {
			return supervise.Launch{Env: []string{"READY_DELAY=1s"}}, nil
		}
		return supervise.Launch{}, nil
	}
	r := start(t, spec, testOptions(supervise.Options{Workers: 2}))
	st := r.waitReady(2, 10*time.Second)
	for _, tc := range []struct {
		id   supervise.ID
		want error
	}{
		{supervise.ID{Slot: 5, Generation: 1, Incarnation: 1}, supervise.ErrUnknownWorker},
		{supervise.ID{Slot: -1, Generation: 1, Incarnation: 1}, supervise.ErrUnknownWorker},
		{supervise.ID{Slot: 0, Generation: 1, Incarnation: 9}, supervise.ErrUnknownWorker},
	} {
		if err := r.sup.Recycle(tc.id); !errors.Is(err, tc.want) {
			t.Errorf("Recycle(%+v): %v, want %v", tc.id, err, tc.want)
		}
	}
	if err := r.sup.Recycle(st.Slots[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := r.sup.Recycle(st.Slots[1].ID); !errors.Is(err, supervise.ErrBusy) {
		t.Errorf("Recycle during a recycle: %v, want ErrBusy", err)
	}
	if !r.sup.Status().Recycling {
		t.Error("Status.Recycling false during a recycle")
	}
	if err := r.sup.Restart(supervise.Rolling); err != nil {
		t.Fatal(err)
	}
	if err := r.sup.Recycle(st.Slots[1].ID); !errors.Is(err, supervise.ErrBusy) {
		t.Errorf("Recycle during a restart: %v, want ErrBusy", err)
	}
	aborted := supervise.ID{Slot: 0, Generation: 1, Incarnation: 2}
	e := r.wait("aborted replacement exited", 10*time.Second, func(e supervise.Event) bool { return e.Kind == supervise.Exited && e.ID == aborted })
	if !e.Requested {
		t.Errorf("aborted replacement exit %+v not requested", e)
	}
	r.waitKind(supervise.RestartDone, 20*time.Second)
	st = r.waitReady(2, 10*time.Second)
	if st.Recycling || st.Generation != 2 || st.Slots[0].ID.Generation != 2 || st.Slots[1].ID.Generation != 2 {
		t.Errorf("after the restart: %+v", st)
	}
}

// TestStartEmpty: Options.StartEmpty runs no worker until Scale adds
// slots (a program that starts suspended).
func TestStartEmpty(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c), testOptions(supervise.Options{Workers: 3, StartEmpty: true}))
	time.Sleep(200 * time.Millisecond)
	if st := r.sup.Status(); !st.Running || st.Workers != 0 || st.Processes != 0 || len(r.all()) != 0 {
		t.Fatalf("started empty: %+v, events:\n%s", st, r.dump())
	}
	if err := r.sup.Scale(2); err != nil {
		t.Fatal(err)
	}
	r.waitReady(2, 10*time.Second)
}

// TestRecycleOldWorkerDies: the worker being recycled dies before its
// replacement is ready. A slot that is respawned gets the replacement
// (no third worker started for it, one restart counted); a slot the
// policy leaves down stays down, its replacement stopped.
func TestRecycleOldWorkerDies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		policy  supervise.Policy
		adopted bool
	}{
		{"always", supervise.RestartAlways, true},
		{"never", supervise.RestartNever, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			spec := workerSpec(t, c)
			spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
				if id.Incarnation > 1 {
					// Time to kill the old worker before this one is ready.
					return supervise.Launch{Env: []string{"READY_DELAY=1500ms"}}, nil
				}
				return supervise.Launch{}, nil
			}
			r := start(t, spec, testOptions(supervise.Options{Workers: 1, Restart: tc.policy}))
			old := r.waitReady(1, 10*time.Second).Slots[0]
			if err := r.sup.Recycle(old.ID); err != nil {
				t.Fatal(err)
			}
			repl := supervise.ID{Slot: 0, Generation: 1, Incarnation: 2}
			r.wait("replacement started", 10*time.Second, func(e supervise.Event) bool { return e.Kind == supervise.Started && e.ID == repl })
			p, err := os.FindProcess(old.PID)
			if err != nil {
				t.Fatal(err)
			}
			_ = p.Kill()
			_ = p.Release()
			r.wait("old worker exited", 10*time.Second, func(e supervise.Event) bool { return e.Kind == supervise.Exited && e.PID == old.PID })
			if tc.adopted {
				r.wait("replacement ready", 10*time.Second, func(e supervise.Event) bool { return e.Kind == supervise.Ready && e.ID == repl })
				r.waitReady(1, 10*time.Second)
			} else {
				e := r.wait("replacement exited", 10*time.Second, func(e supervise.Event) bool { return e.Kind == supervise.Exited && e.ID == repl })
				if !e.Requested {
					t.Errorf("replacement exit %+v not requested", e)
				}
			}
			time.Sleep(200 * time.Millisecond) // past Backoff.Min: a respawn would have started
			st := r.sup.Status()
			want := supervise.SlotStatus{Slot: 0, State: supervise.SlotDone}
			if tc.adopted {
				want = supervise.SlotStatus{Slot: 0, State: supervise.SlotReady, ID: repl, Restarts: 1}
			}
			got := st.Slots[0]
			got.PID, got.Since, got.Started = 0, time.Time{}, time.Time{}
			if diff := cmp.Diff(want, got); diff != "" || st.Recycling {
				t.Errorf("slot 0 (-want +got):\n%s\nstatus %+v\nevents:\n%s", diff, st, r.dump())
			}
			started := 0
			for _, e := range r.all() {
				if e.Kind == supervise.Started {
					started++
				}
			}
			if started != 2 {
				t.Errorf("%d workers started, want 2 (the first and its replacement):\n%s", started, r.dump())
			}
		})
	}
}

// TestRecycleSlotRemoved: a Scale that removes the slot being recycled
// stops the replacement and ends the recycle at once.
func TestRecycleSlotRemoved(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	spec := workerSpec(t, c)
	spec.Prepare = func(id supervise.ID) (supervise.Launch, error) {
		if id.Incarnation > 1 {
			return supervise.Launch{Env: []string{"READY_DELAY=1s"}}, nil
		}
		return supervise.Launch{}, nil
	}
	r := start(t, spec, testOptions(supervise.Options{Workers: 2}))
	st := r.waitReady(2, 10*time.Second)
	if err := r.sup.Recycle(st.Slots[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := r.sup.Scale(1); err != nil {
		t.Fatal(err)
	}
	if st := r.sup.Status(); st.Recycling {
		t.Errorf("still recycling after its slot was removed: %+v", st)
	}
	if err := r.sup.Recycle(st.Slots[0].ID); err != nil {
		t.Errorf("Recycle of another slot: %v", err)
	}
	r.wait("replacement of slot 0 ready", 10*time.Second, func(e supervise.Event) bool {
		return e.Kind == supervise.Ready && e.ID == supervise.ID{Slot: 0, Generation: 1, Incarnation: 2}
	})
}
