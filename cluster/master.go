package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/handoff-go/handoff/supervise"
)

// ErrNotSupported is returned on platforms other than Linux.
var ErrNotSupported = errors.New("cluster: not supported on this platform")

// ShimArg, as the first argument of the mini-cluster binary, selects its
// hidden exec shim: "BIN ShimArg [ShimParentArgPID] PATH ARGV0 ARGS..." sets LISTEN_PID to the
// shim's own pid and executes PATH in place (same pid), which os/exec cannot
// do. A program that embeds the master must call RunShim when it sees it.
const ShimArg = "-handoff-exec-shim"

// ShimParentArg prefixes the optional first shim argument after ShimArg,
// ShimParentArg+"PID", naming the master: the shim re-arms its parent-death
// signal and refuses to exec the program if its parent is no longer that
// process ("BIN ShimArg ShimParentArg123 PATH ARGV0 ARGS...").
const ShimParentArg = "-handoff-master="

// UpgradeProbeArg, as the first argument of the master's binary (followed
// by "--" and the arguments the new image would get), selects its hidden
// upgrade probe: the binary must recognise it with UpgradeProbeArgs, check
// those arguments and its configuration as a start would, without side
// effects, and then call RunUpgradeProbe with its standard output and exit
// 0 (or print the error and exit non-zero). Before an in-place upgrade (SIGUSR2) the
// running master runs the binary it is about to execute that way, as a
// child with the same environment (plus HANDOFF_UPGRADE_PROBE=1), and
// executes it only if, within 2 s, the probe exits 0 and names the state
// version the running master writes: a binary that cannot start, crashes,
// or would not take the state over leaves the cluster as it was. A
// program that embeds the master must handle UpgradeProbeArg as it handles
// ShimArg, or SIGUSR2 is refused (New fails in a probe, so a program that
// ignores the argument does not start a second master).
const UpgradeProbeArg = "-handoff-upgrade-probe"

// ErrSuspended is returned by Restart while the master is suspended: there
// is no worker to restart.
var ErrSuspended = errors.New("cluster: suspended")

// ErrMasterGone is returned by RunShim when the master that spawned the
// shim died before the shim could arm its parent-death signal.
var ErrMasterGone = errors.New("cluster: master gone")

// ReadyMode says when a worker counts as ready.
type ReadyMode int

const (
	// ReadyNotify waits for READY=1 on NOTIFY_SOCKET (the default).
	ReadyNotify ReadyMode = iota
	// ReadyStarted counts a worker ready as soon as it started.
	ReadyStarted
)

// ParseReadyMode parses "notify" or "started".
func ParseReadyMode(s string) (ReadyMode, error) {
	switch s {
	case "notify":
		return ReadyNotify, nil
	case "started":
		return ReadyStarted, nil
	}
	return 0, fmt.Errorf("cluster: ready mode %q (want notify or started)", s)
}

// Config describes a cluster. Zero fields mean the documented defaults.
type Config struct {
	// Program is the worker program, looked up in PATH if it has no slash;
	// Args are its arguments.
	Program string
	Args    []string
	// Workers is the number of worker slots (default runtime.NumCPU()).
	Workers int
	// Listen holds -listen addresses (see ParseAddr), bound once by New in
	// this order; workers get them as descriptors 3, 4, ... Ignored when the
	// process was itself socket-activated (LISTEN_PID is its pid): those
	// descriptors are adopted instead.
	Listen []string
	// Ready is the readiness mode (default ReadyNotify).
	Ready ReadyMode
	// Mode says how workers get connections (default ModeShared; see
	// Mode). Workers find it in HANDOFF_MODE.
	Mode Mode
	// Strategy is the graceful-restart strategy (default Rolling).
	Strategy supervise.Strategy
	// ShutdownTimeout is the grace period between SIGTERM and SIGKILL of a
	// worker's process group (default 10 s).
	ShutdownTimeout time.Duration
	// StartTimeout is how long a worker may take to report ready (default
	// 30 s; negative: no limit), and how long a reload it announced
	// (RELOADING=1) may last before it counts as ready again.
	StartTimeout time.Duration
	// Backoff throttles respawns of crashing workers (zero: supervise's
	// defaults, 1 s doubling to 30 s, at most 5 starts in 10 s).
	Backoff supervise.Backoff
	// PIDFile, if set, is written with this process's pid once every
	// worker of the first generation is ready, locked while the cluster
	// runs and removed when it stops (supervise.CreatePIDFile).
	PIDFile string
	// Shim is the binary that implements ShimArg (default: this very
	// executable, through /proc/self/exe, so replacing or deleting the
	// binary on disk does not break respawns).
	Shim string
	// Env is the base environment of workers (nil: os.Environ()). The
	// master's own LISTEN_*, NOTIFY_SOCKET and WATCHDOG_* are removed from
	// it.
	Env []string
	// Stdout and Stderr receive workers' output, one line at a time,
	// prefixed with "[slot pid] ". If both are nil, each line is logged to
	// Logger instead (with slot, pid and stream attributes), which suits a
	// JSON log. One that fails with EPIPE (its reader went away) is not
	// written again. Run waits for the last line written when it stops:
	// give writers that do not block for long (mini-cluster queues its
	// output and drops what a stalled reader cannot take).
	Stdout, Stderr io.Writer
	// Logger receives the master's log (default slog.Default()). It is
	// called from the master's goroutines, supervision and stopping
	// included: its writer should not block for long either.
	Logger *slog.Logger
	// FlushOutput, if not nil, is called right before an in-place
	// upgrade's execve (SIGUSR2), after its last record, for writers
	// that queue their output (Stdout, Stderr, Logger's): the execve
	// discards what they hold. It should write out what they queued for
	// at most d (500 ms), and return how many lines it could not; the new
	// image logs that count (a warning "output dropped").
	FlushOutput func(d time.Duration) (left uint64)
	// Heartbeat, if positive, is the interval at which workers must show
	// they are alive once ready: a control message (Go workers using this
	// package send one every Heartbeat) or WATCHDOG=1 on NOTIFY_SOCKET. A
	// worker silent for Heartbeat*HeartbeatFactor is killed (its process
	// group) and replaced. Workers get WATCHDOG_USEC, that deadline, and
	// WATCHDOG_PID. 0 (the default) turns heartbeats off.
	Heartbeat time.Duration
	// OnMessage, if not nil, receives the messages workers send with
	// cluster.Send. It is called from the sending worker's channel
	// goroutine, one message at a time per worker but concurrently for
	// different workers, so a slow OnMessage delays only that worker's
	// messages. Payload is the callee's.
	OnMessage func(Message)
	// Control, if set, is the path of the control socket (see
	// DialControl), created by New: mode 0600, in a directory of this
	// user that group and others cannot access (created 0700 if missing,
	// refused otherwise, ErrUnsafeControlDir). A stale socket there is
	// replaced; a live one makes New fail. Only root and this process's
	// user may connect (SO_PEERCRED). Empty: no control socket.
	Control string
	// Restart is the restart policy of exited workers (default
	// supervise.RestartAlways).
	Restart supervise.Policy
	// MaxRunningTime, if positive, recycles a worker that has run that
	// long: a replacement is started for its slot and, once ready, the old
	// worker is stopped gracefully (for workers that leak). 0 or 1 s to
	// 366 days, the range the control socket carries.
	MaxRunningTime time.Duration
	// Suspended starts the cluster suspended: no worker runs until Resume.
	Suspended bool
	// Credential, if not nil, runs every worker (the exec shim and the
	// program it executes) as that user, group and supplementary groups
	// (LookupUser; -user), so a master started as root to bind privileged
	// ports runs no worker as root. It needs a root master (effective uid
	// 0; New fails with ErrUser otherwise) unless it names the process's
	// own effective uid and gid, which changes nothing. The parent-death
	// signal survives the switch (fork sets it after the credentials). The
	// notify socket is made reachable by that user only, notifications
	// are accepted from that uid only, and a unix socket a worker asks the
	// master to bind (Listen) is created with that user's effective ids
	// (so only where it could create one itself) and is its file, its
	// clients seeing that uid as its peer (SO_PEERCRED). The
	// temporary directory (TMPDIR), which holds the notify socket, must
	// be searchable by it, and Shim executable by it, else New fails.
	Credential *supervise.Credential

	// Group settings, for a cluster that is one group of a -config file
	// (see GroupConfig). All zero outside a group.
	//
	// Group is the group's name (HANDOFF_GROUP; unset when empty) and
	// Params its parameters as JSON (HANDOFF_PARAMS, set when Group is).
	Group  string
	Params []byte
	// GroupSize is HANDOFF_GROUP_SIZE (0: the current number of workers)
	// and GroupIndexBase the group index of slot 0 (HANDOFF_GROUP_INDEX is
	// GroupIndexBase+slot).
	GroupSize, GroupIndexBase int
	// WorkerID maps a slot to the worker's global id (HANDOFF_WORKER_ID;
	// nil: the slot). It must be stable for a slot and safe for concurrent
	// use.
	WorkerID func(slot int) int
}

// Master runs one cluster: the listeners it bound or adopted, a notify
// socket, and a supervisor of the workers. Create it with New, then call Run
// once. Methods are safe for concurrent use.
type Master struct {
	m *master
}

// Addrs returns the bound addresses in -listen order, with port 0 resolved.
func (m *Master) Addrs() []net.Addr { return m.m.addrs() }

// Ready is closed once every worker of the first generation is ready, or
// once the master is suspended (Suspend, Config.Suspended): there is
// nothing to wait for then.
func (m *Master) Ready() <-chan struct{} { return m.m.readyCh() }

// Run starts the workers and supervises them until ctx is done or Stop or
// Kill is called, then stops them, removes the pid file, closes the
// listeners and returns. Run may be called once; New's resources are
// released when it returns. Failing workers are logged, never Run's error.
func (m *Master) Run(ctx context.Context) error { return m.m.run(ctx) }

// Restart begins a zero-downtime restart with the configured strategy;
// requests during a restart coalesce into at most one more. While
// suspended it fails with ErrSuspended.
func (m *Master) Restart() error { return m.m.restart() }

// Stop begins a graceful stop (STOPPING=1 to systemd when started by it).
func (m *Master) Stop() error { return m.m.stop() }

// Kill SIGKILLs every worker's process group.
func (m *Master) Kill() error { return m.m.kill() }

// Suspend stops every worker gracefully (SIGTERM, ShutdownTimeout, then
// SIGKILL of its process group) and starts none until Resume. The worker
// count is remembered and the listeners stay open, so clients' connections
// wait in the kernel's backlog. Suspending a suspended master does nothing;
// during a graceful restart Suspend fails (supervise.ErrBusy), and during
// an in-place upgrade (SIGUSR2) too. It needs Run (supervise.ErrNotRunning
// before): Config.Suspended starts suspended.
func (m *Master) Suspend() error { return m.m.suspend() }

// Resume starts the remembered number of workers again (ScaleBy while
// suspended changes that number). Resuming a running master does nothing.
func (m *Master) Resume() error { return m.m.resume() }

// Suspended reports whether the master is suspended (Suspend, or
// Config.Suspended until the first Resume).
func (m *Master) Suspended() bool { return m.m.suspended() }

// SetMaxRunningTime changes Config.MaxRunningTime while the cluster runs
// (0: none, else 1 s to 366 days; another value fails with an error
// matching ErrControlInvalid); workers already past the new limit are
// recycled one at a time, the first within a second.
func (m *Master) SetMaxRunningTime(d time.Duration) error { return m.m.setMaxRunningTime(d) }

// MaxRunningTime is the maximum running time in effect (0: none).
func (m *Master) MaxRunningTime() time.Duration { return m.m.maxRunningTime() }

// ScaleBy adds delta workers (negative removes).
func (m *Master) ScaleBy(delta int) error { return m.m.scaleBy(delta) }

// Status returns the supervisor's snapshot, with what the serving workers
// said on NOTIFY_SOCKET applied: a worker that sent STOPPING=1 is
// SlotStopping, a ready one that sent RELOADING=1 (and not READY=1 since)
// is SlotReloading, and neither counts in ReadyWorkers.
func (m *Master) Status() supervise.Status { return m.m.status() }

// Send queues payload (at most MaxMessage bytes) for the serving worker of
// slot, which receives it from cluster.Messages. It fails with ErrNoWorker
// if the slot has no worker with a control channel, and with ErrQueueFull
// if that worker does not read its messages. Delivery is not confirmed.
func (m *Master) Send(slot int, payload []byte) error { return m.m.send(slot, payload) }

// Broadcast queues payload for the serving worker of every slot; the
// error joins those of the workers it could not queue it for.
func (m *Master) Broadcast(payload []byte) error { return m.m.broadcast(payload) }

// HandleSignals maps the master's signals: SIGTERM/SIGINT/SIGQUIT stop (a
// second one kills), SIGHUP/SIGUSR1 restart, SIGTTIN/SIGTTOU scale by one,
// SIGUSR2 upgrades the master in place (see the package doc). SIGPIPE is
// caught and dropped, so that a write to a stdout or stderr whose reader
// went away fails with EPIPE instead of killing the process (workers still
// start with its default action). A stop signal is acted on before it is
// logged. Call the returned function after Run returned.
func (m *Master) HandleSignals() (stop func(), err error) { return m.m.handleSignals() }

// Close releases what New acquired (listeners, pid file lock) if Run is
// never called. It is idempotent and a no-op after Run.
func (m *Master) Close() error { return m.m.close() }

// New validates cfg, takes the pid file lock, and binds (or adopts) every
// listener. On error nothing is left open and no worker was started.
//
// Before opening anything, New validates socket-activation descriptors and
// then marks every descriptor of the process from 3 up close-on-exec, so
// nothing the process inherited reaches workers. A program embedding the
// master that wants one of its own descriptors inherited by other children
// must clear the flag again after New.
func New(cfg *Config) (*Master, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	m, err := newMaster(cfg)
	if err != nil {
		return nil, err
	}
	return &Master{m: m}, nil
}
