package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Errors callers branch on. Errors returned by the package wrap one of these
// (or an *os.SyscallError) so errors.Is works.
var (
	// ErrNotSupported is returned on platforms other than Linux.
	ErrNotSupported = errors.New("supervise: not supported on this platform")
	// ErrNotRunning is returned by control methods when Run is not running.
	ErrNotRunning = errors.New("supervise: supervisor not running")
	// ErrAlreadyRun is returned by a second call of Run.
	ErrAlreadyRun = errors.New("supervise: Run called twice")
	// ErrInvalid wraps configuration errors from New and bad arguments.
	ErrInvalid = errors.New("supervise: invalid argument")
	// ErrUnknownWorker is returned by MarkReady for a worker that is not
	// (or no longer) supervised, including one the supervisor is stopping
	// (drained, scaled away, killed for missing its start timeout).
	ErrUnknownWorker = errors.New("supervise: unknown worker")
	// ErrExited is returned by MarkReady when the worker has already exited
	// even if its exit has not been processed yet (TESTPLAN C20).
	ErrExited = errors.New("supervise: worker already exited")
	// ErrStartTimeout is the cause of a restart failure when a new worker
	// did not report ready within Options.StartTimeout.
	ErrStartTimeout = errors.New("supervise: worker not ready before start timeout")
	// ErrExitedBeforeReady is the cause of a restart failure when a new
	// worker exited before it reported ready.
	ErrExitedBeforeReady = errors.New("supervise: worker exited before it was ready")
	// ErrBurst is the cause of a Failed event when a slot hit a start limit:
	// Backoff.Burst starts within Backoff.Window, or Backoff.QuickFailures
	// consecutive workers that died before ready or within Backoff.Min.
	ErrBurst = errors.New("supervise: start burst limit reached")
	// ErrPermanent is the cause of a Failed event when a worker exited with
	// Options.PermanentExitCode.
	ErrPermanent = errors.New("supervise: permanent failure exit code")
	// ErrStopping is the cause of a restart failure when Stop interrupted it.
	ErrStopping = errors.New("supervise: supervisor stopping")
)

// SpawnError reports a worker that could not be started (missing binary,
// not executable, ETXTBSY, a failing Prepare hook). It unwraps to the cause.
type SpawnError struct {
	ID  ID
	Err error
}

func (e *SpawnError) Error() string {
	return fmt.Sprintf("supervise: spawn slot %d generation %d: %v", e.ID.Slot, e.ID.Generation, e.Err)
}

func (e *SpawnError) Unwrap() error { return e.Err }

// ID identifies one spawn of a slot. No two spawns of one Supervisor share
// an ID.
type ID struct {
	// Slot is the stable index, 0..Workers-1 (new slots from Scale take
	// the next free indexes).
	Slot int
	// Generation is the supervisor-wide restart generation the worker was
	// started for: 1 at first, +1 for each graceful restart.
	Generation int
	// Incarnation counts the spawns of the slot, from 1.
	Incarnation int
}

// Launch is what a Spec.Prepare hook adds to one spawn.
type Launch struct {
	// Env entries are added after Spec.Env; a later entry for the same
	// variable wins.
	Env []string
	// ExtraFiles become descriptors 3+len(Spec.ExtraFiles), ... in the
	// worker. The supervisor does not close them.
	ExtraFiles []*os.File
	// Done, if not nil, is called once after the spawn attempt, with the
	// worker's pid (0 if the spawn failed) and the spawn error. Use it to
	// close the child's ends of per-worker sockets.
	Done func(pid int, err error)
}

// Credential sets the user and groups a worker runs as.
type Credential struct {
	UID, GID uint32
	Groups   []uint32
}

// Spec describes the program every slot runs.
type Spec struct {
	// Path of the program. A name without a slash is looked up in PATH by
	// New; a path with a slash is used as is at every spawn, so replacing
	// the file on disk takes effect at the next spawn.
	Path string
	// Args are the arguments after argv[0]; argv[0] is Path.
	Args []string
	// Env is the worker's environment; nil means os.Environ() at the time
	// of each spawn.
	Env []string
	// Dir is the working directory; empty means the supervisor's.
	Dir string
	// ExtraFiles become descriptors 3, 4, ... in every worker. They stay
	// owned by the caller, who must keep them open while Run runs. The
	// supervisor never calls (*os.File).Fd on them, so sockets stay in
	// non-blocking mode.
	ExtraFiles []*os.File
	// Credential, if not nil, runs workers as another user (needs root).
	Credential *Credential
	// Prepare, if not nil, is called before each spawn, from the
	// supervisor's event loop, to add environment and descriptors for that
	// one worker (e.g. HANDOFF_WORKER_ID, a notify socket). An error fails
	// the spawn like a missing binary would. It must not call the
	// Supervisor's methods.
	Prepare func(id ID) (Launch, error)
}

// Policy says when an exited worker is restarted.
type Policy int

// Restart policies, as systemd's Restart=always/on-failure/no.
const (
	// RestartAlways restarts a worker however it exited (the default).
	RestartAlways Policy = iota
	// RestartOnFailure restarts a worker unless it exited with code 0.
	RestartOnFailure
	// RestartNever never restarts a worker; its slot ends as exited.
	RestartNever
)

func (p Policy) String() string {
	switch p {
	case RestartAlways:
		return "always"
	case RestartOnFailure:
		return "on-failure"
	case RestartNever:
		return "never"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// Strategy is how a graceful restart replaces workers.
type Strategy int

// Graceful restart strategies.
const (
	// Rolling replaces one slot at a time: start the new worker, wait until
	// it is ready, stop the old one, next slot (the default).
	Rolling Strategy = iota
	// Parallel starts a new worker for every slot, waits until all are
	// ready, then stops all old ones.
	Parallel
)

func (s Strategy) String() string {
	switch s {
	case Rolling:
		return "rolling"
	case Parallel:
		return "parallel"
	}
	return fmt.Sprintf("Strategy(%d)", int(s))
}

// ParseStrategy parses "rolling" or "parallel".
func ParseStrategy(s string) (Strategy, error) {
	switch s {
	case "rolling":
		return Rolling, nil
	case "parallel":
		return Parallel, nil
	}
	return 0, fmt.Errorf("%w: restart strategy %q (want rolling or parallel)", ErrInvalid, s)
}

// Backoff throttles respawns of one slot, and the retries of a graceful
// restart's spawns that failed for lack of resources. The zero value means
// the defaults.
type Backoff struct {
	// Min is the delay before respawning a worker that died before it was
	// ready or within Min of being started (default 1 s, as s6 and runit).
	// A worker that was ready and ran at least Min is respawned at once.
	Min time.Duration
	// Max caps the delay, which doubles for each consecutive quick death
	// (default 30 s).
	Max time.Duration
	// Jitter adds a random 0..Jitter fraction of the delay, so workers that
	// crash together do not respawn in lock step: a fraction from 0 to 1
	// (default 0.2; negative or NaN disables, above 1 counts as 1). The
	// delay never drops below Min nor exceeds Max.
	Jitter float64
	// ResetAfter is the time a worker must stay up after it reported ready
	// for its death to reset the delay to Min (default 10 s).
	ResetAfter time.Duration
	// Burst and Window limit starts of one slot: a respawn that would be the
	// Burst+1-th start within Window fails the slot instead (default 5 starts
	// in 10 s, as systemd's StartLimitBurst). Negative Burst disables it.
	// Replacements started by a graceful restart do not count.
	Burst  int
	Window time.Duration
	// QuickFailures fails the slot after that many consecutive starts that
	// died before ready or within Min of starting, spawn failures included
	// (default 5; negative disables). The doubling delay alone keeps a crash
	// loop under the burst limit (1+2+4+8 s > 10 s), so without this rule a
	// worker that can never start would be retried every 30 s forever. With
	// the defaults a crash loop fails after its 5th start, about 15 s in.
	// It also bounds the retries of a graceful restart's spawns that failed
	// for lack of resources (see Supervisor.Restart); there a negative value
	// means the default, since a restart in flight holds back Scale and
	// Recycle.
	QuickFailures int
}

// Options adjust supervision. A nil *Options, and every zero field, means
// the documented default.
type Options struct {
	// Workers is the number of slots (default 1).
	Workers int
	// StartEmpty starts Run with no slot at all, whatever Workers says;
	// Scale adds them (a program that starts suspended).
	StartEmpty bool
	// Restart is the restart policy (default RestartAlways).
	Restart Policy
	// PermanentExitCode is an exit code that is never restarted, whatever
	// the policy (s6's 125). 0 means 125; negative means none. Only a
	// normal exit with that status counts, never a death by signal or a
	// worker reaped by something else (reported with code -1).
	PermanentExitCode int
	// ReadyOnStart counts a worker ready as soon as it started. By default
	// a worker is ready only when MarkReady is called for it.
	ReadyOnStart bool
	// StartTimeout is how long a worker may take to become ready before its
	// process group is killed (default 30 s; negative means no limit).
	StartTimeout time.Duration
	// StopSignal is sent (followed by SIGCONT) to a worker's process group
	// to stop it (default SIGTERM). It must be a syscall.Signal from 1 to
	// SIGRTMAX other than SIGSTOP (New fails with ErrInvalid): 0 and
	// numbers the kernel refuses send nothing, and SIGSTOP is undone by
	// the SIGCONT, so every stop would just wait for the SIGKILL.
	// SIGKILL is accepted and means no grace: the group is killed at once
	// (as systemd's KillSignal=SIGKILL).
	StopSignal os.Signal
	// StopTimeout is the grace period after StopSignal before SIGKILL of the
	// process group (default 10 s). The group keeps it when the worker
	// itself exits first: Run waits until the rest of the group is gone too,
	// or SIGKILLs it when the period ends (Kill ends it at once).
	StopTimeout time.Duration
	// WaitDelay bounds how long captured output is still read after a worker
	// exited, in case a grandchild that left the process group holds the
	// pipe (default 1 s).
	WaitDelay time.Duration
	// Backoff throttles respawns.
	Backoff Backoff
	// Subreaper makes the supervisor's process a child subreaper
	// (PR_SET_CHILD_SUBREAPER) while Run runs, and reaps orphaned
	// descendants that re-parent to it. Only enable it if nothing else in
	// the process starts child processes (or OwnChild names them): any
	// child that is not a worker is reaped as soon as it exits. The
	// workers of every Supervisor in the process, and the children any of
	// their OwnChild hooks claim, are left to their owners.
	Subreaper bool
	// OwnChild, with Subreaper, names children of this process that the
	// caller waits for itself (say, workers of a previous image adopted
	// after Exec): the orphan reaper leaves a pid alone while OwnChild
	// reports true for it. It is called with an internal lock held and
	// must not call the Supervisor.
	OwnChild func(pid int) bool
	// KeepIgnoredSignals lets workers inherit signals the supervisor
	// ignores (e.g. SIGHUP under nohup). By default workers start with
	// default dispositions: Run catches such signals, for the whole process
	// and for good, into a channel nobody reads (they stay ignored by this
	// process, but children it starts later, by any means, no longer
	// inherit SIG_IGN). A signal.Ignore or signal.Reset of such a signal
	// undoes the catch until the next Run.
	KeepIgnoredSignals bool
	// CaptureOutput delivers workers' stdout and stderr line by line on
	// Lines. By default workers write to the supervisor's stdout and stderr.
	CaptureOutput bool
	// OutputBuffer is how many captured lines are buffered for a slow
	// reader of Lines before lines are dropped and counted (default 1024,
	// at most 1<<20).
	OutputBuffer int
	// MaxLineBytes splits longer output lines (default 4096).
	MaxLineBytes int
	// EventBuffer is how many events are buffered for a slow reader of
	// Events before events are dropped and counted (default 1024, at most
	// 1<<20).
	EventBuffer int
	// Logger receives a record for every event; Failed is logged at error
	// level (default slog.Default()).
	Logger *slog.Logger
	// FirstGeneration is the generation of the first workers (default 1);
	// each graceful restart adds one. A program that replaces itself in
	// place (see Exec) sets it past the generation it had, so generation
	// numbers never repeat for its workers.
	FirstGeneration int
}

// DefaultStopTimeout is Options.StopTimeout's default: how long a worker
// has between StopSignal and SIGKILL.
const DefaultStopTimeout = 10 * time.Second

const (
	defaultPermanentExitCode = 125
	defaultStartTimeout      = 30 * time.Second
	defaultWaitDelay         = time.Second
	defaultBuffer            = 1024
	defaultMaxLine           = 4096
	maxWorkers               = 4096
	maxBuffer                = 1 << 20
)

// EventKind tells what an Event reports.
type EventKind int

// Event kinds.
const (
	// Started: a worker was spawned (ID, PID).
	Started EventKind = iota + 1
	// Ready: a worker reported ready (ID, PID).
	Ready
	// Exited: a worker exited (ID, PID, Code, Signal, Uptime, Requested).
	Exited
	// SpawnFailed: a worker could not be started (ID, Err is a *SpawnError).
	SpawnFailed
	// Restarting: a slot will be respawned after Delay (ID of the last
	// worker).
	Restarting
	// Failed: a slot gave up (Err wraps ErrBurst or ErrPermanent). Logged at
	// error level.
	Failed
	// Done: a slot's worker exited and the policy does not restart it.
	Done
	// RestartBegun: a graceful restart to Generation began.
	RestartBegun
	// RestartDone: a graceful restart to Generation completed.
	RestartDone
	// RestartFailed: a graceful restart to Generation failed (Err); the
	// workers that were serving keep serving.
	RestartFailed
	// Scaled: the number of slots changed to Workers.
	Scaled
	// Stopped: every worker is gone; the last event before Events closes.
	Stopped
)

var kindNames = [...]string{"", "started", "ready", "exited", "spawn-failed", "restarting", "failed", "done",
	"restart-begun", "restart-done", "restart-failed", "scaled", "stopped"}

func (k EventKind) String() string {
	if k > 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one thing that happened. Fields not listed for its Kind are zero.
type Event struct {
	Kind EventKind
	Time time.Time
	ID   ID
	PID  int
	// Code is the exit code, or -1 if the worker was killed by Signal.
	Code   int
	Signal syscall.Signal
	// Uptime is how long the worker ran.
	Uptime time.Duration
	// Requested is true when the supervisor asked the worker to stop
	// (Stop, Scale, a replaced generation, a start timeout).
	Requested bool
	// Delay is the respawn delay of a Restarting event.
	Delay time.Duration
	// Generation is the target generation of Restart* events.
	Generation int
	// Workers is the slot count of a Scaled event.
	Workers int
	Err     error
}

// Stream names a captured output stream.
type Stream int

// Output streams.
const (
	Stdout Stream = 1
	Stderr Stream = 2
)

// Line is one captured output line, without its newline.
type Line struct {
	ID     ID
	PID    int
	Stream Stream
	Text   string
}

// SlotState is the state of one slot.
type SlotState int

// Slot states.
const (
	// SlotStarting: a worker runs but has not reported ready.
	SlotStarting SlotState = iota + 1
	// SlotReady: the worker reported ready and is alive.
	SlotReady
	// SlotBackoff: waiting to respawn.
	SlotBackoff
	// SlotFailed: gave up (burst limit or permanent exit code) until the
	// next Restart.
	SlotFailed
	// SlotDone: exited and not restarted by policy.
	SlotDone
	// SlotStopping: being stopped.
	SlotStopping
	// SlotReloading: the worker is ready but said it is reloading
	// (sd_notify's RELOADING=1). The Supervisor never reports it, as it
	// reads no notifications; a master that does (package cluster) shows
	// it in its own status.
	SlotReloading
)

var stateNames = [...]string{"", "starting", "ready", "backoff", "failed", "done", "stopping", "reloading"}

func (s SlotState) String() string {
	if s > 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("SlotState(%d)", int(s))
}

// SlotStatus is a snapshot of one slot.
type SlotStatus struct {
	Slot  int
	State SlotState
	// ID and PID of the serving worker (zero when there is none).
	ID  ID
	PID int
	// Since is when the worker started, or when the slot entered its state.
	Since time.Time
	// Started is when the serving worker started (zero without one).
	Started time.Time
	// Restarts counts respawns after exits (not graceful restarts).
	Restarts int
	// Err is why the slot failed (SlotFailed).
	Err error
}

// Status is a snapshot of the supervisor.
type Status struct {
	Running bool
	// Generation is the generation of the last successful graceful restart
	// (Options.FirstGeneration before any).
	Generation int
	// Restarting is true while a graceful restart is in flight;
	// RestartQueued while one more is queued behind it.
	Restarting, RestartQueued bool
	Workers                   int // number of slots
	ReadyWorkers              int // slots whose worker is ready and alive
	Slots                     []SlotStatus
	// Processes counts live worker processes, including old generations
	// being stopped.
	Processes     int
	DroppedEvents uint64
	DroppedLines  uint64

	// Recycling is true while a replacement started by Recycle is not
	// ready yet.
	Recycling bool
}

// Supervisor runs and keeps alive N slots of one program. Create it with New
// and call Run once. Its methods are safe for concurrent use; the control
// methods (Restart, Scale, Stop, Kill, MarkReady, Status) may be called from
// any goroutine while Run runs.
type Supervisor struct {
	spec Spec
	opt  Options
	log  *slog.Logger

	events chan Event
	lines  chan Line

	reqs    chan request
	inbox   chan any // timers and watchers post here
	started chan struct{}
	done    chan struct{}

	mu                    sync.Mutex
	ran                   bool
	stopPending           bool // HandleSignals got TERM/INT before Run
	last                  Status
	dropEvents, dropLines uint64
}

// New checks spec and opts and returns a Supervisor. opts may be nil.
func New(spec Spec, opts *Options) (*Supervisor, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if spec.Path == "" {
		return nil, fmt.Errorf("%w: empty Spec.Path", ErrInvalid)
	}
	if !strings.Contains(spec.Path, "/") {
		p, err := exec.LookPath(spec.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		spec.Path = p
	}
	if err := o.fill(); err != nil {
		return nil, err
	}
	s := &Supervisor{
		spec:    spec,
		opt:     o,
		log:     o.Logger,
		events:  make(chan Event, o.EventBuffer+1),
		lines:   make(chan Line, o.OutputBuffer),
		reqs:    make(chan request),
		inbox:   make(chan any, 64),
		started: make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.last = Status{Generation: o.FirstGeneration, Workers: o.Workers}
	return s, nil
}

func (o *Options) fill() error {
	if o.Workers == 0 && !o.StartEmpty {
		o.Workers = 1
	}
	if o.FirstGeneration == 0 {
		o.FirstGeneration = 1
	}
	if o.FirstGeneration < 0 {
		return fmt.Errorf("%w: FirstGeneration %d", ErrInvalid, o.FirstGeneration)
	}
	if o.Workers < 0 || o.Workers > maxWorkers {
		return fmt.Errorf("%w: Workers %d (want 1..%d)", ErrInvalid, o.Workers, maxWorkers)
	}
	if o.StartEmpty {
		o.Workers = 0
	}
	if o.Restart < RestartAlways || o.Restart > RestartNever {
		return fmt.Errorf("%w: restart policy %d", ErrInvalid, int(o.Restart))
	}
	if o.PermanentExitCode == 0 {
		o.PermanentExitCode = defaultPermanentExitCode
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = defaultStartTimeout
	}
	if o.StopSignal == nil {
		o.StopSignal = syscall.SIGTERM
	}
	sig, ok := o.StopSignal.(syscall.Signal)
	if !ok {
		return fmt.Errorf("%w: StopSignal %v is not a syscall.Signal", ErrInvalid, o.StopSignal)
	}
	// kill(2) fails with EINVAL beyond SIGRTMAX, and 0 only probes: every
	// stop would silently wait for the SIGKILL at the end of StopTimeout.
	// So would SIGSTOP, which no process can catch and the SIGCONT sent
	// after the stop signal undoes.
	if sig < 1 || sig > maxSignal() || sig == sigStop {
		return fmt.Errorf("%w: StopSignal %d (want a signal from 1 to %d other than SIGSTOP)", ErrInvalid, int(sig), int(maxSignal()))
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	if o.WaitDelay <= 0 {
		o.WaitDelay = defaultWaitDelay
	}
	o.Backoff.fill()
	if o.OutputBuffer <= 0 {
		o.OutputBuffer = defaultBuffer
	}
	if o.MaxLineBytes <= 0 {
		o.MaxLineBytes = defaultMaxLine
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = defaultBuffer
	}
	// Each buffer is allocated up front by New: a huge one would panic in
	// make or take all memory.
	if o.OutputBuffer > maxBuffer || o.EventBuffer > maxBuffer {
		return fmt.Errorf("%w: OutputBuffer %d, EventBuffer %d (want at most %d)", ErrInvalid, o.OutputBuffer, o.EventBuffer, maxBuffer)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Events returns the event stream. It is closed after the Stopped event,
// when Run returns. Use one reader; if it falls more than
// Options.EventBuffer events behind, events are dropped and counted in
// Status.DroppedEvents rather than stalling supervision. Stopped itself is
// never dropped.
func (s *Supervisor) Events() <-chan Event { return s.events }

// Lines returns captured output (Options.CaptureOutput). It is closed when
// Run returns. A slow reader never blocks a worker: lines beyond
// Options.OutputBuffer are dropped and counted in Status.DroppedLines.
func (s *Supervisor) Lines() <-chan Line { return s.lines }

// Run starts the workers and supervises them until ctx is done or Stop or
// Kill is called, then stops every worker (escalating to SIGKILL after
// Options.StopTimeout) and returns once all are reaped. It returns nil after
// such a stop, and an error only if supervision could not begin (ErrAlreadyRun,
// ErrNotSupported, a failing system call). Failing workers are reported as
// events, never as Run's error. With ctx already done, or a TERM/INT that
// HandleSignals caught before Run, Run starts no worker: it emits Stopped
// and returns nil.
func (s *Supervisor) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.ran {
		s.mu.Unlock()
		return ErrAlreadyRun
	}
	s.ran = true
	stopPending := s.stopPending
	s.mu.Unlock()
	return s.run(ctx, stopPending)
}

type reqKind int

const (
	reqRestart reqKind = iota
	reqScale
	reqScaleBy
	reqStop
	reqKill
	reqReadyID
	reqReadyPID
	reqExtendStartPID
	reqStatus
	reqRecycle
)

type request struct {
	kind     reqKind
	n        int
	d        time.Duration
	strategy Strategy
	id       ID
	reply    chan response
}

type response struct {
	err    error
	status Status
}

func (s *Supervisor) call(r request) response {
	r.reply = make(chan response, 1)
	select {
	case <-s.started:
	default:
		s.mu.Lock()
		ran := s.ran
		s.mu.Unlock()
		if !ran {
			return response{err: ErrNotRunning}
		}
		// Run was called but has not started the loop yet: a request
		// must not be lost in that window (HandleSignals relies on it).
		select {
		case <-s.started:
		case <-s.done:
			return response{err: ErrNotRunning}
		}
	}
	select {
	case s.reqs <- r:
		return <-r.reply
	case <-s.done:
		return response{err: ErrNotRunning}
	}
}

// Restart starts a graceful restart to a new generation with strategy. If
// one is in flight, the request is queued; any number of requests during one
// restart coalesce into one more (the last strategy wins). It returns at once;
// the outcome is reported by RestartDone or RestartFailed events. A restart
// also respawns slots that had failed. A new worker that cannot be spawned
// for lack of resources (an error wrapping EMFILE, ENFILE, ENOMEM, EAGAIN or
// ENOBUFS, from the spawn or from Spec.Prepare) does not fail the restart:
// it stays in flight and the spawn is retried after Backoff's delay (Min
// doubling to Max), each failure reported by SpawnFailed, until
// Backoff.QuickFailures failures in a row fail it (5 when QuickFailures is
// 0 or negative: about 15 s in, up to 18 s with jitter). Meanwhile Scale
// waits and Recycle returns ErrBusy. Any other spawn failure fails the
// restart at once. With Parallel, the replacements already spawned keep
// what they hold while the others are retried, so under a process or
// memory limit Rolling has the better chance.
func (s *Supervisor) Restart(strategy Strategy) error {
	if strategy != Rolling && strategy != Parallel {
		return fmt.Errorf("%w: strategy %d", ErrInvalid, int(strategy))
	}
	return s.call(request{kind: reqRestart, strategy: strategy}).err
}

// Scale sets the number of slots. New slots get the next indexes; removed
// slots (the highest indexes) are stopped gracefully. During a graceful
// restart the change is applied when the restart ends.
func (s *Supervisor) Scale(n int) error {
	if n < 0 || n > maxWorkers {
		return fmt.Errorf("%w: Scale(%d) (want 0..%d)", ErrInvalid, n, maxWorkers)
	}
	return s.call(request{kind: reqScale, n: n}).err
}

// ScaleBy adds delta slots (negative removes), clamped to 0..4096.
func (s *Supervisor) ScaleBy(delta int) error {
	return s.call(request{kind: reqScaleBy, n: delta}).err
}

// Stop begins a graceful stop: every worker's process group gets
// StopSignal and SIGCONT, then SIGKILL after StopTimeout. Run returns when
// all are reaped. Stop does not wait.
func (s *Supervisor) Stop() error { return s.call(request{kind: reqStop}).err }

// Kill sends SIGKILL to every worker's process group at once (a second
// Ctrl-C). Run returns when all are reaped.
func (s *Supervisor) Kill() error { return s.call(request{kind: reqKill}).err }

// MarkReady reports that the worker id is ready. It fails with
// ErrUnknownWorker if id is not a live worker and with ErrExited if the
// worker has exited but its exit is not processed yet: a worker that
// announces readiness and dies is never counted ready.
func (s *Supervisor) MarkReady(id ID) error {
	return s.call(request{kind: reqReadyID, id: id}).err
}

// MarkReadyPID is MarkReady for the worker whose process id is pid (as a
// notify socket's SCM_CREDENTIALS would give). Process ids of live,
// unreaped workers are unique, so this cannot mark a recycled pid.
func (s *Supervisor) MarkReadyPID(pid int) error {
	return s.call(request{kind: reqReadyPID, n: pid}).err
}

// ExtendStartPID moves the start deadline of the worker whose process id is
// pid, not yet ready, to d from now if that is later than it is: what
// systemd does with a notify socket's EXTEND_TIMEOUT_USEC, so a worker that
// warms up slowly can say it is alive. It never shortens the deadline and
// does nothing for a ready worker or under Options.ReadyOnStart; it fails
// with ErrUnknownWorker if pid is not a live worker. d must be positive.
func (s *Supervisor) ExtendStartPID(pid int, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%w: ExtendStartPID duration %v (want > 0)", ErrInvalid, d)
	}
	return s.call(request{kind: reqExtendStartPID, n: pid, d: d}).err
}

// Status returns a snapshot. After Run returned it returns the final one.
func (s *Supervisor) Status() Status {
	r := s.call(request{kind: reqStatus})
	if r.err != nil {
		s.mu.Lock()
		st := s.last
		st.Slots = append([]SlotStatus(nil), st.Slots...)
		st.DroppedEvents, st.DroppedLines = s.dropEvents, s.dropLines
		s.mu.Unlock()
		return st
	}
	return r.status
}

// emit delivers ev without ever blocking the event loop. The channel has
// one slot more than Options.EventBuffer, kept free for Stopped, so the
// terminal event is never dropped. Only the loop goroutine sends, so the
// length check cannot race with another sender.
func (s *Supervisor) emit(ev Event) {
	s.logEvent(ev)
	if len(s.events) < s.opt.EventBuffer {
		select {
		case s.events <- ev:
			return
		default:
		}
	}
	s.mu.Lock()
	s.dropEvents++
	s.mu.Unlock()
}

// emitFinal delivers the last event into the reserved slot.
func (s *Supervisor) emitFinal(ev Event) {
	s.logEvent(ev)
	s.events <- ev
}

func (s *Supervisor) deliverLine(l Line) {
	select {
	case s.lines <- l:
	default:
		s.mu.Lock()
		s.dropLines++
		s.mu.Unlock()
	}
}

func (s *Supervisor) logEvent(ev Event) {
	attrs := []any{"event", ev.Kind.String()}
	switch ev.Kind {
	case RestartBegun, RestartDone, RestartFailed:
		attrs = append(attrs, "generation", ev.Generation)
	case Scaled:
		attrs = append(attrs, "workers", ev.Workers)
	case Stopped:
	default:
		attrs = append(attrs, "slot", ev.ID.Slot, "generation", ev.ID.Generation, "incarnation", ev.ID.Incarnation)
	}
	if ev.PID != 0 {
		attrs = append(attrs, "pid", ev.PID)
	}
	switch ev.Kind {
	case Exited:
		attrs = append(attrs, "code", ev.Code, "uptime", ev.Uptime, "requested", ev.Requested)
		if ev.Signal != 0 {
			attrs = append(attrs, "signal", ev.Signal.String())
		}
	case Restarting:
		attrs = append(attrs, "delay", ev.Delay)
	}
	if ev.Err != nil {
		attrs = append(attrs, "err", ev.Err.Error())
	}
	switch {
	case ev.Kind == Failed:
		s.log.Error("supervise: slot failed, giving up", attrs...)
	case ev.Kind == RestartFailed && errors.Is(ev.Err, ErrStopping):
		// Stop's own doing, not a warning.
		s.log.Debug("supervise", attrs...)
	case ev.Kind == SpawnFailed || ev.Kind == RestartFailed:
		s.log.Warn("supervise", attrs...)
	default:
		s.log.Debug("supervise", attrs...)
	}
}
