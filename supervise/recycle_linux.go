//go:build linux

package supervise

import (
	"fmt"
	"time"
)

// recycle starts the replacement of the serving worker id (Recycle).
func (l *loop) recycle(id ID) error {
	if l.op != nil {
		return fmt.Errorf("%w: a graceful restart is in flight", ErrBusy)
	}
	if l.recycling != nil {
		return fmt.Errorf("%w: slot %d is being recycled", ErrBusy, l.recycling.index)
	}
	if id.Slot < 0 || id.Slot >= len(l.slots) {
		return fmt.Errorf("%w: %+v", ErrUnknownWorker, id)
	}
	sl := l.slots[id.Slot]
	w := sl.cur
	if w == nil || w.id != id || w.stopping {
		return fmt.Errorf("%w: %+v does not serve slot %d", ErrUnknownWorker, id, id.Slot)
	}
	if !w.ready {
		return fmt.Errorf("%w: %+v is not ready", ErrBusy, id)
	}
	// Not counted by the slot's throttle: like a restart's replacement,
	// it was asked for, it is not a crash.
	nw, err := l.spawn(sl, sl.gen)
	if err != nil {
		return err
	}
	sl.next = nw
	l.recycling = sl
	if nw.ready { // ReadyOnStart
		l.recycleReady(sl)
	}
	return nil
}

// recycleReady promotes the ready replacement; promote stops the old
// worker gracefully.
func (l *loop) recycleReady(sl *slot) {
	l.recycling = nil
	l.promote(sl)
}

// recycleFailed notes that the replacement exited before it was ready (or
// was stopped); the old worker keeps serving.
func (l *loop) recycleFailed(sl *slot, w *worker, m exitMsg) {
	l.recycling = nil
	if !w.stopping || w.timedOut {
		l.s.log.Warn("supervise: recycle failed; the previous worker keeps serving", "slot", sl.index,
			"pid", w.proc.pid, "code", m.code, "signal", int(m.signal), "timed_out", w.timedOut,
			"uptime", m.at.Sub(w.start).Round(time.Millisecond))
	}
}

// abortRecycle stops a replacement that is not ready yet.
func (l *loop) abortRecycle() {
	sl := l.recycling
	if sl == nil {
		return
	}
	l.recycling = nil
	if w := sl.next; w != nil {
		sl.next = nil
		l.stopWorker(w)
	}
}

// recycleOrphaned follows the death of the worker a recycle was replacing,
// once slotDied decided the slot's fate. If it is to be respawned, the
// replacement already starting serves it instead: a second worker for the
// slot would only be stopped again when the replacement is promoted. If it
// is not (restart policy, permanent exit, burst limit, removed, stopping),
// the replacement is stopped, as a respawn would not happen either.
func (l *loop) recycleOrphaned(sl *slot) {
	if l.recycling != sl {
		return
	}
	w := sl.next
	if w == nil || sl.state != SlotBackoff || sl.removed || l.stopping {
		l.abortRecycle()
		return
	}
	l.cancelSlotTimer(sl)
	l.recycling = nil
	sl.next, sl.cur = nil, w
	sl.restarts++
	sl.state, sl.since = SlotStarting, w.start
}
