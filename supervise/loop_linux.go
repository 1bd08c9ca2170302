//go:build linux

package supervise

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// worker is one spawned process. Fields are owned by the event loop except
// those of proc, which the watcher shares under proc.mu.
type worker struct {
	id    ID
	slot  *slot
	proc  *proc
	start time.Time

	ready    bool
	readyAt  time.Time
	stopping bool // the supervisor asked it to stop
	timedOut bool // killed because it was not ready in time

	startTimer    *time.Timer
	startDeadline time.Time
	startSeq      int // the current start timer's; an older one's message is stale
	killTimer     *time.Timer
}

type slot struct {
	index        int
	gen          int // generation respawns of this slot use
	incarnations int
	cur          *worker // the serving (or starting) worker
	next         *worker // its replacement during a graceful restart
	state        SlotState
	since        time.Time
	restarts     int
	err          error
	th           *throttle
	timer        *time.Timer
	timerSeq     int
	removed      bool
}

type restartOp struct {
	strategy Strategy
	gen      int
	order    []*slot // slots whose replacement is not spawned yet
	current  *slot   // rolling: slot whose new worker is awaited
	waiting  int     // parallel: new workers not ready yet
	spawning bool    // parallel: still spawning, do not complete yet
	// th paces retries of a replacement that could not be spawned for
	// lack of resources (retryable); retry is the pending retry's timer.
	th    *throttle
	retry *time.Timer
}

type loop struct {
	s   *Supervisor
	p   *platform
	opt *Options

	slots   []*slot
	workers map[*worker]struct{} // spawned, exit not processed yet
	// lingering holds exited workers asked to stop whose process group
	// still has its grace period (proc.linger): Run waits for them and
	// Kill ends them.
	lingering map[*worker]struct{}
	byPID     map[int]*worker
	// incarnations[i] is the last incarnation handed out for slot index i.
	// It outlives a slot removed by Scale, so a slot re-added at the same
	// index never repeats the ID of a worker still draining.
	incarnations []int

	genCounter     int // last generation handed out
	gen            int // generation of the last successful restart
	op             *restartOp
	queued         bool
	queuedStrategy Strategy
	pendingScale   int // -1: none
	stopping       bool
	// recycling is the slot whose next worker Recycle started
	// (recycle_linux.go), or nil.
	recycling *slot
}

// Messages posted to s.inbox.
type exitMsg struct {
	w      *worker
	at     time.Time
	code   int  // -1 unless exited
	exited bool // a normal exit (CLD_EXITED) with status code
	signal syscall.Signal
	linger bool // its group lingers until lingerDoneMsg
}

// lingerDoneMsg: the lingering group of w is empty or was killed.
type lingerDoneMsg struct{ w *worker }

type timerKind int

const (
	timerRespawn timerKind = iota
	timerStart
	timerKill
	timerRestartRetry
)

type timerMsg struct {
	kind timerKind
	w    *worker
	sl   *slot
	seq  int
	op   *restartOp // timerRestartRetry: the restart it continues
}

func (s *Supervisor) post(m any) {
	select {
	case s.inbox <- m:
	case <-s.done:
	}
}

func (s *Supervisor) run(ctx context.Context, stopPending bool) error {
	p, err := newPlatform(s)
	if err != nil {
		close(s.done)
		close(s.events)
		close(s.lines)
		return err
	}
	l := &loop{
		s:            s,
		p:            p,
		opt:          &s.opt,
		workers:      make(map[*worker]struct{}),
		lingering:    make(map[*worker]struct{}),
		byPID:        make(map[int]*worker),
		genCounter:   s.opt.FirstGeneration,
		gen:          s.opt.FirstGeneration,
		pendingScale: -1,
	}
	close(s.started)
	if stopPending || ctx.Err() != nil {
		// HandleSignals got TERM/INT before Run, or ctx is done already:
		// honour it now instead of starting workers the process was
		// already asked to stop.
		l.stop(false)
	} else {
		l.applyScale(s.opt.Workers, false)
	}

	ctxDone := ctx.Done()
	for !(l.stopping && len(l.workers) == 0 && len(l.lingering) == 0) {
		select {
		case <-ctxDone:
			ctxDone = nil
			l.stop(false)
		case r := <-s.reqs:
			r.reply <- l.handle(r)
		case m := <-s.inbox:
			l.dispatch(m)
		}
	}
	st := l.status()
	st.Running = false
	s.mu.Lock()
	s.last = st
	s.mu.Unlock()
	close(s.done)
	p.close()
	s.emitFinal(Event{Kind: Stopped, Time: time.Now()})
	close(s.events)
	close(s.lines)
	return nil
}

func (l *loop) handle(r request) response {
	if l.stopping && r.kind != reqStatus && r.kind != reqKill && r.kind != reqStop {
		return response{err: fmt.Errorf("%w: %w", ErrNotRunning, ErrStopping)}
	}
	switch r.kind {
	case reqRestart:
		if l.op != nil {
			l.queued = true
			l.queuedStrategy = r.strategy
			return response{}
		}
		l.beginRestart(r.strategy)
	case reqScale, reqScaleBy:
		n := r.n
		if r.kind == reqScaleBy {
			target := len(l.slots)
			if l.pendingScale >= 0 {
				target = l.pendingScale
			}
			n = clampAdd(target, r.n)
		}
		if l.op != nil {
			l.pendingScale = n
			return response{}
		}
		l.applyScale(n, true)
	case reqStop:
		l.stop(false)
	case reqKill:
		l.stop(true)
	case reqReadyID:
		var w *worker
		for x := range l.workers {
			if x.id == r.id {
				w = x
				break
			}
		}
		if w == nil {
			return response{err: fmt.Errorf("%w: %+v", ErrUnknownWorker, r.id)}
		}
		return response{err: l.markReady(w)}
	case reqReadyPID:
		w := l.byPID[r.n]
		if w == nil {
			return response{err: fmt.Errorf("%w: pid %d", ErrUnknownWorker, r.n)}
		}
		return response{err: l.markReady(w)}
	case reqExtendStartPID:
		w := l.byPID[r.n]
		if w == nil {
			return response{err: fmt.Errorf("%w: pid %d", ErrUnknownWorker, r.n)}
		}
		if w.ready || w.stopping || w.startTimer == nil {
			return response{}
		}
		if until := time.Now().Add(r.d); until.After(w.startDeadline) {
			// A message of the old timer already posted is stale by
			// its sequence number.
			w.startTimer.Stop()
			w.startSeq++
			w.startDeadline = until
			w.startTimer = l.after(r.d, timerMsg{kind: timerStart, w: w, seq: w.startSeq})
		}
		return response{}
	case reqStatus:
		return response{status: l.status()}
	case reqRecycle:
		return response{err: l.recycle(r.id)}
	}
	return response{}
}

func (l *loop) dispatch(m any) {
	switch m := m.(type) {
	case exitMsg:
		l.exited(m)
	case lingerDoneMsg:
		delete(l.lingering, m.w)
	case timerMsg:
		switch m.kind {
		case timerRespawn:
			sl := m.sl
			if sl.timerSeq != m.seq || sl.removed || l.stopping || sl.cur != nil {
				return
			}
			sl.timer = nil
			sl.restarts++
			l.startSlot(sl)
		case timerStart:
			w := m.w
			if _, live := l.workers[w]; !live || w.ready || w.stopping || m.seq != w.startSeq {
				return
			}
			w.timedOut = true
			w.stopping = true
			// A worker that never got ready has nothing to drain: kill
			// its whole group at once (TESTPLAN C3).
			w.proc.signalGroup(syscall.SIGKILL)
			if w.slot.next == w && l.op != nil {
				l.failRestart(fmt.Errorf("slot %d: %w", w.slot.index, ErrStartTimeout))
			}
		case timerKill:
			if _, live := l.workers[m.w]; live {
				m.w.proc.kill()
			}
		case timerRestartRetry:
			// The restart may have ended (stop, a replacement that
			// died) since the timer was set.
			if l.op != m.op || l.stopping {
				return
			}
			m.op.retry = nil
			l.continueRestart()
		}
	}
}

func (l *loop) after(d time.Duration, m timerMsg) *time.Timer {
	return time.AfterFunc(d, func() { l.s.post(m) })
}

// spawn starts one worker for sl in generation gen. Only the caller knows
// whether the spawn serves the slot (and counts for its start limits) or is
// a graceful restart's replacement (which does not).
func (l *loop) spawn(sl *slot, gen int) (*worker, error) {
	l.incarnations[sl.index]++
	sl.incarnations = l.incarnations[sl.index]
	id := ID{Slot: sl.index, Generation: gen, Incarnation: sl.incarnations}
	var launch Launch
	var err error
	if l.s.spec.Prepare != nil {
		launch, err = l.s.spec.Prepare(id)
	}
	var pr *proc
	if err == nil {
		pr, err = l.p.start(id, &launch)
	}
	if launch.Done != nil {
		pid := 0
		if pr != nil {
			pid = pr.pid
		}
		launch.Done(pid, err)
	}
	if err != nil {
		err = &SpawnError{ID: id, Err: err}
		l.s.emit(Event{Kind: SpawnFailed, Time: time.Now(), ID: id, Err: err})
		return nil, err
	}
	w := &worker{id: id, slot: sl, proc: pr, start: pr.start}
	l.workers[w] = struct{}{}
	l.byPID[pr.pid] = w
	l.s.emit(Event{Kind: Started, Time: w.start, ID: id, PID: pr.pid})
	l.p.wg.Add(1)
	go l.p.watch(w)
	if l.opt.ReadyOnStart {
		w.ready = true
		w.readyAt = w.start
		l.s.emit(Event{Kind: Ready, Time: time.Now(), ID: id, PID: pr.pid})
	} else if l.opt.StartTimeout > 0 {
		w.startDeadline = w.start.Add(l.opt.StartTimeout)
		w.startTimer = l.after(l.opt.StartTimeout, timerMsg{kind: timerStart, w: w, seq: w.startSeq})
	}
	return w, nil
}

// startSlot spawns the serving worker of a slot that has none.
func (l *loop) startSlot(sl *slot) {
	sl.th.started(time.Now())
	w, err := l.spawn(sl, sl.gen)
	if err != nil {
		l.slotDied(sl, ID{Slot: sl.index, Generation: sl.gen, Incarnation: sl.incarnations}, 0, 0, false, nil)
		return
	}
	sl.cur = w
	sl.since = w.start
	sl.state = SlotStarting
	if w.ready {
		sl.state = SlotReady
	}
}

// slotDied decides what follows the death (or failed spawn, m == nil) of a
// slot's serving worker, which ran for uptime, readyFor of it ready.
func (l *loop) slotDied(sl *slot, last ID, uptime, readyFor time.Duration, ready bool, m *exitMsg) {
	sl.cur = nil
	now := time.Now()
	sl.since = now
	if l.stopping || sl.removed {
		return
	}
	if m != nil {
		// Only a real exit has a code: -1 stands for none (a worker
		// reaped elsewhere), never for PermanentExitCode -1.
		if m.exited && l.opt.PermanentExitCode >= 0 && m.code == l.opt.PermanentExitCode {
			l.failSlot(sl, last, fmt.Errorf("%w %d", ErrPermanent, m.code))
			return
		}
		clean := m.signal == 0 && m.code == 0
		if l.opt.Restart == RestartNever || (l.opt.Restart == RestartOnFailure && clean) {
			sl.state = SlotDone
			l.s.emit(Event{Kind: Done, Time: now, ID: last})
			return
		}
	}
	delay, err := sl.th.next(now, uptime, readyFor, ready)
	if err != nil {
		l.failSlot(sl, last, err)
		return
	}
	sl.state = SlotBackoff
	l.s.emit(Event{Kind: Restarting, Time: now, ID: last, Delay: delay})
	sl.timerSeq++
	m2 := timerMsg{kind: timerRespawn, sl: sl, seq: sl.timerSeq}
	if delay == 0 {
		// Respawn right away, but after messages already queued, so a
		// burst of exits is processed in order.
		sl.timer = nil
		go l.s.post(m2)
		return
	}
	sl.timer = l.after(delay, m2)
}

func (l *loop) failSlot(sl *slot, last ID, err error) {
	sl.state = SlotFailed
	sl.err = err
	l.s.emit(Event{Kind: Failed, Time: time.Now(), ID: last, Err: err})
}

func (l *loop) cancelSlotTimer(sl *slot) {
	sl.timerSeq++
	if sl.timer != nil {
		sl.timer.Stop()
		sl.timer = nil
	}
}

func (l *loop) exited(m exitMsg) {
	w := m.w
	delete(l.workers, w)
	if m.linger {
		l.lingering[w] = struct{}{}
	}
	if l.byPID[w.proc.pid] == w {
		delete(l.byPID, w.proc.pid)
	}
	if w.startTimer != nil {
		w.startTimer.Stop()
	}
	if w.killTimer != nil {
		w.killTimer.Stop()
	}
	uptime := m.at.Sub(w.start)
	l.s.emit(Event{Kind: Exited, Time: m.at, ID: w.id, PID: w.proc.pid, Code: m.code, Signal: m.signal,
		Uptime: uptime, Requested: w.stopping})
	sl := w.slot
	switch {
	case sl.cur == w:
		var readyFor time.Duration
		if w.ready {
			readyFor = m.at.Sub(w.readyAt)
		}
		l.slotDied(sl, w.id, uptime, readyFor, w.ready, &m)
		// A replacement Recycle started for it (recycle_linux.go).
		l.recycleOrphaned(sl)
	case sl.next == w:
		sl.next = nil
		if l.recycling == sl {
			l.recycleFailed(sl, w, m)
		}
		if l.op != nil && !w.stopping {
			l.failRestart(fmt.Errorf("slot %d: %w (exit code %d, signal %d)", sl.index, ErrExitedBeforeReady, m.code, int(m.signal)))
		}
	}
}

func (l *loop) markReady(w *worker) error {
	// A worker being stopped (drained, scaled away, timed out) has been
	// written off: readiness from it must neither count nor be mistaken
	// for its replacement's.
	if w.stopping || w.timedOut {
		return fmt.Errorf("%w: %+v is being stopped", ErrUnknownWorker, w.id)
	}
	if w.ready {
		return nil
	}
	// The exit may be queued behind this request: ask the kernel, through
	// the pidfd, whether the worker still lives (TESTPLAN C20).
	if !w.proc.alive() {
		return fmt.Errorf("%w: pid %d", ErrExited, w.proc.pid)
	}
	w.ready = true
	w.readyAt = time.Now()
	if w.startTimer != nil {
		w.startTimer.Stop()
	}
	l.s.emit(Event{Kind: Ready, Time: w.readyAt, ID: w.id, PID: w.proc.pid})
	sl := w.slot
	switch {
	case sl.cur == w:
		sl.state = SlotReady
		sl.since = time.Now()
	case sl.next == w && l.op != nil:
		l.restartProgress(sl)
	case sl.next == w && l.recycling == sl:
		l.recycleReady(sl)
	}
	return nil
}

func (l *loop) stopWorker(w *worker) {
	if w.stopping {
		return
	}
	w.stopping = true
	if w.startTimer != nil {
		w.startTimer.Stop()
	}
	// Recorded before the signal, so an exit it causes lingers.
	w.proc.requestStop(time.Now().Add(l.opt.StopTimeout))
	// SIGCONT after the stop signal: a stopped (SIGSTOP/Ctrl-Z) process
	// would otherwise not act on it until the SIGKILL.
	w.proc.signalGroup(l.opt.StopSignal.(syscall.Signal))
	w.proc.signalGroup(syscall.SIGCONT)
	w.killTimer = l.after(l.opt.StopTimeout, timerMsg{kind: timerKill, w: w})
}

func (l *loop) stop(kill bool) {
	if !l.stopping {
		// Set first: failRestart must not start queued work.
		l.stopping = true
		l.queued = false
		l.pendingScale = -1
		if l.op != nil {
			l.failRestart(ErrStopping)
		}
		for _, sl := range l.slots {
			l.cancelSlotTimer(sl)
			sl.state = SlotStopping
			sl.since = time.Now()
		}
	}
	for w := range l.workers {
		if kill {
			w.stopping = true
			w.proc.kill()
		} else {
			l.stopWorker(w)
		}
	}
	if kill {
		for w := range l.lingering {
			w.proc.kill()
		}
	}
}

// clampAdd returns n+delta clamped to 0..maxWorkers, for n in that range,
// without overflowing on any delta.
func clampAdd(n, delta int) int {
	switch {
	case delta > maxWorkers-n:
		return maxWorkers
	case delta < -n:
		return 0
	}
	return n + delta
}

func (l *loop) newSlot(index int) *slot {
	for len(l.incarnations) <= index {
		l.incarnations = append(l.incarnations, 0)
	}
	return &slot{index: index, gen: l.gen, th: newThrottle(l.opt.Backoff), incarnations: l.incarnations[index]}
}

func (l *loop) applyScale(n int, announce bool) {
	for len(l.slots) < n {
		sl := l.newSlot(len(l.slots))
		l.slots = append(l.slots, sl)
		l.startSlot(sl)
	}
	if len(l.slots) > n {
		for _, sl := range l.slots[n:] {
			sl.removed = true
			l.cancelSlotTimer(sl)
			if l.recycling == sl {
				l.abortRecycle()
			}
			if sl.cur != nil {
				l.stopWorker(sl.cur)
			}
			if sl.next != nil {
				l.stopWorker(sl.next)
			}
		}
		l.slots = l.slots[:n]
	}
	if announce {
		l.s.emit(Event{Kind: Scaled, Time: time.Now(), Workers: n})
	}
}

func (l *loop) beginRestart(strategy Strategy) {
	// A restart replaces every slot's worker anyway.
	l.abortRecycle()
	l.genCounter++
	// Retries of a spawn short of resources are always bounded: a restart
	// in flight holds back Scale and Recycle, so a negative QuickFailures
	// (a slot's crash loop never fails) means the default here.
	b := l.opt.Backoff
	if b.QuickFailures < 0 {
		b.QuickFailures = 0
	}
	op := &restartOp{strategy: strategy, gen: l.genCounter, order: append([]*slot(nil), l.slots...), th: newThrottle(b)}
	l.op = op
	l.s.emit(Event{Kind: RestartBegun, Time: time.Now(), Generation: op.gen})
	l.continueRestart()
}

// continueRestart spawns the replacements the restart in flight still
// lacks: the next one (rolling) or all of them (parallel).
func (l *loop) continueRestart() {
	if l.op.strategy == Rolling {
		l.rollNext()
		return
	}
	op := l.op
	op.spawning = true
	for len(op.order) > 0 {
		w, err := l.spawnNext(op.order[0])
		if err != nil {
			l.restartSpawnFailed(err)
			return
		}
		op.order = op.order[1:]
		if !w.ready {
			op.waiting++
		}
	}
	op.spawning = false
	if op.waiting == 0 {
		l.promoteAll()
	}
}

// restartSpawnFailed follows a replacement that could not be spawned. A
// shortage (the supervisor out of descriptors, say) passes without anyone
// fixing anything, so the spawn is retried after Backoff's delay, up to
// QuickFailures attempts in a row; the workers it would replace keep
// serving meanwhile. Any other error fails the restart at once.
func (l *loop) restartSpawnFailed(err error) {
	op := l.op
	if !retryable(err) {
		l.failRestart(err)
		return
	}
	delay, gaveUp := op.th.next(time.Now(), 0, 0, false)
	if gaveUp != nil {
		l.failRestart(fmt.Errorf("%w (%d attempts in a row)", err, op.th.quick))
		return
	}
	l.s.log.Warn("supervise: graceful restart: spawn failed for lack of resources; retrying", "generation", op.gen,
		"slot", op.order[0].index, "failures", op.th.quick, "delay", delay, "err", err.Error())
	op.retry = l.after(delay, timerMsg{kind: timerRestartRetry, op: op})
}

// retryable reports whether a spawn failed for a resource that frees up by
// itself: descriptors (process or system), memory, processes (fork's
// EAGAIN under RLIMIT_NPROC) or socket buffers.
func retryable(err error) bool {
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ENOMEM, unix.EAGAIN, unix.ENOBUFS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// spawnNext starts the replacement of sl for the restart in flight.
func (l *loop) spawnNext(sl *slot) (*worker, error) {
	w, err := l.spawn(sl, l.op.gen)
	if err != nil {
		return nil, err
	}
	sl.next = w
	// Retries count failures in a row.
	l.op.th.reset()
	return w, nil
}

func (l *loop) rollNext() {
	op := l.op
	for len(op.order) > 0 {
		sl := op.order[0]
		w, err := l.spawnNext(sl)
		if err != nil {
			l.restartSpawnFailed(err)
			return
		}
		op.order = op.order[1:]
		if !w.ready {
			op.current = sl
			return
		}
		l.promote(sl)
	}
	l.finishRestart()
}

func (l *loop) restartProgress(sl *slot) {
	op := l.op
	if op.strategy == Rolling {
		if op.current == sl {
			op.current = nil
			l.promote(sl)
			l.rollNext()
		}
		return
	}
	op.waiting--
	if op.waiting == 0 && !op.spawning {
		l.promoteAll()
	}
}

func (l *loop) promoteAll() {
	for _, sl := range l.slots {
		if sl.next != nil {
			l.promote(sl)
		}
	}
	l.finishRestart()
}

// promote makes sl's ready replacement its serving worker and stops the old
// one.
func (l *loop) promote(sl *slot) {
	old := sl.cur
	w := sl.next
	sl.next = nil
	sl.cur = w
	sl.gen = w.id.Generation
	sl.state = SlotReady
	sl.since = time.Now()
	sl.err = nil
	sl.th.reset()
	l.cancelSlotTimer(sl)
	if old != nil {
		l.stopWorker(old)
	}
}

func (l *loop) finishRestart() {
	op := l.op
	l.op = nil
	op.stopRetry()
	l.gen = op.gen
	l.s.emit(Event{Kind: RestartDone, Time: time.Now(), Generation: op.gen})
	l.afterRestart()
}

// failRestart abandons the restart in flight: replacements not yet promoted
// are stopped and the workers they were to replace keep serving.
func (l *loop) failRestart(err error) {
	op := l.op
	l.op = nil
	op.stopRetry()
	for _, sl := range l.slots {
		if sl.next != nil {
			w := sl.next
			sl.next = nil
			l.stopWorker(w)
		}
	}
	l.s.emit(Event{Kind: RestartFailed, Time: time.Now(), Generation: op.gen, Err: err})
	l.afterRestart()
}

func (op *restartOp) stopRetry() {
	if op.retry != nil {
		op.retry.Stop()
		op.retry = nil
	}
}

func (l *loop) afterRestart() {
	if l.stopping {
		return
	}
	if l.pendingScale >= 0 {
		n := l.pendingScale
		l.pendingScale = -1
		l.applyScale(n, true)
	}
	if l.queued {
		l.queued = false
		l.beginRestart(l.queuedStrategy)
	}
}

func (l *loop) status() Status {
	st := Status{
		Running:       !l.stopping,
		Generation:    l.gen,
		Restarting:    l.op != nil,
		RestartQueued: l.queued,
		Recycling:     l.recycling != nil,
		Workers:       len(l.slots),
		Processes:     len(l.workers),
	}
	for _, sl := range l.slots {
		ss := SlotStatus{Slot: sl.index, State: sl.state, Since: sl.since, Restarts: sl.restarts, Err: sl.err}
		if w := sl.cur; w != nil {
			ss.ID, ss.PID, ss.Started = w.id, w.proc.pid, w.start
			// alive: a worker whose exit is not processed yet is not live
			// (C20).
			if w.ready && !l.stopping && w.proc.alive() {
				st.ReadyWorkers++
			}
		}
		st.Slots = append(st.Slots, ss)
	}
	l.s.mu.Lock()
	st.DroppedEvents, st.DroppedLines = l.s.dropEvents, l.s.dropLines
	l.s.mu.Unlock()
	return st
}
