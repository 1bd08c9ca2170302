package cluster

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/supervise"
)

// TestNotePhase: a worker's STOPPING=1, RELOADING=1 and READY=1 change its
// phase with systemd's precedence (STOPPING=1 wins and is for good, READY=1
// wins over RELOADING=1 and ends a reload), a READY=1 after STOPPING=1 is
// reported once, and the status shows the phase of a serving worker without
// counting it ready.
func TestNotePhase(t *testing.T) {
	var (
		ready     = Notification{Ready: true}
		reloading = Notification{Reloading: true}
		stopping  = Notification{Stopping: true}
	)
	for _, tc := range []struct {
		name      string
		msgs      []Notification
		want      workerPhase
		ignored   int // READY=1 reported as ignored
		slot      supervise.SlotState
		readyLeft int // of 1 ready worker
	}{
		{"ready only", []Notification{ready, ready}, phaseNone, 0, supervise.SlotReady, 1},
		{"reloading", []Notification{ready, reloading}, phaseReloading, 0, supervise.SlotReloading, 0},
		{"reloaded", []Notification{reloading, ready}, phaseNone, 0, supervise.SlotReady, 1},
		{"reload done in one message", []Notification{{Reloading: true, Ready: true}}, phaseNone, 0, supervise.SlotReady, 1},
		{"stopping", []Notification{stopping}, phaseStopping, 0, supervise.SlotStopping, 0},
		{"ready after stopping", []Notification{stopping, ready, ready}, phaseStopping, 1, supervise.SlotStopping, 0},
		{"stopping wins in one message", []Notification{{Stopping: true, Ready: true}, ready}, phaseStopping, 1, supervise.SlotStopping, 0},
		{"reloading after stopping", []Notification{stopping, reloading, ready}, phaseStopping, 1, supervise.SlotStopping, 0},
		{"stopping while reloading", []Notification{reloading, stopping}, phaseStopping, 0, supervise.SlotStopping, 0},
		{"status only", []Notification{{Status: "x"}}, phaseNone, 0, supervise.SlotReady, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s notifyState
			defer s.close()
			ignored := 0
			for _, n := range tc.msgs {
				if s.notePhase(10, n).IgnoredReady {
					ignored++
				}
			}
			st := supervise.Status{Workers: 2, ReadyWorkers: 1, Slots: []supervise.SlotStatus{
				{Slot: 0, State: supervise.SlotReady, PID: 10, Since: time.Unix(1, 0)},
				{Slot: 1, State: supervise.SlotBackoff, PID: 0},
			}}
			s.applyPhases(&st)
			type res struct {
				Stopping  bool
				Ignored   int
				Slot      supervise.SlotState
				Other     supervise.SlotState
				ReadyLeft int
			}
			got := res{s.stopping(10), ignored, st.Slots[0].State, st.Slots[1].State, st.ReadyWorkers}
			want := res{tc.want == phaseStopping, tc.ignored, tc.slot, supervise.SlotBackoff, tc.readyLeft}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			s.forget(10)
			if s.stopping(10) {
				t.Errorf("forget left the phase behind")
			}
		})
	}
	// A worker still starting that says STOPPING=1 is shown stopping; one
	// that says RELOADING=1 stays starting. Neither was counted ready.
	var s notifyState
	defer s.close()
	s.notePhase(20, stopping)
	s.notePhase(21, reloading)
	st := supervise.Status{Workers: 2, Slots: []supervise.SlotStatus{
		{Slot: 0, State: supervise.SlotStarting, PID: 20},
		{Slot: 1, State: supervise.SlotStarting, PID: 21},
	}}
	s.applyPhases(&st)
	if got := []supervise.SlotState{st.Slots[0].State, st.Slots[1].State, supervise.SlotState(st.ReadyWorkers)}; !cmp.Equal(got, []supervise.SlotState{supervise.SlotStopping, supervise.SlotStarting, 0}) {
		t.Errorf("starting workers: states and ready count %v, want [stopping starting 0]", got)
	}
}
