package cluster

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// stopLatch remembers the first stop request, even one made before Run
// started anything, so that no stop is ever lost; later ones are no-ops.
// Create it with its channel: stopLatch{ch: make(chan struct{})}.
type stopLatch struct {
	once sync.Once
	ch   chan struct{}
}

// request records a stop request.
func (l *stopLatch) request() { l.once.Do(func() { close(l.ch) }) }

// done is closed by the first request.
func (l *stopLatch) done() <-chan struct{} { return l.ch }

// requested reports whether a stop was requested.
func (l *stopLatch) requested() bool {
	select {
	case <-l.ch:
		return true
	default:
		return false
	}
}

// Leftovers: a worker's descendant that left the worker's process group
// (setsid, setpgid) is out of reach of the group signals that stop workers,
// and survives a clean stop holding the inherited listening sockets, so the
// next start cannot bind. Once every worker is gone, the master looks for
// such processes and stops them (stopLeftovers).
//
// Which processes are the cluster's is the hard part when the master is
// embedded in another program: that program's own children must be left
// alone, and the kernel keeps no record of a process's original parent.
// So a leftover is recognised by what it inherited from a worker, never by
// being a child of the master: NOTIFY_SOCKET naming this run's private
// notify socket in its environment (/proc/PID/environ, the environment it
// was started with), or one of the listening sockets this master bound
// open (not adopted ones: whoever passed them holds them too). The
// master's ancestors are never candidates.
// Nothing else has either. A descendant that dropped both (a fresh
// environment and closed descriptors) is not found, but no longer holds a
// port either. Found processes get SIGTERM (and SIGCONT), and SIGKILL after
// ShutdownTimeout (at once after a second stop signal), through pidfds, so
// a recycled pid is never signalled; those that are the master's children
// (re-parented to it as PID 1) are reaped.

// maxLeftoverRounds bounds the scans: a leftover's own children, killed
// with it, leave marked processes behind for the next round.
const maxLeftoverRounds = 4

// leftover is one process found by a scan.
type leftover struct {
	pid   int
	comm  string
	pidfd int
}

// stopLeftovers finds and stops the leftovers of this run's workers.
func (m *master) stopLeftovers() {
	if m.notifyAddr == "" {
		return
	}
	marks := m.leftoverMarks()
	grace := m.cfg.ShutdownTimeout
	if grace <= 0 {
		grace = supervise.DefaultStopTimeout
	}
	for range maxLeftoverRounds {
		found := findLeftovers(os.Getpid(), marks)
		if len(found) == 0 {
			return
		}
		sig := unix.SIGTERM
		if m.killReq.requested() {
			sig = unix.SIGKILL
		}
		for _, p := range found {
			m.log.Warn("stopping a leftover process of a worker (it left the worker's process group)", "pid", p.pid, "comm", p.comm, "signal", sig.String())
			_ = unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
			if sig == unix.SIGTERM {
				_ = unix.PidfdSendSignal(p.pidfd, unix.SIGCONT, nil, 0)
			}
		}
		if !waitLeftovers(found, grace, m.killReq.done()) {
			for _, p := range found {
				if !pidfdPolled(p.pidfd) {
					m.log.Warn("killing a leftover process of a worker", "pid", p.pid, "comm", p.comm, "signal", "SIGKILL")
					_ = unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
				}
			}
			// SIGKILL is prompt but for a process in uninterruptible
			// sleep; do not wait for one for ever.
			waitLeftovers(found, time.Second, nil)
		}
		for _, p := range found {
			// Only a child of ours (we are PID 1, or its parent was
			// reaped by a subreaper master) is reaped here; for others
			// this fails with ECHILD.
			var info unix.Siginfo
			_ = unix.Waitid(unix.P_PIDFD, p.pidfd, &info, unix.WEXITED|unix.WNOHANG, nil)
			unix.Close(p.pidfd)
		}
	}
}

// leftoverMarks is what a process inherited from this run's workers.
type leftoverMarks struct {
	env     []byte          // "NOTIFY_SOCKET=<path>"
	sockets map[string]bool // "socket:[inode]" of the listeners
}

func (m *master) leftoverMarks() leftoverMarks {
	lm := leftoverMarks{env: []byte(envNotifySocket + "=" + m.notifyAddr), sockets: make(map[string]bool)}
	if m.adopted || m.upgraded() {
		// Listeners that came from elsewhere (systemd, a parent that
		// socket-activated us, an older image's start) are held by
		// whoever passed them too: they mark nothing.
		return lm
	}
	for _, l := range m.listeners {
		rc, err := l.file.SyscallConn()
		if err != nil {
			continue
		}
		var st unix.Stat_t
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil || serr != nil {
			continue
		}
		lm.sockets["socket:["+strconv.FormatUint(st.Ino, 10)+"]"] = true
	}
	return lm
}

// findLeftovers scans /proc for processes other than self that carry a
// mark, and returns them with a pidfd opened before the mark was checked.
func findLeftovers(self int, marks leftoverMarks) []leftover {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	// The master's ancestors are never its workers' descendants, whatever
	// they hold (a parent that passed the listeners on, say).
	ancestors := map[int]bool{self: true}
	for p, i := self, 0; i < maxAncestry && p > 1; i++ {
		if p, _ = parentPID(p); p > 1 {
			ancestors[p] = true
		}
	}
	var out []leftover
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 1 || ancestors[pid] {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		// Checked after the pidfd is open: if the pid was recycled
		// since, the new process's own marks are read, and the pidfd
		// names that one too.
		if !marked(pid, marks) || pidfdPolled(fd) {
			unix.Close(fd)
			continue
		}
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		out = append(out, leftover{pid: pid, comm: string(bytes.TrimSpace(comm)), pidfd: fd})
	}
	return out
}

// marked reports whether process pid carries one of marks.
func marked(pid int, marks leftoverMarks) bool {
	dir := "/proc/" + strconv.Itoa(pid)
	// Readable for processes we may signal anyway (same user, or root).
	if env, err := os.ReadFile(dir + "/environ"); err == nil {
		for kv := range bytes.SplitSeq(env, []byte{0}) {
			if bytes.Equal(kv, marks.env) {
				return true
			}
		}
	}
	if len(marks.sockets) == 0 {
		return false
	}
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return false
	}
	for _, f := range fds {
		if target, err := os.Readlink(dir + "/fd/" + f.Name()); err == nil && marks.sockets[target] {
			return true
		}
	}
	return false
}

// waitLeftovers waits until every process of ps exited, at most d or
// until hurry is closed; it reports whether all did.
func waitLeftovers(ps []leftover, d time.Duration, hurry <-chan struct{}) bool {
	deadline := time.Now().Add(d)
	for {
		all := true
		for _, p := range ps {
			if !pidfdPolled(p.pidfd) {
				all = false
				break
			}
		}
		if all {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		select {
		case <-hurry:
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// sweepNotifyDirs removes, from dir (the temporary directory), the
// private notify directories that SIGKILLed masters of this user left
// behind ("handoff-*" holding one socket, "notify"; a clean stop removes
// its own). Only what is certainly dead goes: a directory of this user,
// mode 0700 (0710 when workers ran as another user), not a symlink, whose
// "notify" is a socket that refuses connections (nobody has it bound). The directory is removed
// only if that left it empty. It returns the directories removed.
func sweepNotifyDirs(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	euid := uint32(os.Geteuid())
	var removed []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "handoff-") {
			continue
		}
		d := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		// Lstat: a symlink named handoff-* is not followed.
		if unix.Lstat(d, &st) != nil || !notifyDirMode(&st, euid) {
			continue
		}
		// Its owner is this user, or the workers' (Config.Credential):
		// either way this user made it, as nobody else can write in d.
		sock := filepath.Join(d, "notify")
		if unix.Lstat(sock, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			continue
		}
		if !deadSocket(sock) {
			continue
		}
		if os.Remove(sock) == nil && os.Remove(d) == nil {
			removed = append(removed, d)
		}
	}
	return removed
}

// notifyDirMode reports whether st is a directory listenPrivateNotify
// makes: euid's, 0700, or 0710 when workers run as another user.
func notifyDirMode(st *unix.Stat_t, euid uint32) bool {
	perm := st.Mode & 0o7777
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Uid == euid && (perm == 0o700 || perm == 0o710)
}

// deadSocket reports whether connecting to the datagram socket at path is
// refused: no process has it bound any more.
func deadSocket(path string) bool {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path}) == unix.ECONNREFUSED
}
