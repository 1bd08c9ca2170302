//go:build linux

package supervise

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Test seams, set only by tests before Run; each holds the exit in the
// watcher while it runs. testHookWatch runs when the watcher starts, before
// it waits for the exit, so a test may reap the worker behind its back.
// testHookExited runs once the worker has exited, before anything is done
// about it. testHookBeforePost runs after the worker was marked reaped and
// before its exit is posted; the worker is still unreaped, so a test may
// reap it itself to let its pid be recycled. testHookBeforeReap runs after
// the exit was posted and before the watcher's wait4(2); testHookAfterReap
// after it, with its error, and before the pid is disowned.
var (
	testHookWatch, testHookExited, testHookBeforePost, testHookBeforeReap func(pid int)
	testHookAfterReap                                                     func(pid int, err error)
)

// proc is the OS side of one worker.
type proc struct {
	pid   int
	seq   uint64 // spawn number, the key of this process in platform.owned
	start time.Time
	pidfd *os.File // O_NONBLOCK pidfd on the runtime poller; closed once the exit is seen

	mu     sync.Mutex
	reaped bool // guarded by mu; once true the pid may be recycled
	// stopBy is when a stop the supervisor asked for escalates to SIGKILL
	// (zero: no stop was asked); guarded by mu. If the worker exits with
	// it set, its group keeps the rest of that grace (linger).
	stopBy    time.Time
	lingering bool          // guarded by mu: exit posted, group still given its grace
	kick      chan struct{} // cap 1: ends a linger with SIGKILL at once

	// reapMu is held by the watcher while it reaps, and by Exec while it
	// reaps a worker whose exit was posted (execReaped), so exactly one of
	// them reaps; never held by the event loop, which must not wait for a
	// slow reap.
	reapMu     sync.Mutex
	execReaped bool // guarded by reapMu

	outputs []*os.File // read ends of captured stdout/stderr
}

// procs is what every supervisor of the process shares. mu is held across
// each fork+exec and each orphan reap, so that no orphan reaper, whichever
// supervisor's, reaps a worker that was just forked but not yet
// registered in its platform's owned, nor any supervisor's worker (or a
// child an OwnChild hook claims): several supervisors in one process
// (cluster's groups), all subreapers as PID 1, would otherwise reap each
// other's workers and leave their watchers signalling a recycled pid.
// subreapers counts the platforms that made the process a child
// subreaper; the last one restores prevReaper.
var procs struct {
	mu         sync.Mutex
	platforms  map[*platform]struct{}
	subreapers int
	prevReaper int32
}

// platform holds the per-Run OS resources.
type platform struct {
	s       *Supervisor
	devnull *os.File

	spawnReqs chan spawnReq

	// owned maps a worker's pid to its spawn number (guarded by
	// procs.mu): once a watcher has reaped a pid, the kernel may hand it
	// to the next worker before the watcher disowns it, and only the
	// matching entry may be deleted.
	owned map[int]uint64
	// posted holds the owned workers whose exit was posted and that are
	// not reaped yet (guarded by procs.mu): Exec reaps them rather than
	// hand them to the new image as live workers.
	posted   map[int]*proc
	spawnSeq uint64 // guarded by procs.mu
	// unsettled counts the workers forked whose Launch.Done has not
	// returned yet: their caller has not taken over the parent's ends of
	// their per-spawn sockets. Exec waits for it to be zero, so what
	// ExecSpec.Env or Prepare builds from the caller's state covers every
	// worker it is given. Added to only on the spawner thread.
	unsettled sync.WaitGroup

	nudge      chan struct{}
	reaperStop chan struct{}
	reaperDone chan struct{}
	subreaper  bool

	wg sync.WaitGroup // watchers, output readers and the group scanner

	// groups are the lingering process groups the scanner watches
	// (linger), by group id; guarded by groupsMu, as is scanning, true
	// while the scanner runs.
	groupsMu sync.Mutex
	groups   map[int]*lingerGroup
	scanning bool
	// groupsChanged wakes the scanner when a group is added or leaves,
	// so it scans a new one at once and exits as soon as none is left.
	groupsChanged chan struct{}
}

type spawnReq struct {
	path  string
	argv  []string
	attr  *syscall.ProcAttr
	reply chan spawnReply
}

type spawnReply struct {
	pid int
	seq uint64
	err error
}

// probePidfdWait tells whether waitid(2) accepts P_PIDFD (Linux 5.4) by
// passing f, which is not a pidfd: a kernel that knows P_PIDFD fails with
// EBADF, an older one with EINVAL for the unknown idtype. Exits are watched
// only through it, so without it supervision cannot work.
func probePidfdWait(f *os.File) error {
	fd, err := rawFD(f)
	if err != nil {
		return err
	}
	var info sigchldInfo
	err = unix.Waitid(unix.P_PIDFD, int(fd), info.siginfo(), unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if err == unix.EBADF {
		return nil
	}
	return fmt.Errorf("%w: waitid(P_PIDFD) (Linux 5.4 or newer): %w", ErrNotSupported, os.NewSyscallError("waitid", err))
}

func newPlatform(s *Supervisor) (*platform, error) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	if err := probePidfdWait(devnull); err != nil {
		devnull.Close()
		return nil, err
	}
	p := &platform{
		s:         s,
		devnull:   devnull,
		spawnReqs: make(chan spawnReq),
		owned:     make(map[int]uint64),
		posted:    make(map[int]*proc),
		nudge:     make(chan struct{}, 1),
	}
	if s.opt.Subreaper {
		if err := becomeSubreaper(); err != nil {
			devnull.Close()
			return nil, err
		}
		p.subreaper = true
		p.reaperStop = make(chan struct{})
		p.reaperDone = make(chan struct{})
		sigchld := make(chan os.Signal, 1)
		signal.Notify(sigchld, syscall.SIGCHLD)
		go p.reaper(sigchld)
	}
	if !s.opt.KeepIgnoredSignals {
		resetIgnoredSignals()
	}
	procs.mu.Lock()
	if procs.platforms == nil {
		procs.platforms = make(map[*platform]struct{})
	}
	procs.platforms[p] = struct{}{}
	procs.mu.Unlock()
	go p.spawner()
	return p, nil
}

// becomeSubreaper makes the process a child subreaper for one more
// platform.
func becomeSubreaper() error {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if procs.subreapers == 0 {
		if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&procs.prevReaper)), 0, 0, 0); err != nil {
			return os.NewSyscallError("prctl(PR_GET_CHILD_SUBREAPER)", err)
		}
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return os.NewSyscallError("prctl(PR_SET_CHILD_SUBREAPER)", err)
		}
	}
	procs.subreapers++
	return nil
}

// ownedAnywhere reports whether pid is a worker of any supervisor of the
// process, or a child one's OwnChild hook claims. The caller holds
// procs.mu.
func ownedAnywhere(pid int) bool {
	for q := range procs.platforms {
		if _, ok := q.owned[pid]; ok {
			return true
		}
		if q.s.opt.OwnChild != nil && q.s.opt.OwnChild(pid) {
			return true
		}
	}
	return false
}

// close releases what newPlatform acquired once every watcher has reaped
// its worker. Watchers post an exit before they reap, so the loop can end
// while the last workers are still zombies, owned (and in the way of the
// fallback reaper, reapFirstOrphans): the reaper stops only after the
// watchers, with one last pass for orphans that died meanwhile.
func (p *platform) close() {
	close(p.spawnReqs)
	p.wg.Wait()
	if p.subreaper {
		close(p.reaperStop)
		<-p.reaperDone
		p.reapOrphans()
	}
	procs.mu.Lock()
	delete(procs.platforms, p)
	if p.subreaper {
		procs.subreapers--
		if procs.subreapers == 0 {
			_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, uintptr(procs.prevReaper), 0, 0, 0)
		}
	}
	procs.mu.Unlock()
	p.devnull.Close()
}

// spawner forks every worker from one goroutine locked to its OS thread for
// the supervisor's lifetime. Pdeathsig fires when the forking *thread* exits
// (prctl(2)), so forking from an arbitrary goroutine's thread would kill
// workers whenever the runtime retires that thread (TESTPLAN C8, C9). The
// goroutine never unlocks: the thread dies with it after the last worker
// was reaped.
func (p *platform) spawner() {
	runtime.LockOSThread()
	// Exec must run on this thread too (see Supervisor.Exec).
	execs, unregister := p.s.execRequests()
	defer unregister()
	for {
		var r spawnReq
		var ok bool
		select {
		case r, ok = <-p.spawnReqs:
		case e := <-execs:
			e.reply <- p.exec(e)
			continue
		}
		if !ok {
			return
		}
		procs.mu.Lock()
		pid, err := syscall.ForkExec(r.path, r.argv, r.attr)
		p.spawnSeq++
		seq := p.spawnSeq
		if err == nil {
			p.owned[pid] = seq
			p.unsettled.Add(1)
		}
		procs.mu.Unlock()
		r.reply <- spawnReply{pid: pid, seq: seq, err: err}
	}
}

// disown forgets the reaped worker pid of spawn seq, unless the pid already
// belongs to a newer worker.
func (p *platform) disown(pid int, seq uint64) {
	procs.mu.Lock()
	if p.owned[pid] == seq {
		delete(p.owned, pid)
	}
	if pr := p.posted[pid]; pr != nil && pr.seq == seq {
		delete(p.posted, pid)
	}
	procs.mu.Unlock()
	select {
	case p.nudge <- struct{}{}:
	default:
	}
}

// rawFD returns f's descriptor without (*os.File).Fd, which would switch a
// socket to blocking mode for every holder of its file description.
func rawFD(f *os.File) (uintptr, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fd uintptr
	if err := rc.Control(func(x uintptr) { fd = x }); err != nil {
		return 0, err
	}
	return fd, nil
}

// outputPipe returns a pipe for a worker's captured stdout or stderr. Only
// our read end is O_NONBLOCK (on the runtime poller): O_NONBLOCK belongs
// to the open file description, which the worker shares, and os.Pipe sets
// it on both ends. A worker that is no Go program (C stdio, a shell, dd,
// Python) does not expect EAGAIN on its stdout and loses output, or fails,
// once the pipe is full.
func outputPipe() (r, w *os.File, err error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, os.NewSyscallError("pipe2", err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, os.NewSyscallError("fcntl", err)
	}
	// NewFile puts a descriptor that is already non-blocking on the
	// poller; the blocking write end stays off it (it is only passed on).
	return os.NewFile(uintptr(fds[0]), "|0"), os.NewFile(uintptr(fds[1]), "|1"), nil
}

// start forks and execs one worker.
func (p *platform) start(id ID, launch *Launch) (*proc, error) {
	s := p.s
	env := s.spec.Env
	if env == nil {
		env = os.Environ()
	}
	env = dedupEnv(append(append([]string(nil), env...), launch.Env...))

	var files []*os.File
	var readEnds, writeEnds []*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	if s.opt.CaptureOutput {
		for range 2 {
			r, w, err := outputPipe()
			if err != nil {
				closeAll(readEnds)
				closeAll(writeEnds)
				return nil, err
			}
			readEnds = append(readEnds, r)
			writeEnds = append(writeEnds, w)
		}
		files = []*os.File{p.devnull, writeEnds[0], writeEnds[1]}
	} else {
		files = []*os.File{p.devnull, os.Stdout, os.Stderr}
	}
	files = append(files, s.spec.ExtraFiles...)
	files = append(files, launch.ExtraFiles...)
	// The write ends belong to the worker only.
	defer closeAll(writeEnds)

	fds := make([]uintptr, len(files))
	for i, f := range files {
		if f == nil {
			closeAll(readEnds)
			return nil, fmt.Errorf("%w: nil file for descriptor %d", ErrInvalid, i)
		}
		fd, err := rawFD(f)
		if err != nil {
			closeAll(readEnds)
			return nil, fmt.Errorf("descriptor %d: %w", i, err)
		}
		fds[i] = fd
	}
	pidfd := -1
	sys := &syscall.SysProcAttr{
		// Own process group: a terminal's Ctrl-C reaches only the
		// supervisor, and stop signals reach the worker's children (C15).
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
		PidFD:     &pidfd,
	}
	if c := s.spec.Credential; c != nil {
		sys.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: c.Groups}
	}
	argv := append([]string{s.spec.Path}, s.spec.Args...)
	r := spawnReq{
		path:  s.spec.Path,
		argv:  argv,
		attr:  &syscall.ProcAttr{Dir: s.spec.Dir, Env: env, Files: fds, Sys: sys},
		reply: make(chan spawnReply, 1),
	}
	p.spawnReqs <- r
	rep := <-r.reply
	runtime.KeepAlive(files)
	if rep.err != nil {
		closeAll(readEnds)
		return nil, &os.PathError{Op: "fork/exec", Path: s.spec.Path, Err: rep.err}
	}
	// The caller calls Done after start, whatever start returns; the
	// worker is settled (see unsettled) once it has.
	done := launch.Done
	launch.Done = func(pid int, err error) {
		defer p.unsettled.Done()
		if done != nil {
			done(pid, err)
		}
	}
	pr := &proc{pid: rep.pid, seq: rep.seq, start: time.Now(), outputs: readEnds, kick: make(chan struct{}, 1)}
	if err := pr.openPidfd(pidfd); err != nil {
		// Without a pidfd the worker cannot be watched safely; the pid is
		// still unreaped and ours, so killing and reaping it by pid is safe.
		_ = unix.Kill(-pr.pid, unix.SIGKILL)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pr.pid, &ws, 0, nil)
		p.disown(pr.pid, rep.seq)
		closeAll(readEnds)
		return nil, err
	}
	for i, r := range readEnds {
		p.wg.Add(1)
		go p.readLines(r, id, pr.pid, Stream(i+1))
	}
	return pr, nil
}

func (pr *proc) openPidfd(fd int) error {
	if fd < 0 {
		// Kernels before 5.2 lack CLONE_PIDFD. The child is unreaped,
		// so its pid cannot have been recycled yet.
		var err error
		fd, err = unix.PidfdOpen(pr.pid, 0)
		if err != nil {
			return os.NewSyscallError("pidfd_open", err)
		}
	}
	// Non-blocking so the runtime poller can wait for the exit (a pidfd
	// turns readable when the process exits) without parking a thread.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("fcntl", err)
	}
	pr.pidfd = os.NewFile(uintptr(fd), "pidfd")
	return nil
}

// sigchldInfo mirrors siginfo_t for SIGCHLD up to si_status: the union
// begins at the first pointer-aligned offset after three int32s. Of those,
// si_signo comes first everywhere, but MIPS swaps si_code and si_errno, so
// si_code is read through x/sys's per-architecture Siginfo (code).
type sigchldInfo struct {
	Signo  int32
	_      [2]int32 // si_errno and si_code, in the architecture's order
	_      [unsafe.Sizeof(uintptr(0))/4 - 1]int32
	Pid    int32
	UID    uint32
	Status int32
	_      [128 - 4*3 - 4*3 - (unsafe.Sizeof(uintptr(0))/4-1)*4]byte
}

// code is si_code.
func (i *sigchldInfo) code() int32 { return i.siginfo().Code }

// si_code values of SIGCHLD for a terminated child
// (include/uapi/asm-generic/siginfo.h); x/sys/unix does not define them.
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

func (i *sigchldInfo) siginfo() *unix.Siginfo { return (*unix.Siginfo)(unsafe.Pointer(i)) }

// exitedFD reports whether the process of pidfd fd has exited, without
// reaping it (waitid(2) WNOWAIT), and if so fills info. newPlatform made
// sure the kernel knows P_PIDFD, so an error other than EAGAIN/EINTR means
// there is nothing left to wait for (ECHILD).
func exitedFD(fd int, info *sigchldInfo) bool {
	for {
		*info = sigchldInfo{}
		err := unix.Waitid(unix.P_PIDFD, fd, info.siginfo(), unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		switch err {
		case nil:
			return info.Signo == int32(unix.SIGCHLD)
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		return true // ECHILD and the like: nothing left to wait for
	}
}

// waitable reports whether the worker is still a child of ours to wait
// for, running or a zombie (waitid(2) WNOWAIT on its pidfd), and so still
// holds its pid; false once it was reaped (ECHILD).
func (pr *proc) waitable() bool {
	rc, err := pr.pidfd.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	cerr := rc.Control(func(fd uintptr) {
		var info sigchldInfo
		for {
			err := unix.Waitid(unix.P_PIDFD, int(fd), info.siginfo(), unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
			if err == unix.EINTR {
				continue
			}
			ok = err == nil || err == unix.EAGAIN
			return
		}
	})
	return cerr == nil && ok
}

func (pr *proc) alive() bool {
	rc, err := pr.pidfd.SyscallConn()
	if err != nil {
		return false
	}
	exited := true
	var info sigchldInfo
	if err := rc.Control(func(fd uintptr) { exited = exitedFD(int(fd), &info) }); err != nil {
		return false
	}
	return !exited
}

// signalGroup sends sig to the worker's process group. The group id is the
// worker's pid, which the kernel cannot recycle while the worker is
// unreaped; the watcher sets reaped under mu before reaping, so a signal is
// never sent to a recycled id (TESTPLAN C7). The pidfd is asked too: if
// something else in this process reaped the worker before its watcher saw
// the exit, the id may already be another group's.
func (pr *proc) signalGroup(sig syscall.Signal) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.reaped || !pr.waitable() {
		return
	}
	err := unix.Kill(-pr.pid, sig)
	// A worker that left its group (setpgid/setsid) is signalled alone too,
	// through its pidfd: otherwise, while members of its first group
	// remain, the group signal succeeds without reaching it, and nothing
	// ever stops it. A leader still in its group is not signalled twice (a
	// second SIGTERM often means "hurry" to a server).
	if pg, gerr := unix.Getpgid(pr.pid); err == unix.ESRCH || (gerr == nil && pg != pr.pid) {
		if rc, err := pr.pidfd.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _ = unix.PidfdSendSignal(int(fd), sig, nil, 0) })
		}
	}
}

// requestStop records that the supervisor asked the worker to stop, with
// SIGKILL due at deadline: if it exits before, its group keeps the rest of
// the grace period.
func (pr *proc) requestStop(deadline time.Time) {
	pr.mu.Lock()
	if pr.stopBy.IsZero() {
		pr.stopBy = deadline
	}
	pr.mu.Unlock()
}

// kill SIGKILLs the worker's group, also while it lingers after the
// worker's exit.
func (pr *proc) kill() {
	pr.signalGroup(syscall.SIGKILL)
	select {
	case pr.kick <- struct{}{}:
	default:
	}
}

// groupPoll is how often /proc is scanned while groups linger at first;
// the interval doubles up to groupPollMax while none ends, since each scan
// reads the stat file of every process on the host.
const (
	groupPoll    = 20 * time.Millisecond
	groupPollMax = 320 * time.Millisecond
)

// lingerGroup is one registration of a lingering group with the scanner;
// done is closed once no live process but its leader has the group id.
type lingerGroup struct{ done chan struct{} }

// linger gives what is left of the group of a worker that exited during a
// requested stop the rest of its grace period (systemd's control-group
// mode waits for the timeout too): it returns once no live member is
// left, at the deadline, or on kill, and SIGKILLs the group either way, so
// a member the scan missed (forked behind its back) dies as it would have
// without the grace. Meanwhile the leader's zombie is kept unreaped, so
// the group id cannot be recycled.
func (p *platform) linger(pr *proc) {
	pr.mu.Lock()
	deadline := pr.stopBy
	pr.mu.Unlock()
	g := p.watchGroup(pr.pid)
	defer p.unwatchGroup(pr.pid, g)
	t := time.NewTimer(max(time.Until(deadline), 0))
	defer t.Stop()
	select {
	case <-g.done:
	case <-t.C:
	case <-pr.kick:
	}
	pr.reapMu.Lock()
	defer pr.reapMu.Unlock()
	// Once Exec (or anything else in this process) reaped the leader, the
	// group id is no longer known to be ours.
	if !pr.execReaped && pr.waitable() {
		_ = unix.Kill(-pr.pid, unix.SIGKILL)
	}
}

// watchGroup registers pgid with the group scanner, starting it if needed.
func (p *platform) watchGroup(pgid int) *lingerGroup {
	g := &lingerGroup{done: make(chan struct{})}
	p.groupsMu.Lock()
	defer p.groupsMu.Unlock()
	if p.groups == nil {
		p.groups = make(map[int]*lingerGroup)
	}
	p.groups[pgid] = g
	if p.groupsChanged == nil {
		p.groupsChanged = make(chan struct{}, 1)
	}
	select {
	case p.groupsChanged <- struct{}{}:
	default:
	}
	if !p.scanning {
		p.scanning = true
		p.wg.Add(1)
		go p.scanGroups()
	}
	return g
}

func (p *platform) unwatchGroup(pgid int, g *lingerGroup) {
	p.groupsMu.Lock()
	if p.groups[pgid] == g {
		delete(p.groups, pgid)
		select {
		case p.groupsChanged <- struct{}{}:
		default:
		}
	}
	p.groupsMu.Unlock()
}

// scanGroups ends lingering groups that have no live member but their
// leader. The leader's zombie, kept to pin the group id, is a member
// itself, so kill(-pgid, 0) cannot tell; and a group member is usually no
// child of ours, so it can only be found in /proc. One goroutine scans for
// every lingering group at once, and only while there are some.
func (p *platform) scanGroups() {
	defer p.wg.Done()
	wait := groupPoll
	t := time.NewTimer(groupPoll)
	defer t.Stop()
	for {
		p.groupsMu.Lock()
		if len(p.groups) == 0 {
			p.scanning = false
			p.groupsMu.Unlock()
			return
		}
		changed := p.groupsChanged
		snap := make(map[int]*lingerGroup, len(p.groups))
		for pgid, g := range p.groups {
			snap[pgid] = g
		}
		p.groupsMu.Unlock()
		ended := false
		if live, ok := liveGroups(snap); ok {
			p.groupsMu.Lock()
			for pgid, g := range snap {
				if !live[pgid] && p.groups[pgid] == g {
					close(g.done)
					delete(p.groups, pgid)
					ended = true
				}
			}
			p.groupsMu.Unlock()
		}
		if ended {
			wait = groupPoll
		} else {
			wait = min(2*wait, groupPollMax)
		}
		t.Reset(wait)
		select {
		case <-t.C:
		case <-changed:
			// A new group is scanned at once; a group gone may have
			// been the last.
			// (Reset above drops a stale expiry: Go 1.23 timers.)
			wait = groupPoll
		}
	}
}

// liveGroups returns which of groups have a live member other than their
// leader (a process with a thread that is not a zombie), from
// /proc/<pid>/stat; ok is false if /proc cannot be listed, and then every
// group counts as live until its deadline.
func liveGroups(groups map[int]*lingerGroup) (live map[int]bool, ok bool) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, false
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, false
	}
	live = make(map[int]bool)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		if _, leader := groups[pid]; leader {
			continue
		}
		b, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// "pid (comm) state ppid pgrp ...": comm may hold anything.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 {
			continue
		}
		pgrp, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		if _, ok := groups[pgrp]; !ok || live[pgrp] {
			continue
		}
		// The state is the main thread's: a member whose main thread
		// exited (pthread_exit) while others still run, say draining,
		// shows Z until its last thread exits.
		if (f[0] == "Z" || f[0] == "X") && !threadLive(name) {
			continue
		}
		live[pgrp] = true
	}
	return live, true
}

// threadLive reports whether a thread of process pid (a /proc entry name)
// is neither a zombie nor dead, from /proc/<pid>/task/<tid>/stat.
func threadLive(pid string) bool {
	d, err := os.Open("/proc/" + pid + "/task")
	if err != nil {
		return false // reaped meanwhile
	}
	tids, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return false
	}
	for _, tid := range tids {
		b, err := os.ReadFile("/proc/" + pid + "/task/" + tid + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 0 && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

// watch waits for w to exit, kills what is left of its process group (or,
// after a requested stop, gives it the rest of its grace), posts the exit
// to the event loop and reaps it.
// The caller has done p.wg.Add(1).
func (p *platform) watch(w *worker) {
	defer p.wg.Done()
	pr := w.proc
	if h := testHookWatch; h != nil {
		h(pr.pid)
	}
	info := pr.waitExit()
	at := time.Now()
	// Without waitid's record the worker was no zombie of ours when it was
	// asked (ECHILD): something else in this process reaped it, and its pid
	// and group id may name another process already (TESTPLAN C7).
	ours := info.Signo == int32(unix.SIGCHLD)
	if h := testHookExited; h != nil {
		h(pr.pid)
	}
	pr.mu.Lock()
	// After a stop the supervisor asked for, the rest of the group gets
	// the rest of StopTimeout, as the docs promise: a shell wrapper's
	// draining server must not be SIGKILLed because the shell went first.
	linger := ours && !pr.stopBy.IsZero()
	if ours && !linger {
		// The leader is a zombie, so the group id is still ours: kill the
		// worker's leftover children (systemd KillMode=control-group) so
		// none outlives it holding its pipes or sockets (C5).
		_ = unix.Kill(-pr.pid, unix.SIGKILL)
	}
	pr.lingering = linger
	if !linger {
		pr.reaped = true
	}
	pr.mu.Unlock()
	// Captured output still buffered in the pipes is read; a grandchild that
	// left the group and holds a pipe open cannot delay us past WaitDelay.
	if !linger {
		p.setOutputDeadlines(pr)
	}
	if h := testHookBeforePost; h != nil {
		h(pr.pid)
	}
	// The exit is posted from waitid's record, before the reap: reaping can
	// take long (release_task prunes the pid's /proc dentries, more of them
	// the more /proc was read), and the event loop must not see a dead
	// worker as live meanwhile. Until the reap the zombie keeps its pid, and
	// the pid stays owned, so the orphan reaper leaves it alone.
	m := exitMsg{w: w, at: at, code: -1, linger: linger}
	switch info.code() {
	case cldExited:
		m.code = int(info.Status)
		m.exited = true
	case cldKilled, cldDumped:
		m.signal = syscall.Signal(info.Status)
	}
	// The pidfd goes now, not after the reap: the reap is what may be slow.
	// A lingering worker keeps it until the linger ends, for signalGroup.
	if !linger {
		pr.pidfd.Close()
	}
	if ours {
		procs.mu.Lock()
		p.posted[pr.pid] = pr
		procs.mu.Unlock()
	}
	p.s.post(m)
	if linger {
		p.linger(pr)
		pr.mu.Lock()
		pr.reaped = true
		pr.lingering = false
		pr.mu.Unlock()
		p.setOutputDeadlines(pr)
		pr.pidfd.Close()
		p.s.post(lingerDoneMsg{w: w})
	}
	if h := testHookBeforeReap; h != nil {
		h(pr.pid)
	}
	err := errReapedElsewhere
	pr.reapMu.Lock()
	switch {
	case pr.execReaped:
		err = nil
	case ours:
		err = reap(pr.pid)
	}
	pr.reapMu.Unlock()
	if err != nil {
		p.s.log.Warn("supervise: reaping worker", "pid", pr.pid, "err", err)
	}
	if h := testHookAfterReap; h != nil {
		h(pr.pid, err)
	}
	p.disown(pr.pid, pr.seq)
}

func (p *platform) setOutputDeadlines(pr *proc) {
	for _, r := range pr.outputs {
		_ = r.SetReadDeadline(time.Now().Add(p.s.opt.WaitDelay))
	}
}

// errNotReaped: the worker's pid names a live child of this process, so
// something else reaped the worker (a wait4(-1), or SIGCHLD set to
// SIG_IGN) and the pid was recycled.
var errNotReaped = errors.New("supervise: worker already reaped elsewhere; its pid is another child's now")

// errReapedElsewhere: the worker was reaped by something else in this
// process before its watcher saw the exit; neither its pid nor its group
// was touched after that.
var errReapedElsewhere = errors.New("supervise: worker reaped elsewhere before its exit was seen")

// reap reaps the exited worker pid without blocking. Only its zombie can
// hold the pid unless something else reaped it first; then the pid may
// name another child of ours, and a blocking wait would sleep until that
// child exits. (A pidfd-based reap would be immune, but it would keep the
// pidfd open through the slow part.)
func reap(pid int) error {
	var ws unix.WaitStatus
	for {
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return os.NewSyscallError("wait4", err)
		case got == 0:
			return errNotReaped
		}
		return nil
	}
}

// waitExit returns once the worker has exited, without reaping it, with
// waitid's record of the exit (zero if there was none to read).
func (pr *proc) waitExit() sigchldInfo {
	var info sigchldInfo
	rc, err := pr.pidfd.SyscallConn()
	if err == nil {
		// Read returns when the callback reports true; in between the
		// goroutine is parked on the poller: no polling, no thread.
		err = rc.Read(func(fd uintptr) bool { return exitedFD(int(fd), &info) })
	}
	if err == nil {
		return info
	}
	// Not pollable after all: block this thread in waitid instead, still
	// without reaping. The worker is unreaped, so its pid is still its own.
	for {
		info = sigchldInfo{}
		err := unix.Waitid(unix.P_PID, pr.pid, info.siginfo(), unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return info
		}
	}
}

func (p *platform) readLines(r *os.File, id ID, pid int, stream Stream) {
	defer p.wg.Done()
	defer r.Close()
	ls := lineSplitter{max: p.s.opt.MaxLineBytes, emit: func(b []byte) {
		p.s.deliverLine(Line{ID: id, PID: pid, Stream: stream, Text: string(b)})
	}}
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		ls.write(buf[:n])
		if err != nil {
			break
		}
	}
	ls.flush()
}

// reaper reaps orphans re-parented to this subreaper (C6). It reaps only
// pids that are not owned workers (nor claimed by OwnChild), so a worker's
// exit status always reaches its watcher.
func (p *platform) reaper(sigchld chan os.Signal) {
	defer close(p.reaperDone)
	defer signal.Stop(sigchld)
	for {
		select {
		case <-p.reaperStop:
			return
		case <-sigchld:
		case <-p.nudge:
		}
		p.reapOrphans()
	}
}

// maxReapPass bounds the zombies one pass of the fallback reaper
// (reapFirstOrphans) looks at.
const maxReapPass = 1024

// pidMaxLimit is the kernel's highest possible pid count
// (PID_MAX_LIMIT): no process has more children.
const pidMaxLimit = 1 << 22

// reapOrphans reaps every zombie child that nobody owns. It goes through
// the children one by one: waitid(P_ALL) reports only the first zombie, and
// when that one is owned (a watcher has yet to reap it, or a stopped
// worker's zombie pins its group id for the rest of the grace, seconds)
// the orphans behind it would stay zombies meanwhile. Every child is looked
// at, running workers included (a map lookup each, no system call): an
// orphan is re-parented to the end of the list, so a cap on the list would
// leave it there behind a thousand long-lived workers for good.
func (p *platform) reapOrphans() {
	pids, err := childPIDs(pidMaxLimit)
	if err != nil {
		p.reapFirstOrphans()
		return
	}
	for _, pid := range pids {
		procs.mu.Lock()
		// Under procs.mu no worker is forked, so an unowned pid is no
		// worker's even if the listed child was reaped and its pid
		// recycled since; a pid that is no child of ours is ECHILD.
		if ownedAnywhere(pid) {
			procs.mu.Unlock()
			continue
		}
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		procs.mu.Unlock()
		if err == nil && got == pid {
			p.s.log.Debug("supervise: reaped orphan", "pid", pid)
		}
	}
}

// childPIDs lists up to max children of this process from
// /proc/self/task/*/children: a child, re-parented orphans included, is on
// the list of the thread that is its parent. The lists are no atomic
// snapshot (proc(5)); a zombie missed now is found by the pass its
// successor's SIGCHLD, or a disown, brings. It fails on kernels built
// without CONFIG_PROC_CHILDREN.
func childPIDs(max int) ([]int, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		if errors.Is(err, os.ErrNotExist) && t.Name() != strconv.Itoa(os.Getpid()) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			return nil, err
		}
		for _, f := range strings.Fields(string(b)) {
			if len(pids) == max {
				return pids, nil
			}
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// reapFirstOrphans is reapOrphans without /proc/self/task/*/children: it
// peeks with waitid(P_ALL, WNOWAIT) and reaps the first zombie unless it is
// owned, which it leaves to its watcher, whose disown nudges the reaper.
func (p *platform) reapFirstOrphans() {
	for range maxReapPass {
		var info sigchldInfo
		procs.mu.Lock()
		err := unix.Waitid(unix.P_ALL, 0, info.siginfo(), unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if err != nil || info.Signo != int32(unix.SIGCHLD) || info.Pid == 0 || ownedAnywhere(int(info.Pid)) {
			procs.mu.Unlock()
			return
		}
		var ws unix.WaitStatus
		_, err = unix.Wait4(int(info.Pid), &ws, unix.WNOHANG, nil)
		procs.mu.Unlock()
		if err == nil {
			p.s.log.Debug("supervise: reaped orphan", "pid", info.Pid)
		}
	}
	select {
	case p.nudge <- struct{}{}:
	default:
	}
}

// ignoredSink catches, for the whole process, the signals some Supervisor
// found ignored (see resetIgnoredSignals). Nobody reads it: a caught signal
// that finds the channel full is dropped, so this process still ignores it.
var (
	ignoredSinkMu sync.Mutex
	ignoredSink   = make(chan os.Signal, 1)
)

// resetIgnoredSignals makes workers start with default dispositions for
// signals this process ignores. Ignored dispositions survive execve(2), and
// os/exec resets only signals the Go runtime handles (golang/go#20479), so
// under nohup every worker would ignore SIGHUP (C18). Catching the signals
// into a channel nobody reads keeps them ignored here while the runtime
// resets them to SIG_DFL in each child.
//
// The catch is never undone. Undoing it takes signal.Ignore (signal.Stop
// alone would leave SIGTERM, say, deadly), and signal.Ignore strips the
// signal from every signal.Notify in the process: the program's own
// handlers, and the catch of another Supervisor still running (cluster runs
// several in one process), whose later workers would start with the signal
// ignored again.
func resetIgnoredSignals() {
	candidates := []os.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGPIPE,
		syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGCHLD,
		syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGURG, syscall.SIGWINCH,
		syscall.SIGXCPU, syscall.SIGXFSZ, syscall.SIGVTALRM, syscall.SIGPROF, syscall.SIGIO,
		syscall.SIGPWR}
	ignoredSinkMu.Lock()
	defer ignoredSinkMu.Unlock()
	var ignored []os.Signal
	for _, sig := range candidates {
		if signal.Ignored(sig) {
			ignored = append(ignored, sig)
		}
	}
	if len(ignored) > 0 {
		signal.Notify(ignoredSink, ignored...)
	}
}

// dedupEnv keeps the last entry for each variable, as os/exec does.
func dedupEnv(env []string) []string {
	seen := make(map[string]bool, len(env))
	out := make([]string, 0, len(env))
	for i := len(env) - 1; i >= 0; i-- {
		k, _, _ := strings.Cut(env[i], "=")
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, env[i])
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}
