package cluster

import (
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/supervise"
)

// Two workers of slot 0; in TestNotePhaseIdentity, two that had the same
// pid one after the other.
var (
	id1 = supervise.ID{Slot: 0, Generation: 1, Incarnation: 1}
	id2 = supervise.ID{Slot: 0, Generation: 1, Incarnation: 2}
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
				if s.notePhase(10, id1, n).IgnoredReady {
					ignored++
				}
			}
			st := supervise.Status{Workers: 2, ReadyWorkers: 1, Slots: []supervise.SlotStatus{
				{Slot: 0, State: supervise.SlotReady, ID: id1, PID: 10, Since: time.Unix(1, 0)},
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
			got := res{s.stopping(10, id1), ignored, st.Slots[0].State, st.Slots[1].State, st.ReadyWorkers}
			want := res{tc.want == phaseStopping, tc.ignored, tc.slot, supervise.SlotBackoff, tc.readyLeft}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			s.forget(10, id1)
			if s.stopping(10, id1) {
				t.Errorf("forget left the phase behind")
			}
		})
	}
	// A worker still starting that says STOPPING=1 is shown stopping; one
	// that says RELOADING=1 stays starting. Neither was counted ready.
	var s notifyState
	defer s.close()
	s.notePhase(20, id1, stopping)
	s.notePhase(21, id2, reloading)
	st := supervise.Status{Workers: 2, Slots: []supervise.SlotStatus{
		{Slot: 0, State: supervise.SlotStarting, ID: id1, PID: 20},
		{Slot: 1, State: supervise.SlotStarting, ID: id2, PID: 21},
	}}
	s.applyPhases(&st)
	if got := []supervise.SlotState{st.Slots[0].State, st.Slots[1].State, supervise.SlotState(st.ReadyWorkers)}; !cmp.Equal(got, []supervise.SlotState{supervise.SlotStopping, supervise.SlotStarting, 0}) {
		t.Errorf("starting workers: states and ready count %v, want [stopping starting 0]", got)
	}
}

// TestNotePhaseIdentity: a phase belongs to a worker, not to its pid. A
// message of a worker read before its exit and applied after forget sets
// no phase (no permanent "stopping" for a dead pid, no timer); a phase
// left by an earlier worker (its exit never forgotten) neither shows for
// nor holds back the later worker with the same pid, and a late forget of
// the earlier one leaves the later one's phase alone.
func TestNotePhaseIdentity(t *testing.T) {
	stopping := Notification{Stopping: true}
	none := func(*notifyState) {}
	type res struct {
		Change   phaseChange
		Phase    workerPhase
		Stopping bool // of the sender
		Armed    bool // a phase timer for the sender
		Slot     supervise.SlotState
		Ready    int
	}
	for _, tc := range []struct {
		name          string
		before, after func(s *notifyState)
		sender        supervise.ID // of the message, applied between
		msg           Notification
		serving       supervise.ID // slot 0's worker, pid 10
		want          res
	}{
		{
			name:   "late message after forget",
			before: func(s *notifyState) { s.forget(10, id1) },
			after:  none,
			sender: id1, msg: stopping, serving: id2,
			want: res{Slot: supervise.SlotReady, Ready: 1},
		},
		{
			name:   "stale stopping, later worker ready",
			before: func(s *notifyState) { s.notePhase(10, id1, stopping) },
			after:  none,
			sender: id2, msg: Notification{Ready: true}, serving: id2,
			want: res{Slot: supervise.SlotReady, Ready: 1},
		},
		{
			name:   "stale stopping, later worker reloads, late forget",
			before: func(s *notifyState) { s.notePhase(10, id1, stopping) },
			after:  func(s *notifyState) { s.forget(10, id1) },
			sender: id2, msg: Notification{Reloading: true}, serving: id2,
			want: res{Change: phaseChange{To: phaseReloading}, Phase: phaseReloading, Armed: true, Slot: supervise.SlotReloading},
		},
		{
			name:   "forget of another worker",
			before: func(s *notifyState) { s.forget(10, id2) },
			after:  none,
			sender: id1, msg: stopping, serving: id1,
			want: res{Change: phaseChange{To: phaseStopping}, Phase: phaseStopping, Stopping: true, Armed: true, Slot: supervise.SlotStopping},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s notifyState
			defer s.close()
			tc.before(&s)
			var got res
			got.Change = s.notePhase(10, tc.sender, tc.msg)
			tc.after(&s)
			got.Phase, _ = s.phaseOf(10)
			got.Stopping = s.stopping(10, tc.sender)
			s.armPhase(10, tc.sender, got.Phase, time.Hour, func() {})
			s.mu.Lock()
			got.Armed = s.workers[10] != nil && s.workers[10].phaseTimer != nil
			s.mu.Unlock()
			st := supervise.Status{Workers: 1, ReadyWorkers: 1, Slots: []supervise.SlotStatus{
				{Slot: 0, State: supervise.SlotReady, ID: tc.serving, PID: 10},
			}}
			s.applyPhases(&st)
			got.Slot, got.Ready = st.Slots[0].State, st.ReadyWorkers
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestNotifyRecordIdentity: STATUS=, ERRNO= and EXTEND_TIMEOUT_USEC=
// belong to a worker, not to its pid, as phases do. One read before its
// exit and applied after forget records nothing (no entry left behind for
// good, nothing reported at a later worker's exit); what an earlier
// worker with the same pid left is not the later one's.
func TestNotifyRecordIdentity(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	type res struct {
		Errno      int    // forget of the later worker
		Unlogged   string // likewise
		Status     string // lastStatus of the later worker
		FirstExt   bool   // the later worker's first EXTEND_TIMEOUT_USEC
		EntriesEnd int    // entries left after both forgets
	}
	for _, tc := range []struct {
		name   string
		before func(s *notifyState) // what the earlier worker, id1, did
		want   res
	}{
		{
			name: "late ERRNO after forget",
			before: func(s *notifyState) {
				s.forget(10, id1)
				s.setErrno(10, id1, 13)
			},
			want: res{FirstExt: true},
		},
		{
			name: "late STATUS and EXTEND after forget",
			before: func(s *notifyState) {
				s.forget(10, id1)
				s.status(log, 10, id1, "late")
				s.firstExtend(10, id1)
			},
			want: res{FirstExt: true},
		},
		{
			name: "earlier worker never forgotten",
			before: func(s *notifyState) {
				s.setErrno(10, id1, 13)
				s.status(log, 10, id1, "old")
				s.firstExtend(10, id1)
			},
			want: res{FirstExt: true},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s notifyState
			defer s.close()
			tc.before(&s)
			var got res
			got.Status = s.lastStatus(10, id2)
			got.FirstExt = s.firstExtend(10, id2)
			got.Errno, got.Unlogged, _ = s.forget(10, id2)
			s.forget(10, id1)
			s.mu.Lock()
			got.EntriesEnd = len(s.workers)
			s.mu.Unlock()
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	// The worker's own records are its own still.
	var s notifyState
	defer s.close()
	s.setErrno(10, id2, 98)
	s.status(log, 10, id2, "mine")
	if errno := func() int { e, _, _ := s.forget(10, id2); return e }(); errno != 98 {
		t.Errorf("forget: errno %d, want 98", errno)
	}
}
