//go:build linux

package cluster

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

type fleet struct {
	log      *slog.Logger
	groups   []*fleetGroup
	pidFile  *supervise.PIDFile
	ctl      *controlServer
	sdNotify string // the process's own NOTIFY_SOCKET, if any
	// source is the configuration file as read at start (nil: built in
	// Go), for SIGHUP's warning.
	source *configSource

	ready   chan struct{}
	stopReq stopLatch
	// stopping is set once the fleet begins to stop; sdMu orders it with
	// READY=1, so systemd never hears READY=1 after STOPPING=1.
	sdMu     sync.Mutex
	stopping bool

	mu     sync.Mutex
	ran    bool
	closed bool

	// scaleMu serialises scaling, so that the workers of every group
	// together stay within MaxConfigWorkers (fleetGroup.local).
	scaleMu sync.Mutex

	// Global worker ids of local slots beyond a group's configured count
	// (scale up); see workerIDs.
	idMu   sync.Mutex
	nextID int
	fresh  map[[2]int]int // (group index, slot) -> id
}

type fleetGroup struct {
	cfg     GroupConfig
	index   int
	m       *master // nil when the group has no local workers
	remotes []*remoteGroup
	// suspended is the group's state as the fleet last set it; with a
	// local master, the master's own state is authoritative.
	suspended atomic.Bool
	// maxRun is the group's maximum running time in effect, ns.
	maxRun atomic.Int64
	// setMu serialises suspend, resume and max_running_time requests for
	// the group, so that an undo never races another request.
	setMu sync.Mutex
	// local is the number of local workers the group was last scaled to
	// (the count resumed while suspended); f.scaleMu.
	local int
}

func newFleet(fc *FileConfig, opts *FleetOptions) (_ *fleet, err error) {
	if opts == nil {
		opts = &FleetOptions{}
	}
	f := &fleet{log: opts.Logger, ready: make(chan struct{}), stopReq: stopLatch{ch: make(chan struct{})}, fresh: make(map[[2]int]int)}
	if fc != nil {
		f.source = fc.source
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	// Descriptors from a socket activation could not be assigned to
	// groups, and each group's master would try to adopt all of them.
	act, err := parseActivation(os.Getenv, os.Getpid())
	if err != nil {
		return nil, err
	}
	if len(act) > 0 {
		return nil, fmt.Errorf("cluster: socket activation (%d descriptors in LISTEN_FDS) is not supported with a configuration file: let the groups bind their own \"listen\" addresses", len(act))
	}
	// A FileConfig may be built in Go: hold it to ParseConfig's rules (a
	// second group of a name could never be addressed, two reuseport
	// groups on one address would split its connections, and the ids must
	// fit the limit scaling keeps).
	if p, msg := validateFileConfig(fc); msg != "" {
		return nil, fmt.Errorf("%w: %s: %s", ErrConfig, p, msg)
	}
	// Before the control socket and the pid file; every group's master
	// checks it again.
	if _, err := workerCredential(fc.Credential); err != nil {
		return nil, err
	}
	total := 0
	for i := range fc.Groups {
		total += fc.Groups[i].Size()
	}
	control, pidPath := fc.Control, fc.PIDFile
	if opts.Control != "" {
		control = opts.Control
	}
	if opts.PIDFile != "" {
		pidPath = opts.PIDFile
	}
	defer func() {
		if err != nil {
			f.closeAll()
		}
	}()
	// As for a single master: the control socket first, so a second
	// instance fails without touching the first one's pid file or sockets.
	if control != "" {
		if f.ctl, err = createControl(control); err != nil {
			return nil, err
		}
		f.ctl.b, f.ctl.log = f, f.log
		f.log.Info("control socket", "path", control)
	}
	if pidPath != "" {
		if f.pidFile, err = supervise.CreatePIDFile(pidPath); err != nil {
			return nil, fmt.Errorf("cluster: pid file: %w", err)
		}
	}
	f.nextID = total
	base := 0
	for i := range fc.Groups {
		g := &fleetGroup{cfg: fc.Groups[i], index: i, local: fc.Groups[i].Count}
		g.maxRun.Store(int64(fc.Groups[i].MaxRunningTime))
		g.suspended.Store(g.cfg.Suspended)
		f.groups = append(f.groups, g)
		if err := f.newGroup(g, base, opts, fc.Credential); err != nil {
			return nil, fmt.Errorf("cluster: group %q: %w", g.cfg.Name, err)
		}
		base += g.cfg.Size()
	}
	if err := f.checkBoundOnce(); err != nil {
		return nil, err
	}
	// Only the fleet notifies systemd: newGroup cleared its masters' copy,
	// which would send READY=1 once per group.
	f.sdNotify = os.Getenv(envNotifySocket)
	return f, nil
}

// checkBoundOnce refuses two listen entries of this machine bound to one
// address. validateFileConfig compares the entries as written, so
// "127.0.0.1:P" and "localhost:P", or "[::1]:P" and "[0::1]:P", pass it;
// in reuseport mode (SO_REUSEPORT on both sockets) the kernel then lets
// both bind and splits the address's connections between them. The
// listeners' own addresses, as the kernel bound them, tell.
func (f *fleet) checkBoundOnce() error {
	type key struct{ network, addr string }
	seen := make(map[key]string)
	for _, g := range f.groups {
		if g.m == nil {
			continue
		}
		for i, l := range g.m.listeners {
			switch l.addr.(type) {
			case *net.TCPAddr, *net.UDPAddr:
			default:
				// A unix path is refused by sockfile while live.
				continue
			}
			k := key{l.addr.Network(), l.addr.String()}
			entry := fmt.Sprintf("group %q", g.cfg.Name)
			if i < len(g.cfg.Listen) {
				entry += fmt.Sprintf(" (listen %q)", g.cfg.Listen[i])
			}
			if prev, ok := seen[k]; ok {
				return fmt.Errorf("%w: %s binds %s://%s, as %s does: one address bound twice would split its connections between them", ErrConfig, entry, k.network, k.addr, prev)
			}
			seen[k] = entry
		}
	}
	return nil
}

// newGroup creates g's master (binding its listeners) and its remote
// hosts' sessions; the group's workers have global ids from base on.
func (f *fleet) newGroup(g *fleetGroup, base int, opts *FleetOptions, cred *supervise.Credential) error {
	gc := &g.cfg
	log := slog.New(&groupHandler{h: f.log.Handler(), name: gc.Name})
	if gc.Count > 0 {
		env := opts.Env
		if len(gc.Env) > 0 {
			if env == nil {
				env = os.Environ()
			}
			env = append(append([]string(nil), env...), gc.Env...)
		}
		cfg := &Config{
			Program: gc.Program, Args: gc.Args, Workers: gc.Count, Listen: gc.Listen,
			Ready: gc.Ready, Mode: gc.Mode, Strategy: gc.Strategy,
			ShutdownTimeout: gc.ShutdownTimeout, StartTimeout: gc.StartTimeout, Backoff: gc.Backoff,
			Heartbeat: gc.Heartbeat, Restart: gc.Restart, MaxRunningTime: gc.MaxRunningTime, Suspended: gc.Suspended,
			Shim: opts.Shim, Env: env, Logger: log, Credential: cred,
			Group: gc.Name, Params: gc.Params, // groupEnv gives "{}" for none
			WorkerID: f.workerIDs(g.index, base, gc.Count),
		}
		if len(gc.Remote) > 0 {
			// Remote hosts cannot scale, so the size is fixed; a local-only
			// group's size follows its current count (GroupSize 0).
			cfg.GroupSize = gc.Size()
		}
		// The master prefixes its output lines with the group's name.
		cfg.Stdout, cfg.Stderr = opts.Stdout, opts.Stderr
		m, err := newMaster(cfg)
		if err != nil {
			return err
		}
		// The fleet notifies systemd once for every group.
		m.sdNotify = ""
		g.m = m
	}
	next := base + gc.Count
	index := gc.Count
	for i := range gc.Remote {
		h := &gc.Remote[i]
		ids := make([]int, h.Count)
		for j := range ids {
			ids[j] = next + j
		}
		// The remote group adds the group and host attributes itself.
		r, err := newRemoteGroup(gc, h, ids, index, f.log)
		if err != nil {
			return err
		}
		g.remotes = append(g.remotes, r)
		next += h.Count
		index += h.Count
	}
	return nil
}

// workerIDs is a group master's Config.WorkerID: configured slots take the
// group's ids from base on; a slot beyond them (scale up) gets a fresh id
// past every configured one, kept for the fleet's lifetime.
func (f *fleet) workerIDs(group, base, count int) func(int) int {
	return func(slot int) int {
		if slot < count {
			return base + slot
		}
		f.idMu.Lock()
		defer f.idMu.Unlock()
		key := [2]int{group, slot}
		id, ok := f.fresh[key]
		if !ok {
			id = f.nextID
			f.nextID++
			f.fresh[key] = id
		}
		return id
	}
}

// groupHandler adds a "group" attribute to the records of a group's master
// that do not carry one already (the master adds it to its workers' output
// lines itself, and a key twice in a JSON record is ambiguous).
type groupHandler struct {
	h    slog.Handler
	name string
	has  bool // an attribute "group" was added by WithAttrs
}

func (g *groupHandler) Enabled(ctx context.Context, l slog.Level) bool { return g.h.Enabled(ctx, l) }

func (g *groupHandler) Handle(ctx context.Context, r slog.Record) error {
	if !g.has {
		found := false
		r.Attrs(func(a slog.Attr) bool {
			found = a.Key == "group"
			return !found
		})
		if !found {
			// First, where the master's own With attributes would be.
			nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
			nr.AddAttrs(slog.String("group", g.name))
			r.Attrs(func(a slog.Attr) bool { nr.AddAttrs(a); return true })
			r = nr
		}
	}
	return g.h.Handle(ctx, r)
}

func (g *groupHandler) WithAttrs(as []slog.Attr) slog.Handler {
	has := g.has
	for _, a := range as {
		has = has || a.Key == "group"
	}
	return &groupHandler{h: g.h.WithAttrs(as), name: g.name, has: has}
}

func (g *groupHandler) WithGroup(name string) slog.Handler {
	// Attributes after this nest under name: the group goes in first.
	h := g.h
	if !g.has {
		h = h.WithAttrs([]slog.Attr{slog.String("group", g.name)})
	}
	return &groupHandler{h: h.WithGroup(name), name: g.name, has: true}
}

// closeAll releases what newFleet acquired.
func (f *fleet) closeAll() {
	for _, g := range f.groups {
		if g.m != nil {
			g.m.close()
		}
	}
	if f.pidFile != nil {
		f.pidFile.Close()
	}
	if f.ctl != nil {
		f.ctl.shutdown()
	}
}

func (f *fleet) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.ran {
		return nil
	}
	f.closed = true
	f.closeAll()
	return nil
}

func (f *fleet) run(ctx context.Context) error {
	f.mu.Lock()
	if f.closed || f.ran {
		f.mu.Unlock()
		return errors.New("cluster: Run called twice or after Close")
	}
	f.ran = true
	f.mu.Unlock()
	defer func() {
		if f.pidFile != nil {
			f.pidFile.Close()
		}
	}()
	if f.ctl != nil {
		f.ctl.wg.Add(1)
		go f.ctl.serve()
		// Closed last: status stays available while the groups stop.
		defer f.ctl.shutdown()
	}
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		errs = make([]error, len(f.groups))
	)
	for i, g := range f.groups {
		if g.m != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := g.m.run(gctx); err != nil {
					errs[i] = fmt.Errorf("group %q: %w", g.cfg.Name, err)
					// A group that could not run takes the fleet down:
					// running without it would hide the failure.
					f.log.Error("group failed; stopping every group", "group", g.cfg.Name, "err", err)
					cancel()
				}
			}()
		}
		for _, r := range g.remotes {
			wg.Add(1)
			go func() { defer wg.Done(); r.run(gctx) }()
		}
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	readyDone := make(chan struct{})
	go func() { defer close(readyDone); f.awaitReady(gctx) }()
	select {
	case <-ctx.Done():
	case <-f.stopReq.done():
	case <-gctx.Done():
	case <-allDone:
	}
	f.beginStop()
	f.log.Info("stopping every group")
	cancel()
	<-allDone
	<-readyDone
	f.log.Info("stopped")
	return errors.Join(errs...)
}

// awaitReady writes the pid file and tells systemd READY=1 once every
// local group is ready.
func (f *fleet) awaitReady(ctx context.Context) {
	for _, g := range f.groups {
		if g.m == nil {
			continue
		}
		select {
		case <-g.m.readyCh():
		case <-ctx.Done():
			return
		}
	}
	f.sdMu.Lock()
	defer f.sdMu.Unlock()
	if f.stopping {
		return
	}
	if f.pidFile != nil {
		if err := f.pidFile.Write(os.Getpid()); err != nil {
			f.log.Error("pid file", "err", err)
		}
	}
	f.log.Info("every group ready", "groups", len(f.groups), "pid", os.Getpid())
	f.notifySystemd("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()))
	close(f.ready)
}

// beginStop marks the fleet stopping and tells systemd, once.
func (f *fleet) beginStop() {
	f.sdMu.Lock()
	defer f.sdMu.Unlock()
	if !f.stopping {
		f.stopping = true
		f.notifySystemd("STOPPING=1")
	}
}

func (f *fleet) notifySystemd(state string) { notifyManager(f.log, f.sdNotify, state) }

// group finds a group by name; "" is the only group of a one-group fleet.
func (f *fleet) group(name string) (*fleetGroup, error) {
	if name == "" {
		if len(f.groups) == 1 {
			return f.groups[0], nil
		}
		return nil, fmt.Errorf("%w: name a group (%d groups run)", ErrControlInvalid, len(f.groups))
	}
	for _, g := range f.groups {
		if g.cfg.Name == name {
			return g, nil
		}
	}
	return nil, fmt.Errorf("%w: no group %q", ErrControlInvalid, name)
}

// each runs fn on the named group, or on every group for "", joining the
// errors.
func (f *fleet) each(name string, fn func(*fleetGroup) error) error {
	if name != "" {
		g, err := f.group(name)
		if err != nil {
			return err
		}
		return fn(g)
	}
	var errs []error
	for _, g := range f.groups {
		if err := fn(g); err != nil {
			errs = append(errs, fmt.Errorf("group %q: %w", g.cfg.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (f *fleet) restart(name string) error { return f.restartCtx(context.Background(), name) }

// restartCtx restarts the named group, or every running one for "". The
// local groups' restarts start first (a master's returns at once); then
// every remote host of every group is asked at once and waited for in
// parallel: an agent slow to acknowledge (each wait may last the group's
// shutdown timeout + 10 s) must not hold back the other hosts or groups.
// ctx done ends those waits (the control client that asked went away);
// the agents still restart.
func (f *fleet) restartCtx(ctx context.Context, name string) error {
	var groups []*fleetGroup
	if name == "" {
		for _, g := range f.groups {
			// Every group means every running one: a suspended group has
			// nothing to restart, which is no failure.
			if !f.isSuspended(g) {
				groups = append(groups, g)
			}
		}
		if len(groups) == 0 {
			return fmt.Errorf("cluster: restart: %w (every group)", ErrSuspended)
		}
	} else {
		g, err := f.group(name)
		if err != nil {
			return err
		}
		// Checked here, not left to the parts: a group of remote hosts
		// only has no master to refuse, and a host that is down would
		// let the restart pass for done.
		if f.isSuspended(g) {
			return fmt.Errorf("cluster: restart: %w", ErrSuspended)
		}
		groups = []*fleetGroup{g}
	}
	// errs[i] holds group i's local error first, then one per host, in
	// file order whatever order the hosts answer in.
	errs := make([][]error, len(groups))
	for i, g := range groups {
		errs[i] = make([]error, 1+len(g.remotes))
		if g.m != nil {
			errs[i][0] = g.m.restart()
		}
	}
	var wg sync.WaitGroup
	for i, g := range groups {
		for k, r := range g.remotes {
			wg.Go(func() {
				err := r.restartCtx(ctx)
				if errors.Is(err, ErrRemoteDown) {
					// No session, no worker to restart there: the host's
					// next session starts new workers anyway. Failing
					// would report the local groups' restart, which went
					// ahead, as failed.
					f.log.Warn("restart: remote host not connected; its next session starts new workers", "group", g.cfg.Name, "host", r.host, "err", err)
					return
				}
				errs[i][1+k] = err
			})
		}
	}
	wg.Wait()
	if name != "" {
		return errors.Join(errs[0]...)
	}
	var all []error
	for i, g := range groups {
		if err := errors.Join(errs[i]...); err != nil {
			all = append(all, fmt.Errorf("group %q: %w", g.cfg.Name, err))
		}
	}
	return errors.Join(all...)
}

func (f *fleet) stop() error {
	f.stopReq.request()
	return nil
}

func (f *fleet) stopRequested() bool { return f.stopReq.requested() }

func (f *fleet) kill() error {
	f.stop()
	f.beginStop()
	var errs []error
	for _, g := range f.groups {
		// Remote sessions end at once, their agents killing their
		// workers.
		for _, r := range g.remotes {
			r.kill()
		}
		if g.m == nil {
			continue
		}
		if err := g.m.kill(); err != nil && !errors.Is(err, supervise.ErrNotRunning) {
			errs = append(errs, fmt.Errorf("group %q: %w", g.cfg.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (f *fleet) suspend(name string) error { return f.setSuspended(name, true) }

func (f *fleet) resume(name string) error { return f.setSuspended(name, false) }

// setSuspended suspends or resumes a group: its local workers first (a
// refusal, such as a restart in flight, stops there), then every remote
// host; a host's refusal undoes what was done, so the group is never left
// half suspended while its state says otherwise. Calls for one group are
// serialised (g.setMu).
func (f *fleet) setSuspended(name string, on bool) error {
	verb := "resume"
	if on {
		verb = "suspend"
	}
	if name == "" {
		return fmt.Errorf("%w: %s: name a group", ErrControlInvalid, verb)
	}
	g, err := f.group(name)
	if err != nil {
		return err
	}
	g.setMu.Lock()
	defer g.setMu.Unlock()
	set := func(m *master, on bool) error {
		if on {
			return m.suspend()
		}
		return m.resume()
	}
	localChanged := false
	if g.m != nil {
		was := g.m.suspended()
		if err := set(g.m, on); err != nil {
			return err
		}
		localChanged = was != on
	}
	var changed []*remoteGroup
	for _, r := range g.remotes {
		r.mu.Lock()
		was := r.suspended
		r.mu.Unlock()
		if err := r.setSuspended(on); err != nil {
			err = fmt.Errorf("%s: %w", r.host, err)
			// Best effort: an undo that fails leaves the part as it is
			// now, which the log says.
			for _, c := range changed {
				if uerr := c.setSuspended(!on); uerr != nil {
					f.log.Error(verb+": undo failed", "group", g.cfg.Name, "host", c.host, "err", uerr)
				}
			}
			if localChanged {
				if uerr := set(g.m, !on); uerr != nil {
					f.log.Error(verb+": undo failed on the local workers", "group", g.cfg.Name, "err", uerr)
				}
			}
			return err
		}
		if was != on {
			changed = append(changed, r)
		}
	}
	g.suspended.Store(on)
	return nil
}

// isSuspended reports the group's state: its master's, or for a group of
// remote hosts only, what the fleet last set.
func (f *fleet) isSuspended(g *fleetGroup) bool {
	if g.m != nil {
		return g.m.suspended()
	}
	return g.suspended.Load()
}

func (f *fleet) scale(name string, n int) error {
	g, err := f.group(name)
	if err != nil {
		return err
	}
	if len(g.remotes) > 0 || g.m == nil {
		return fmt.Errorf("%w: group %q has remote hosts; it cannot be scaled (edit the configuration)", ErrControlInvalid, g.cfg.Name)
	}
	if n < 0 || n > maxControlWorkers {
		return fmt.Errorf("%w: scale %d (want 0..%d)", ErrControlInvalid, n, maxControlWorkers)
	}
	f.scaleMu.Lock()
	defer f.scaleMu.Unlock()
	return f.scaleLocked(g, n)
}

// scaleLocked scales g's local workers to n if the process stays within
// MaxConfigWorkers: the limit a file has, kept by scaling too, so that a
// status response (one slot each) stays within what the control
// protocol decodes. Called with f.scaleMu held.
func (f *fleet) scaleLocked(g *fleetGroup, n int) error {
	others := 0
	for _, o := range f.groups {
		if o != g {
			others += o.local
		}
		for _, h := range o.cfg.Remote {
			others += h.Count
		}
	}
	if others+n > MaxConfigWorkers {
		return fmt.Errorf("%w: scale group %q to %d: the process would run %d workers (at most %d over every group)", ErrControlInvalid, g.cfg.Name, n, others+n, MaxConfigWorkers)
	}
	if err := g.m.scaleTo(n); err != nil {
		return err
	}
	g.local = n
	return nil
}

// controlDo carries out a control request for the fleet; ctx is done when
// the client that asked went away.
func (f *fleet) controlDo(ctx context.Context, req *sockMsg) error {
	switch req.Type {
	case "restart":
		return f.restartCtx(ctx, req.Group)
	case "stop":
		if req.Group != "" {
			return fmt.Errorf("%w: stop stops every group; suspend %q stops one", ErrControlInvalid, req.Group)
		}
		return f.stop()
	case "scale":
		return f.scale(req.Group, req.Workers)
	case "suspend":
		return f.suspend(req.Group)
	case "resume":
		return f.resume(req.Group)
	case "max_running_time":
		return f.setMaxRunningTime(req.Group, req.MaxRunning)
	case "send":
		g, err := f.group(req.Group)
		if err != nil {
			return err
		}
		if g.m == nil {
			return fmt.Errorf("%w: group %q has no local workers", ErrNoWorker, g.cfg.Name)
		}
		return g.m.send(req.Slot, req.Data)
	case "broadcast":
		return f.each(req.Group, func(g *fleetGroup) error {
			if g.m == nil {
				if req.Group != "" {
					// As send: a named group without local workers takes
					// no message, which must not look delivered.
					return fmt.Errorf("%w: group %q has no local workers", ErrNoWorker, g.cfg.Name)
				}
				return nil
			}
			return g.m.broadcast(req.Data)
		})
	}
	return fmt.Errorf("%w: type %q is not a request", ErrControlProtocol, req.Type)
}

// setMaxRunningTime changes a group's maximum running time (0: none), on
// its local workers and on every remote host (a host without a session
// gets it when its next session starts). A host's refusal restores the
// previous value everywhere; g.maxRun is stored only on success.
func (f *fleet) setMaxRunningTime(name string, d time.Duration) error {
	g, err := f.group(name)
	if err != nil {
		return err
	}
	if err := checkMaxRunning(d); err != nil {
		return err
	}
	g.setMu.Lock()
	defer g.setMu.Unlock()
	prev := time.Duration(g.maxRun.Load())
	if g.m != nil {
		if err := g.m.setMaxRunningTime(d); err != nil {
			return err
		}
	}
	type done struct {
		r    *remoteGroup
		prev time.Duration
	}
	var changed []done
	for _, r := range g.remotes {
		r.mu.Lock()
		was := r.maxRun
		r.mu.Unlock()
		if err := r.setMaxRunningTime(d); err != nil {
			err = fmt.Errorf("%s: %w", r.host, err)
			for _, c := range changed {
				if uerr := c.r.setMaxRunningTime(c.prev); uerr != nil {
					f.log.Error("max_running_time: undo failed", "group", g.cfg.Name, "host", c.r.host, "err", uerr)
				}
			}
			if g.m != nil {
				// Never refused: only a negative value is.
				_ = g.m.setMaxRunningTime(prev)
			}
			return err
		}
		changed = append(changed, done{r, was})
	}
	g.maxRun.Store(int64(d))
	return nil
}

// controlStatus is the status of every group; the top-level fields sum
// the local workers of all of them (see ControlStatus.Groups).
func (f *fleet) controlStatus() *ControlStatus {
	out := &ControlStatus{PID: os.Getpid(), Generation: 1, Groups: make([]ControlGroup, 0, len(f.groups))}
	for _, g := range f.groups {
		cg := ControlGroup{Name: g.cfg.Name, Suspended: g.suspended.Load(), Generation: 1, MaxRunningTime: time.Duration(g.maxRun.Load())}
		if g.m != nil {
			st := g.m.controlStatus()
			cg.Suspended = g.m.suspended()
			cg.Generation, cg.Restarting = st.Generation, st.Restarting
			cg.Workers, cg.ReadyWorkers, cg.Slots = st.Workers, st.ReadyWorkers, st.Slots
			if cg.Suspended {
				// A suspended master runs no slot: count the workers
				// resume starts, as a remote host counts its configured
				// ones even while suspended or down.
				cg.Workers = int(g.m.workers.Load())
			}
			out.Generation = max(out.Generation, st.Generation)
			out.Restarting = out.Restarting || st.Restarting
			out.Workers += cg.Workers
			out.ReadyWorkers += st.ReadyWorkers
		}
		remoteOnly := g.m == nil
		for _, r := range g.remotes {
			if remoteOnly {
				// No local workers to describe: the hosts' agents' word,
				// as one group's.
				gen, restarting := r.generation()
				cg.Generation = max(cg.Generation, gen)
				cg.Restarting = cg.Restarting || restarting
			}
			rs := r.status()
			// The agent's report is the remote host's word: a host runs
			// its configured workers, so slots beyond them (or more of
			// them) are dropped, lest one host's agent blow the response
			// past what a client reads and take every group's status down.
			rs.Slots = slices.DeleteFunc(rs.Slots, func(s ControlSlot) bool { return s.Slot >= rs.Workers })
			rs.Slots = rs.Slots[:min(len(rs.Slots), rs.Workers)]
			rs.ReadyWorkers = min(rs.ReadyWorkers, rs.Workers)
			cg.Workers += rs.Workers
			cg.ReadyWorkers += rs.ReadyWorkers
			cg.Remote = append(cg.Remote, rs)
		}
		out.Groups = append(out.Groups, cg)
	}
	out.Slots = []ControlSlot{}
	return out
}

// handleSignals installs the fleet's signal handler.
func (f *fleet) handleSignals() (func(), error) {
	// Stop signals have a goroutine of their own, as a master's do: one
	// queued behind another signal's handling (a scale waiting for
	// scaleMu) would wait with it. SIGPIPE is caught and dropped, as a
	// master does (handleSignals in master_linux.go).
	stopCh := make(chan os.Signal, 4)
	signal.Notify(stopCh, stopSignals...)
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, unix.SIGHUP, unix.SIGUSR1, unix.SIGUSR2, unix.SIGTTIN, unix.SIGTTOU)
	// A channel of its own, as a master's: the SIGPIPEs of writes to
	// readers gone must not push a SIGHUP or SIGTTIN out of ch.
	pipeCh := make(chan os.Signal, 1)
	signal.Notify(pipeCh, unix.SIGPIPE)
	done := make(chan struct{})
	// Restarts run in their own goroutine: a remote agent slow to
	// acknowledge must not delay a stop signal behind it. Requests made
	// while one runs coalesce into one more, as a master's do.
	restarts := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Add(4)
	for _, c := range []chan os.Signal{stopCh, ch, pipeCh} {
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case sig := <-c:
					f.onSignal(sig.(syscall.Signal), restarts)
				}
			}
		}()
	}
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-restarts:
				if err := f.restart(""); err != nil {
					f.log.Warn("restart signal not acted on", "err", err)
				}
			}
		}
	}()
	return func() {
		signal.Stop(stopCh)
		signal.Stop(ch)
		signal.Stop(pipeCh)
		close(done)
		wg.Wait()
	}, nil
}

// onSignal acts on sig first and logs after, as a master does (the log
// may block on a stalled reader; see master.onSignal).
func (f *fleet) onSignal(sig syscall.Signal, restarts chan<- struct{}) {
	var err error
	switch sig {
	case unix.SIGTERM, unix.SIGINT, unix.SIGQUIT:
		if f.stopRequested() {
			err = f.kill()
			f.log.Warn("second stop signal: killing workers", "signal", sig.String())
		} else {
			err = f.stop()
			f.log.Info("stop signal: stopping every group gracefully", "signal", sig.String())
		}
	case unix.SIGHUP, unix.SIGUSR1:
		select {
		case restarts <- struct{}{}:
		default: // one is queued already
		}
		f.log.Info("restart signal: restarting every group", "signal", sig.String())
		if sig == unix.SIGHUP {
			// systemctl reload sends it: an edited file would seem applied.
			f.checkConfigFile()
		}
	case unix.SIGUSR2:
		// The in-place upgrade hands one master's listeners and workers to
		// a new image; a fleet has several, and remote sessions that an
		// exec would cut.
		f.log.Error("in-place upgrade (SIGUSR2) is not available with a configuration file; restart the groups (SIGHUP) or the service instead", "signal", sig.String())
		return
	case unix.SIGTTIN, unix.SIGTTOU:
		err = f.scaleOne(sig)
	case unix.SIGPIPE:
		// A write to a pipe without a reader; the writer sees EPIPE.
		return
	}
	if err != nil {
		f.log.Warn("signal not acted on", "signal", sig.String(), "err", err)
	}
}

// checkConfigFile warns when the configuration file's contents differ
// from what was read at start: the file is read once, and a reload
// (SIGHUP) only restarts the workers. The read is bounded and never
// blocks on a FIFO (readConfigFile).
func (f *fleet) checkConfigFile() {
	src := f.source
	if src == nil {
		return
	}
	data, err := readConfigFile(src.path)
	switch {
	case err != nil:
		f.log.Warn("configuration file unreadable; it is only read at start-up", "file", src.path, "err", err)
	case sha256.Sum256(data) != src.sum:
		f.log.Warn("configuration file changed since start-up and is not re-read: restart mini-cluster to apply it (SIGHUP only restarts the workers)", "file", src.path)
	}
}

// scaleOne scales the only local-only group by one, as a single master
// does; with several groups the signal cannot say which.
func (f *fleet) scaleOne(sig syscall.Signal) error {
	var only *fleetGroup
	n := 0
	for _, g := range f.groups {
		if g.m != nil && len(g.remotes) == 0 {
			only = g
			n++
		}
	}
	if n != 1 {
		f.log.Warn("scaling signal ignored: it scales only when exactly one group runs only local workers; use mini-cluster scale -group NAME N", "signal", sig.String(), "local_only_groups", n)
		return nil
	}
	delta := 1
	if sig == unix.SIGTTOU {
		delta = -1
	}
	f.scaleMu.Lock()
	defer f.scaleMu.Unlock()
	return f.scaleLocked(only, min(max(only.local+delta, 0), maxControlWorkers))
}
