//go:build linux

package cluster

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// Worker environment set by the master.
const (
	envWorkerID         = "HANDOFF_WORKER_ID"
	envWorkerGeneration = "HANDOFF_WORKER_GENERATION"
	envWorkers          = "HANDOFF_WORKERS"
)

// strippedEnv are the master's own variables that must not reach workers:
// they describe the master's activation, not the worker's.
var strippedEnv = []string{envListenPID, envListenFDs, envListenFDNames, envNotifySocket, "WATCHDOG_USEC", "WATCHDOG_PID",
	// A master that is itself a worker of another (nested), or took over
	// from an older image, must not pass its own descriptors' numbers on.
	envControlFD, envConnFD, envConnVersion, envMode, envControlListen, envUpgradeState,
	envWorkerID, envWorkerGeneration, envWorkers, envUpgradeProbe, envUpgradeUnwritten,
	// The shim's, set per spawn (prepareExecStatus); a stale one must
	// not reach the program if that step ever changes.
	envExecStatusFD,
	// A group worker's; a master outside a group sets none of them.
	envGroup, envGroupIndex, envGroupSize, envParams}

// selfExe names the running executable, whatever happened to its path.
const selfExe = "/proc/self/exe"

type master struct {
	cfg     Config
	log     *slog.Logger
	program string // resolved path
	// cred is the workers' credential (Config.Credential), nil when they
	// run as the master's user.
	cred      *supervise.Credential
	listeners []*listener
	adopted   bool
	sdNotify  string // the master's own NOTIFY_SOCKET, if any
	// notifyAddr is the workers' NOTIFY_SOCKET, set by run before the
	// supervisor starts.
	notifyAddr string
	pidFile    *supervise.PIDFile
	sup        *supervise.Supervisor
	workers    atomic.Int64

	readyOnce sync.Once
	ready     chan struct{}
	// stopReq records the first stop request, even one before Run
	// started the supervisor.
	stopReq  stopLatch
	isReady  atomic.Bool
	stopping atomic.Bool
	// reloading is set while systemd was told RELOADING=1 and not yet
	// READY=1 again.
	reloading atomic.Bool
	// notifyClosed tells serveNotify that an error means "closed".
	notifyClosed atomic.Bool
	notifyWarn   warnLimiter
	// nstate is the workers' last STATUS= and ERRNO= (notify.go).
	nstate notifyState
	// exec collects the shims' exec-failure reports (RunShim).
	exec execState
	// killReq records a kill request (a second stop signal): leftovers
	// get SIGKILL at once (stop_linux.go).
	killReq stopLatch

	mu     sync.Mutex
	closed bool
	ran    bool
	// pids maps live worker pids (every generation, including those
	// being stopped) to their IDs, from the supervisor's events.
	pids map[int]supervise.ID
	// ctl holds the workers' control channels (channel_linux.go).
	ctl ctlState
	// csock is the control socket and the slots' last exits
	// (control_linux.go).
	csock controlState
	// up is the in-place upgrade state (upgrade_linux.go).
	up *upgrade
	// mode holds reuseport slot sockets and the handoff dispatcher
	// (mode_linux.go, handoff_linux.go).
	mode modeState
	// grp is the suspend state and the recycler (group_linux.go).
	grp groupState
	// seenDrops is Status().DroppedEvents at the last reconcile
	// (watchEvents' goroutine only).
	seenDrops uint64
	// Test seams (nil, zero: off): eventBuffer is supervise's
	// Options.EventBuffer, and watchEvents calls eventGate between its
	// check for drops and its wait for each event, so a test can stall the
	// reader where a drop is hardest to notice.
	eventBuffer int
	eventGate   func()
}

func newMaster(cfg *Config) (_ *master, err error) {
	m := &master{cfg: *cfg, ready: make(chan struct{}), stopReq: stopLatch{ch: make(chan struct{})}, killReq: stopLatch{ch: make(chan struct{})}, pids: make(map[int]supervise.ID)}
	m.log = cfg.Logger
	if m.log == nil {
		m.log = slog.Default()
	}
	if m.cfg.Workers == 0 {
		m.cfg.Workers = runtime.NumCPU()
	}
	if m.cfg.Workers < 0 || m.cfg.Workers > 4096 {
		return nil, fmt.Errorf("cluster: %d workers (want 1 to 4096)", m.cfg.Workers)
	}
	if m.cfg.Program == "" {
		return nil, errors.New("cluster: no worker program")
	}
	if m.cfg.Ready != ReadyNotify && m.cfg.Ready != ReadyStarted {
		return nil, fmt.Errorf("cluster: ready mode %d", m.cfg.Ready)
	}
	if err := m.checkMode(); err != nil {
		return nil, err
	}
	if err := m.checkGroup(); err != nil { // group_linux.go
		return nil, err
	}
	if m.cred, err = workerCredential(m.cfg.Credential); err != nil {
		return nil, err
	}
	if m.cred != nil {
		// The notify socket goes in a directory made there (run):
		// workers that cannot reach it would never become ready.
		if err := accessAs(m.cred, os.TempDir(), unix.X_OK); err != nil {
			return nil, fmt.Errorf("%w: uid %d cannot search the temporary directory %s, which holds the workers' notify socket (set TMPDIR to one it can): %w", ErrUser, m.cred.UID, os.TempDir(), err)
		}
	}
	if os.Getenv(envUpgradeProbe) != "" {
		// Started as a running master's upgrade probe by a binary that
		// did not handle UpgradeProbeArg: a second master would bind,
		// lock and spawn beside the first.
		return nil, fmt.Errorf("%w: started as an upgrade probe (%s set): the program must recognise %s with cluster.UpgradeProbeArgs and call cluster.RunUpgradeProbe", ErrUpgradeProbe, envUpgradeProbe, UpgradeProbeArg)
	}
	m.grp.suspended = m.cfg.Suspended
	// Resolve once so a missing program is a start-up error, not a respawn
	// loop; a path is kept as is, so replacing the file takes effect at the
	// next spawn. A bare name is looked up in the workers' PATH (Config.Env)
	// when it sets one: mini-cluster's own could find another program.
	if m.program, err = lookProgram(m.cfg.Program, m.cfg.Env); err != nil {
		return nil, fmt.Errorf("cluster: worker program: %w", err)
	}
	if !filepath.IsAbs(m.program) && strings.Contains(m.program, "/") {
		if m.program, err = filepath.Abs(m.program); err != nil {
			return nil, fmt.Errorf("cluster: worker program: %w", err)
		}
	}
	if m.cfg.Shim == "" {
		// Resolved by the kernel at each spawn in the forked child, which
		// is still this process image: the running binary even after it
		// was replaced or deleted on disk (an upgrade), where the path
		// os.Executable gives would run the new binary, or nothing.
		m.cfg.Shim = selfExe
	}
	if m.cred != nil {
		// Every worker starts by executing the shim as that user: one it
		// cannot execute (a binary of mode 0700) would fail every spawn,
		// a respawn loop rather than a start-up error.
		if err := accessAs(m.cred, m.cfg.Shim, unix.X_OK); err != nil {
			name := m.cfg.Shim
			if exe, xerr := os.Executable(); name == selfExe && xerr == nil {
				name = exe
			}
			return nil, fmt.Errorf("%w: uid %d cannot execute %s, the exec shim every worker starts as (make the binary executable by that user): %w", ErrUser, m.cred.UID, name, err)
		}
	}
	// Activation descriptors are validated before anything else is opened
	// (the pid file's lock, a socket), so a descriptor number in
	// LISTEN_FDS can only name something this process inherited.
	// After an in-place upgrade (SIGUSR2) the old image's listeners come
	// from its state instead (upgrade_linux.go).
	m.inheritUpgrade()
	act, err := parseActivation(os.Getenv, os.Getpid())
	if err != nil {
		return nil, err
	}
	act = m.upgradeActivation(act)
	if err := checkActivated(act); err != nil {
		return nil, err
	}
	if err := cloexecInherited(); err != nil {
		return nil, fmt.Errorf("cluster: inherited descriptors: %w", err)
	}
	// Before the pid file and the listeners: a second instance on a live
	// control path fails without touching anything of the first
	// (control_linux.go).
	if err = m.openControl(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.closeControl()
		}
	}()
	m.sdNotify = os.Getenv(envNotifySocket)
	if m.cfg.PIDFile != "" && m.pidFile == nil { // set if adopted by inheritUpgrade
		// Before binding: a second instance fails on the lock without
		// touching the first one's sockets.
		if m.pidFile, err = supervise.CreatePIDFile(m.cfg.PIDFile); err != nil {
			return nil, fmt.Errorf("cluster: pid file: %w", err)
		}
	}
	defer func() {
		if err != nil && m.pidFile != nil {
			m.pidFile.Close()
		}
	}()
	if len(act) > 0 {
		if len(m.cfg.Listen) > 0 && !m.upgraded() {
			m.log.Warn("socket-activated: ignoring -listen", "listen", m.cfg.Listen, "adopted", len(act))
		}
		if m.listeners, err = adopt(act); err != nil {
			return nil, err
		}
		m.adoptListenerFiles(m.listeners, act)
		m.adopted = true
	} else {
		if len(m.cfg.Listen) == 0 {
			return nil, errNoListeners
		}
		if m.listeners, err = m.bindMode(m.cfg.Listen); err != nil {
			return nil, err
		}
	}
	if err := m.initMode(); err != nil {
		closeAll(m.listeners)
		return nil, err
	}
	for i, l := range m.listeners {
		m.log.Info("listening", "fd", listenFDsStart+i, "name", l.name, "network", l.addr.Network(), "addr", l.addr.String(), "adopted", m.adopted)
	}
	return m, nil
}

func (m *master) addrs() []net.Addr {
	out := make([]net.Addr, len(m.listeners))
	for i, l := range m.listeners {
		out[i] = l.addr
	}
	return out
}

func (m *master) readyCh() <-chan struct{} { return m.ready }

func (m *master) close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.ran {
		return nil
	}
	m.closed = true
	m.closeControl()
	closeAll(m.listeners)
	if m.pidFile != nil {
		m.pidFile.Close()
	}
	return nil
}

// workerEnv is the base environment of every worker: the configured one
// without the master's own activation variables, plus LISTEN_FDS and
// LISTEN_FDNAMES (LISTEN_PID is set by the shim, NOTIFY_SOCKET per spawn).
func (m *master) workerEnv() []string {
	base := m.cfg.Env
	if base == nil {
		base = os.Environ()
	}
	out := make([]string, 0, len(base)+3)
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		strip := false
		for _, s := range strippedEnv {
			if k == s {
				strip = true
			}
		}
		if !strip {
			out = append(out, kv)
		}
	}
	names := make([]string, len(m.listeners))
	for i, l := range m.listeners {
		names[i] = l.name
	}
	return append(out, envListenFDs+"="+strconv.Itoa(len(m.listeners)), envListenFDNames+"="+strings.Join(names, ":"))
}

func (m *master) run(ctx context.Context) error {
	m.mu.Lock()
	if m.closed || m.ran {
		m.mu.Unlock()
		return errors.New("cluster: Run called twice or after Close")
	}
	m.ran = true
	m.mu.Unlock()
	defer func() {
		m.closeControl()
		closeAll(m.listeners)
		if m.pidFile != nil {
			m.pidFile.Close()
		}
	}()

	// Notify directories SIGKILLed masters left behind (stop_linux.go).
	for _, d := range sweepNotifyDirs(os.TempDir()) {
		m.log.Info("removed the notify directory of a dead master", "dir", d)
	}
	// One notify socket for the cluster, a path in a private directory
	// (0700, socket 0600): an abstract name could be written by any process
	// in the network namespace. Messages are attributed by the
	// kernel-supplied sender pid (SCM_CREDENTIALS), so a per-worker socket
	// would add descriptors without adding trust.
	ns, notifyDir, err := listenPrivateNotify(m.cred)
	if err != nil {
		return fmt.Errorf("cluster: notify socket: %w", err)
	}
	defer func() {
		ns.close()
		os.Remove(notifyDir)
	}()
	m.notifyAddr = ns.path

	files := make([]*os.File, len(m.listeners))
	for i, l := range m.listeners {
		files[i] = l.file
	}
	m.workers.Store(int64(m.cfg.Workers))
	spec := supervise.Spec{
		Path: m.cfg.Shim,
		// ShimParentArg: the shim re-arms the parent-death signal on the
		// thread that calls execve (it is per thread, and a Go shim may
		// run on a thread other than the one fork set it on) and refuses
		// to exec the program if the master died meanwhile.
		Args:       append([]string{ShimArg, ShimParentArg + strconv.Itoa(os.Getpid()), m.program, m.cfg.Program}, m.cfg.Args...),
		Env:        m.workerEnv(),
		ExtraFiles: m.specFiles(files),
		Prepare:    m.prepare,
		// A credential change clears the parent-death signal
		// (prctl(2)); Go's fork sets Pdeathsig after it, so workers
		// still die with the master.
		Credential: m.cred,
	}
	opts := &supervise.Options{
		Workers:       m.cfg.Workers,
		StartEmpty:    m.startEmpty(),
		Restart:       m.cfg.Restart,
		ReadyOnStart:  m.cfg.Ready == ReadyStarted,
		StartTimeout:  m.cfg.StartTimeout,
		StopTimeout:   m.cfg.ShutdownTimeout,
		Backoff:       m.cfg.Backoff,
		CaptureOutput: true,
		EventBuffer:   m.eventBuffer,
		Logger:        m.log,
		// As PID 1 (a container) orphans re-parent to the master anyway;
		// reap them. Other children the process starts (ssh clients of
		// remote groups) are held (holdChild); the supervisors of other
		// groups leave each other's workers alone.
		Subreaper: os.Getpid() == 1,
		OwnChild:  m.ownsChild,
		// After an in-place upgrade, past the previous image's workers.
		FirstGeneration: m.firstGeneration(),
	}
	m.exec.firstGen = opts.FirstGeneration
	sup, err := supervise.New(spec, opts)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	m.mu.Lock()
	m.sup = sup
	m.mu.Unlock()

	// A stop requested by now (a TERM between New and Run) must not fork
	// workers only to stop them: supervise would start the first
	// generation before noticing a cancelled context, and its own
	// pending-stop state is reachable only through its HandleSignals.
	if m.stopRequested() || ctx.Err() != nil {
		m.log.Info("stop requested before any worker was started")
		if !m.stopping.Swap(true) {
			m.notifySystemd("STOPPING=1")
		}
		return nil
	}
	// Handoff mode's accept loops (mode_linux.go); stopped before the
	// listeners close.
	defer m.startMode()()

	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); m.serveNotify(ns) }()
	go func() { defer wg.Done(); m.watchEvents() }()
	go func() { defer wg.Done(); m.copyOutput() }()
	hbDone := make(chan struct{})
	wg.Add(1)
	go func() { defer wg.Done(); m.watchHeartbeats(hbDone) }()
	// After the supervisor stopped every worker: channels, and the
	// listeners workers asked for, are the master's until then.
	defer m.closeChannels()
	// Served while the supervisor runs (control_linux.go).
	defer m.startControl()()
	// After an upgrade: the old image's workers serve until ours are
	// ready, then are retired (upgrade_linux.go).
	defer m.startRetire()()
	// Suspended start, MaxRunningTime (group_linux.go).
	defer m.startGroup()()

	if !m.suspended() {
		m.log.Info("starting workers", "workers", m.cfg.Workers, "program", m.program, "args", m.cfg.Args, "ready", readyName(m.cfg.Ready))
	}
	runDone := make(chan struct{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
		case <-m.stopReq.done():
		case <-runDone:
			return
		}
		if !m.stopping.Swap(true) {
			m.notifySystemd("STOPPING=1")
		}
		// A cancelled context is supervise's graceful stop, and works
		// before its Run has started too.
		cancel()
	}()
	err = sup.Run(ctx)
	close(runDone)
	close(hbDone)
	m.notifyClosed.Store(true)
	ns.conn.Close() // unblocks serveNotify; Events and Lines are closed by Run
	wg.Wait()
	// Every worker was reaped, so every exec-status pipe is at EOF.
	m.exec.wg.Wait()
	m.nstate.close()
	// Descendants of workers that left their process groups (setsid) and
	// still run would keep the listeners (stop_linux.go).
	m.stopLeftovers()
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if err := m.exec.startError(); err != nil {
		return err // an *ExecError, "cluster: exec PROGRAM: ..."
	}
	m.log.Info("stopped")
	return nil
}

// prepare builds one spawn's environment and per-spawn descriptors. In the
// worker, the shared listeners (Spec.ExtraFiles) are descriptors 3, 4, ...
// and the files of Launch.ExtraFiles follow them in order.
func (m *master) prepare(id supervise.ID) (supervise.Launch, error) {
	l := supervise.Launch{Env: []string{
		envNotifySocket + "=" + m.notifyAddr,
		envWorkerGeneration + "=" + strconv.Itoa(id.Generation),
		envWorkers + "=" + strconv.FormatInt(m.workers.Load(), 10),
	}}
	// HANDOFF_WORKER_ID and HANDOFF_GROUP_* (group_linux.go).
	l.Env = m.groupEnv(id, l.Env)
	steps := []func(supervise.ID, *supervise.Launch) error{
		// HANDOFF_MODE, and a reuseport slot's own listeners (mode_linux.go).
		m.prepareListeners,
		// The control channel follows the listeners (channel_linux.go).
		m.prepareChannel,
		// Then the connection channel, in handoff mode (handoff_linux.go).
		m.prepareConn,
		// Last, as it never reaches the program: the shim's exec status.
		m.prepareExecStatus,
	}
	for _, step := range steps {
		if err := step(id, &l); err != nil {
			// supervise drops the Launch of a failed Prepare: release
			// what the earlier steps opened (their chained Done).
			if l.Done != nil {
				l.Done(0, err)
			}
			return supervise.Launch{}, err
		}
	}
	return l, nil
}

func readyName(r ReadyMode) string {
	if r == ReadyStarted {
		return "started"
	}
	return "notify"
}

func (m *master) supervisor() (*supervise.Supervisor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sup == nil {
		return nil, supervise.ErrNotRunning
	}
	return m.sup, nil
}

func (m *master) restart() error {
	s, err := m.supervisor()
	if err != nil {
		return err
	}
	m.grp.mu.Lock()
	defer m.grp.mu.Unlock()
	if m.grp.suspended {
		return fmt.Errorf("cluster: restart: %w", ErrSuspended)
	}
	return s.Restart(m.cfg.Strategy)
}

func (m *master) stop() error {
	if m.up != nil {
		// Not between an upgrade's last check and its execve (see
		// upgrade.gate). Said first: if the exec succeeds, this stop is
		// lost with the old image, and the record is all that is left.
		if !m.up.gate.TryLock() {
			m.log.Warn("stop: waiting for the in-place upgrade's execve; lost if it succeeds (stop again)")
			m.up.gate.Lock()
		}
		defer m.up.gate.Unlock()
	}
	m.stopReq.request()
	return nil
}

func (m *master) stopRequested() bool { return m.stopReq.requested() }

func (m *master) kill() error {
	m.killReq.request()
	s, err := m.supervisor()
	if err != nil {
		return err
	}
	if err := s.Kill(); err != nil {
		return err
	}
	if !m.stopping.Swap(true) {
		m.notifySystemd("STOPPING=1")
	}
	return nil
}

func (m *master) scaleBy(delta int) error {
	s, err := m.supervisor()
	if err != nil {
		return err
	}
	// Beyond ±4096 every delta means the same, and the sums below must
	// not wrap (ScaleBy(math.MaxInt) would scale to 0).
	delta = min(max(delta, -4096), 4096)
	m.grp.mu.Lock()
	defer m.grp.mu.Unlock()
	if m.grp.suspended { // group_linux.go
		return m.scaleSuspended(min(max(int(m.workers.Load())+delta, 0), 4096))
	}
	// New workers are spawned before the Scaled event arrives; their
	// HANDOFF_WORKERS must already count them.
	prev := m.workers.Load()
	m.workers.Store(min(max(prev+int64(delta), 0), 4096))
	if err := s.ScaleBy(delta); err != nil {
		m.workers.Store(prev)
		return err
	}
	return nil
}

// status is the supervisor's snapshot with the workers' own STOPPING=1
// and RELOADING=1 applied (notifyState.applyPhases): what Status and the
// control socket show, and what the master's choices among ready workers
// go by. The cluster's own readiness (systemd, the pid file) goes by the
// supervisor's.
func (m *master) status() supervise.Status {
	st := m.supStatus()
	m.nstate.applyPhases(&st)
	return st
}

// supStatus is the supervisor's own snapshot.
func (m *master) supStatus() supervise.Status {
	s, err := m.supervisor()
	if err != nil {
		return supervise.Status{}
	}
	return s.Status()
}

// handleSignals installs the master's signal handler. Signals that arrive
// before Run started the supervisor stop or restart nothing, but a stop
// request is remembered by the context the caller cancels.
//
// Stop signals have a channel and goroutine of their own: a restart or a
// scale waits for grp.mu, which an in-place upgrade holds until its
// exec's outcome, and a SIGTERM queued behind a SIGHUP that waits there
// would be seen only after the exec, which loses it. On their own, a stop
// is recorded at once, and the upgrade sees it and gives up (upgradeNow).
func (m *master) handleSignals() (func(), error) {
	stopCh := make(chan os.Signal, 4)
	signal.Notify(stopCh, stopSignals...)
	ch := make(chan os.Signal, 8)
	// SIGPIPE is caught, and dropped by onSignal, so that a write to a
	// stdout or stderr whose reader went away (mini-cluster ... | head)
	// fails with EPIPE instead of killing the master, and its workers
	// with it (parent-death signal), without a drain. Not signal.Ignore:
	// SIG_IGN survives execve(2) and every worker would start with
	// SIGPIPE ignored; a caught signal is reset to its default there.
	// Its own channel, of one: every write to a pipe or socket without
	// a reader raises one (a control reply to a client that hung up),
	// and in ch they would push out a SIGHUP or SIGTTIN queued while
	// the goroutine waits for a restart.
	pipeCh := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGHUP, unix.SIGUSR1, unix.SIGTTIN, unix.SIGTTOU)
	signal.Notify(pipeCh, unix.SIGPIPE)
	// SIGUSR2: in-place upgrade (upgrade_linux.go).
	stopUpgrade := m.handleUpgradeSignal()
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range []chan os.Signal{stopCh, ch, pipeCh} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case sig := <-c:
					m.onSignal(sig.(syscall.Signal))
				}
			}
		}()
	}
	return func() {
		stopUpgrade()
		signal.Stop(stopCh)
		signal.Stop(ch)
		signal.Stop(pipeCh)
		close(done)
		wg.Wait()
	}, nil
}

// stopSignals stop the master (or a fleet) gracefully, and a second one
// kills. SIGQUIT is one, as nginx's and unicorn's operators expect of
// it, rather than the Go runtime's goroutine dump and exit 2 (the code of
// a bad command line), which left the workers to the parent-death signal
// without a drain; SIGABRT still dumps.
var stopSignals = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGQUIT}

// onSignal acts on a stop signal first and logs after: the log may be
// written to a pipe whose reader stalled, and a stop behind a blocked log
// line would wait with it, never happening.
func (m *master) onSignal(sig syscall.Signal) {
	var err error
	switch sig {
	case unix.SIGTERM, unix.SIGINT, unix.SIGQUIT:
		if m.stopRequested() {
			err = m.kill()
			if errors.Is(err, supervise.ErrNotRunning) {
				// Not started yet, or every worker already
				// stopped: the kill request took effect all the
				// same, for the leftover sweep (stopLeftovers).
				m.log.Warn("second stop signal: no worker to kill; leftover processes get SIGKILL at once", "signal", sig.String())
				return
			}
			m.log.Warn("second stop signal: killing workers", "signal", sig.String())
		} else {
			err = m.stop()
			m.log.Info("stop signal: stopping workers gracefully", "signal", sig.String())
		}
	case unix.SIGHUP, unix.SIGUSR1:
		// Logged first, the exception: the restart may wait for an
		// in-place upgrade's outcome (grp.mu), and the record says the
		// signal was seen. A log that blocks here holds no stop signal:
		// those have their own goroutine.
		m.log.Info("restart signal", "signal", sig.String(), "strategy", m.cfg.Strategy.String())
		err = m.restart()
	case unix.SIGTTIN:
		err = m.scaleBy(1)
	case unix.SIGTTOU:
		err = m.scaleBy(-1)
	case unix.SIGPIPE:
		// A write to a pipe without a reader; the writer sees EPIPE.
		return
	}
	if err != nil {
		m.log.Warn("signal not acted on", "signal", sig.String(), "err", err)
	}
}

// notifySystemd reports state to the master's own NOTIFY_SOCKET, when
// systemd (or another manager) gave one.
func (m *master) notifySystemd(state string) { notifyManager(m.log, m.sdNotify, state) }

// watchEvents keeps the master's per-worker state from the supervisor's
// events. supervise drops events rather than stall when this reader falls
// Options.EventBuffer behind (a slow log handler, a stalled goroutine), and
// the state is then rebuilt from what can be queried without events
// (reconcile). An event is dropped only while the buffer is full, and only
// this goroutine empties it, so a drop leaves the buffer full, less at most
// the one event this reader was about to receive, for it to see when it
// comes back: no periodic check (and no idle wake-up) is needed.
func (m *master) watchEvents() {
	s := m.sup
	events := s.Events()
	suspect := false
	for {
		// A drop leaves EventBuffer (cap-1) events queued, but if it
		// happens between this check and the receive below, the receive
		// takes one of them before the next check: cap-2 catches both.
		// The reconcile waits until the buffer is drained, so the common
		// path costs a len and no Status call.
		suspect = suspect || len(events) >= cap(events)-2
		if m.eventGate != nil {
			m.eventGate()
		}
		ev, ok := <-events
		if !ok {
			return
		}
		m.onEvent(s, ev)
		if suspect && len(events) == 0 {
			suspect = false
			m.checkDropped(s)
		}
	}
}

// onEvent applies one supervisor event to the master's state.
func (m *master) onEvent(s *supervise.Supervisor, ev supervise.Event) {
	switch ev.Kind {
	case supervise.Started:
		m.workerStarted(ev.PID, ev.ID)
		m.log.Info("worker started", "slot", ev.ID.Slot, "pid", ev.PID, "generation", ev.ID.Generation)
	case supervise.Exited:
		m.workerExited(ev.PID, ev.ID)
		m.csock.recordExit(ev)
		attrs := []any{"slot", ev.ID.Slot, "pid", ev.PID, "code", ev.Code, "uptime", ev.Uptime.Round(time.Millisecond)}
		if ev.Signal != 0 {
			attrs = append(attrs, "signal", ev.Signal.String())
		}
		if errno, status, pending := m.nstate.forget(ev.PID, ev.ID); errno != 0 || pending {
			if errno != 0 {
				attrs = append(attrs, "errno", errno, "errno_text", unix.Errno(errno).Error())
			}
			if pending {
				attrs = append(attrs, "last_status", status)
			}
		}
		if ev.Requested {
			m.log.Info("worker exited", attrs...)
		} else {
			m.log.Warn("worker exited unexpectedly", attrs...)
		}
	case supervise.Ready:
		m.checkReady(s)
	case supervise.Failed:
		m.slotFailed(ev)
	case supervise.Scaled:
		// Before m.workers takes this event's count: a scale-up
		// requested since has stored a larger one, whose slots keep
		// their sockets.
		m.closeRemovedSlots(ev.Workers) // mode_linux.go
		// While suspended, the count to resume (group_linux.go).
		m.workers.Store(m.scaledWorkers(ev.Workers))
		m.log.Info("scaled", "workers", ev.Workers)
		// Scaling down can leave only ready workers.
		m.checkReady(s)
	case supervise.RestartBegun:
		m.log.Info("restart begun", "generation", ev.Generation, "strategy", m.cfg.Strategy.String())
		m.restartBegun()
	case supervise.RestartDone, supervise.RestartFailed:
		switch {
		case ev.Kind == supervise.RestartDone:
			m.log.Info("restart done", "generation", ev.Generation)
		case errors.Is(ev.Err, supervise.ErrStopping):
			// A stop interrupted it: nobody keeps serving, and
			// nothing failed that the operator did not ask for.
			m.log.Info("restart abandoned: stopping", "generation", ev.Generation)
		default:
			m.log.Error("restart failed; the previous workers keep serving", "generation", ev.Generation, "err", ev.Err)
		}
		m.restartEnded(s)
	}
}

// workerStarted counts a worker process that started, run by its Started
// event or by reconcile when that event was dropped; the second run for one
// worker does nothing, and so does a run for a worker reconcile already
// cleaned up (it exited before its event was read).
func (m *master) workerStarted(pid int, id supervise.ID) {
	if !m.ctl.tracks(pid, id) {
		return
	}
	m.mu.Lock()
	old, ok := m.pids[pid]
	if !ok || old != id {
		m.pids[pid] = id
	}
	m.mu.Unlock()
	if ok && old == id {
		return
	}
	if ok {
		// The pid was reaped and reused before the earlier worker's
		// Exited event (dropped) was seen.
		m.slotProcessGone(old.Slot)
	}
	m.slotProcessStarted(id.Slot) // mode_linux.go
}

// workerExited is the one clean-up of a worker process that exited, run
// by its Exited event or by reconcile when that event was dropped; the
// second run for one worker does nothing. Nothing here acts on the pid
// alone: a late event may name a pid already reused by a newer worker.
func (m *master) workerExited(pid int, id supervise.ID) {
	m.mu.Lock()
	got, counted := m.pids[pid]
	counted = counted && got == id
	if counted {
		delete(m.pids, pid)
	}
	m.mu.Unlock()
	if counted {
		m.slotProcessGone(id.Slot) // mode_linux.go
	}
	m.workerGone(pid, id) // channel_linux.go
	if m.mode.ho != nil {
		// Out of the rotation, even if a descendant keeps its
		// connection channel open (handoff_linux.go).
		m.mode.ho.exited(pid)
	}
}

// restartBegun tells systemd a graceful restart began (Type=notify-reload
// wants RELOADING=1 with the monotonic time).
func (m *master) restartBegun() {
	m.reloading.Store(true)
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	m.notifySystemd("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10))
}

// restartEnded follows a graceful restart that completed or failed.
func (m *master) restartEnded(s *supervise.Supervisor) {
	m.reloading.Store(false)
	// A restart before the first generation was all ready (Ready events
	// seen while Restarting) completes it.
	m.checkReady(s)
	if m.isReady.Load() && !m.stopping.Load() {
		m.notifySystemd("READY=1")
	}
}

// checkDropped reconciles the master's state if supervise dropped events
// since the last check.
func (m *master) checkDropped(s *supervise.Supervisor) {
	st := s.Status()
	if st.DroppedEvents == m.seenDrops {
		return
	}
	m.reconcile(s, st)
}

// reconcile rebuilds what dropped events would have changed, from ground
// truth that needs no event: the master's own pidfds (a worker whose pidfd
// polls readable has exited), the dispatcher's pidfds, and the
// supervisor's Status. Every change goes through the code its event would
// have run (workerExited, closeRemovedSlots, checkReady, restartEnded), so
// an event still queued behind the drops finds its work done and does
// nothing twice. Exit codes of dropped Exited events are lost: the control
// socket's last exit of a slot may be an older one.
func (m *master) reconcile(s *supervise.Supervisor, st supervise.Status) {
	dropped := st.DroppedEvents - m.seenDrops
	m.seenDrops = st.DroppedEvents
	gone, alive := m.ctl.procsByState()
	// Counted from a Started event, no longer tracked: cleaned up by an
	// earlier reconcile before that event was read.
	m.mu.Lock()
	counted := maps.Clone(m.pids)
	m.mu.Unlock()
	for pid, id := range counted {
		if _, ok := gone[pid]; !ok && !m.ctl.tracks(pid, id) {
			gone[pid] = id
		}
	}
	for pid, id := range gone {
		m.workerExited(pid, id)
	}
	for pid, id := range alive {
		m.workerStarted(pid, id)
	}
	routed := 0
	if m.mode.ho != nil {
		routed = m.mode.ho.sweep()
	}
	m.closeRemovedSlots(st.Workers)
	m.checkReady(s)
	if m.reloading.Load() && !st.Restarting {
		m.restartEnded(s)
	}
	m.log.Warn("supervise events dropped; master state reconciled", "dropped", dropped, "exited_workers", len(gone), "live_workers", len(alive),
		"handoff_removed", routed, "workers", st.Workers, "ready_workers", st.ReadyWorkers, "processes", st.Processes)
}

// checkReady declares the cluster ready once every slot's worker is ready
// and no restart is in flight.
func (m *master) checkReady(s *supervise.Supervisor) {
	if m.isReady.Load() || m.stopping.Load() {
		return
	}
	st := s.Status()
	if st.Workers > 0 && st.ReadyWorkers >= st.Workers && !st.Restarting {
		m.clusterReady(st)
	}
}

func (m *master) clusterReady(st supervise.Status) {
	m.readyOnce.Do(func() {
		m.isReady.Store(true)
		if m.pidFile != nil {
			if err := m.pidFile.Write(os.Getpid()); err != nil {
				m.log.Error("pid file", "err", err)
			}
		}
		addrs := make([]string, len(m.listeners))
		for i, l := range m.listeners {
			addrs[i] = l.addr.String()
		}
		m.log.Info("cluster ready", "workers", st.ReadyWorkers, "listen", strings.Join(addrs, ","), "pid", os.Getpid())
		m.notifySystemd("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()))
		close(m.ready)
	})
}

// copyOutput forwards captured worker output, prefixed with slot and pid.
// A writer that failed with EPIPE (its reader went away; HandleSignals
// keeps SIGPIPE from killing the process) is output gone: the lines of
// its stream are dropped from then on, with one warning in the log.
func (m *master) copyOutput() {
	var gone [2]bool // by stream: stdout, stderr
	for ln := range m.sup.Lines() {
		w := m.cfg.Stdout
		stream := "stdout"
		if ln.Stream == supervise.Stderr {
			w, stream = m.cfg.Stderr, "stderr"
		}
		if m.cfg.Stdout == nil && m.cfg.Stderr == nil {
			m.log.Info(ln.Text, m.lineAttrs(ln, stream)...)
			continue
		}
		i := 0
		if ln.Stream == supervise.Stderr {
			i = 1
		}
		if w == nil || gone[i] {
			continue
		}
		if _, err := fmt.Fprintf(w, "%s%s\n", m.linePrefix(ln), ln.Text); errors.Is(err, unix.EPIPE) {
			gone[i] = true
			m.log.Warn("workers' output discarded from now on: its reader went away (EPIPE)", "stream", stream)
		}
	}
}

// listenPrivateNotify binds the workers' notify socket in a new directory
// only this user can enter. With cred (workers of another user) the
// socket is that user's, mode 0600, and the directory, still this user's
// so that the workers cannot replace the socket, lets cred's group search
// it (0710): exactly that user can connect (connect(2) needs write
// permission on the socket file), besides root. If the master is
// SIGKILLed the directory is left in the temporary directory (it holds one
// dead socket), for the next master of this user to remove
// (sweepNotifyDirs).
func listenPrivateNotify(cred *supervise.Credential) (*notifySocket, string, error) {
	dir, err := os.MkdirTemp("", "handoff-") // mode 0700
	if err != nil {
		return nil, "", err
	}
	path := filepath.Join(dir, "notify")
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		os.Remove(dir)
		return nil, "", fmt.Errorf("socket path %q too long (set TMPDIR shorter)", path)
	}
	ns, err := listenNotify(path)
	if err != nil {
		os.Remove(dir)
		return nil, "", err
	}
	// Mode 0600 whatever the umask; the 0700 directory already keeps
	// other users out between bind and chmod.
	if err := os.Chmod(path, 0o600); err != nil {
		ns.close()
		os.Remove(dir)
		return nil, "", err
	}
	if cred != nil {
		// The directory is opened last: until then nobody but this
		// user can reach the socket.
		err := os.Lchown(path, int(cred.UID), int(cred.GID))
		if err == nil {
			err = os.Lchown(dir, -1, int(cred.GID))
		}
		if err == nil {
			err = os.Chmod(dir, 0o710)
		}
		if err != nil {
			ns.close()
			os.Remove(dir)
			return nil, "", err
		}
	}
	return ns, dir, nil
}

// warnLimiter lets at most one warning a second through and counts the
// ones it suppressed, so a process flooding the notify socket cannot flood
// the log.
type warnLimiter struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (w *warnLimiter) warn(log *slog.Logger, msg string, attrs ...any) {
	w.mu.Lock()
	now := time.Now()
	if !w.last.IsZero() && now.Sub(w.last) < time.Second {
		w.suppressed++
		w.mu.Unlock()
		return
	}
	n := w.suppressed
	w.suppressed, w.last = 0, now
	w.mu.Unlock()
	if n > 0 {
		attrs = append(attrs, "suppressed_since_last", n)
	}
	log.Warn(msg, attrs...)
}

// serveNotify reads sd_notify messages until the socket is closed.
func (m *master) serveNotify(ns *notifySocket) {
	self := os.Getpid()
	// Workers run as the master's user, or as Config.Credential's;
	// anything else that reached the socket (root, say) is not a worker.
	uid, euid := os.Getuid(), os.Geteuid()
	if m.cred != nil {
		uid, euid = int(m.cred.UID), int(m.cred.UID)
	}
	for {
		r, err := ns.recv()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if r.FDs > 0 || errors.Is(err, scmrights.ErrTruncated) {
			// systemd-notify --ready sends a BARRIER=1 pipe; FDSTORE=1
			// brings descriptors to keep. Neither is supported; the
			// descriptors are closed, which releases a barrier at once.
			m.log.Debug("notify: descriptors closed (FDSTORE and BARRIER are not supported)", "sender", r.Cred.PID, "descriptors", r.FDs)
		}
		if err != nil {
			if m.notifyClosed.Load() {
				return
			}
			var se *os.SyscallError
			if errors.As(err, &se) && !errors.Is(err, ErrNotify) {
				// A socket error, not a bad message: log it and
				// pause rather than spin.
				m.notifyWarn.warn(m.log, "notify socket", "err", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if !errors.Is(err, scmrights.ErrTruncated) {
				m.notifyWarn.warn(m.log, "notify: bad message ignored", "sender", r.Cred.PID, "err", err)
			}
			continue
		}
		if r.Cred.UID != uid && r.Cred.UID != euid {
			m.notifyWarn.warn(m.log, "notify: message from another user ignored", "sender", r.Cred.PID, "uid", r.Cred.UID)
			continue
		}
		if r.Bad.Count > 0 {
			m.notifyWarn.warn(m.log, "notify: malformed fields ignored", "sender", r.Cred.PID, "fields", r.Bad.Count, "first", r.Bad.First)
		}
		m.onNotify(r.N, r.Cred.PID, self)
	}
}

// maxAncestry bounds the walk from a sender to its worker: a worker's
// helper is a few levels down, never dozens.
const maxAncestry = 32

func (m *master) onNotify(n Notification, sender, self int) {
	// The sender may be the worker or any descendant of it (a shell worker
	// running systemd-notify, a Python child): walk the parent chain. A
	// sender that has already exited cannot be attributed (systemd has the
	// same race with short-lived senders) and is ignored.
	pid := sender
	// STOPPING=1 wins over READY=1 in one message, as in systemd.
	ready := n.Ready && !n.Stopping
	for i := 0; i < maxAncestry && pid > 1 && pid != self; i++ {
		if ph, wid := m.nstate.phaseOf(pid); ready && ph == phaseStopping {
			// A worker that said STOPPING=1 (only workers get a
			// phase): its READY=1 is ignored, as systemd does in its
			// deactivating state, so it is neither counted ready nor
			// sent connections again. Unless the phase is an earlier
			// worker's whose pid was reused.
			if id, ok := m.liveWorker(pid); ok && id == wid {
				m.logNotify(n, sender, pid)
				return
			}
		}
		if ready {
			err := m.sup.MarkReadyPID(pid)
			if err == nil {
				if m.mode.ho != nil {
					m.mode.ho.markReady(pid)
				}
				m.logNotify(n, sender, pid)
				return
			}
			if !errors.Is(err, supervise.ErrUnknownWorker) {
				m.notifyWarn.warn(m.log, "notify: READY=1 not accepted", "worker_pid", pid, "sender", sender, "err", err)
				return
			}
		} else if _, ok := m.liveWorker(pid); ok {
			m.logNotify(n, sender, pid)
			return
		}
		ppid, ok := parentPID(pid)
		if !ok {
			break
		}
		pid = ppid
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(sender)); err != nil {
		m.notifyWarn.warn(m.log, "notify: sender exited before its message was read; ignored", "sender", sender)
		return
	}
	m.notifyWarn.warn(m.log, "notify: message from a process that is not a worker ignored", "sender", sender)
}

// liveWorker returns the ID of the live worker pid, if pid is one.
func (m *master) liveWorker(pid int) (supervise.ID, bool) {
	m.mu.Lock()
	id, ok := m.pids[pid]
	m.mu.Unlock()
	if ok {
		return id, true
	}
	// A message can overtake the Started event.
	for _, sl := range m.sup.Status().Slots {
		if sl.PID == pid {
			return sl.ID, true
		}
	}
	return supervise.ID{}, false
}

func (m *master) logNotify(n Notification, sender, worker int) {
	if n.Watchdog {
		m.heartbeat(worker)
	}
	id, ok := m.liveWorker(worker)
	slot := -1
	if ok {
		slot = id.Slot
	}
	// What is recorded names the worker: not a worker that exited
	// since, whose pid may be reused; nothing then outlives the message.
	if n.StatusSet {
		if ok {
			m.nstate.status(m.log, worker, id, n.Status, "slot", slot, "pid", worker, "sender", sender)
		} else {
			m.log.Info("worker status", "slot", slot, "pid", worker, "sender", sender, "status", n.Status)
		}
	}
	if n.Errno != 0 && ok {
		m.nstate.setErrno(worker, id, n.Errno)
	}
	phase := phaseNone
	if ok {
		phase = m.notePhase(n, worker, id)
	}
	if n.ExtendTimeout > 0 {
		// systemd's rule: the start deadline becomes now + the value if
		// that is later; nothing for a worker already ready.
		if s, err := m.supervisor(); err == nil {
			if err := s.ExtendStartPID(worker, n.ExtendTimeout); err != nil && !errors.Is(err, supervise.ErrUnknownWorker) {
				m.log.Debug("EXTEND_TIMEOUT_USEC", "slot", slot, "pid", worker, "err", err)
			}
		}
		if ok && m.nstate.firstExtend(worker, id) {
			m.log.Info("worker extended its start timeout", "slot", slot, "pid", worker, "extend", n.ExtendTimeout)
		}
	}
	if n.WatchdogTrigger {
		// systemd's "watchdog expired now": a failed heartbeat.
		m.restartWorker(worker, "WATCHDOG=trigger")
	}
	if n.Ready && phase != phaseStopping {
		m.log.Debug("worker ready", "slot", slot, "pid", worker, "sender", sender)
	}
}

// notePhase applies a worker's STOPPING=1, RELOADING=1 and READY=1 to
// its phase (notifyState.notePhase), logs each change and takes it out of
// the handoff rotation, or puts it back after a reload. What it was sent
// stays its own; if it exits without reading it, its exit rescues that as
// for any worker (handoff.gone). It returns the worker's phase.
func (m *master) notePhase(n Notification, worker int, id supervise.ID) workerPhase {
	c := m.nstate.notePhase(worker, id, n)
	if c.IgnoredReady {
		m.log.Warn("worker sent READY=1 after STOPPING=1; ignored", "slot", id.Slot, "pid", worker)
	}
	if c.From == c.To {
		return c.To
	}
	switch c.To {
	case phaseStopping:
		m.log.Info("worker stopping", "slot", id.Slot, "pid", worker)
		// As systemd after STOPPING=1: the worker has the shutdown
		// timeout to exit, then it is killed. The kill names the worker:
		// its pid may be reused by then.
		d := m.cfg.ShutdownTimeout
		if d <= 0 {
			d = supervise.DefaultStopTimeout
		}
		m.nstate.armPhase(worker, id, phaseStopping, d, func() {
			if m.nstate.stopping(worker, id) {
				m.restartProc(worker, &id, "no exit within the shutdown timeout after STOPPING=1")
			}
		})
	case phaseReloading:
		m.log.Info("worker reloading", "slot", id.Slot, "pid", worker)
		// As systemd bounds a notify reload by TimeoutStartSec: a worker
		// that never says READY=1 is taken back as it was.
		d, ok := reloadTimeout(m.cfg.StartTimeout)
		if !ok {
			break // no limit to a start, none to a reload
		}
		m.nstate.armPhase(worker, id, phaseReloading, d, func() {
			if !m.nstate.endReload(worker, id) {
				return
			}
			m.log.Warn("worker reload timed out; ready again", "slot", id.Slot, "pid", worker, "timeout", d)
			if m.mode.ho != nil {
				m.mode.ho.setAway(worker, false)
				// A STOPPING=1 handled meanwhile may have been
				// overtaken by the line above.
				if ph, wid := m.nstate.phaseOf(worker); wid == id && ph != phaseNone {
					m.mode.ho.setAway(worker, true)
				}
			}
		})
	case phaseNone:
		m.log.Info("worker reloaded", "slot", id.Slot, "pid", worker)
	}
	if m.mode.ho != nil {
		m.mode.ho.setAway(worker, c.To != phaseNone)
	}
	return c.To
}

// defaultStartTimeout is Config.StartTimeout's default, supervise's.
const defaultStartTimeout = 30 * time.Second

// reloadTimeout is how long a worker's reload may last for StartTimeout
// start (Config.StartTimeout): as long as a start; ok false for a
// negative one, no limit (as supervise takes it for a start).
func reloadTimeout(start time.Duration) (d time.Duration, ok bool) {
	switch {
	case start < 0:
		return 0, false
	case start == 0:
		return defaultStartTimeout, true
	}
	return start, true
}

// parentPID reads the parent of pid from /proc/<pid>/stat. The command name
// in parentheses may hold spaces and ')', so fields are counted from the
// last ')'.
func parentPID(pid int) (int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseStatPPID(b)
}

func parseStatPPID(b []byte) (int, bool) {
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 > len(b) {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	p, err := strconv.Atoi(f[1])
	if err != nil || p < 0 {
		return 0, false
	}
	return p, true
}

// RunShim is the exec shim selected by ShimArg. args are what follows
// ShimArg: optionally ShimParentArg+"PID" (the master's pid), then the
// resolved program path, its argv[0], and its arguments. It sets LISTEN_PID
// to this process's pid, which is also the program's after execve, and
// replaces the process with the program; it returns only on error. When
// execve fails the error is an *ExecError, also reported to the master on
// the pipe the master passed (HANDOFF_EXEC_STATUS_FD); exit with
// ShimExitCode(err).
//
// Pdeathsig is per thread: the supervisor arms it on the thread it forks,
// and the Go runtime's other threads of the shim start with none. If execve
// ran on one of those, the kernel would keep that thread's (empty) setting
// and the worker would outlive a SIGKILLed master. So the shim locks its
// thread, re-arms PR_SET_PDEATHSIG(SIGKILL) on it right before execve, and
// then checks that its parent is still the master: a master that died
// before the re-arm would never deliver the signal.
func RunShim(args []string) error {
	master := 0
	if len(args) > 0 && strings.HasPrefix(args[0], ShimParentArg) {
		p, err := strconv.Atoi(args[0][len(ShimParentArg):])
		if err != nil || p <= 0 {
			return fmt.Errorf("cluster: exec shim: bad %s%q", ShimParentArg, args[0][len(ShimParentArg):])
		}
		master, args = p, args[1:]
	}
	if len(args) < 2 {
		return errors.New("cluster: exec shim: missing program")
	}
	env := os.Environ()
	out := env[:0]
	watchdog := false
	statusFD := -1
	for _, kv := range env {
		watchdog = watchdog || strings.HasPrefix(kv, envWatchdogUSec+"=")
		if v, ok := strings.CutPrefix(kv, envExecStatusFD+"="); ok {
			if fd, err := strconv.Atoi(v); err == nil && fd > 2 {
				statusFD = fd
			}
			continue
		}
		if !strings.HasPrefix(kv, envListenPID+"=") && !strings.HasPrefix(kv, envWatchdogPID+"=") {
			out = append(out, kv)
		}
	}
	if statusFD >= 0 {
		// Only a pipe: a wrong number must not take a descriptor the
		// program needs away from it. Close-on-exec: the master reads
		// EOF once the program runs, or the errno written below if
		// execve fails.
		var st unix.Stat_t
		if unix.Fstat(statusFD, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			statusFD = -1
		} else if _, err := unix.FcntlInt(uintptr(statusFD), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			statusFD = -1
		}
	}
	out = append(out, envListenPID+"="+strconv.Itoa(os.Getpid()))
	if watchdog {
		// Like LISTEN_PID: sd_watchdog_enabled(3) ignores WATCHDOG_USEC
		// unless WATCHDOG_PID names the process itself.
		out = append(out, envWatchdogPID+"="+strconv.Itoa(os.Getpid()))
	}
	// Never unlocked: on success the process image is replaced, on error
	// the caller exits.
	runtime.LockOSThread()
	if master != 0 {
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
			return fmt.Errorf("cluster: exec shim: %w", os.NewSyscallError("prctl", err))
		}
		if ppid := unix.Getppid(); ppid != master {
			return fmt.Errorf("%w: exec shim: master %d is gone (parent is %d)", ErrMasterGone, master, ppid)
		}
	}
	err := unix.Exec(args[0], args[1:], out)
	errno, _ := err.(unix.Errno)
	e := &ExecError{Path: args[0], Err: os.NewSyscallError("execve", err), Transient: transientExec(errno)}
	if errno == unix.ENOENT {
		e.Interpreter = missingInterpreter(args[0])
	}
	if statusFD >= 0 && errno != 0 {
		unix.Write(statusFD, appendExecReport(nil, errno, e.Interpreter))
	}
	return e
}

// envExecStatusFD names the exec shim's status pipe (see RunShim); the
// shim removes it from the program's environment.
const envExecStatusFD = "HANDOFF_EXEC_STATUS_FD"

// transientExec reports whether an execve error may go away by itself:
// the file being written (ETXTBSY, during a deploy), a lack of memory or
// descriptors, an interrupted or failed read.
func transientExec(errno unix.Errno) bool {
	switch errno {
	case unix.ETXTBSY, unix.ENOMEM, unix.EAGAIN, unix.EMFILE, unix.ENFILE, unix.EINTR, unix.EIO:
		return true
	}
	return false
}

// missingInterpreter names what is missing when execve of path failed
// with ENOENT although path exists: the interpreter of its "#!" line, or
// an ELF program's dynamic loader. "" if path itself is missing or
// nothing missing can be named.
func missingInterpreter(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var b [256]byte
	n, _ := io.ReadFull(f, b[:])
	interp := ""
	if head := b[:n]; bytes.HasPrefix(head, []byte("#!")) {
		line, _, _ := bytes.Cut(head[2:], []byte{'\n'})
		if fields := strings.Fields(string(line)); len(fields) > 0 {
			interp = fields[0]
		}
	} else if ef, err := elf.NewFile(f); err == nil {
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP && p.Filesz > 1 && p.Filesz <= 4096 {
				buf := make([]byte, p.Filesz)
				if _, err := p.ReadAt(buf, 0); err == nil {
					interp = string(bytes.TrimRight(buf, "\x00"))
				}
				break
			}
		}
	}
	if interp == "" || !utf8Printable([]byte(interp)) {
		return ""
	}
	if _, err := os.Stat(interp); err == nil {
		// There: the ENOENT is about something further down (the
		// interpreter's own interpreter); say nothing rather than guess.
		return ""
	}
	return interp
}

// maxExecReport bounds a shim's exec-status report.
const maxExecReport = 512

// appendExecReport encodes the shim's exec failure: the errno in decimal,
// a newline, and the missing interpreter (may be empty).
func appendExecReport(b []byte, errno unix.Errno, interp string) []byte {
	b = strconv.AppendUint(b, uint64(errno), 10)
	b = append(b, '\n')
	if len(interp) > maxExecReport-16 {
		interp = ""
	}
	return append(b, interp...)
}

// errExecReport reports a malformed exec-status report.
var errExecReport = errors.New("cluster: malformed exec-status report")

// parseExecReport decodes appendExecReport's encoding, from the shim: a
// process of the worker's user, so nothing in it is trusted.
func parseExecReport(b []byte) (unix.Errno, string, error) {
	if len(b) > maxExecReport {
		return 0, "", fmt.Errorf("%w: %d bytes", errExecReport, len(b))
	}
	num, interp, ok := bytes.Cut(b, []byte{'\n'})
	if !ok || len(num) == 0 || len(num) > 4 {
		return 0, "", fmt.Errorf("%w: %q", errExecReport, truncate(b))
	}
	e, err := strconv.ParseUint(string(num), 10, 16)
	if err != nil || e == 0 || e >= 4096 {
		return 0, "", fmt.Errorf("%w: errno %q", errExecReport, truncate(num))
	}
	if !utf8Printable(interp) {
		return 0, "", fmt.Errorf("%w: interpreter is not printable text", errExecReport)
	}
	return unix.Errno(e), string(interp), nil
}

// execState collects the shims' exec-status reports.
type execState struct {
	wg       sync.WaitGroup // the pipes' readers
	firstGen int            // generation of the first workers
	mu       sync.Mutex
	startErr error // an exec failure of the first generation
}

func (s *execState) startError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startErr
}

// prepareExecStatus gives the shim a pipe to report an execve failure on
// (envExecStatusFD). The shim makes it close-on-exec, so the master reads
// EOF once the program runs; an exec failure is then known for what it is,
// whatever the exit code.
func (m *master) prepareExecStatus(id supervise.ID, l *supervise.Launch) error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("cluster: exec status pipe: %w", err)
	}
	// Launch.ExtraFiles follow Spec.ExtraFiles: the shared listeners,
	// except in reuseport mode (specFiles).
	fd := listenFDsStart + len(l.ExtraFiles)
	if m.cfg.Mode != ModeReuseport {
		fd += len(m.listeners)
	}
	l.ExtraFiles = append(l.ExtraFiles, w)
	l.Env = append(l.Env, envExecStatusFD+"="+strconv.Itoa(fd))
	prev := l.Done
	l.Done = func(pid int, err error) {
		if prev != nil {
			prev(pid, err)
		}
		w.Close()
		if pid == 0 {
			r.Close()
			return
		}
		m.exec.wg.Add(1)
		go func() {
			defer m.exec.wg.Done()
			defer r.Close()
			m.readExecStatus(r, id, pid)
		}()
	}
	return nil
}

// slotFailed handles a slot supervise gave up on (its start burst, or exit
// code 125). Before the cluster was first ready it is a failed start-up,
// all or nothing as for a program that cannot be executed: the master
// stops the others and Run returns the cause (mini-cluster exits 1), where
// it used to sit without that worker, never ready, until a restart signal.
// Later the slot stays failed until the next restart, as documented.
func (m *master) slotFailed(ev supervise.Event) {
	if m.isReady.Load() || ev.ID.Generation != m.exec.firstGen || m.cfg.Suspended || m.upgraded() {
		return
	}
	// Slots of one broken program fail together: the first one decides,
	// and is the one logged as the cause.
	m.exec.mu.Lock()
	first := m.exec.startErr == nil
	if first {
		m.exec.startErr = fmt.Errorf("cluster: start-up failed: slot %d: %w", ev.ID.Slot, ev.Err)
	}
	m.exec.mu.Unlock()
	if first {
		m.log.Error("worker slot failed before the cluster was ready; start-up failed, stopping", "slot", ev.ID.Slot, "generation", ev.ID.Generation, "err", ev.Err)
	}
	m.stop()
}

// readExecStatus waits for the shim of worker pid to execute the program
// (EOF) or report why it could not.
func (m *master) readExecStatus(r io.Reader, id supervise.ID, pid int) {
	b, err := io.ReadAll(io.LimitReader(r, maxExecReport+1))
	if err != nil || len(b) == 0 {
		return
	}
	errno, interp, err := parseExecReport(b)
	if err != nil {
		m.log.Warn("exec shim: report ignored", "slot", id.Slot, "pid", pid, "err", err)
		return
	}
	e := &ExecError{Path: m.program, Interpreter: interp, Err: os.NewSyscallError("execve", errno), Transient: transientExec(errno)}
	attrs := []any{"slot", id.Slot, "pid", pid, "generation", id.Generation, "errno", int(errno), "err", e.Error()}
	// A first spawn of a first-generation slot: the cluster is starting
	// (all or nothing), not running with a program that broke since.
	first := id.Generation == m.exec.firstGen && id.Incarnation == 1 && id.Slot < m.cfg.Workers && !m.cfg.Suspended && !m.upgraded()
	switch {
	case e.Transient:
		m.log.Error("worker program could not be executed; respawning with backoff", attrs...)
	case first:
		m.log.Error("worker program cannot be executed; start-up failed, stopping", attrs...)
		m.exec.mu.Lock()
		// The shim's exit 125 may have failed the slot first
		// (slotFailed): the exec error says why.
		var ee *ExecError
		if m.exec.startErr == nil || !errors.As(m.exec.startErr, &ee) {
			m.exec.startErr = e
		}
		m.exec.mu.Unlock()
		m.stop()
	default:
		m.log.Error("worker program cannot be executed; slot failed until the next restart", attrs...)
	}
}
