//go:build linux

package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
	"golang.org/x/sys/unix"
)

// envControlListen carries the control socket across an in-place exec of
// the master: "FD:DEV:INO", the listening descriptor in the new image and
// the device and inode of the socket file it is bound to (a socket
// descriptor's own fstat names sockfs, not the file, and Close must unlink
// only the file this cluster created). Set by the upgrade path through
// controlExecEnv, read and removed by openControl.
const envControlListen = "HANDOFF_CONTROL_LISTEN"

// Control server limits.
const (
	// maxControlClients bounds the connections served at once. A client
	// beyond it takes the place of the connection idle the longest, if one
	// has been idle for controlEvictAfter with no request queued; else it
	// waits for one to be, and further ones wait in the listen backlog.
	// Rejected peers never take a place.
	maxControlClients = 8
	// controlIdleTimeout bounds the wait for a client's next request,
	// controlWriteTimeout the write of one response.
	controlIdleTimeout  = 30 * time.Second
	controlWriteTimeout = 5 * time.Second
	// maxControlRequestsPerConn bounds one connection's requests.
	maxControlRequestsPerConn = 1 << 16
	// controlDrainTimeout is how long closing the server waits for
	// requests in progress before closing their connections.
	controlDrainTimeout = 3 * time.Second
	// controlEvictAfter is how long a connection must have been idle
	// before a new client may take its place.
	controlEvictAfter = time.Second
)

// controlState is the master's control-socket state: the server, if
// Config.Control is set, and the last exit of every slot, which
// supervise.Status does not keep. The zero value is ready to use.
type controlState struct {
	mu    sync.Mutex
	srv   *controlServer
	exits map[int]ControlExit
}

// recordExit keeps ev, an Exited event, as its slot's last exit.
func (c *controlState) recordExit(ev supervise.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exits == nil {
		c.exits = make(map[int]ControlExit)
	}
	c.exits[ev.ID.Slot] = ControlExit{PID: ev.PID, Code: ev.Code, Signal: ev.Signal, Requested: ev.Requested, Time: ev.Time.UTC()}
}

func (c *controlState) lastExit(slot int) *ControlExit {
	c.mu.Lock()
	defer c.mu.Unlock()
	x, ok := c.exits[slot]
	if !ok {
		return nil
	}
	return &x
}

func (c *controlState) server() *controlServer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.srv
}

// controlBackend carries out control requests: a single-command *master,
// or the *fleet of a -config process.
type controlBackend interface {
	controlStatus() *ControlStatus
	// controlDo carries out every request but "status"; ctx is done when
	// the client that sent it hangs up, and a backend may then stop
	// waiting (for a remote host's answer).
	controlDo(ctx context.Context, req *sockMsg) error
}

// controlServer serves the control socket.
type controlServer struct {
	b        controlBackend
	log      *slog.Logger
	ul       *net.UnixListener
	path     string
	dev, ino uint64
	// closeListener closes ul, unlinks path if the file there is still
	// dev/ino, and releases the path's lock.
	closeListener func() error
	uid, euid     uint32
	sem           chan struct{}
	warn          warnLimiter

	mu      sync.Mutex
	conns   map[*net.UnixConn]*controlConn
	closing bool
	wg      sync.WaitGroup
}

// controlConn is the state of one served connection, guarded by
// controlServer.mu.
type controlConn struct {
	busy    bool      // a request is being handled
	evicted bool      // its place went to a newer client
	idle    time.Time // when it last waited for a request
}

// openControl creates (or adopts, after an in-place exec) the control
// socket named by Config.Control. Called by newMaster; nothing is served
// before Run.
func (m *master) openControl() error {
	inherited, isInherited := os.LookupEnv(envControlListen)
	if isInherited {
		// Workers must not see it, whatever happens next.
		os.Unsetenv(envControlListen)
	}
	path := m.cfg.Control
	if path == "" {
		if isInherited {
			m.log.Warn("control socket: inherited descriptor ignored (no control path configured)", "value", inherited)
		}
		return nil
	}
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return fmt.Errorf("cluster: control socket: %w: %s", sockfile.ErrPathTooLong, path)
	}
	if isInherited {
		srv, lockErr, err := adoptControl(path, inherited)
		if err == nil {
			m.setControl(srv)
			m.log.Info("control socket adopted", "path", path)
			if errors.Is(lockErr, sockfile.ErrNotSocket) {
				m.log.Warn("control socket: adopted, but its lock file is not a regular file: the socket file is left in place at exit", "path", path, "lock", path+".lock", "err", lockErr)
			} else if lockErr != nil {
				m.log.Warn("control socket: adopted, but not its lock file", "path", path, "lock", path+".lock", "err", lockErr)
			}
			return nil
		}
		m.log.Warn("control socket: inherited descriptor not adopted; creating the socket anew", "err", err)
	}
	srv, err := createControl(path)
	if err != nil {
		return err
	}
	m.setControl(srv)
	m.log.Info("control socket", "path", path)
	return nil
}

// createControl creates the control socket at path, in a directory that
// checkControlDir accepts.
func createControl(path string) (*controlServer, error) {
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("cluster: control socket: %w: %s", sockfile.ErrPathTooLong, path)
	}
	if err := checkControlDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	// sockfile gives the stale-socket recovery, live-socket protection,
	// lock, mode 0600 under any umask, and unlink-only-our-inode.
	sl, err := sockfile.Listen(path, nil)
	if err != nil {
		return nil, fmt.Errorf("cluster: control socket: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		sl.Close()
		return nil, fmt.Errorf("cluster: control socket: %w", &os.PathError{Op: "lstat", Path: path, Err: err})
	}
	return newControlServer(sl.UnixListener(), path, uint64(st.Dev), uint64(st.Ino), sl.Close), nil
}

func (m *master) setControl(srv *controlServer) {
	srv.b, srv.log = m, m.log
	m.csock.mu.Lock()
	m.csock.srv = srv
	m.csock.mu.Unlock()
}

func newControlServer(ul *net.UnixListener, path string, dev, ino uint64, closeListener func() error) *controlServer {
	return &controlServer{
		ul: ul, path: path, dev: dev, ino: ino, closeListener: closeListener,
		uid: uint32(os.Getuid()), euid: uint32(os.Geteuid()),
		sem:   make(chan struct{}, maxControlClients),
		conns: make(map[*net.UnixConn]*controlConn),
	}
}

// checkControlDir makes sure dir is a directory of the master's user that
// nobody else may enter or list, creating it (0700) if it is missing. The
// socket's own 0600 mode is set by sockfile; the directory closes the window
// in which a socket has the umask's mode, and keeps others from even
// learning the socket's name.
func checkControlDir(dir string) error {
	var st unix.Stat_t
	err := unix.Lstat(dir, &st)
	if err == unix.ENOENT {
		if err = unix.Mkdir(dir, 0o700); err == nil {
			// The umask can only have removed bits; make it exact.
			err = unix.Chmod(dir, 0o700)
		}
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("cluster: control socket directory: %w", &os.PathError{Op: "mkdir", Path: dir, Err: err})
		}
		err = unix.Lstat(dir, &st)
	}
	if err != nil {
		return fmt.Errorf("cluster: control socket directory: %w", &os.PathError{Op: "lstat", Path: dir, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%w: %s is not a directory (a symlink is refused too)", ErrUnsafeControlDir, dir)
	}
	if euid := uint32(os.Geteuid()); st.Uid != euid {
		return fmt.Errorf("%w: %s is owned by uid %d, not by the master's uid %d", ErrUnsafeControlDir, dir, st.Uid, euid)
	}
	if perm := st.Mode & 0o7777; perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %#o; group and others must have no access (0700)", ErrUnsafeControlDir, dir, perm)
	}
	return nil
}

// adoptControl takes over the control socket an earlier image of this
// process passed across exec (envControlListen). The descriptor must be a
// listening AF_UNIX stream socket bound to path, and path must still be the
// socket file it names. A descriptor that is not such a socket is left
// untouched (it may be anything; it is close-on-exec by then, so it reaches
// no worker); one that is, but is not adopted for any other reason (its
// file gone or replaced, the path unreadable, no descriptor left for a
// duplicate) is closed: the master then creates the socket anew, whose
// stale-socket probe must not find this one still listening, and kept open
// it would hold a listening socket, and its backlog, for the master's
// lifetime. lockErr says why PATH.lock was not locked again (see
// sockfile.Adopt): the socket is served anyway.
func adoptControl(path, value string) (srv *controlServer, lockErr error, err error) {
	f := strings.Split(value, ":")
	if len(f) != 3 {
		return nil, nil, fmt.Errorf("%s=%.64q: want FD:DEV:INO", envControlListen, value)
	}
	fd, err1 := strconv.Atoi(f[0])
	dev, err2 := strconv.ParseUint(f[1], 10, 64)
	ino, err3 := strconv.ParseUint(f[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || fd < 3 || fd > 1<<20 {
		return nil, nil, fmt.Errorf("%s=%.64q: want FD:DEV:INO with FD >= 3", envControlListen, value)
	}
	// sockfile checks that fd is a listening unix stream socket bound to
	// path and that path is still its file, and takes the lock on
	// PATH.lock again (the previous image's died with its close-on-exec
	// descriptor), so a starting instance cannot replace the socket
	// between its check and our unlink at exit. Best effort: without it
	// the live socket still refuses a second instance (sockfile sees it
	// accept connections).
	sl, err := sockfile.Adopt(fd, path, dev, ino, nil)
	if errors.Is(err, sockfile.ErrNotListener) {
		return nil, nil, err
	}
	// sl, if any, works on a duplicate.
	unix.Close(fd)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (descriptor %d closed)", err, fd)
	}
	return newControlServer(sl.UnixListener(), path, dev, ino, sl.Close), sl.LockErr(), nil
}

// controlListenerFile returns a duplicate of the control socket's listening
// descriptor (close-on-exec set), for the in-place exec of the master, or
// nil if the master has no control socket. The caller passes it to the new
// image at some descriptor number n, without close-on-exec, together with
// controlExecEnv(n).
func (m *master) controlListenerFile() (*os.File, error) {
	srv := m.csock.server()
	if srv == nil {
		return nil, nil
	}
	f, err := srv.ul.File()
	if err != nil {
		return nil, fmt.Errorf("cluster: control socket: %w", err)
	}
	return f, nil
}

// controlExecEnv is the environment entry telling the new image that its
// descriptor fd is the control socket ("" if the master has none).
func (m *master) controlExecEnv(fd int) string {
	srv := m.csock.server()
	if srv == nil {
		return ""
	}
	return envControlListen + "=" + strconv.Itoa(fd) + ":" + strconv.FormatUint(srv.dev, 10) + ":" + strconv.FormatUint(srv.ino, 10)
}

// closeControl closes the control socket, unlinking it; for New's error
// paths and Close, when Run never served it. It is idempotent.
func (m *master) closeControl() {
	m.csock.mu.Lock()
	srv := m.csock.srv
	m.csock.srv = nil
	m.csock.mu.Unlock()
	if srv != nil {
		srv.shutdown()
	}
}

// startControl serves the control socket until the returned function is
// called; that function closes the socket, lets requests in progress
// finish (bounded), and waits for every connection's goroutine.
func (m *master) startControl() (stop func()) {
	srv := m.csock.server()
	if srv == nil {
		return func() {}
	}
	srv.wg.Add(1)
	go srv.serve()
	return m.closeControl
}

// scaleTo sets the number of slots to n.
func (m *master) scaleTo(n int) error {
	s, err := m.supervisor()
	if err != nil {
		return err
	}
	m.grp.mu.Lock()
	defer m.grp.mu.Unlock()
	if m.grp.suspended { // group_linux.go
		return m.scaleSuspended(n)
	}
	// As in scaleBy: new workers are spawned before the Scaled event and
	// their HANDOFF_WORKERS must already count them.
	prev := m.workers.Swap(int64(n))
	if err := s.Scale(n); err != nil {
		m.workers.Store(prev)
		return err
	}
	return nil
}

// controlStatus builds the status response from the supervisor's snapshot
// and the exits the master recorded.
func (m *master) controlStatus() *ControlStatus {
	st := m.status()
	out := &ControlStatus{
		PID: os.Getpid(), Generation: st.Generation, Restarting: st.Restarting,
		Workers: st.Workers, ReadyWorkers: st.ReadyWorkers,
		Slots:          make([]ControlSlot, 0, len(st.Slots)),
		MaxRunningTime: m.maxRunningTime(),
	}
	now := time.Now()
	for _, sl := range st.Slots {
		cs := ControlSlot{Slot: sl.Slot, PID: sl.PID, State: sl.State, Restarts: sl.Restarts, LastExit: m.csock.lastExit(sl.Slot),
			ID: m.workerID(sl.Slot), Index: m.cfg.GroupIndexBase + sl.Slot}
		if sl.PID != 0 {
			cs.Generation = sl.ID.Generation
			cs.Status = m.nstate.lastStatus(sl.PID, sl.ID)
			// How long the serving worker has run: Since moves with the
			// slot's state (ready, stopping), Started does not.
			if !sl.Started.IsZero() {
				cs.Uptime = max(now.Sub(sl.Started), 0)
			}
		}
		out.Slots = append(out.Slots, cs)
	}
	return out
}

func (s *controlServer) serve() {
	defer s.wg.Done()
	for {
		uc, err := s.ul.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: say so, and do not spin.
			s.warn.warn(s.log, "control socket: accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		cred, err := peerCred(uc)
		if err != nil || (cred.Uid != 0 && cred.Uid != s.uid && cred.Uid != s.euid) {
			// Closed before anything is read: the peer gets no byte
			// (ECONNRESET if it already wrote), and its request, unread,
			// changes nothing (TESTPLAN A16).
			uc.Close()
			if err != nil {
				s.warn.warn(s.log, "control socket: peer credentials", "err", err)
			} else {
				s.warn.warn(s.log, "control socket: peer rejected (only root and the master's user may connect)", "peer_pid", cred.Pid, "peer_uid", cred.Uid)
			}
			continue
		}
		// A place: at the limit, idle clients (a program keeping a
		// ControlClient open) must not lock out the operator's command
		// for controlIdleTimeout, so the longest idle one gives its place
		// up. When every place is in a request, wait for one to end or to
		// turn idle (a connection just answered is busy until it waits
		// for its next request, so one attempt is not enough).
		if !s.takePlace() {
			uc.Close()
			return
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			uc.Close()
			<-s.sem
			return
		}
		s.conns[uc] = &controlConn{idle: time.Now()}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(uc, cred)
			s.mu.Lock()
			delete(s.conns, uc)
			s.mu.Unlock()
			uc.Close()
			<-s.sem
		}()
	}
}

// takePlace takes a place for a new connection, making room by closing
// idle ones while the server is full. It returns false if the server is
// closing.
func (s *controlServer) takePlace() bool {
	for {
		select {
		case s.sem <- struct{}{}:
			return true
		default:
		}
		s.mu.Lock()
		closing := s.closing
		s.mu.Unlock()
		if closing {
			return false
		}
		s.evictIdle()
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case s.sem <- struct{}{}:
			t.Stop()
			return true
		case <-t.C:
		}
	}
}

// evictIdle ends the connection that has waited longest for a request, if
// any connection is waiting: its read fails at once, and serveConn, seeing
// it evicted, returns. Its client finds the connection closed; a
// ControlClient dials again for its next request.
func (s *controlServer) evictIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		oldest *net.UnixConn
		since  time.Time
	)
	now := time.Now()
	for c, st := range s.conns {
		if st.evicted {
			// Its place is on the way: one is enough.
			return
		}
		// A client that just got its answer is about to send its next
		// request (a script polling status), and one whose request is
		// already queued is not idle: closing either would fail a
		// request in progress.
		if !st.busy && now.Sub(st.idle) >= controlEvictAfter && (oldest == nil || st.idle.Before(since)) && !requestQueued(c) {
			oldest, since = c, st.idle
		}
	}
	if oldest == nil {
		return
	}
	s.conns[oldest].evicted = true
	_ = oldest.SetReadDeadline(time.Unix(1, 0))
	s.log.Debug("control socket: idle connection closed for a new client", "idle", time.Since(since).Round(time.Millisecond))
}

// requestQueued reports whether bytes wait in uc's receive queue.
func requestQueued(uc *net.UnixConn) bool {
	raw, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	if err := raw.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	}); err != nil {
		return false
	}
	return n > 0
}

// peerCred returns the credentials the kernel recorded for the peer at
// connect(2) (SO_PEERCRED): they cannot be forged by the peer.
func peerCred(uc *net.UnixConn) (*unix.Ucred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, os.NewSyscallError("getsockopt", cerr)
	}
	return cred, nil
}

// serveConn answers uc's requests, one frame each, until it closes, errs,
// idles too long, or the server closes.
func (s *controlServer) serveConn(uc *net.UnixConn, cred *unix.Ucred) {
	// *net.UnixConn has no descriptor-receiving method, so the Reader uses
	// plain reads: the kernel discards descriptors sent along, and a frame
	// declaring some is dropped (ErrNoFDTransport) and answered with an
	// error.
	r := ipcframe.NewReader(uc, &ipcframe.ReaderOptions{MaxFrame: maxControlRequest, BufferSize: 4096})
	defer r.Close()
	w := ipcframe.NewWriter(uc, &ipcframe.WriterOptions{MaxFrame: maxControlResponse})
	var (
		p   fastjson.Parser
		req sockMsg
		in  []byte
		out []byte
	)
	for range maxControlRequestsPerConn {
		s.mu.Lock()
		st := s.conns[uc]
		if s.closing || st.evicted {
			s.mu.Unlock()
			return
		}
		// Idle since registration or since its last answer was ready
		// (set there, not here: this goroutine may run late).
		st.busy = false
		// Set with mu held, so that shutdown and evictIdle, which set a
		// past deadline on idle connections, are not undone.
		err := uc.SetReadDeadline(time.Now().Add(controlIdleTimeout))
		s.mu.Unlock()
		if err != nil {
			return
		}
		in, err = r.ReadFrame(in[:0])
		s.mu.Lock()
		st.busy = true
		s.mu.Unlock()
		final := false
		switch {
		case err == nil:
			if derr := decodeSockMsg(&p, in, &req); derr != nil {
				out = appendSockMsg(out[:0], &sockMsg{Type: "error", Code: ControlCodeBadRequest, Error: derr.Error()})
			} else {
				out = s.handle(out[:0], &req, cred, uc)
			}
		case errors.Is(err, ipcframe.ErrFrameDropped):
			out = appendSockMsg(out[:0], &sockMsg{Type: "error", Code: ControlCodeBadRequest, Error: err.Error()})
		case errors.Is(err, ipcframe.ErrBadHeader), errors.Is(err, ipcframe.ErrFrameTooLarge):
			// The stream cannot be resynchronised: say why, then close.
			out = appendSockMsg(out[:0], &sockMsg{Type: "error", Code: ControlCodeBadRequest, Error: err.Error()})
			final = true
		default:
			// EOF, a timeout, a reset: nothing to answer.
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
				s.log.Debug("control socket: connection ended", "peer_pid", cred.Pid, "err", err)
			}
			return
		}
		if err := uc.SetWriteDeadline(time.Now().Add(controlWriteTimeout)); err != nil {
			return
		}
		// Idle from the answer on: the client may connect another client
		// the moment it reads it, and must find this one evictable.
		s.mu.Lock()
		st.busy, st.idle = false, time.Now()
		s.mu.Unlock()
		if len(out) > maxControlResponse {
			// Silence would read as a refused peer to the client: say
			// what happened instead.
			s.log.Warn("control socket: answer too large", "type", req.Type, "bytes", len(out), "limit", maxControlResponse)
			out = appendSockMsg(out[:0], &sockMsg{Type: "error", Code: ControlCodeFailed, Error: fmt.Sprintf("answer of %d bytes exceeds the %d-byte limit", len(out), maxControlResponse)})
		}
		if err := w.WriteFrame(out); err != nil || final {
			return
		}
	}
}

// controlDo carries out a request for a single-command master, which has
// no groups.
func (m *master) controlDo(_ context.Context, req *sockMsg) error {
	if req.Group != "" || req.Type == "suspend" || req.Type == "resume" {
		return fmt.Errorf("%w: %s: this master runs no groups (no -config)", ErrControlInvalid, req.Type)
	}
	switch req.Type {
	case "restart":
		return m.restart()
	case "stop":
		return m.stop()
	case "scale":
		return m.scaleTo(req.Workers)
	case "send":
		return m.send(req.Slot, req.Data)
	case "broadcast":
		return m.broadcast(req.Data)
	case "max_running_time":
		return m.setMaxRunningTime(req.MaxRunning)
	}
	return fmt.Errorf("%w: type %q is not a request", ErrControlProtocol, req.Type)
}

// handle carries out one request, received on uc, and appends the
// response.
func (s *controlServer) handle(dst []byte, req *sockMsg, cred *unix.Ucred, uc *net.UnixConn) []byte {
	var attrs []any
	if req.Group != "" {
		attrs = append(attrs, "group", req.Group)
	}
	switch req.Type {
	case "status":
		// A fleet with thousands of workers and long STATUS= texts
		// outgrows the response limit: answer with less rather than an
		// error, so that status still works for it.
		out, left := fitStatus(s.b.controlStatus(), maxControlResponse-len(dst), func(st *ControlStatus) []byte {
			return appendSockMsg(dst, &sockMsg{Type: "status", Status: st})
		})
		if left != nil {
			s.warn.warn(s.log, "control socket: status too large; left out "+strings.Join(left, ", "), "bytes", len(out), "limit", maxControlResponse)
		}
		return out
	case "scale":
		s.log.Info("control: scale requested", append(attrs, "workers", req.Workers, "peer_pid", cred.Pid, "peer_uid", cred.Uid)...)
	case "restart", "stop", "suspend", "resume":
		s.log.Info("control: "+req.Type+" requested", append(attrs, "peer_pid", cred.Pid, "peer_uid", cred.Uid)...)
	case "max_running_time":
		s.log.Info("control: max running time requested", append(attrs, "max_running_time", req.MaxRunning, "peer_pid", cred.Pid, "peer_uid", cred.Uid)...)
	case "send":
		s.log.Debug("control: send", append(attrs, "slot", req.Slot, "bytes", len(req.Data), "peer_pid", cred.Pid)...)
	case "broadcast":
		s.log.Debug("control: broadcast", append(attrs, "bytes", len(req.Data), "peer_pid", cred.Pid)...)
	default:
		return appendSockMsg(dst, &sockMsg{Type: "error", Code: ControlCodeBadRequest, Error: "type " + strconv.Quote(req.Type) + " is not a request"})
	}
	// A restart may wait long for remote hosts' answers (up to the
	// shutdown timeout + 10 s): while its client is there it holds one of
	// the maxControlClients places, but a client that gave up (timed out,
	// interrupted) must not keep it, or a stalled agent would soon hold
	// every place, and status of every group with them. The other
	// requests' waits are not cut short (a state change must learn its
	// outcome), so they need no watch.
	ctx := context.Background()
	if req.Type == "restart" {
		var stop func()
		ctx, stop = watchHangup(uc)
		defer stop()
	}
	if err := s.b.controlDo(ctx, req); err != nil {
		if ctx.Err() != nil {
			s.log.Info("control: client went away before the answer", append(attrs, "type", req.Type, "err", err)...)
		}
		return appendSockMsg(dst, &sockMsg{Type: "error", Code: controlErrorCode(err), Error: err.Error()})
	}
	return appendSockMsg(dst, &sockMsg{Type: "ok"})
}

// watchHangup returns a context cancelled once the peer of uc hangs up
// (POLLHUP: it closed its end; a client that only shut down its sending
// side still reads the answer) or the connection fails,
// while a request is being handled. stop ends the watch, and must be
// called before uc is read again: the watch holds uc's read side.
// Nothing is read: a request the client sent meanwhile stays queued.
func watchHangup(uc *net.UnixConn) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx, cancel
	}
	// serveConn's idle deadline, set before it read the request, would end
	// the watch when it passes, long before a restart's wait may end: the
	// connection is busy now (evictIdle and shutdown leave it alone), and
	// serveConn sets the next deadline after stop.
	_ = uc.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Read calls the function first, then each time the netpoller
		// finds uc readable (the runtime's epoll registration includes
		// EPOLLRDHUP), until it returns true or the deadline stop sets
		// passes.
		_ = raw.Read(func(fd uintptr) bool {
			for {
				pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
				n, err := unix.Poll(pfd, 0)
				if err == unix.EINTR {
					continue
				}
				// POLLHUP, not POLLRDHUP alone: a client that shut down
				// its sending side (socat, nc -N) still reads the
				// answer. POLLRDHUP is asked for so that the poller
				// wakes for it, and again when the client closes.
				if err != nil || (n > 0 && pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0) {
					cancel()
					return true
				}
				return false
			}
		})
	}()
	return ctx, func() {
		// A past deadline ends the Read (serveConn sets the next one).
		_ = uc.SetReadDeadline(time.Unix(1, 0))
		<-done
		cancel()
	}
}

// shutdown closes the listener (unlinking the socket file if it is still
// ours), unblocks idle connections at once, gives requests in progress
// controlDrainTimeout to answer, then closes what is left and waits.
func (s *controlServer) shutdown() {
	s.mu.Lock()
	s.closing = true
	for c, st := range s.conns {
		if !st.busy {
			_ = c.SetReadDeadline(time.Unix(1, 0))
		}
	}
	s.mu.Unlock()
	if err := s.closeListener(); err != nil {
		s.log.Warn("control socket: close", "path", s.path, "err", err)
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(controlDrainTimeout):
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-done
}
