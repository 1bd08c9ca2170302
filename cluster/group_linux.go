//go:build linux

package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff/supervise"
)

// maxParams bounds Config.Params: it travels in one environment string,
// which execve(2) limits to 128 KiB (MAX_ARG_STRLEN).
const maxParams = 64 << 10

// maxGroupNumber bounds GroupSize and GroupIndexBase (ids are ints in
// every worker's environment; nobody runs a billion workers).
const maxGroupNumber = 1 << 30

// groupState is the master's suspend state and its recycler of old
// workers.
type groupState struct {
	// mu serialises Suspend, Resume and scaling, so that no scale request
	// reaches the supervisor of a suspended master. It is never held by
	// m.prepare, which the supervisor calls under these requests.
	mu        sync.Mutex
	suspended bool
	// zeroScales counts Suspend's Scale(0) requests whose Scaled event
	// watchEvents has not seen yet: that event must not overwrite the
	// worker count to resume (m.workers).
	zeroScales int
	// retry holds, per worker recycled for MaxRunningTime, when it may be
	// tried again if its replacement failed. Recycler goroutine only.
	retry map[supervise.ID]time.Time
	// maxRun is the maximum running time in effect (Config.MaxRunningTime
	// until SetMaxRunningTime), in nanoseconds; 0: none.
	maxRun atomic.Int64
}

// checkGroup validates the group settings and the new policies of cfg.
func (m *master) checkGroup() error {
	c := &m.cfg
	// The control socket's range: a status carrying another value would
	// be refused by every client.
	if err := checkMaxRunning(c.MaxRunningTime); err != nil {
		return fmt.Errorf("cluster: MaxRunningTime: %w", err)
	}
	m.grp.maxRun.Store(int64(c.MaxRunningTime))
	if c.Restart < supervise.RestartAlways || c.Restart > supervise.RestartNever {
		return fmt.Errorf("cluster: restart policy %d", int(c.Restart))
	}
	if c.Group == "" {
		if c.Params != nil || c.GroupSize != 0 || c.GroupIndexBase != 0 {
			return errors.New("cluster: Params, GroupSize and GroupIndexBase need a Group")
		}
		return nil
	}
	if !cfgValidGroupName(c.Group) { // the file's rule (config_parse.go)
		return fmt.Errorf("cluster: group name %q (want 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)", c.Group)
	}
	if c.GroupSize < 0 || c.GroupSize > maxGroupNumber || c.GroupIndexBase < 0 || c.GroupIndexBase > maxGroupNumber {
		return fmt.Errorf("cluster: group %s: GroupSize %d, GroupIndexBase %d (want 0 to %d)", c.Group, c.GroupSize, c.GroupIndexBase, maxGroupNumber)
	}
	if len(c.Params) > 0 {
		// An environment string ends at the first NUL.
		if len(c.Params) > maxParams || bytes.IndexByte(c.Params, 0) >= 0 {
			return fmt.Errorf("cluster: group %s: Params of %d bytes (want at most %d, no NUL)", c.Group, len(c.Params), maxParams)
		}
		if err := validateJSON(c.Params); err != nil {
			return fmt.Errorf("cluster: group %s: Params: %w", c.Group, err)
		}
		c.Params = bytes.Clone(c.Params)
	}
	return nil
}

// workerID is HANDOFF_WORKER_ID of slot.
func (m *master) workerID(slot int) int {
	if m.cfg.WorkerID != nil {
		return m.cfg.WorkerID(slot)
	}
	return slot
}

// groupEnv adds HANDOFF_WORKER_ID and the group variables of one spawn.
// Called from the supervisor's loop (prepare): it must not take m.grp.mu.
func (m *master) groupEnv(id supervise.ID, env []string) []string {
	env = append(env, envWorkerID+"="+strconv.Itoa(m.workerID(id.Slot)))
	c := &m.cfg
	if c.Group == "" {
		return env
	}
	size := int64(c.GroupSize)
	if size == 0 {
		size = m.workers.Load()
	}
	params := "{}"
	if len(c.Params) > 0 {
		params = string(c.Params)
	}
	return append(env, envGroup+"="+c.Group, envGroupIndex+"="+strconv.Itoa(c.GroupIndexBase+id.Slot),
		envGroupSize+"="+strconv.FormatInt(size, 10), envParams+"="+params)
}

// linePrefix is the prefix of a worker's output line on Config.Stdout or
// Stderr: "[slot pid] ", or "[group slot pid] " in a group.
func (m *master) linePrefix(ln supervise.Line) string {
	if m.cfg.Group != "" {
		return fmt.Sprintf("[%s %d %d] ", m.cfg.Group, ln.ID.Slot, ln.PID)
	}
	return fmt.Sprintf("[%d %d] ", ln.ID.Slot, ln.PID)
}

// lineAttrs are the log attributes of a worker's output line.
func (m *master) lineAttrs(ln supervise.Line, stream string) []any {
	if m.cfg.Group != "" {
		return []any{"group", m.cfg.Group, "slot", ln.ID.Slot, "pid", ln.PID, "stream", stream}
	}
	return []any{"slot", ln.ID.Slot, "pid", ln.PID, "stream", stream}
}

func (m *master) suspended() bool {
	m.grp.mu.Lock()
	defer m.grp.mu.Unlock()
	return m.grp.suspended
}

// startEmpty is supervise's StartEmpty: Config.Suspended, except after an
// in-place upgrade, whose previous image was serving (it refuses to
// upgrade while suspended).
func (m *master) startEmpty() bool {
	m.grp.mu.Lock()
	defer m.grp.mu.Unlock()
	if m.grp.suspended && m.upgraded() {
		m.log.Warn("upgrade: not starting suspended, the previous image was serving")
		m.grp.suspended = false
	}
	return m.grp.suspended
}

func (m *master) suspend() error {
	s, err := m.supervisor()
	if err != nil {
		return err
	}
	g := &m.grp
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.suspended {
		return nil
	}
	if m.up != nil && m.up.busy.Load() {
		return fmt.Errorf("cluster: suspend: %w (%w)", errUpgradeBusy, supervise.ErrBusy)
	}
	// supervise defers a scale request to the end of a restart and keeps
	// only the last one: a Scale(0) overridden by Resume's would never
	// announce itself (zeroScales). No restart can begin meanwhile:
	// restart takes g.mu.
	if s.Status().Restarting {
		return fmt.Errorf("cluster: suspend: %w: a graceful restart is in flight", supervise.ErrBusy)
	}
	// Set first: the Scaled event of this request must find it (see
	// scaledWorkers). m.workers keeps the count to resume.
	g.suspended = true
	g.zeroScales++
	if err := s.Scale(0); err != nil {
		g.suspended = false
		g.zeroScales--
		return err
	}
	m.log.Info("suspended: stopping every worker; listeners stay open", "workers", m.workers.Load())
	// Nothing to wait for: a master suspended before its first generation
	// was ready is ready now (pid file, READY=1, Ready()).
	m.clusterReady(supervise.Status{})
	return nil
}

func (m *master) resume() error {
	s, err := m.supervisor()
	if err != nil {
		return err
	}
	g := &m.grp
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.suspended {
		return nil
	}
	n := int(m.workers.Load())
	g.suspended = false
	if err := s.Scale(n); err != nil {
		g.suspended = true
		return err
	}
	m.log.Info("resumed", "workers", n)
	return nil
}

// scaleSuspended applies a scale request to a suspended master: it only
// changes the count Resume starts, and releases the reuseport sockets of
// slots beyond it. The caller holds m.grp.mu.
func (m *master) scaleSuspended(n int) error {
	if n < 0 || n > 4096 {
		return fmt.Errorf("%w: scale to %d (want 0 to 4096)", supervise.ErrInvalid, n)
	}
	m.workers.Store(int64(n))
	m.log.Info("scaled while suspended", "workers", n)
	m.mode.mu.Lock()
	defer m.mode.mu.Unlock()
	for slot, set := range m.mode.slots {
		// A slot whose worker is still stopping keeps its sockets until
		// it exits (slotProcessGone).
		if slot >= n && m.mode.live[slot] == 0 {
			delete(m.mode.slots, slot)
			closeAll(set)
			m.log.Info("slot sockets closed", "slot", slot)
		}
	}
	return nil
}

// scaledWorkers is the worker count a Scaled event for n slots leaves in
// m.workers: Suspend's Scale(0) keeps the count to resume, so that
// HANDOFF_WORKERS and the reuseport slots' sockets survive the suspension
// (their backlogs keep the connections queued on them).
func (m *master) scaledWorkers(n int) int64 {
	g := &m.grp
	g.mu.Lock()
	defer g.mu.Unlock()
	if n == 0 && g.zeroScales > 0 {
		g.zeroScales--
		return m.workers.Load()
	}
	if g.suspended {
		return m.workers.Load()
	}
	return int64(n)
}

// startGroup runs beside the supervisor: it declares a master started
// suspended ready, and recycles workers older than MaxRunningTime. The
// returned function stops it.
func (m *master) startGroup() (stop func()) {
	if m.suspended() {
		m.log.Info("started suspended: no worker runs until resumed", "workers", m.workers.Load())
		m.clusterReady(supervise.Status{})
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.recycler(done)
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// recycleRetry is how long a worker whose replacement failed keeps
// serving before another replacement is tried: MaxRunningTime, within 5 s
// to 1 min, so a replacement that cannot start is not retried in a loop.
func (m *master) recycleRetry() time.Duration {
	return min(max(m.maxRunningTime(), 5*time.Second), time.Minute)
}

// maxRunningTime is the maximum running time in effect (0: none).
func (m *master) maxRunningTime() time.Duration { return time.Duration(m.grp.maxRun.Load()) }

// setMaxRunningTime changes the maximum running time (0: none); the
// recycler applies it at its next check, at most a second later.
func (m *master) setMaxRunningTime(d time.Duration) error {
	if err := checkMaxRunning(d); err != nil {
		return err
	}
	if prev := time.Duration(m.grp.maxRun.Swap(int64(d))); prev != d {
		m.log.Info("maximum running time changed", "max_running_time", d, "was", prev)
	}
	return nil
}

func (m *master) recycler(done <-chan struct{}) {
	m.grp.retry = map[supervise.ID]time.Time{}
	for {
		// Often enough that a worker does not overstay much, rarely
		// enough to cost nothing; once a second with no limit set, so a
		// limit set later applies soon.
		period := time.Second
		if d := m.maxRunningTime(); d > 0 {
			period = min(max(d/4, 50*time.Millisecond), time.Second)
		}
		t := time.NewTimer(period)
		select {
		case <-done:
			t.Stop()
			return
		case now := <-t.C:
			if m.maxRunningTime() > 0 {
				m.recycleOldest(now)
			}
		}
	}
}

// recycleOldest starts the replacement of the oldest worker past
// MaxRunningTime: one slot at a time, never during a graceful restart or
// while suspended or stopping.
func (m *master) recycleOldest(now time.Time) {
	if m.stopping.Load() || m.suspended() {
		return
	}
	s := m.sup
	st := s.Status()
	// Not a worker that said STOPPING=1 (it is going) or RELOADING=1.
	m.nstate.applyPhases(&st)
	if !st.Running || st.Restarting || st.Recycling {
		return
	}
	var pick *supervise.SlotStatus
	live := make(map[supervise.ID]bool, len(st.Slots))
	for i := range st.Slots {
		sl := &st.Slots[i]
		live[sl.ID] = true
		if sl.State != supervise.SlotReady || sl.PID == 0 || now.Sub(sl.Started) < m.maxRunningTime() {
			continue
		}
		if at, ok := m.grp.retry[sl.ID]; ok && now.Before(at) {
			continue
		}
		if pick == nil || sl.Started.Before(pick.Started) {
			pick = sl
		}
	}
	for id := range m.grp.retry {
		if !live[id] {
			delete(m.grp.retry, id)
		}
	}
	if pick == nil {
		return
	}
	err := s.Recycle(pick.ID)
	if errors.Is(err, supervise.ErrBusy) || errors.Is(err, supervise.ErrUnknownWorker) || errors.Is(err, supervise.ErrNotRunning) {
		// The state changed since the snapshot (or a stop began); the next
		// tick looks again.
		m.log.Debug("recycle not started", "slot", pick.Slot, "pid", pick.PID, "err", err)
		return
	}
	// Tried again later whether the replacement fails to start (a spawn
	// error, here: EMFILE, a missing shim) or later (its exit or start
	// timeout), never at every tick.
	m.grp.retry[pick.ID] = now.Add(m.recycleRetry())
	if err != nil {
		m.log.Warn("recycle failed; the worker keeps serving", "slot", pick.Slot, "pid", pick.PID, "err", err)
		return
	}
	m.log.Info("recycling worker past its maximum running time", "slot", pick.Slot, "pid", pick.PID,
		"generation", pick.ID.Generation, "incarnation", pick.ID.Incarnation,
		"running", now.Sub(pick.Started).Round(time.Millisecond), "max_running_time", m.maxRunningTime())
}

// lookProgram resolves a worker program as exec.LookPath does, but a name
// without a slash is searched in the PATH of env (the workers'
// environment; its last PATH entry, which is the one exec keeps) when env
// sets one. Relative PATH entries are skipped: a worker's working
// directory is not the master's concern (exec.LookPath refuses them too,
// with exec.ErrDot).
func lookProgram(prog string, env []string) (string, error) {
	path, ok := "", false
	for _, kv := range env {
		if v, found := strings.CutPrefix(kv, "PATH="); found {
			path, ok = v, true
		}
	}
	if !ok || strings.Contains(prog, "/") {
		return exec.LookPath(prog)
	}
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		cand := filepath.Join(dir, prog)
		// LookPath of a path only checks that it is an executable file.
		if p, err := exec.LookPath(cand); err == nil {
			return p, nil
		}
	}
	return "", &exec.Error{Name: prog, Err: fmt.Errorf("%w in the workers' PATH %q", exec.ErrNotFound, path)}
}
