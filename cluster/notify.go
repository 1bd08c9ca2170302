package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
)

// The sd_notify(3) protocol: a datagram of newline-separated VAR=VALUE
// assignments sent to the unix socket named by NOTIFY_SOCKET (a path, or an
// abstract name written with a leading '@').

const (
	envNotifySocket = "NOTIFY_SOCKET"
	// maxNotify bounds one notification. systemd accepts up to 4096 bytes
	// of state per message; a longer datagram is refused as a whole.
	maxNotify = 4096
)

// ErrNotify reports a notification that is not a valid sd_notify message.
var ErrNotify = errors.New("cluster: malformed sd_notify message")

// Notification is what one sd_notify message said. Fields not mentioned in
// the message keep their zero value.
type Notification struct {
	Ready     bool   // READY=1
	Reloading bool   // RELOADING=1
	Stopping  bool   // STOPPING=1
	Watchdog  bool   // WATCHDOG=1
	Status    string // STATUS=...; see StatusSet
	Errno     int    // ERRNO=...
	MainPID   int    // MAINPID=...

	// WatchdogTrigger is WATCHDOG=trigger: the worker asks to be treated
	// as if its watchdog had expired.
	WatchdogTrigger bool
	// ExtendTimeout is EXTEND_TIMEOUT_USEC=... (0: absent).
	ExtendTimeout time.Duration
	// StatusSet says the message had a valid STATUS= field: an empty one
	// clears the worker's status, as systemd does, where a message
	// without the field leaves it as it was.
	StatusSet bool
}

// fieldErrors summarises the fields of one message that were ignored as
// malformed: how many, and the first one's error (wrapping ErrNotify).
type fieldErrors struct {
	Count int
	First error
}

func (f *fieldErrors) add(err error) {
	if f.Count == 0 {
		f.First = err
	}
	f.Count++
}

// parseNotify decodes one sd_notify datagram field by field, as systemd
// does: unknown variables are ignored, and a malformed field (a line
// without '=', a variable set to a value outside its domain) is skipped and
// counted in bad while the valid fields are kept, so one bad STATUS never
// loses the READY=1 next to it. Only a message over maxNotify bytes is
// refused as a whole, with an error wrapping ErrNotify.
func parseNotify(b []byte) (n Notification, bad fieldErrors, err error) {
	if len(b) > maxNotify {
		return n, bad, fmt.Errorf("%w: %d bytes, over %d", ErrNotify, len(b), maxNotify)
	}
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if len(line) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(line, []byte{'='})
		if !ok || len(k) == 0 {
			bad.add(fmt.Errorf("%w: line %q has no assignment", ErrNotify, truncate(line)))
			continue
		}
		switch string(k) {
		case "READY", "RELOADING", "STOPPING", "WATCHDOG":
			if string(v) != "1" {
				// WATCHDOG=trigger is systemd's "fail now".
				if string(k) == "WATCHDOG" && string(v) == "trigger" {
					n.WatchdogTrigger = true
				} else {
					bad.add(fmt.Errorf("%w: %s=%q", ErrNotify, k, truncate(v)))
				}
				continue
			}
			switch string(k) {
			case "READY":
				n.Ready = true
			case "RELOADING":
				n.Reloading = true
			case "STOPPING":
				n.Stopping = true
			case "WATCHDOG":
				n.Watchdog = true
			}
		case "STATUS":
			if !utf8Printable(v) {
				bad.add(fmt.Errorf("%w: STATUS is not printable text", ErrNotify))
				continue
			}
			n.Status, n.StatusSet = string(v), true
		case "ERRNO":
			e, err := strconv.Atoi(string(v))
			if err != nil || e < 0 {
				bad.add(fmt.Errorf("%w: ERRNO=%q", ErrNotify, truncate(v)))
				continue
			}
			n.Errno = e
		case "MAINPID":
			p, err := strconv.Atoi(string(v))
			if err != nil || p <= 0 {
				bad.add(fmt.Errorf("%w: MAINPID=%q", ErrNotify, truncate(v)))
				continue
			}
			n.MainPID = p
		case "EXTEND_TIMEOUT_USEC":
			u, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil || u == 0 || u > uint64(maxExtend/time.Microsecond) {
				bad.add(fmt.Errorf("%w: EXTEND_TIMEOUT_USEC=%q", ErrNotify, truncate(v)))
				continue
			}
			n.ExtendTimeout = time.Duration(u) * time.Microsecond
		}
	}
	return n, bad, nil
}

// maxExtend bounds EXTEND_TIMEOUT_USEC: a day, the longest start timeout a
// configuration file accepts.
const maxExtend = 24 * time.Hour

func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// utf8Printable reports whether b is valid UTF-8 without control
// characters other than tab: a STATUS is shown to operators verbatim.
func utf8Printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return false
		}
	}
	return true
}

// notifyManager reports state to our own service manager's
// NOTIFY_SOCKET, socket (none: nothing to do), logging a failure.
func notifyManager(log *slog.Logger, socket, state string) {
	if err := sdNotify(socket, state); err != nil {
		log.Warn("sd_notify", "state", state, "err", err)
	}
}

// sdNotify sends state to the socket named by addr (the value of
// NOTIFY_SOCKET). An empty addr is a no-op, as in sd_notify(3).
func sdNotify(addr, state string) error {
	if addr == "" {
		return nil
	}
	if addr[0] != '/' && addr[0] != '@' {
		return fmt.Errorf("%s=%q: not an absolute path or abstract name", envNotifySocket, addr)
	}
	name := addr
	if addr[0] == '@' {
		name = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write([]byte(state))
	return err
}

// notifySocket is one NOTIFY_SOCKET endpoint of the master: a datagram
// socket with SO_PASSCRED, so every notification carries the sender's pid
// and uid as the kernel saw them.
type notifySocket struct {
	conn *scmrights.Conn
	path string
	msg  scmrights.Message
}

// listenNotify binds a notification socket at path, which should be in a
// directory only the master (and its workers' users) can reach.
func listenNotify(path string) (*notifySocket, error) {
	uc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	s := &notifySocket{path: path, msg: scmrights.Message{Payload: make([]byte, maxNotify+1), FDs: make([]int, maxNotifyFDs)}}
	c, err := scmrights.NewConn(uc)
	if err != nil {
		uc.Close()
		s.conn = nil
		s.removePath()
		return nil, err
	}
	s.conn = c
	if err := c.SetPassCred(true); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// received is one datagram read from a notifySocket.
type received struct {
	N   Notification
	Bad fieldErrors
	// FDs counts descriptors that came with the message (FDSTORE=1,
	// systemd-notify's BARRIER=1 pipe); they were closed at once.
	FDs  int
	Cred scmrights.Ucred
}

// maxNotifyFDs is room for the descriptors of one notification: a BARRIER
// brings one, FDSTORE a few. A message with more is refused whole (its
// descriptors closed by scmrights).
const maxNotifyFDs = 16

// recv waits for the next notification and returns it with its sender's
// credentials. Descriptors that came with it are closed (FDSTORE and
// BARRIER are not supported). An oversize message, one with more than
// maxNotifyFDs descriptors or one without credentials is an error for that
// message only: the socket stays usable. Close unblocks it.
func (s *notifySocket) recv() (received, error) {
	m := &s.msg
	m.FDs = m.FDs[:cap(m.FDs)]
	err := s.conn.RecvMsg(m)
	r := received{Cred: m.Cred}
	if err != nil {
		return r, err
	}
	for _, fd := range m.FDs[:m.NFDs] {
		// Received with MSG_CMSG_CLOEXEC and owned by nobody else.
		os.NewFile(uintptr(fd), "notify-fd").Close()
	}
	r.FDs = m.NFDs
	if !m.HasCred {
		return r, fmt.Errorf("%w: no sender credentials", ErrNotify)
	}
	r.N, r.Bad, err = parseNotify(m.Payload[:m.N])
	return r, err
}

// close closes the socket and removes its path; an abstract address
// ("@name") has no file to remove.
func (s *notifySocket) close() error {
	err := s.conn.Close()
	s.removePath()
	return err
}

func (s *notifySocket) removePath() {
	if s.path != "" && s.path[0] != '@' {
		os.Remove(s.path)
	}
}

// ExecError is RunShim's error when the kernel refused to execute the
// worker program (execve(2) failed). The master learns it through a
// close-on-exec pipe the shim inherits, so an exec failure is never
// mistaken for the program's own exit code.
type ExecError struct {
	// Path is the program the shim tried to execute.
	Path string
	// Interpreter, when execve failed with ENOENT although Path exists,
	// is what is missing: the interpreter of its "#!" line, or the
	// dynamic loader (PT_INTERP) of an ELF program.
	Interpreter string
	// Transient is set for errors a later attempt may not meet (ETXTBSY
	// while the file is being written, ENOMEM, EAGAIN): the slot is
	// respawned with its backoff. Other errors fail the slot.
	Transient bool
	// Err is the execve error (an *os.SyscallError wrapping the errno).
	Err error
}

func (e *ExecError) Error() string {
	if e.Interpreter != "" {
		return fmt.Sprintf("cluster: exec %s: its interpreter %s is missing: %v", e.Path, e.Interpreter, e.Err)
	}
	return fmt.Sprintf("cluster: exec %s: %v", e.Path, e.Err)
}

func (e *ExecError) Unwrap() error { return e.Err }

// Exit statuses of the exec shim, for ShimExitCode.
const (
	// ExitExecFailed is the shim's status when the program cannot be
	// executed and retrying cannot help: supervise's permanent exit code,
	// so the slot fails rather than respawn in a loop (systemd marks such
	// a unit failed with result "exec").
	ExitExecFailed = 125
	// ExitShimFailed is the shim's status for any other failure
	// (transient exec errors included): the slot is respawned with its
	// backoff.
	ExitShimFailed = 127
)

// ShimExitCode is the exit status a program implementing ShimArg should
// exit with after RunShim returned err.
func ShimExitCode(err error) int {
	var e *ExecError
	if errors.As(err, &e) && !e.Transient {
		return ExitExecFailed
	}
	return ExitShimFailed
}

// statusInterval is the least time between two logged STATUS= changes of
// one worker; the last one within it is logged when it ends.
const statusInterval = time.Second

// notifyState is what the master keeps from each worker's notifications:
// its last STATUS= (logged on change, rate-limited per worker), ERRNO=
// (logged with its exit) and whether it said STOPPING=1 or RELOADING=1
// (its phase). Keyed by the worker's pid; each entry also names the
// worker (its supervise.ID), because a pid is reused: a message read just
// before an exit is applied after it, and forget leaves a tombstone so
// that it creates nothing, nor passes for a later worker's.
type notifyState struct {
	mu      sync.Mutex
	workers map[int]*workerNotify
	// gone holds the workers forget dropped, for tombstoneTTL: a late
	// message of theirs records nothing.
	gone   map[int]tombstone
	closed bool
}

type tombstone struct {
	id supervise.ID
	at time.Time
}

// tombstoneTTL is how long forget remembers an exited worker: far longer
// than a message read before its exit takes to be applied.
const tombstoneTTL = time.Minute

type workerNotify struct {
	status    string // last STATUS= received
	logged    string // last STATUS= logged
	loggedAt  time.Time
	timer     *time.Timer // logs status when the interval ends
	errno     int
	extWarned bool // EXTEND_TIMEOUT_USEC seen (logged once)
	// id is the worker the entry belongs to.
	id      supervise.ID
	phase   workerPhase
	phaseAt time.Time // when phase last changed
	// phaseTimer ends the phase if it lasts too long: armed at
	// STOPPING=1, it kills a worker that has not exited within the
	// shutdown timeout (systemd's TimeoutStopSec); at RELOADING=1, it
	// makes a worker that never says READY=1 ready again after the start
	// timeout (systemd's TimeoutStartSec for a reload). Stopped when the
	// phase changes.
	phaseTimer *time.Timer
	// readyWarned: a READY=1 after STOPPING=1 was logged as ignored.
	readyWarned bool
}

// workerPhase is what a worker's own STOPPING=1 or RELOADING=1 made of it,
// as systemd's service states do: out of the handoff rotation, shown in
// status and not counted ready.
type workerPhase uint8

const (
	phaseNone workerPhase = iota
	// phaseStopping: STOPPING=1. For good: systemd ignores READY=1 in its
	// deactivating state, and the worker's exit ends it.
	phaseStopping
	// phaseReloading: RELOADING=1, until READY=1 from the same process
	// or the reload timeout.
	phaseReloading
)

// phaseChange is what one notification did to a worker's phase.
type phaseChange struct {
	From, To workerPhase
	// IgnoredReady: the message's READY=1 was ignored, the worker having
	// said STOPPING=1; set the first time only, to log it once.
	IgnoredReady bool
}

// notePhase applies the READY=1, RELOADING=1 and STOPPING=1 (any of them
// in n) of worker id, whose pid is pid, to its phase, with systemd's
// precedence within one message: STOPPING=1 wins over the others, READY=1
// over RELOADING=1 (a reload that is already done). What an earlier
// worker with the same pid left is dropped first; a worker forget dropped
// gets no phase.
func (s *notifyState) notePhase(pid int, id supervise.ID, n Notification) phaseChange {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !(n.Ready || n.Reloading || n.Stopping) {
		return phaseChange{}
	}
	if s.forgotten(pid, id) {
		return phaseChange{} // read before its exit, applied after
	}
	w := s.workers[pid]
	if w != nil && w.id != id {
		w = s.get(pid, id) // drops the earlier worker's
	}
	if (w == nil || w.phase == phaseNone) && !n.Stopping && (n.Ready || !n.Reloading) {
		return phaseChange{} // READY=1 of a worker in no phase
	}
	if w == nil {
		w = s.get(pid, id)
	}
	c := phaseChange{From: w.phase}
	switch {
	case n.Stopping || w.phase == phaseStopping:
		w.phase = phaseStopping
		if n.Ready && !w.readyWarned {
			w.readyWarned, c.IgnoredReady = true, true
		}
	case n.Ready:
		w.phase = phaseNone
	case n.Reloading:
		w.phase = phaseReloading
	}
	if w.phase != c.From {
		w.phaseAt = time.Now()
		if w.phaseTimer != nil {
			w.phaseTimer.Stop()
			w.phaseTimer = nil
		}
	}
	c.To = w.phase
	return c
}

// stopTimers stops w's pending status log and phase timeout.
func (w *workerNotify) stopTimers() {
	if w.timer != nil {
		w.timer.Stop()
	}
	if w.phaseTimer != nil {
		w.phaseTimer.Stop()
	}
}

// armPhase runs f once, after d, unless worker id (pid) leaves phase
// first, exits (forget) or the state is closed. Only the first call per
// phase arms it.
func (s *notifyState) armPhase(pid int, id supervise.ID, phase workerPhase, d time.Duration, f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.workers[pid]
	if s.closed || phase == phaseNone || w == nil || w.id != id || w.phase != phase || w.phaseTimer != nil {
		return
	}
	w.phaseTimer = time.AfterFunc(d, f)
}

// phaseOf returns the phase of pid and the worker it belongs to.
func (s *notifyState) phaseOf(pid int) (workerPhase, supervise.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.workers[pid]; w != nil {
		return w.phase, w.id
	}
	return phaseNone, supervise.ID{}
}

// stopping reports whether worker id (pid) said STOPPING=1.
func (s *notifyState) stopping(pid int, id supervise.ID) bool {
	ph, wid := s.phaseOf(pid)
	return ph == phaseStopping && wid == id
}

// endReload ends the reload of worker id (pid), as a READY=1 would, and
// reports whether it was still reloading.
func (s *notifyState) endReload(pid int, id supervise.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.workers[pid]
	if s.closed || w == nil || w.id != id || w.phase != phaseReloading {
		return false
	}
	w.phase, w.phaseAt, w.phaseTimer = phaseNone, time.Now(), nil
	return true
}

// applyPhases shows the serving workers' phases in st: a worker that said
// STOPPING=1 (ready or still starting) is SlotStopping, a ready one that
// said RELOADING=1 is SlotReloading, and neither counts in ReadyWorkers.
func (s *notifyState) applyPhases(st *supervise.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range st.Slots {
		sl := &st.Slots[i]
		w := s.workers[sl.PID]
		if sl.PID == 0 || w == nil || w.id != sl.ID {
			continue
		}
		was := sl.State
		switch {
		case w.phase == phaseStopping && (was == supervise.SlotReady || was == supervise.SlotStarting):
			sl.State = supervise.SlotStopping
		case w.phase == phaseReloading && was == supervise.SlotReady:
			sl.State = supervise.SlotReloading
		default:
			continue
		}
		sl.Since = w.phaseAt
		if was == supervise.SlotReady && st.ReadyWorkers > 0 {
			st.ReadyWorkers--
		}
	}
}

// forgotten reports whether forget dropped worker id (pid): a message of
// its own read before its exit and applied after records nothing.
func (s *notifyState) forgotten(pid int, id supervise.ID) bool {
	g, ok := s.gone[pid]
	return ok && g.id == id
}

// get returns the entry of worker id (pid), new if there is none or the
// one there is an earlier worker's whose pid was reused (dropped: none of
// it is id's). The caller checked forgotten.
func (s *notifyState) get(pid int, id supervise.ID) *workerNotify {
	if s.workers == nil {
		s.workers = make(map[int]*workerNotify)
	}
	w := s.workers[pid]
	if w == nil || w.id != id {
		if w != nil {
			w.stopTimers()
		}
		w = &workerNotify{id: id}
		s.workers[pid] = w
	}
	return w
}

// status records a STATUS= of worker id (pid) and logs it, unless
// unchanged, or unless one was logged for that worker less than
// statusInterval ago: then the latest one is logged when the interval
// ends. attrs name the worker. Nothing for a worker forget dropped.
func (s *notifyState) status(log *slog.Logger, pid int, id supervise.ID, text string, attrs ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.forgotten(pid, id) {
		return
	}
	w := s.get(pid, id)
	w.status = text
	if text == w.logged || w.timer != nil {
		return
	}
	wait := statusInterval - time.Since(w.loggedAt)
	if w.loggedAt.IsZero() || wait <= 0 {
		w.logged, w.loggedAt = text, time.Now()
		log.Info("worker status", append(attrs, "status", text)...)
		return
	}
	w.timer = time.AfterFunc(wait, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed || s.workers[pid] != w {
			return
		}
		w.timer = nil
		if w.status != w.logged {
			w.logged, w.loggedAt = w.status, time.Now()
			log.Info("worker status", append(attrs, "status", w.status)...)
		}
	})
}

// lastStatus is the last STATUS= worker id (pid) sent ("" if none).
func (s *notifyState) lastStatus(pid int, id supervise.ID) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.workers[pid]; w != nil && w.id == id {
		return w.status
	}
	return ""
}

// setErrno records an ERRNO= of worker id (pid), unless forget dropped
// it: an errno recorded after would be reported at a later worker's exit.
func (s *notifyState) setErrno(pid int, id supervise.ID, errno int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && !s.forgotten(pid, id) {
		s.get(pid, id).errno = errno
	}
}

// firstExtend reports whether this is worker id's (pid's) first
// EXTEND_TIMEOUT_USEC, to log it once.
func (s *notifyState) firstExtend(pid int, id supervise.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.forgotten(pid, id) {
		return false
	}
	w := s.get(pid, id)
	first := !w.extWarned
	w.extWarned = true
	return first
}

// forget drops exited worker id (pid) and returns its last ERRNO= (0:
// none) and a STATUS= not logged yet, pending true if there is one: an
// empty STATUS= (a clear) held back by the rate limit is one too, and
// the log's last status must not stay the stale one it replaced. A phase
// that belongs to a newer worker with the same pid is kept. The worker's
// tombstone makes a late message of its create no phase.
func (s *notifyState) forget(pid int, id supervise.ID) (errno int, unlogged string, pending bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, "", false
	}
	now := time.Now()
	if len(s.gone) >= 64 {
		for p, g := range s.gone {
			if now.Sub(g.at) > tombstoneTTL {
				delete(s.gone, p)
			}
		}
	}
	if s.gone == nil {
		s.gone = make(map[int]tombstone)
	}
	s.gone[pid] = tombstone{id, now}
	w := s.workers[pid]
	if w == nil || w.id != id {
		return 0, "", false
	}
	delete(s.workers, pid)
	w.stopTimers()
	if w.status != w.logged {
		unlogged, pending = w.status, true
	}
	return w.errno, unlogged, pending
}

// close stops every pending status timer; nothing is logged after it.
func (s *notifyState) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, w := range s.workers {
		w.stopTimers()
	}
	s.workers, s.gone = nil, nil
}
