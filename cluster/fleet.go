package cluster

import (
	"context"
	"io"
	"log/slog"
	"time"
)

// FleetOptions adjusts NewFleet. nil or zero fields mean the defaults.
type FleetOptions struct {
	// Logger receives the fleet's log (default slog.Default()); each
	// group's records carry a "group" attribute.
	Logger *slog.Logger
	// Stdout and Stderr receive workers' output as Config's do, each line
	// prefixed with "[group slot pid] ". If both are nil, lines are logged.
	Stdout, Stderr io.Writer
	// Shim and Env are Config's, for every group (a group's "env" entries
	// are added to Env).
	Shim string
	Env  []string
	// Control and PIDFile, when set, replace the FileConfig's (the
	// command line's -control and -pid-file).
	Control, PIDFile string
}

// Fleet runs the groups of a configuration file (mini-cluster -config) in
// one process: a Master for each group's local workers and an SSH-launched
// agent session for each remote host. The fleet owns the one control
// socket, the pid file, the signals and the systemd notifications; its
// masters have none of their own. Methods are safe for concurrent use.
type Fleet struct {
	f *fleet
}

// NewFleet validates fc with ParseConfig's rules, for a FileConfig built
// in Go (unique group names, at most MaxConfigWorkers workers, every
// setting in the range a file may give it, such as a MaxRunningTime of 0
// or 1 s to 366 days and Params of at most 64 KiB; zero values mean the
// defaults; "env" names a file may not set are allowed), creates the
// control socket and the pid file's lock, and binds every group's
// listeners. On error nothing is left open and no worker was started; the
// error names the group. A process that was socket-activated (LISTEN_PID
// is its own pid) is refused: the descriptors could not be assigned to
// groups.
func NewFleet(fc *FileConfig, opts *FleetOptions) (*Fleet, error) {
	f, err := newFleet(fc, opts)
	if err != nil {
		return nil, err
	}
	return &Fleet{f: f}, nil
}

// Run starts every group and supervises them until ctx is done or Stop or
// Kill is called, then stops every group (local workers and remote agents),
// removes the pid file and closes the control socket and the listeners. It
// may be called once.
func (f *Fleet) Run(ctx context.Context) error { return f.f.run(ctx) }

// Ready is closed once the local workers of every group are ready (a
// suspended group counts as ready). Remote hosts are not awaited: a host
// that is down must not keep the fleet from serving.
func (f *Fleet) Ready() <-chan struct{} { return f.f.ready }

// Status returns the status of every group, as the control socket
// answers it.
func (f *Fleet) Status() *ControlStatus { return f.f.controlStatus() }

// Restart restarts one group gracefully ("": every group that is not
// suspended; ErrSuspended if all are).
func (f *Fleet) Restart(group string) error { return f.f.restart(group) }

// Stop begins a graceful stop of every group.
func (f *Fleet) Stop() error { return f.f.stop() }

// Kill SIGKILLs every local worker's process group and begins a stop as by
// Stop; remote agents are told to SIGKILL their workers' process groups
// too ("kill"), and their ssh sessions are ended 5 s later if not done.
func (f *Fleet) Kill() error { return f.f.kill() }

// Suspend stops a group's workers gracefully, remembering its slots, until
// Resume; its listeners stay open.
func (f *Fleet) Suspend(group string) error { return f.f.suspend(group) }

// Resume starts a suspended group's workers again.
func (f *Fleet) Resume(group string) error { return f.f.resume(group) }

// SetMaxRunningTime changes a group's maximum running time (0: none, else
// 1 s to 366 days, as in a file; anything else is ErrControlInvalid) on
// its local workers and its remote hosts ("" names the only group).
func (f *Fleet) SetMaxRunningTime(group string, d time.Duration) error {
	return f.f.setMaxRunningTime(group, d)
}

// Scale sets the number of local workers of a group without remote hosts
// to n. New slots get fresh global ids. The process stays within
// MaxConfigWorkers workers, every group's local and remote ones together
// (a suspended group's count to resume included): beyond, Scale fails
// with ErrControlInvalid.
func (f *Fleet) Scale(group string, n int) error { return f.f.scale(group, n) }

// HandleSignals maps the fleet's signals: SIGTERM/SIGINT/SIGQUIT stop
// every group (a second one kills), SIGPIPE is caught and dropped (as for
// Master.HandleSignals), SIGHUP/SIGUSR1 restart every group, SIGTTIN/SIGTTOU
// scale the only group when there is exactly one local-only group. SIGUSR2
// (an in-place upgrade of a single-command master) is refused with an
// error in the log. Call the returned function after Run returned.
func (f *Fleet) HandleSignals() (stop func(), err error) { return f.f.handleSignals() }

// Close releases what NewFleet acquired if Run is never called. It is
// idempotent and a no-op after Run.
func (f *Fleet) Close() error { return f.f.close() }
