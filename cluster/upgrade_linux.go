//go:build linux

package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// upgrade is the master's in-place upgrade state (master.up): how to
// re-execute itself, and, in a new image, what the old one handed over.
type upgrade struct {
	// exe is the binary the master was started from (argv[0] at start,
	// made absolute, symlinks kept: startBinary); argv is the argv to
	// execute it with.
	exe  string
	argv []string
	// busy is set from SIGUSR2 until the exec failed, and in a new image
	// until the old image's workers are retired: a SIGUSR2 meanwhile is
	// ignored (coalesced), never a second exec.
	busy atomic.Bool
	// gate is held from the last step of an exec's state to the exec's
	// outcome, and by stop while it records a stop: a stop is either seen
	// by that step (the upgrade is given up) or waits for the outcome,
	// never acknowledged and then lost by the exec.
	gate sync.Mutex

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

// ignoredAcrossExec are handleSignals' signals, SIGTERM, SIGQUIT and
// SIGPIPE aside, and SIGUSR2, set ignored right before the exec
// (ignoreForExec). execve(2) resets handled signals to their default
// action, which until the new image installs its handlers (HandleSignals)
// would end the master, and every worker with it (parent-death signal):
// SIGHUP, SIGINT, SIGUSR1, SIGUSR2 terminate, SIGTTIN and SIGTTOU stop.
// SIG_IGN survives the exec, and the Go runtime keeps it until
// signal.Notify for SIGHUP, SIGINT, SIGTTIN and SIGTTOU; it ignores
// SIGUSR1 and SIGUSR2 itself while nobody is notified. SIGTERM and SIGQUIT
// cannot be covered: the runtime installs a handler that exits. Nor can
// SIGPIPE, which needs no cover: the runtime's handler drops it (the
// write fails with EPIPE), but for a write to os.Stdout or os.Stderr,
// after which the os package raises it again to die; mini-cluster writes
// its output otherwise (cmd/mini-cluster/output.go).
var ignoredAcrossExec = []unix.Signal{unix.SIGHUP, unix.SIGINT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGTTIN, unix.SIGTTOU}

// envUpgradeUnwritten carries to the new image the lines of output the
// old one had queued and could not write before its execve
// (Config.FlushOutput), for the new image to log.
const envUpgradeUnwritten = "HANDOFF_UPGRADE_UNWRITTEN"

// upgradeFlushWait bounds how long an upgrade's execve waits for queued
// output (Config.FlushOutput): a stalled reader must not hold it.
const upgradeFlushWait = 500 * time.Millisecond

// errUpgradeBusy is logged for a SIGUSR2 during an upgrade.
var errUpgradeBusy = errors.New("cluster: upgrade already in progress")

// inheritUpgrade is called first thing in newMaster, before anything is
// opened: it resolves the binary a later upgrade executes and, when this
// image was started by one (envUpgradeState), takes over what the old
// image handed over. A state that is garbage, for another pid, of a
// version this image does not parse, or names a descriptor that is not
// open or was not inherited (close-on-exec set: one of our own) is logged
// and ignored as a whole: nothing it names is adopted. Its leftovers are
// not left running either (cleanLeftovers): the master starts clean.
func (m *master) inheritUpgrade() {
	up := &upgrade{argv: append([]string(nil), os.Args...), inherited: map[string]*os.File{}}
	m.up = up
	up.exe, up.argv = startBinary(up.argv)
	if v, ok := os.LookupEnv(envUpgradeUnwritten); ok {
		os.Unsetenv(envUpgradeUnwritten)
		if n, err := strconv.ParseUint(v, 10, 64); err == nil && n > 0 {
			m.log.Warn("output dropped: the previous image could not write it before its execve (its reader did not keep up)", "lines", n)
		}
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
		m.cleanLeftovers(nil)
		return
	}
	m.cleanLeftovers(st)
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
		m.adoptPIDLock(st.pidLock)
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

// adoptPIDLock takes the inherited pid file lock file fd over, or closes
// it (New then takes the lock anew, CreatePIDFile).
func (m *master) adoptPIDLock(fd int) {
	lock := os.NewFile(uintptr(fd), "pid file lock")
	if m.cfg.PIDFile == "" {
		lock.Close()
	} else if pf, err := supervise.AdoptPIDFile(m.cfg.PIDFile, lock); err != nil {
		lock.Close()
		m.log.Warn("upgrade: pid file lock not adopted; locking it again", "err", err)
	} else {
		m.pidFile = pf
		if w := pf.Warning(); w != nil {
			// Kept: refusing it now would take the service down.
			m.log.Warn("upgrade: pid file lock kept; its path would be refused at a fresh start", "err", w)
		}
	}
}

// startBinary returns the binary a later upgrade executes, and the argv to
// execute it with: argv[0] as the process was started with, not what
// /proc/self/exe resolved it to, so a deploy that swaps a symlink
// (current -> releases/v2) is followed. It is made absolute, or looked up
// in PATH, now (the working directory and PATH may change), and used only
// if it names the running image now; otherwise (argv[0] is not a path to
// it: a wrapper set it) the running image's resolved path is used.
func startBinary(argv []string) (string, []string) {
	exe, _ := os.Executable()
	if len(argv) == 0 || argv[0] == "" {
		return exe, argv
	}
	path := argv[0]
	if !strings.Contains(path, "/") {
		p, err := exec.LookPath(path)
		if err != nil {
			return exe, argv
		}
		path = p
	}
	abs, err := filepath.Abs(path)
	if err != nil || !sameInode(abs, selfExe) {
		return exe, argv
	}
	if strings.Contains(argv[0], "/") && !filepath.IsAbs(argv[0]) {
		// A relative path would be resolved again by the new image, from
		// a working directory that may have changed.
		argv = append([]string{abs}, argv[1:]...)
	}
	return abs, argv
}

// sameInode reports whether paths a and b name the same file.
func sameInode(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Stat(a, &sa) == nil && unix.Stat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// imageStart is CLOCK_BOOTTIME, in clock ticks, when this package was
// initialised, before main: every child an earlier image of this process
// started has a start time (/proc/PID/stat) no later; MaxUint64 if the
// clock cannot be read.
var imageStart = bootTicks()

// userHZ is the unit of /proc/PID/stat times (USER_HZ, 100 on every Linux
// architecture Go supports).
const userHZ = 100

func bootTicks() uint64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return math.MaxUint64
	}
	return uint64(ts.Nano()) / uint64(time.Second/userHZ)
}

// cleanLeftovers follows an exec by an older image: whatever came through
// it and is not adopted must not outlive the decision. With st nil (the
// state was refused) every inherited descriptor from 3 up (no
// close-on-exec: this image opens its own with it) is closed, but for the
// control socket's listener HANDOFF_CONTROL_LISTEN names (a unix listening
// socket; openControl checks it is the socket at the control path) and
// the pid file's lock file (found as the file at Config.PIDFile + ".lock", same
// device and inode, never by the state), which is adopted so no other
// instance can take the pid file meanwhile; and every child process
// started before this image whose environment carries HANDOFF_WORKER_ID
// (a worker of the old image, or of an image before it) is SIGKILLed, its
// process group too, and reaped, so this image binds and serves alone.
// Old listeners left open would keep the port (EADDRINUSE) or, in
// reuseport mode, their share of new connections, and old workers would
// serve unsupervised. With a state, the descriptors it does not name go
// the same way, and so do the children it names in "p" records and the
// workers (HANDOFF_WORKER_ID) it does not name in W records.
//
// Other children, such as the helper processes of a program that embeds
// the master, are left alone: they stay this process's children, for the
// program to wait for.
func (m *master) cleanLeftovers(st *upgradeState) {
	keep := map[int]bool{}
	// Only an image that left LISTEN_PID in the environment: this package
	// strips it (the listeners travel in the state), so with a refused
	// state systemd's sockets are closed like the rest, and this image
	// binds -listen itself.
	if act, err := parseActivation(os.Getenv, os.Getpid()); err == nil {
		for _, a := range act {
			keep[a.FD] = true
		}
	}
	if v, ok := os.LookupEnv(envControlListen); ok {
		num, _, _ := strings.Cut(v, ":")
		if fd := envFD(num); fd >= 0 && unixListener(fd) {
			keep[fd] = true
		}
	}
	workers := map[int]bool{}
	recorded := map[int]bool{}
	if st != nil {
		for _, fd := range stateFDs(st) {
			keep[fd] = true
		}
		for _, w := range st.workers {
			workers[w.pid] = true
		}
		for _, pid := range st.children {
			recorded[pid] = true
		}
	} else {
		if lock := m.findPIDLock(); lock >= 0 {
			keep[lock] = true
			m.adoptPIDLock(lock)
		}
	}
	closed := closeInherited(keep)
	killed, stuck := killChildren(func(pid int) bool {
		return recorded[pid] || !workers[pid] && isWorkerProcess(pid)
	})
	if len(closed) == 0 && len(killed) == 0 {
		return
	}
	msg := "upgrade: leftovers of the previous image not in its state closed and killed"
	if st == nil {
		msg = "upgrade: the previous image's descriptors closed and its workers killed; starting clean"
	}
	attrs := []any{"closed_descriptors", closed, "killed_processes", killed}
	if len(stuck) > 0 {
		attrs = append(attrs, "not_reaped", stuck)
	}
	m.log.Error(msg, attrs...)
}

// isWorkerProcess reports whether the environment of process pid (a child
// of this process) names a worker slot (HANDOFF_WORKER_ID): a worker
// started by this process's image or an earlier one. A worker that
// replaced its whole environment with execve is not recognised.
func isWorkerProcess(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	for len(b) > 0 {
		kv := b
		if i := bytes.IndexByte(b, 0); i >= 0 {
			kv, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if bytes.HasPrefix(kv, []byte(envWorkerID+"=")) {
			return true
		}
	}
	return false
}

// unixListener reports whether fd is a listening unix socket.
func unixListener(fd int) bool {
	dom, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	acc, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	return err1 == nil && err2 == nil && dom == unix.AF_UNIX && acc == 1
}

// findPIDLock returns the inherited descriptor of Config.PIDFile's lock
// file, or -1.
func (m *master) findPIDLock() int {
	if m.cfg.PIDFile == "" {
		return -1
	}
	var want unix.Stat_t
	if unix.Lstat(filepath.Clean(m.cfg.PIDFile)+".lock", &want) != nil || want.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1
	}
	for _, fd := range inheritedFDs() {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			return fd
		}
	}
	return -1
}

// inheritedFDs lists this process's descriptors from 3 up without
// close-on-exec.
func inheritedFDs() []int {
	ents, err := os.ReadDir("/proc/self/fd") // its own descriptor is close-on-exec
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < listenFDsStart {
			continue
		}
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && fl&unix.FD_CLOEXEC == 0 {
			out = append(out, fd)
		}
	}
	slices.Sort(out)
	return out
}

// closeInherited closes the inherited descriptors not in keep.
func closeInherited(keep map[int]bool) []int {
	var closed []int
	for _, fd := range inheritedFDs() {
		if !keep[fd] {
			unix.Close(fd)
			closed = append(closed, fd)
		}
	}
	return closed
}

// killChildren SIGKILLs every child process started before this image
// (imageStart) for which kill reports true, with its process group if it
// leads one (a worker's children), and reaps them and waits for those
// groups to be gone, up to 5 s in all. They are this process's unreaped
// children, so neither pid nor group id can be reused meanwhile. stuck
// lists those not reaped in time.
func killChildren(kill func(pid int) bool) (killed, stuck []int) {
	self := os.Getpid()
	var groups []int
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, nil
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		ppid, pgid, start, ok := parseStatChild(b)
		if !ok || ppid != self || start > imageStart || !kill(pid) {
			continue
		}
		if pgid == pid {
			_ = unix.Kill(-pid, unix.SIGKILL)
			groups = append(groups, pid)
		}
		_ = unix.Kill(pid, unix.SIGKILL)
		killed = append(killed, pid)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range killed {
		for {
			var ws unix.WaitStatus
			got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if got == pid || err != nil {
				break
			}
			if time.Now().After(deadline) {
				stuck = append(stuck, pid)
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// The rest of each group (a worker's children) is not ours to reap,
	// but it holds what the worker shared with it, the old listeners
	// among them, until it has exited: binding before would fail with
	// EADDRINUSE. Its id stays taken while any member is left (zombies,
	// which hold nothing, included).
	for _, pgid := range groups {
		for groupLives(pgid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return killed, stuck
}

// groupLives reports whether process group pgid has a member that has not
// exited yet (a zombie has closed its descriptors).
func groupLives(pgid int) bool {
	if unix.Kill(-pgid, 0) != nil {
		return false
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		// After the name: state ppid pgrp ...
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

// parseStatChild reads the parent, process group and start time (clock
// ticks since boot) from /proc/PID/stat; fields are counted from the last
// ')', as the command name may hold anything. A negative pid, which the
// kernel never writes, makes the line unreadable.
func parseStatChild(b []byte) (ppid, pgid int, start uint64, ok bool) {
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	// After the name: state ppid pgrp session tty tpgid flags minflt
	// cminflt majflt cmajflt utime stime cutime cstime priority nice
	// num_threads itrealvalue starttime (field 22 of the whole line).
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	ppid, err1 = strconv.Atoi(f[1])
	pgid, err2 = strconv.Atoi(f[2])
	start, err3 = strconv.ParseUint(f[19], 10, 64)
	return ppid, pgid, start, err1 == nil && err2 == nil && err3 == nil && ppid >= 0 && pgid >= 0
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
			}
		}
	}()
	return func() {
		signal.Stop(ch)
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
	exe := m.up.exe
	if exe == "" {
		return errors.New("cluster: upgrade: the master's binary is unknown")
	}
	// Checked for a clear message; execve checks again (and the file may
	// change in between), failing before its point of no return.
	if fi, err := os.Stat(exe); err != nil {
		return fmt.Errorf("cluster: upgrade: %w", err)
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("cluster: upgrade: %s is not a regular file", exe)
	}
	if err := unix.Access(exe, unix.X_OK); err != nil {
		return fmt.Errorf("cluster: upgrade: %w", &os.PathError{Op: "access", Path: exe, Err: err})
	}
	if err := m.shimExecutableAs(exe); err != nil {
		return err
	}
	if sameInode(exe, selfExe) {
		m.log.Warn("upgrade: the binary is the running image itself (not replaced?); re-executing it anyway", "binary", exe)
	}
	// The new binary must start and take the state over: past the
	// execve, one that cannot would take every worker down with it.
	if err := m.probeUpgrade(exe); err != nil {
		return err
	}

	// Held until the exec's outcome: a scale, restart, suspend or resume
	// requested from now on waits for it instead of being acknowledged
	// and then lost by the exec; one accepted before is carried across
	// (the slot count in force). Taken here, not on the spawner thread:
	// its holder may wait for a spawn.
	m.grp.mu.Lock()
	if m.grp.suspended {
		m.grp.mu.Unlock()
		return fmt.Errorf("cluster: upgrade: %w (resume first)", ErrSuspended)
	}

	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	m.notifySystemd("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10))
	var unignore func()
	paused, bound, gated := false, false, false
	var dups []*os.File
	defer func() {
		// Only reached when the exec failed.
		m.grp.mu.Unlock()
		if gated {
			m.up.gate.Unlock()
		}
		if bound {
			m.ctl.bindMu.Unlock()
		}
		if paused {
			m.handoffResume()
		}
		for _, f := range dups {
			f.Close()
		}
		if unignore != nil {
			unignore()
		}
		if m.isReady.Load() && !m.stopping.Load() {
			m.notifySystemd("READY=1")
		}
	}()
	spec := &supervise.ExecSpec{
		Path: exe,
		Argv: m.up.argv,
		Prepare: func(workers []supervise.ExecWorker) ([]string, []*os.File, error) {
			// On the supervisor's spawner thread, right before execve: no
			// worker is spawned meanwhile, and every one spawned so far
			// has its channels registered, so the state names exactly the
			// workers handed over, with their channels and the listeners
			// bound for them.
			if m.stopRequested() {
				return nil, nil, fmt.Errorf("cluster: upgrade: %w", supervise.ErrStopping)
			}
			// Handoff mode: stop accepting (new connections wait in the
			// backlog, kept across the exec) and deliver every connection
			// the master holds, which the exec would reset.
			paused = true
			if m.mode.ho != nil {
				m.log.Info("upgrade: accepting paused; handing the connections the master holds to workers")
			}
			if err := m.handoffPause(time.Second); err != nil {
				return nil, nil, fmt.Errorf("cluster: upgrade: %w", err)
			}
			m.ctl.bindMu.Lock()
			bound = true
			st, files, controlFD, err := m.upgradeState(workers, &dups)
			if err != nil {
				return nil, nil, err
			}
			if m.stopRequested() || m.stopping.Load() {
				return nil, nil, fmt.Errorf("cluster: upgrade: %w", supervise.ErrStopping)
			}
			// The count is the one in force: a scale waits for the
			// exec's outcome (grp.mu).
			st.slotCount = int(m.workers.Load())
			blob, err := st.encode()
			if err != nil {
				return nil, nil, err
			}
			// The last records, and the outputs flushed, before the
			// gate: a log write can wait for a stalled reader
			// (Config.Logger), and a stop must not wait behind it
			// for the gate, to be lost by the exec.
			if st.handoffDropped > 0 {
				m.log.Warn("upgrade: handoff dispatch state of some old workers left out; the new image retires those at once", "workers", st.handoffDropped, "err", st.handoffWhy)
			}
			m.log.Info("upgrade: executing the new image", "binary", exe, "workers", len(st.workers), "listeners", len(st.listeners), "state_bytes", len(blob))
			// The execve discards what the outputs queued: they get
			// a bounded time to write it, and the new image logs
			// what they could not (inheritUpgrade).
			var unwritten uint64
			if m.cfg.FlushOutput != nil {
				unwritten = m.cfg.FlushOutput(upgradeFlushWait)
			}
			// The last step: a stop (signal, control socket, Stop) from
			// now on waits for the exec's outcome instead of being lost
			// by it; one already accepted gives the upgrade up.
			m.up.gate.Lock()
			gated = true
			if m.stopRequested() || m.stopping.Load() {
				return nil, nil, fmt.Errorf("cluster: upgrade: %w", supervise.ErrStopping)
			}
			env := upgradeEnv(os.Environ(), blob)
			if controlFD >= 0 {
				env = append(env, m.controlExecEnv(controlFD))
			}
			if unwritten > 0 {
				env = append(env, envUpgradeUnwritten+"="+strconv.FormatUint(unwritten, 10))
			}
			// Until the new image installed its handlers these are
			// dropped, a SIGUSR2 like any during an upgrade. Not
			// signal.Ignore: it would strip them from every
			// signal.Notify in the process, those of a program
			// embedding the master included, for good if the exec
			// fails.
			if unignore, err = ignoreForExec(ignoredAcrossExec); err != nil {
				return nil, nil, fmt.Errorf("cluster: upgrade: %w", err)
			}
			return env, files, nil
		},
	}
	return sup.Exec(spec)
}

// shimExecutableAs checks, when workers run as another user
// (Config.Credential), that the exec shim the new image would start them
// with is one that user can execute: the new binary itself by default.
// The new image checks that first thing (newMaster) and exits if not,
// past the execve, taking every worker with it; the upgrade probe cannot
// tell, as it runs as the master's user. As the new image checks
// /proc/self/exe, a magic link that walks no directory, the binary is
// checked through a descriptor, not its path (a directory on the way the
// user cannot search does not matter).
func (m *master) shimExecutableAs(exe string) error {
	if m.cred == nil {
		return nil
	}
	shim := m.cfg.Shim
	if shim == selfExe {
		shim = exe
	}
	fd, err := unix.Open(shim, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("cluster: upgrade: %w", &os.PathError{Op: "open", Path: shim, Err: err})
	}
	defer unix.Close(fd)
	if err := accessAs(m.cred, "/proc/self/fd/"+strconv.Itoa(fd), unix.X_OK); err != nil {
		return fmt.Errorf("cluster: upgrade: %w: uid %d cannot execute %s, the exec shim every worker of the new image would start as (make the binary executable by that user): %w", ErrUser, m.cred.UID, shim, err)
	}
	return nil
}

// upgradeState builds the state of an exec and the files to keep across
// it, for the workers the supervisor hands over; the caller holds
// m.ctl.bindMu. Duplicates it makes are added to dups, for the caller to
// close if the exec fails (the originals stay with their owners).
// slotCount is left for the caller.
func (m *master) upgradeState(workers []supervise.ExecWorker, dups *[]*os.File) (st *upgradeState, files []*os.File, controlFD int, err error) {
	st = &upgradeState{pid: os.Getpid(), pidLock: -1, notify: m.notifyAddr}
	controlFD = -1
	handed := make(map[int]bool, len(workers))
	for _, w := range workers {
		handed[w.PID] = true
	}
	add := func(f *os.File) (int, error) {
		fd, err := fileFD(f)
		if err != nil {
			return -1, fmt.Errorf("cluster: upgrade: %w", err)
		}
		files = append(files, f)
		return fd, nil
	}
	// The socket files this image owns go with their listeners: their
	// locks die at the exec (close-on-exec), and the new image takes them
	// again (sockfile.Adopt), with the removal at exit.
	sockFile := func(l *listener, fd int) {
		if l.sock != nil {
			dev, ino := l.sock.FileID()
			st.sockFiles = append(st.sockFiles, sockFileFD{fd: fd, dev: dev, ino: ino})
		}
	}
	for _, l := range m.listeners {
		fd, err := add(l.file)
		if err != nil {
			return nil, nil, -1, err
		}
		st.listeners = append(st.listeners, Activated{FD: fd, Name: l.name})
		sockFile(l, fd)
	}
	if m.pidFile != nil {
		lock, err := m.pidFile.LockFile()
		if err != nil {
			return nil, nil, -1, fmt.Errorf("cluster: upgrade: pid file: %w", err)
		}
		if st.pidLock, err = add(lock); err != nil {
			return nil, nil, -1, err
		}
	}
	if f, err := m.controlListenerFile(); err != nil {
		return nil, nil, -1, fmt.Errorf("cluster: upgrade: %w", err)
	} else if f != nil {
		*dups = append(*dups, f)
		if controlFD, err = add(f); err != nil {
			return nil, nil, -1, err
		}
	}
	// The master ends of the workers' control channels stay open, unread,
	// until each old worker is gone: EOF would tell a Go worker its master
	// died. Only the handed-over workers': the others have exited.
	keep := func(name string, pid int, c *scmrights.Conn) {
		if !handed[pid] {
			return
		}
		f, err := c.UnixConn().File()
		if err != nil {
			return
		}
		*dups = append(*dups, f)
		if fd, err := add(f); err == nil {
			st.files = append(st.files, namedFD{name: name + "." + strconv.Itoa(pid), fd: fd})
		}
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
			if !handed[w.pid] {
				continue
			}
			if fd := w.dupPeer(); fd >= 0 {
				f := os.NewFile(uintptr(fd), "peer")
				*dups = append(*dups, f)
				files = append(files, f)
				st.files = append(st.files, namedFD{name: "peer." + strconv.Itoa(w.pid), fd: fd})
			}
		}
		// What the new image needs to go on sending them connections
		// until its own workers are ready.
		st.handoff = m.handoffCarried(handed)
	}
	// The caller holds bindMu until the exec's outcome: a listener bound
	// for a worker from now on would be missing from the state.
	for key, l := range m.ctl.binds {
		if fd, err := add(l.file); err == nil {
			st.binds = append(st.binds, namedFD{name: key, fd: fd})
			sockFile(l, fd)
		}
	}
	// Reuseport mode: each slot's sockets, which its old and new workers
	// must share (closing one resets the connections queued on it).
	m.mode.mu.Lock()
	for slot, set := range m.mode.slots {
		for i, l := range set {
			if fd, err := add(l.file); err == nil {
				st.slots = append(st.slots, slotFD{fd: fd, slot: slot, index: i})
			}
		}
	}
	m.mode.mu.Unlock()
	m.mu.Lock()
	for _, w := range workers {
		// A worker whose Started event is not processed yet is still
		// retired; its slot only labels its log.
		id, ok := m.pids[w.PID]
		if !ok {
			id = supervise.ID{Slot: 0, Generation: 1}
		}
		st.workers = append(st.workers, oldWorker{pid: w.PID, slot: id.Slot, generation: max(id.Generation, 1), stdout: w.Stdout, stderr: w.Stderr})
	}
	// Workers this image started that the supervisor no longer hands over
	// (their exit is on its way) but that are still children: the new
	// image kills them. Nothing else: the children of a program embedding
	// the master are its own business.
	self := os.Getpid()
	for pid := range m.pids {
		if ppid, ok := parentPID(pid); !handed[pid] && ok && ppid == self {
			st.children = append(st.children, pid)
		}
	}
	slices.Sort(st.children)
	m.mu.Unlock()
	return st, files, controlFD, nil
}

// Bounds of the upgrade probe (probeUpgrade).
const (
	upgradeProbeTimeout = 2 * time.Second
	maxProbeOutput      = 4 << 10
)

// envUpgradeProbe is set in the upgrade probe's environment: New fails
// there, so a binary that does not handle UpgradeProbeArg starts no second
// master.
const envUpgradeProbe = "HANDOFF_UPGRADE_PROBE"

// probeUpgrade runs "exe UpgradeProbeArg -- ARGS..." as a child, ARGS
// being the arguments the new image would get, with the environment it
// would get, and checks that it names the state version this image writes
// within upgradeProbeTimeout. The arguments matter: a new binary that
// refuses the running master's flags or configuration would exit at once
// after the execve, and every worker with it. The child is killed (its
// process group) if it overstays, and always reaped; its output is read up
// to maxProbeOutput.
func (m *master) probeUpgrade(exe string) error {
	ctx, cancel := context.WithTimeout(context.Background(), upgradeProbeTimeout)
	defer cancel()
	args := []string{UpgradeProbeArg, "--"}
	if len(m.up.argv) > 1 {
		args = append(args, m.up.argv[1:]...)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	if len(m.up.argv) > 0 {
		cmd.Args[0] = m.up.argv[0]
	}
	cmd.Env = append(stripUpgradeEnv(os.Environ()), envUpgradeProbe+"=1")
	var stdout, stderr cappedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Its own process group, killed whole on timeout; a grandchild that
	// keeps the output pipes open cannot hold Wait beyond WaitDelay.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = time.Second
	fail := func(format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		if tail := stderr.tail(); tail != "" {
			msg += "; its stderr: " + strconv.Quote(tail)
		}
		return fmt.Errorf("%w: %s %s -- ...: %s", ErrUpgradeProbe, exe, UpgradeProbeArg, msg)
	}
	if err := cmd.Start(); err != nil {
		return fail("%v", err)
	}
	// As PID 1, a supervisor's orphan reaper must leave it to Wait.
	holdChild(cmd.Process.Pid)
	err := cmd.Wait()
	releaseChild(cmd.Process.Pid)
	switch {
	case ctx.Err() != nil:
		return fail("no answer within %v (does the binary handle cluster.UpgradeProbeArg?)", upgradeProbeTimeout)
	case err != nil:
		return fail("%v", err)
	}
	var got []string
	for _, ln := range strings.Split(stdout.String(), "\n") {
		if ln = strings.TrimSpace(ln); strings.HasPrefix(ln, upgradePrefix) {
			if ln == upgradeMagic {
				return nil
			}
			got = append(got, strings.TrimPrefix(ln, upgradePrefix))
		}
	}
	if len(got) == 0 {
		return fail("it names no upgrade state version (does the binary handle cluster.UpgradeProbeArg?)")
	}
	return fail("it parses state versions %s, not %s, which this master writes", strings.Join(got, ", "), upgradeVersion)
}

// cappedBuffer keeps the first maxProbeOutput bytes written to it and
// discards the rest, never failing a write (a child writing to a closed
// pipe would get SIGPIPE).
type cappedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := maxProbeOutput - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(len(p), room)]...)
	}
	return len(p), nil
}

func (b *cappedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// tail is the last line or so of the output, for a log line.
func (b *cappedBuffer) tail() string {
	s := strings.TrimSpace(b.String())
	if len(s) > 256 {
		s = "..." + s[len(s)-256:]
	}
	return s
}

// upgradeEnv is the new image's environment: env without the old image's
// own activation variables (the listeners travel in the state, not at 3..)
// and any older state, plus the state blob.
func upgradeEnv(env []string, blob string) []string {
	return append(stripUpgradeEnv(env), envUpgradeState+"="+blob)
}

// stripUpgradeEnv is env without the variables an exec of the master
// sets anew.
func stripUpgradeEnv(env []string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case envListenPID, envListenFDs, envListenFDNames, envUpgradeState, envControlListen, envUpgradeProbe, envUpgradeUnwritten:
			continue
		}
		out = append(out, kv)
	}
	return out
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
// by side (in handoff mode, the master goes on handing the old workers
// connections, and takes them out of its rotation first). The returned
// function, called when the supervisor has stopped,
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
			m.handoffRetireOld()
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
	// The socket is the workers' user's under Config.Credential; the
	// directory is always this user's, and nobody else can write in it.
	if unix.Lstat(dir, &st) != nil || !notifyDirMode(&st, uint32(os.Geteuid())) {
		return
	}
	if unix.Lstat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return
	}
	os.Remove(path)
	os.Remove(dir) // only if empty
}

// retire stops one old worker and reaps it. Its pid cannot be recycled
// before the reap (it is our unreaped child), so its process group id is
// signalled safely until then. A kill request (a second stop signal) ends
// the grace at once, as it does for the supervisor's workers.
func (m *master) retire(p *oldProc) {
	grace := m.cfg.ShutdownTimeout
	if grace <= 0 {
		grace = 10 * time.Second
	}
	pid := p.w.pid
	m.signalOld(p, unix.SIGTERM)
	m.signalOld(p, unix.SIGCONT)
	if !waitPidfd(p.pidfd, grace, m.killReq.done()) {
		if m.killReq.requested() {
			m.log.Warn("upgrade: kill requested; killing the previous worker's process group", "pid", pid, "slot", p.w.slot)
		} else {
			m.log.Warn("upgrade: previous worker ignored SIGTERM; killing its process group", "pid", pid, "slot", p.w.slot)
		}
		m.signalOld(p, unix.SIGKILL)
		waitPidfd(p.pidfd, 10*time.Second, nil)
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
// reaping it (waitid WNOWAIT), and reports whether it did; a receive from
// cancel (nil: never) ends the wait early. A pidfd turns readable when its
// process exits, so the wait parks on the runtime poller.
func waitPidfd(f *os.File, d time.Duration, cancel <-chan struct{}) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return true
	}
	exited := false
	select {
	case <-cancel:
		_ = rc.Control(func(fd uintptr) { exited = pidfdExited(int(fd)) })
		return exited
	default:
	}
	_ = f.SetReadDeadline(time.Now().Add(d))
	if cancel != nil {
		waited, gone := make(chan struct{}), make(chan struct{})
		defer func() { close(waited); <-gone }()
		go func() {
			defer close(gone)
			select {
			case <-cancel:
				// After the deadline above: this one wins, and wakes
				// the Read below.
				_ = f.SetReadDeadline(time.Now())
			case <-waited:
			}
		}()
	}
	err = rc.Read(func(fd uintptr) bool {
		exited = pidfdExited(int(fd))
		return exited
	})
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// Not pollable: poll by hand, bounded.
		deadline := time.Now().Add(d)
		for !exited && time.Now().Before(deadline) {
			_ = rc.Control(func(fd uintptr) { exited = pidfdExited(int(fd)) })
			if exited {
				break
			}
			select {
			case <-cancel:
				return false
			case <-time.After(10 * time.Millisecond):
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
		if a, err := ParseAddr(b.name); err == nil {
			// As the old image named it: after the port bound, not the
			// port 0 asked for.
			l.name = boundName(a.Network, l.addr)
		}
		if err := m.handoffAdd(l); err != nil {
			m.log.Warn("upgrade: bound listener not adopted", "addr", b.name, "err", err)
			l.close()
			continue
		}
		// Only for a listener kept: one given up above is closed, which
		// must not remove the file the old workers still serve.
		if a, err := ParseAddr(b.name); err == nil && a.Network == "unix" {
			m.adoptSockFile(l, b.fd, a.Address, true)
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

// adoptListenerFiles takes over the socket files of the -listen unix
// listeners the old image created, right after adopt made ls of act.
func (m *master) adoptListenerFiles(ls []*listener, act []Activated) {
	if !m.upgraded() {
		return
	}
	for i, l := range ls {
		if ua, ok := l.addr.(*net.UnixAddr); ok && i < len(act) {
			m.adoptSockFile(l, act[i].FD, ua.Name, false)
		}
	}
}

// adoptSockFile gives l, an inherited unix listener at descriptor fd, the
// lock on path's lock file and the removal of path at exit, as the old
// image held them, if the state names the socket file the old image
// created for it: the previous image's lock died with its close-on-exec
// descriptor. A socket bound for a worker (forWorker) is taken over with
// the worker's rights, as it was created (withWorkerRights). If path no
// longer names that socket file, or its lock file is not a regular file
// (which sockfile refuses to lock or follow), l keeps serving but leaves
// path alone.
func (m *master) adoptSockFile(l *listener, fd int, path string, forWorker bool) {
	dev, ino, ok := m.up.state.sockFile(fd)
	if !ok {
		// Socket-activated (or from an image that did not record it):
		// the file is not ours to remove.
		return
	}
	// Adopt's net.FileListener sets O_NONBLOCK, a flag of the open file
	// description the workers share: it is put back exactly as found.
	// Blocking as adopt left it, for workers that accept; non-blocking
	// in handoff mode, where the master itself accepts (handoffAdd set
	// it): clearing it there would leave a raw accept4 to sleep.
	fl, flErr := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	restore := func() {
		if flErr != nil {
			m.log.Warn("upgrade: unix listener's blocking mode not restored", "path", path, "err", os.NewSyscallError("fcntl", flErr))
			return
		}
		if err := unix.SetNonblock(fd, fl&unix.O_NONBLOCK != 0); err != nil {
			m.log.Warn("upgrade: unix listener's blocking mode not restored", "path", path, "err", os.NewSyscallError("fcntl", err))
		}
	}
	opts := &sockfile.Options{Network: l.addr.Network()}
	var (
		ln    *sockfile.Listener
		owner io.Closer
		err   error
	)
	if withWorkerRights(forWorker, m.cred) {
		ln, owner, err = adoptUnixAs(m.cred, fd, path, dev, ino, opts)
	} else {
		ln, err = sockfile.Adopt(fd, path, dev, ino, opts)
		owner = ln
	}
	restore()
	if err != nil {
		m.log.Warn("upgrade: unix listener kept serving, but its socket file is not taken over: left in place at exit", "path", path, "err", err)
		return
	}
	if lerr := ln.LockErr(); errors.Is(lerr, sockfile.ErrNotSocket) {
		// sockfile will not remove the path: nothing taken over.
		owner.Close()
		m.log.Warn("upgrade: unix listener kept serving, but its socket file is not taken over: left in place at exit", "path", path, "lock", path+".lock", "err", lerr)
		return
	} else if lerr != nil {
		m.log.Warn("upgrade: socket file taken over, but not its lock file", "path", path, "lock", path+".lock", "err", lerr)
	}
	stopPolling(ln.UnixListener())
	l.owner, l.sock = owner, ln
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
