//go:build linux

package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// upgrade is the master's in-place upgrade state (master.up): how to
// re-execute itself, and, in a new image, what the old one handed over.
type upgrade struct {
	exe  string   // the binary the master was started from, resolved at start
	argv []string // its argv
	// busy is set from SIGUSR2 until the exec failed, and in a new image
	// until the old image's workers are retired: a SIGUSR2 meanwhile is
	// ignored (coalesced), never a second exec.
	busy atomic.Bool
	usr2 chan os.Signal // SIGUSR2, while handleSignals runs
	// relay gets the master's other signals back after a failed exec
	// (signal.Ignore took them from handleSignals' channel), while
	// handleSignals runs.
	relay chan os.Signal

	// From the old image (nil/empty in a fresh master).
	state     *upgradeState
	listeners []Activated
	old       []*oldProc
	mu        sync.Mutex
	inherited map[string]*os.File // kept descriptors not claimed yet
	outWG     sync.WaitGroup      // readers of old workers' output
}

// oldProc is an adopted worker of the old image.
type oldProc struct {
	w       oldWorker
	pidfd   *os.File // non-blocking, on the runtime poller
	outputs []oldOutput
	// reaped is set once retire has waited for the process; until then
	// its pid (and process group id) cannot be recycled.
	reaped atomic.Bool
}

// oldOutput is the read end of an old worker's stdout or stderr pipe.
type oldOutput struct {
	f      *os.File
	stream string
}

// ignoredAcrossExec are handleSignals' signals, SIGTERM aside, set
// ignored with SIGUSR2 right before the exec. execve(2) resets handled
// signals to their default action, which until the new image installs its
// handlers (HandleSignals) would end the master, and every worker with it
// (parent-death signal): SIGHUP, SIGINT, SIGUSR1, SIGUSR2 terminate,
// SIGTTIN and SIGTTOU stop. SIG_IGN survives the exec, and the Go runtime
// keeps it until signal.Notify for SIGHUP, SIGINT, SIGTTIN and SIGTTOU; it
// ignores SIGUSR1 and SIGUSR2 itself while nobody is notified. SIGTERM
// cannot be covered: the runtime installs a handler that exits.
var ignoredAcrossExec = []os.Signal{unix.SIGHUP, unix.SIGINT, unix.SIGUSR1, unix.SIGTTIN, unix.SIGTTOU}

// errUpgradeBusy is logged for a SIGUSR2 during an upgrade.
var errUpgradeBusy = errors.New("cluster: upgrade already in progress")

// inheritUpgrade is called first thing in newMaster, before anything is
// opened: it resolves the binary a later upgrade executes and, when this
// image was started by one (envUpgradeState), takes over what the old
// image handed over. A state that is garbage, for another pid, or names a
// descriptor that is not open or was not inherited (close-on-exec set: one
// of our own) is logged and ignored as a whole: the master starts clean
// and never adopts random descriptors or processes.
func (m *master) inheritUpgrade() {
	up := &upgrade{argv: append([]string(nil), os.Args...), inherited: map[string]*os.File{}}
	m.up = up
	// Resolved now: an upgrade runs what is at this path then, the
	// replaced binary, not the image running (/proc/self/exe).
	if exe, err := os.Executable(); err == nil {
		up.exe = exe
	}
	raw, ok := os.LookupEnv(envUpgradeState)
	if !ok {
		return
	}
	// Neither workers nor a later image may see it.
	os.Unsetenv(envUpgradeState)
	st, err := parseUpgradeState(raw)
	if err == nil && st.pid != os.Getpid() {
		err = fmt.Errorf("%w: state of pid %d, this is %d", ErrUpgradeState, st.pid, os.Getpid())
	}
	if err == nil {
		err = checkInheritedFDs(st)
	}
	if err == nil {
		err = checkActivated(st.listeners)
	}
	if err == nil {
		err = checkActivated(bindsActivated(st.binds))
	}
	if err == nil {
		err = checkActivated(slotsActivated(st.slots))
	}
	if err != nil {
		m.log.Error("upgrade: state from the previous image ignored; starting clean", "err", err)
		return
	}
	up.state = st
	up.listeners = st.listeners
	if st.slotCount > 0 && st.slotCount != m.cfg.Workers {
		// The old image was scaled (control socket, SIGTTIN/SIGTTOU) away
		// from the -n this image was started with again: keep the scale.
		m.log.Info("upgrade: keeping the previous image's worker count", "workers", st.slotCount, "configured", m.cfg.Workers)
		m.cfg.Workers = st.slotCount
	}
	// newMaster's cloexecInherited, right after, makes every one of them
	// close-on-exec: none reaches a worker except through ExtraFiles.
	for _, f := range st.files {
		up.inherited[f.name] = os.NewFile(uintptr(f.fd), f.name)
	}
	if st.pidLock >= 0 {
		lock := os.NewFile(uintptr(st.pidLock), "pid file lock")
		if m.cfg.PIDFile == "" {
			lock.Close()
		} else if pf, err := supervise.AdoptPIDFile(m.cfg.PIDFile, lock); err != nil {
			// New takes the lock anew (CreatePIDFile) after this.
			lock.Close()
			m.log.Warn("upgrade: pid file lock not adopted; locking it again", "err", err)
		} else {
			m.pidFile = pf
		}
	}
	self := os.Getpid()
	for _, w := range st.workers {
		p := &oldProc{w: w}
		for i, fd := range []int{w.stdout, w.stderr} {
			if fd < 0 {
				continue
			}
			var sb unix.Stat_t
			// Non-blocking, so reads park on the runtime poller and honour
			// deadlines.
			if unix.Fstat(fd, &sb) != nil || sb.Mode&unix.S_IFMT != unix.S_IFIFO || unix.SetNonblock(fd, true) != nil {
				unix.Close(fd)
				continue
			}
			p.outputs = append(p.outputs, oldOutput{f: os.NewFile(uintptr(fd), "worker output"), stream: [2]string{"stdout", "stderr"}[i]})
		}
		fd, err := unix.PidfdOpen(w.pid, 0)
		if err == nil {
			if err = unix.SetNonblock(fd, true); err != nil {
				unix.Close(fd)
			}
		}
		// With the pidfd open the pid cannot be recycled under us: if its
		// parent is this process now, it is the old image's worker.
		if err == nil {
			if ppid, ok := parentPID(w.pid); !ok || ppid != self {
				unix.Close(fd)
				err = unix.ESRCH
			}
		}
		if err != nil {
			m.log.Warn("upgrade: previous worker not adopted (gone or not our child)", "pid", w.pid, "slot", w.slot)
			for _, o := range p.outputs {
				o.f.Close()
			}
			continue
		}
		p.pidfd = os.NewFile(uintptr(fd), "pidfd")
		up.old = append(up.old, p)
	}
	if len(up.old) > 0 {
		up.busy.Store(true)
	}
	m.log.Info("upgrade: took over from the previous image", "listeners", len(st.listeners), "workers", len(up.old), "pid_file_lock", st.pidLock >= 0)
}

// stateFDs lists every descriptor st names.
func stateFDs(st *upgradeState) []int {
	var out []int
	for _, l := range st.listeners {
		out = append(out, l.FD)
	}
	if st.pidLock >= 0 {
		out = append(out, st.pidLock)
	}
	for _, f := range st.files {
		out = append(out, f.fd)
	}
	for _, f := range st.binds {
		out = append(out, f.fd)
	}
	for _, l := range st.slots {
		out = append(out, l.fd)
	}
	for _, w := range st.workers {
		for _, fd := range []int{w.stdout, w.stderr} {
			if fd >= 0 {
				out = append(out, fd)
			}
		}
	}
	return out
}

// checkInheritedFDs checks that every descriptor of st is open and came
// through the exec (no close-on-exec: the runtime opens its own with it).
func checkInheritedFDs(st *upgradeState) error {
	for _, fd := range stateFDs(st) {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			return fmt.Errorf("%w: descriptor %d is not open", ErrUpgradeState, fd)
		}
		if flags&unix.FD_CLOEXEC != 0 {
			return fmt.Errorf("%w: descriptor %d was not inherited", ErrUpgradeState, fd)
		}
	}
	return nil
}

// upgradeActivation returns the listeners to adopt: the old image's after
// an upgrade, else act (socket activation).
func (m *master) upgradeActivation(act []Activated) []Activated {
	if m.up != nil && m.up.state != nil {
		return m.up.listeners
	}
	return act
}

// upgraded reports whether this image took over from an older one.
func (m *master) upgraded() bool { return m.up != nil && m.up.state != nil }

// inheritedFile returns, once, the descriptor an older image kept across
// the upgrade under name (see upgradeNow), or nil. The caller owns it.
func (m *master) inheritedFile(name string) *os.File {
	if m.up == nil {
		return nil
	}
	m.up.mu.Lock()
	defer m.up.mu.Unlock()
	f := m.up.inherited[name]
	delete(m.up.inherited, name)
	return f
}

// inheritedPeer takes the inherited copy of a worker's end of its
// connection channel called name as a raw close-on-exec descriptor, off the
// runtime's poller; -1 if there is none or it is not a unix seqpacket
// socket (the rescue reads it with recvmsg).
func (m *master) inheritedPeer(name string) int {
	f := m.inheritedFile(name)
	if f == nil {
		return -1
	}
	defer f.Close()
	fd, err := scmrights.Dup(f)
	if err == nil {
		dom, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		typ, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err = errors.Join(err1, err2); err != nil {
			err = os.NewSyscallError("getsockopt", err)
		} else if dom != unix.AF_UNIX || typ != unix.SOCK_SEQPACKET {
			err = errors.New("not a unix seqpacket socket")
		}
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		m.log.Warn("upgrade: inherited descriptor ignored", "name", name, "err", err)
		return -1
	}
	return fd
}

// handleUpgradeSignal turns SIGUSR2 into an upgrade until the returned
// function is called.
func (m *master) handleUpgradeSignal() func() {
	ch := make(chan os.Signal, 4)
	relay := make(chan os.Signal, 8)
	m.up.mu.Lock()
	m.up.usr2 = ch
	m.up.relay = relay
	m.up.mu.Unlock()
	signal.Notify(ch, unix.SIGUSR2)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-ch:
				m.startUpgrade()
			case sig := <-relay:
				m.onSignal(sig.(unix.Signal))
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		signal.Stop(relay)
		m.up.mu.Lock()
		m.up.usr2 = nil
		m.up.relay = nil
		m.up.mu.Unlock()
		close(done)
		wg.Wait()
	}
}

// startUpgrade begins an upgrade unless one is in progress.
func (m *master) startUpgrade() {
	if !m.up.busy.CompareAndSwap(false, true) {
		m.log.Warn("upgrade signal ignored", "signal", "SIGUSR2", "err", errUpgradeBusy)
		return
	}
	m.log.Info("upgrade signal: re-executing the master in place", "signal", "SIGUSR2", "binary", m.up.exe)
	go func() {
		err := m.upgradeNow()
		m.up.busy.Store(false)
		m.log.Error("upgrade failed; this master keeps running and serving", "binary", m.up.exe, "err", err)
	}()
}

// upgradeNow re-executes the master binary in place. It returns only on
// failure, with everything as it was.
func (m *master) upgradeNow() error {
	sup, err := m.supervisor()
	if err != nil {
		return err
	}
	if m.stopRequested() || m.stopping.Load() {
		return fmt.Errorf("cluster: upgrade: %w", supervise.ErrStopping)
	}
	// The new image's state has no record of a suspension: it would start
	// every worker (group_linux.go). Suspend refuses while this runs.
	if m.suspended() {
		return fmt.Errorf("cluster: upgrade: %w (resume first)", ErrSuspended)
	}
	if !m.isReady.Load() {
		return errors.New("cluster: upgrade: the cluster is not ready yet")
	}
	if m.up.exe == "" {
		return errors.New("cluster: upgrade: the master's binary is unknown")
	}
	// Checked for a clear message; execve checks again (and the file may
	// change in between), failing before its point of no return.
	if fi, err := os.Stat(m.up.exe); err != nil {
		return fmt.Errorf("cluster: upgrade: %w", err)
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("cluster: upgrade: %s is not a regular file", m.up.exe)
	}
	if err := unix.Access(m.up.exe, unix.X_OK); err != nil {
		return fmt.Errorf("cluster: upgrade: %w", &os.PathError{Op: "access", Path: m.up.exe, Err: err})
	}

	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	m.notifySystemd("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10))
	ignored, paused := false, false
	var dups []*os.File
	defer func() {
		// Only reached when the exec failed.
		if paused {
			m.handoffResume()
		}
		for _, f := range dups {
			f.Close()
		}
		if ignored {
			m.up.mu.Lock()
			if m.up.usr2 != nil {
				signal.Notify(m.up.usr2, unix.SIGUSR2)
			}
			if m.up.relay != nil {
				signal.Notify(m.up.relay, ignoredAcrossExec...)
			}
			m.up.mu.Unlock()
		}
		if m.isReady.Load() && !m.stopping.Load() {
			m.notifySystemd("READY=1")
		}
	}()

	st := &upgradeState{pid: os.Getpid(), pidLock: -1, notify: m.notifyAddr}
	var files []*os.File
	for _, l := range m.listeners {
		files = append(files, l.file)
	}
	if m.pidFile != nil {
		lock, err := m.pidFile.LockFile()
		if err != nil {
			return fmt.Errorf("cluster: upgrade: pid file: %w", err)
		}
		files = append(files, lock)
	}
	// Duplicates: the originals stay with their owners if the exec fails.
	var controlFD = -1
	if f, err := m.controlListenerFile(); err != nil {
		return fmt.Errorf("cluster: upgrade: %w", err)
	} else if f != nil {
		dups = append(dups, f)
		files = append(files, f)
		if controlFD, err = fileFD(f); err != nil {
			return fmt.Errorf("cluster: upgrade: %w", err)
		}
	}
	// The master ends of the workers' control channels stay open, unread,
	// until each old worker is gone: EOF would tell a Go worker its master
	// died.
	keep := func(name string, pid int, c *scmrights.Conn) {
		f, err := c.UnixConn().File()
		if err != nil {
			return
		}
		fd, err := fileFD(f)
		if err != nil {
			f.Close()
			return
		}
		dups = append(dups, f)
		files = append(files, f)
		st.files = append(st.files, namedFD{name: name + "." + strconv.Itoa(pid), fd: fd})
	}
	m.ctl.mu.Lock()
	for pid, c := range m.ctl.chans {
		keep("chan", pid, c.conn)
	}
	m.ctl.mu.Unlock()
	// Likewise handoff mode's connection channels, and the master's
	// copies of the workers' ends: what a worker was sent and never read
	// still outlives it after the exec, for the new image to pass on.
	if h := m.mode.ho; h != nil {
		h.mu.Lock()
		ws := slices.Clone(h.workers)
		for _, w := range ws {
			keep("conn", w.pid, w.conn)
		}
		h.mu.Unlock()
		for _, w := range ws {
			if fd := w.dupPeer(); fd >= 0 {
				f := os.NewFile(uintptr(fd), "peer")
				dups = append(dups, f)
				files = append(files, f)
				st.files = append(st.files, namedFD{name: "peer." + strconv.Itoa(w.pid), fd: fd})
			}
		}
	}
	m.ctl.bindMu.Lock()
	for key, l := range m.ctl.binds {
		fd, err := fileFD(l.file)
		if err != nil {
			continue
		}
		files = append(files, l.file)
		st.binds = append(st.binds, namedFD{name: key, fd: fd})
	}
	m.ctl.bindMu.Unlock()
	// Reuseport mode: each slot's sockets, which its old and new workers
	// must share (closing one resets the connections queued on it).
	m.mode.mu.Lock()
	for slot, set := range m.mode.slots {
		for i, l := range set {
			fd, err := fileFD(l.file)
			if err != nil {
				continue
			}
			files = append(files, l.file)
			st.slots = append(st.slots, slotFD{fd: fd, slot: slot, index: i})
		}
	}
	m.mode.mu.Unlock()

	spec := &supervise.ExecSpec{
		Path:  m.up.exe,
		Argv:  m.up.argv,
		Files: files,
		Env: func(workers []supervise.ExecWorker) ([]string, error) {
			// On the supervisor's spawner thread, right before execve.
			if m.stopRequested() {
				return nil, fmt.Errorf("cluster: upgrade: %w", supervise.ErrStopping)
			}
			// Handoff mode: stop accepting (new connections wait in the
			// backlog, kept across the exec) and deliver every connection
			// the master holds, which the exec would reset.
			paused = true
			if err := m.handoffPause(time.Second); err != nil {
				return nil, fmt.Errorf("cluster: upgrade: %w", err)
			}
			for _, l := range m.listeners {
				fd, err := fileFD(l.file)
				if err != nil {
					return nil, err
				}
				st.listeners = append(st.listeners, Activated{FD: fd, Name: l.name})
			}
			if m.pidFile != nil {
				lock, _ := m.pidFile.LockFile()
				if lock == nil {
					return nil, errors.New("cluster: upgrade: pid file closed")
				}
				fd, err := fileFD(lock)
				if err != nil {
					return nil, err
				}
				st.pidLock = fd
			}
			st.slotCount = int(m.workers.Load())
			m.mu.Lock()
			for _, w := range workers {
				// A worker whose Started event is not processed yet is
				// still retired; its slot only labels its log.
				id, ok := m.pids[w.PID]
				if !ok {
					id = supervise.ID{Slot: 0, Generation: 1}
				}
				st.workers = append(st.workers, oldWorker{pid: w.PID, slot: id.Slot, generation: max(id.Generation, 1), stdout: w.Stdout, stderr: w.Stderr})
			}
			m.mu.Unlock()
			blob, err := st.encode()
			if err != nil {
				return nil, err
			}
			env := upgradeEnv(os.Environ(), blob)
			if controlFD >= 0 {
				env = append(env, m.controlExecEnv(controlFD))
			}
			// Until the new image installed its handlers these are
			// dropped, a SIGUSR2 like any during an upgrade.
			signal.Ignore(append([]os.Signal{unix.SIGUSR2}, ignoredAcrossExec...)...)
			ignored = true
			m.log.Info("upgrade: executing the new image", "binary", m.up.exe, "workers", len(st.workers), "listeners", len(st.listeners))
			return env, nil
		},
	}
	return sup.Exec(spec)
}

// upgradeEnv is the new image's environment: env without the old image's
// own activation variables (the listeners travel in the state, not at 3..)
// and any older state, plus the state blob.
func upgradeEnv(env []string, blob string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case envListenPID, envListenFDs, envListenFDNames, envUpgradeState, envControlListen:
			continue
		}
		out = append(out, kv)
	}
	return append(out, envUpgradeState+"="+blob)
}

// fileFD returns f's descriptor without (*os.File).Fd, which would make a
// socket blocking.
func fileFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(x uintptr) { fd = int(x) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// startRetire runs in a new image's Run: it forwards the old workers'
// output and, once this image's workers are all ready (or the master
// stops), stops the old workers: SIGTERM and SIGCONT to each process
// group, ShutdownTimeout of grace, then SIGKILL of the group, and reaps
// them. Until then old and new workers share the listeners and serve side
// by side. The returned function, called when the supervisor has stopped,
// retires them at once if that has not begun, and waits for all of it.
func (m *master) startRetire() (wait func()) {
	up := m.up
	if up == nil || up.state == nil {
		return func() {}
	}
	if st := up.state; st.notify != "" {
		removeOldNotify(st.notify)
	}
	m.adoptBinds(up.state.binds)
	m.adoptSlots(up.state.slots)
	// Handoff mode: read what old workers send on their connection
	// channels (acks, connections given back when they stop accepting)
	// until they exit.
	for _, p := range up.old {
		if f := m.inheritedFile("conn." + strconv.Itoa(p.w.pid)); f != nil {
			if err := m.handoffAdoptOld(p.w.pid, p.w.slot, f, m.inheritedPeer("peer."+strconv.Itoa(p.w.pid))); err != nil {
				m.log.Warn("upgrade: previous worker's connection channel", "pid", p.w.pid, "err", err)
			}
		}
	}
	for _, p := range up.old {
		for _, o := range p.outputs {
			up.outWG.Add(1)
			go func() { defer up.outWG.Done(); m.copyOldOutput(p, o) }()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if len(up.old) > 0 {
			select {
			case <-m.ready:
				m.log.Info("upgrade: new workers ready; stopping the previous image's workers", "workers", len(up.old))
			case <-m.stopReq.done():
			case <-ctx.Done():
			}
			var wg sync.WaitGroup
			for _, p := range up.old {
				wg.Add(1)
				go func() { defer wg.Done(); m.retire(p) }()
			}
			wg.Wait()
		}
		up.outWG.Wait()
		up.mu.Lock()
		for name, f := range up.inherited {
			f.Close()
			delete(up.inherited, name)
		}
		up.mu.Unlock()
		up.busy.Store(false)
		m.log.Info("upgrade: done", "pid", os.Getpid())
	}()
	return func() {
		cancel()
		<-done
	}
}

// firstGeneration is the generation of this image's first workers: one
// past the previous image's newest, so generation numbers never repeat
// across an upgrade.
func (m *master) firstGeneration() int {
	g := 1
	if m.up != nil {
		for _, p := range m.up.old {
			g = max(g, p.w.generation+1)
		}
	}
	return g
}

// ownsChild is the supervisor's OwnChild: a previous image's worker, or a
// child held by holdChild.
func (m *master) ownsChild(pid int) bool {
	if _, ok := heldChildren.Load(pid); ok {
		return true
	}
	return m.ownsOldWorker(pid)
}

// ownsOldWorker reports whether pid is a previous image's worker that
// retire has not reaped yet. As PID 1 the master reaps orphans (supervise's
// Subreaper); it must leave these to retire, which signals their process
// group until its own wait, so a recycled pid is never signalled.
func (m *master) ownsOldWorker(pid int) bool {
	if m.up == nil {
		return false
	}
	for _, p := range m.up.old {
		if p.w.pid == pid && !p.reaped.Load() {
			return true
		}
	}
	return false
}

// removeOldNotify removes the old image's notify socket and its private
// directory, if path still looks like one listenPrivateNotify made.
func removeOldNotify(path string) {
	dir := filepath.Dir(path)
	if filepath.Base(path) != "notify" || !strings.HasPrefix(filepath.Base(dir), "handoff-") {
		return
	}
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK || int(st.Uid) != os.Geteuid() {
		return
	}
	os.Remove(path)
	os.Remove(dir) // only if empty
}

// retire stops one old worker and reaps it. Its pid cannot be recycled
// before the reap (it is our unreaped child), so its process group id is
// signalled safely until then.
func (m *master) retire(p *oldProc) {
	grace := m.cfg.ShutdownTimeout
	if grace <= 0 {
		grace = 10 * time.Second
	}
	pid := p.w.pid
	m.signalOld(p, unix.SIGTERM)
	m.signalOld(p, unix.SIGCONT)
	if !waitPidfd(p.pidfd, grace) {
		m.log.Warn("upgrade: previous worker ignored SIGTERM; killing its process group", "pid", pid, "slot", p.w.slot)
		m.signalOld(p, unix.SIGKILL)
		waitPidfd(p.pidfd, 10*time.Second)
	}
	// The leader is a zombie: its group id is still ours. Kill what is
	// left of the group (supervise does the same for its workers).
	_ = unix.Kill(-pid, unix.SIGKILL)
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err != unix.EINTR {
			break
		}
	}
	p.reaped.Store(true)
	p.pidfd.Close()
	if m.mode.ho != nil {
		// What it was sent and never read is passed on now, not at the
		// next sweep.
		m.mode.ho.exited(pid)
	}
	attrs := []any{"pid", pid, "slot", p.w.slot, "generation", p.w.generation, "code", ws.ExitStatus()}
	if ws.Signaled() {
		attrs = append(attrs, "signal", ws.Signal().String())
	}
	m.log.Info("upgrade: previous worker exited", attrs...)
	// The supervisor never saw this worker: record its exit for status's
	// LAST EXIT, as the supervisor's own Exited events are.
	ev := supervise.Event{Kind: supervise.Exited, Time: time.Now(), ID: supervise.ID{Slot: p.w.slot, Generation: p.w.generation}, PID: pid, Code: ws.ExitStatus(), Requested: true}
	if ws.Signaled() {
		ev.Signal = ws.Signal()
	}
	m.csock.recordExit(ev)
	for _, name := range []string{"chan.", "conn.", "peer."} {
		if f := m.inheritedFile(name + strconv.Itoa(pid)); f != nil {
			f.Close()
		}
	}
	// Output still buffered is read; a grandchild holding the pipe cannot
	// keep the reader past a second.
	for _, o := range p.outputs {
		_ = o.f.SetReadDeadline(time.Now().Add(time.Second))
	}
}

// signalOld sends sig to the old worker's process group, or to the worker
// alone if it left its group.
func (m *master) signalOld(p *oldProc, sig unix.Signal) {
	if err := unix.Kill(-p.w.pid, sig); err == unix.ESRCH {
		rc, err := p.pidfd.SyscallConn()
		if err == nil {
			_ = rc.Control(func(fd uintptr) { _ = unix.PidfdSendSignal(int(fd), sig, nil, 0) })
		}
	}
}

// waitPidfd waits up to d for the process of pidfd f to exit, without
// reaping it (waitid WNOWAIT). A pidfd turns readable when its process
// exits, so the wait parks on the runtime poller.
func waitPidfd(f *os.File, d time.Duration) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return true
	}
	_ = f.SetReadDeadline(time.Now().Add(d))
	exited := false
	err = rc.Read(func(fd uintptr) bool {
		exited = pidfdExited(int(fd))
		return exited
	})
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// Not pollable: poll by hand, bounded.
		deadline := time.Now().Add(d)
		for !exited && time.Now().Before(deadline) {
			_ = rc.Control(func(fd uintptr) { exited = pidfdExited(int(fd)) })
			if !exited {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	return exited
}

// pidfdExited peeks whether the process has exited (or is not ours to wait
// for any more: ECHILD), leaving it unreaped.
func pidfdExited(fd int) bool {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		switch err {
		case nil:
			return info.Signo == int32(unix.SIGCHLD)
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		return true
	}
}

// copyOldOutput forwards an old worker's captured output like copyOutput
// does for the current ones, until EOF or the deadline retire sets. Long
// lines are split, never left unread: a worker writing to a full pipe
// would block.
func (m *master) copyOldOutput(p *oldProc, o oldOutput) {
	defer o.f.Close()
	w := m.cfg.Stdout
	if o.stream == "stderr" {
		w = m.cfg.Stderr
	}
	if w == nil {
		w = io.Discard
	}
	r := bufio.NewReaderSize(o.f, 4096)
	for {
		line, _, err := r.ReadLine()
		if len(line) > 0 || err == nil {
			if m.cfg.Stdout == nil && m.cfg.Stderr == nil {
				m.log.Info(string(line), "slot", p.w.slot, "pid", p.w.pid, "stream", o.stream)
			} else {
				fmt.Fprintf(w, "[%d %d] %s\n", p.w.slot, p.w.pid, line)
			}
		}
		if err != nil {
			return
		}
	}
}

// bindsActivated names the descriptors of binds for checkActivated and
// adopt.
func bindsActivated(binds []namedFD) []Activated {
	out := make([]Activated, len(binds))
	for i, b := range binds {
		out[i] = Activated{FD: b.fd, Name: fdNameOf(b.name)}
	}
	return out
}

// fdNameOf is the descriptor name of a listener given in -listen form.
func fdNameOf(key string) string {
	a, err := ParseAddr(key)
	if err != nil {
		return "unknown"
	}
	return fdName(a.Network, a.Address)
}

// adoptBinds puts the listeners the old image had bound for its workers
// back in the cache Listen requests are served from, before any worker of
// this image asks: binding them again would fail while the old workers
// hold them.
func (m *master) adoptBinds(binds []namedFD) {
	for i, b := range binds {
		ls, err := adopt(bindsActivated(binds[i : i+1]))
		if err != nil {
			m.log.Warn("upgrade: bound listener not adopted", "addr", b.name, "err", err)
			continue
		}
		l := ls[0]
		if err := m.handoffAdd(l); err != nil {
			m.log.Warn("upgrade: bound listener not adopted", "addr", b.name, "err", err)
			l.close()
			continue
		}
		m.ctl.bindMu.Lock()
		if m.ctl.binds == nil {
			m.ctl.binds = make(map[string]*listener)
		}
		if prev := m.ctl.binds[b.name]; prev != nil {
			prev.close()
		}
		m.ctl.binds[b.name] = l
		m.ctl.bindMu.Unlock()
	}
}

// slotsActivated names the descriptors of slot sockets for checkActivated
// and adopt.
func slotsActivated(slots []slotFD) []Activated {
	out := make([]Activated, len(slots))
	for i, l := range slots {
		out[i] = Activated{FD: l.fd, Name: "slot-" + strconv.Itoa(l.slot) + "-" + strconv.Itoa(l.index)}
	}
	return out
}

// adoptSlots gives reuseport slots the very sockets their old workers
// hold, before this image spawns its own: a slot whose set is incomplete
// or does not match the listeners is bound anew (slotSet) and its old
// sockets closed.
func (m *master) adoptSlots(slots []slotFD) {
	bySlot := map[int][]slotFD{}
	for _, l := range slots {
		bySlot[l.slot] = append(bySlot[l.slot], l)
	}
	for slot, ls := range bySlot {
		if slot >= m.cfg.Workers {
			// No worker of this image will accept on them: kept, they would
			// take their share of the group's new connections and leave
			// them unanswered (an old image that did not record its slot
			// count).
			for _, l := range ls {
				unix.Close(l.fd)
			}
			m.log.Warn("upgrade: slot sockets of a slot this image does not run closed", "slot", slot, "workers", m.cfg.Workers)
			continue
		}
		ok := m.cfg.Mode == ModeReuseport && len(ls) == len(m.listeners)
		set := make([]*listener, len(m.listeners))
		for _, l := range ls {
			adopted, err := adopt(slotsActivated([]slotFD{l}))
			if err != nil {
				ok = false
				continue
			}
			if l.index >= len(set) || set[l.index] != nil {
				adopted[0].close()
				ok = false
				continue
			}
			adopted[0].name = m.listeners[l.index].name
			set[l.index] = adopted[0]
		}
		if !ok {
			for _, l := range set {
				if l != nil {
					l.close()
				}
			}
			m.log.Warn("upgrade: slot sockets not adopted; the slot binds new ones", "slot", slot)
			continue
		}
		m.mode.mu.Lock()
		if m.mode.slots == nil {
			m.mode.slots = map[int][]*listener{}
		}
		if _, taken := m.mode.slots[slot]; taken {
			closeAll(set)
		} else {
			m.mode.slots[slot] = set
		}
		m.mode.mu.Unlock()
	}
}
