//go:build linux

package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
	"golang.org/x/sys/unix"
)

// The master's end of the per-worker control channels (docs/protocol.md,
// "Control channel"): one SOCK_STREAM socketpair per worker process, a
// reading goroutine and a writing goroutine with a bounded queue each.

const (
	envControlFD    = "HANDOFF_CONTROL_FD"
	envWatchdogUSec = "WATCHDOG_USEC"
	envWatchdogPID  = "WATCHDOG_PID"
	// HeartbeatFactor is how many heartbeat intervals a ready worker may
	// stay silent before it is killed and replaced. WATCHDOG_USEC, the
	// deadline systemd-style workers see, is Heartbeat*HeartbeatFactor.
	HeartbeatFactor = 3
	// sendQueue bounds the frames waiting for one worker; a worker that
	// does not read its channel makes Send fail with ErrQueueFull instead
	// of growing the master.
	sendQueue = 64
	// maxBinds bounds the listeners workers may have the master bind, so
	// a runaway worker cannot exhaust the master's descriptors.
	maxBinds = 256
	// writeTimeout bounds one frame's write to a worker that stopped
	// reading with its socket buffer full; the channel is then closed.
	writeTimeout = 5 * time.Second
)

// outFrame is one frame queued for a worker; f, if set, is a descriptor
// to pass with it (a listener the master keeps open for the cluster).
type outFrame struct {
	b []byte
	f *os.File
}

// channel is the master's end of one worker's control channel.
type channel struct {
	m    *master
	pid  int
	id   supervise.ID
	conn *scmrights.Conn
	out  chan outFrame
	done chan struct{}
	once sync.Once
	// busy is set while the master handles one of the worker's messages
	// (OnMessage, the log sink, a bind): the master is what is slow then,
	// and the worker must not be killed for the heartbeats queued behind.
	busy atomic.Bool
}

// ctlState is the master's control-channel state (master.ctl).
type ctlState struct {
	mu    sync.Mutex
	chans map[int]*channel // by worker pid
	// beats holds, per worker pid, when it was last heard from;
	// watching the ready workers whose heartbeats are checked.
	beats    map[int]time.Time
	watching map[int]bool
	// procs holds every spawned worker process until its clean-up
	// (workerExited), with a pidfd opened while the worker was certainly
	// unreaped (Launch.Done): the only safe way to kill it later, since its
	// pid may be reaped and reused before the Exited event reaches
	// watchEvents, and the ground truth that it exited when that event was
	// dropped (reconcile).
	procs  map[int]*wproc
	closed bool
	wg     sync.WaitGroup

	// binds caches listeners bound on a worker's request for the
	// cluster's lifetime, by network://address as requested.
	bindMu sync.Mutex
	binds  map[string]*listener
}

// wproc is one worker process the master tracks: its spawn's ID and its
// pidfd (nil if pidfd_open failed).
type wproc struct {
	id    supervise.ID
	pidfd *os.File
}

// prepareChannel creates a spawn's control channel and adds its child end
// to l, right after the listeners (descriptor 3+len(listeners)), with
// HANDOFF_CONTROL_FD and, when heartbeats are on, WATCHDOG_USEC (RunShim
// adds WATCHDOG_PID). l.ExtraFiles holds nothing or exactly the listeners
// (reuseport mode) when it is called; a connection channel must be added
// after it. The child end is closed in l.Done, the master end when the
// worker exits or Run returns.
func (m *master) prepareChannel(id supervise.ID, l *supervise.Launch) error {
	if n := len(l.ExtraFiles); n != 0 && n != len(m.listeners) {
		return fmt.Errorf("cluster: control channel: %d per-spawn descriptors before it, want 0 or %d", n, len(m.listeners))
	}
	conn, remote, err := newChannelPair(unix.SOCK_STREAM)
	if err != nil {
		return fmt.Errorf("cluster: control channel: %w", err)
	}
	fd := listenFDsStart + len(m.listeners)
	l.ExtraFiles = append(l.ExtraFiles, remote)
	l.Env = append(l.Env, envControlFD+"="+strconv.Itoa(fd))
	if hb := m.cfg.Heartbeat; hb > 0 {
		l.Env = append(l.Env, envWatchdogUSec+"="+strconv.FormatInt((hb*HeartbeatFactor).Microseconds(), 10))
	}
	prev := l.Done
	l.Done = func(pid int, err error) {
		remote.Close()
		if err == nil && pid > 0 {
			m.trackPID(pid, id)
		}
		if err != nil || pid <= 0 || !m.addChannel(pid, id, conn) {
			conn.Close()
		}
		if prev != nil {
			prev(pid, err)
		}
	}
	return nil
}

// newChannelPair makes the socketpair of a per-worker channel: the
// master's end as a Conn, the worker's end as the file it inherits.
func newChannelPair(sotype int) (*scmrights.Conn, *os.File, error) {
	local, remote, err := scmrights.Socketpair(sotype)
	if err != nil {
		return nil, nil, err
	}
	conn, err := scmrights.NewConn(local)
	if err != nil {
		local.Close()
		remote.Close()
		return nil, nil, err
	}
	return conn, remote, nil
}

// addChannel starts serving a new worker's channel; false if the master
// is shutting its channels down.
func (m *master) addChannel(pid int, id supervise.ID, conn *scmrights.Conn) bool {
	c := &channel{m: m, pid: pid, id: id, conn: conn, out: make(chan outFrame, sendQueue), done: make(chan struct{})}
	s := &m.ctl
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.chans == nil {
		s.chans = make(map[int]*channel)
	}
	s.chans[pid] = c
	s.wg.Add(2)
	go func() { defer s.wg.Done(); c.read() }()
	go func() { defer s.wg.Done(); c.write() }()
	return true
}

// close shuts the channel down once: the worker sees EOF (master gone,
// for it) only if it also exited or the master stops.
func (c *channel) close() {
	c.once.Do(func() {
		close(c.done)
		c.conn.Close()
		s := &c.m.ctl
		s.mu.Lock()
		if s.chans[c.pid] == c {
			delete(s.chans, c.pid)
		}
		s.mu.Unlock()
	})
}

// trackPID records a worker just spawned, with a pidfd. Launch.Done runs
// before the supervisor starts waiting for the worker, so pid cannot have
// been reaped, let alone reused, yet. A failed pidfd_open is recorded too:
// the worker is then taken as alive until its Exited event.
func (m *master) trackPID(pid int, id supervise.ID) {
	fd, err := unix.PidfdOpen(pid, 0) // close-on-exec
	p := &wproc{id: id}
	if err != nil {
		m.log.Warn("pidfd_open: the worker cannot be killed for a control-channel violation or a missed heartbeat", "pid", pid, "err", err)
	} else {
		p.pidfd = os.NewFile(uintptr(fd), "pidfd")
	}
	s := &m.ctl
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs == nil {
		s.procs = make(map[int]*wproc)
	}
	if old := s.procs[pid]; old != nil && old.pidfd != nil {
		// Only if that worker's clean-up never ran (a pidfd_open that
		// failed kept it alive in the books).
		old.pidfd.Close()
	}
	s.procs[pid] = p
}

// tracks reports whether pid is the tracked worker process id: false once
// its clean-up ran, or when pid names a newer worker.
func (s *ctlState) tracks(pid int, id supervise.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.procs[pid]
	return p != nil && p.id == id
}

// procsByState splits the tracked workers into those whose pidfd reports
// an exit and the others (a worker without a pidfd counts as alive).
func (s *ctlState) procsByState() (exited, alive map[int]supervise.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	exited = make(map[int]supervise.ID)
	alive = make(map[int]supervise.ID, len(s.procs))
	for pid, p := range s.procs {
		if p.pidfd != nil && pidfdDone(p.pidfd) {
			exited[pid] = p.id
		} else {
			alive[pid] = p.id
		}
	}
	return exited, alive
}

// pidfdDone reports whether the process of pidfd f has exited: a pidfd
// polls readable from then on (pidfd_open(2)).
func pidfdDone(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return true
	}
	exited := false
	rc.Control(func(fd uintptr) { exited = pidfdPolled(int(fd)) })
	return exited
}

// pidfdPolled is pidfdDone on a raw pidfd.
func pidfdPolled(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(p, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// workerGone forgets the exited worker process id of pid: its pidfd, its
// control channel and heartbeat records. It is part of workerExited, and
// does nothing for a worker already forgotten or when pid names a newer
// worker (the pid was reaped and reused before a late Exited event).
func (m *master) workerGone(pid int, id supervise.ID) {
	s := &m.ctl
	s.mu.Lock()
	p := s.procs[pid]
	if p != nil && p.id == id {
		if p.pidfd != nil {
			p.pidfd.Close()
		}
		delete(s.procs, pid)
		p = nil
	}
	c := s.chans[pid]
	if c != nil && c.id != id {
		c = nil
	}
	if p == nil {
		delete(s.beats, pid)
		delete(s.watching, pid)
	}
	s.mu.Unlock()
	if c != nil {
		c.close()
	}
}

// closeChannels closes every channel and cached listener and waits for the
// channel goroutines; called when Run returns, every worker being gone.
func (m *master) closeChannels() {
	s := &m.ctl
	s.mu.Lock()
	s.closed = true
	cs := make([]*channel, 0, len(s.chans))
	for _, c := range s.chans {
		cs = append(cs, c)
	}
	for pid, p := range s.procs {
		if p.pidfd != nil {
			p.pidfd.Close()
		}
		delete(s.procs, pid)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.close()
	}
	s.wg.Wait()
	s.bindMu.Lock()
	for _, l := range s.binds {
		l.close()
	}
	s.binds = nil
	s.bindMu.Unlock()
}

func (c *channel) read() {
	err := serveControl(c.conn, 0, func(msg *ctlMsg, _ []int) error { return c.handle(msg) })
	select {
	case <-c.done:
		// Closed by the master: whatever the read said is moot.
		return
	default:
	}
	if err != nil {
		c.m.restartWorker(c.pid, "control channel: "+err.Error())
	}
	c.close()
}

// serveControl reads control frames from conn until EOF and hands each
// decoded message to h with the descriptors that came with it (at most
// maxFDs; h owns them). It returns nil at EOF or when conn is closed, and
// otherwise the first protocol violation: a frame that is not a frame, too
// large, carrying more descriptors than allowed, not a valid message, or
// refused by h. Nothing a peer sends can make it panic or leak a
// descriptor.
func serveControl(conn *scmrights.Conn, maxFDs int, h func(*ctlMsg, []int) error) error {
	r := ipcframe.NewReader(conn, &ipcframe.ReaderOptions{MaxFrame: maxControlFrame, MaxFDs: max(maxFDs, 1), BufferSize: 4 << 10})
	defer r.Close()
	var (
		p   fastjson.Parser
		buf []byte
		fds = make([]int, maxFDs)
	)
	for {
		b, n, err := r.ReadFrameFDs(buf[:0], fds)
		if err != nil {
			// ECONNRESET: the peer exited with frames of ours unread,
			// which is an exit, not a protocol violation.
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, unix.ECONNRESET) {
				return nil
			}
			return err
		}
		buf = b
		msg, err := decodeControl(&p, b)
		if err != nil {
			closeCtlFDs(fds[:n])
			return err
		}
		if err := h(&msg, fds[:n]); err != nil {
			return err
		}
	}
}

func closeCtlFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// handle acts on one message from a worker. An error restarts the worker.
func (c *channel) handle(msg *ctlMsg) error {
	m := c.m
	m.heartbeat(c.pid)
	c.busy.Store(true)
	defer func() {
		c.busy.Store(false)
		// The time the master spent is not the worker's silence.
		m.heartbeat(c.pid)
	}()
	switch msg.Type {
	case msgHeartbeat:
	case msgLog:
		m.logFromWorker(c.pid, msg)
	case msgData:
		if fn := m.cfg.OnMessage; fn != nil {
			fn(Message{Slot: m.slotOf(c.pid), PID: c.pid, Payload: msg.Data})
		}
	case msgListen:
		l, bound, err := m.workerListener(c.pid, msg.Network, msg.Address)
		reply := outFrame{b: appendListened(nil, msg.ID, nameOf(l), err)}
		if err == nil {
			reply.f = l.file
			level := slog.LevelDebug
			if bound {
				level = slog.LevelInfo
			}
			m.log.Log(context.Background(), level, "listening for workers", "slot", m.slotOf(c.pid), "pid", c.pid, "name", l.name, "network", l.addr.Network(), "addr", l.addr.String(), "bound", bound)
		} else {
			m.log.Warn("worker's listen request failed", "slot", m.slotOf(c.pid), "pid", c.pid, "network", msg.Network, "address", msg.Address, "err", err)
		}
		// A reply is never dropped for a full queue: the worker is
		// waiting for it, and its own requests are what fill the queue.
		select {
		case c.out <- reply:
		case <-c.done:
		}
	default:
		return fmt.Errorf("%w: %s is not a worker's message", ErrMessage, msg.Type)
	}
	return nil
}

func nameOf(l *listener) string {
	if l == nil {
		return ""
	}
	return l.name
}

func (c *channel) write() {
	w := ipcframe.NewWriter(c.conn, &ipcframe.WriterOptions{MaxFrame: maxControlFrame})
	for {
		var f outFrame
		select {
		case <-c.done:
			return
		case f = <-c.out:
		}
		c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		var err error
		if f.f == nil {
			err = w.WriteFrame(f.b)
		} else {
			// Not Fd(): that would switch the shared socket to blocking
			// mode. The listener stays open for the cluster's lifetime.
			rc, rerr := f.f.SyscallConn()
			if rerr == nil {
				rerr = rc.Control(func(fd uintptr) { err = w.WriteFrameFDs(f.b, int(fd)) })
			}
			if rerr != nil {
				err = rerr
			}
		}
		if err != nil {
			select {
			case <-c.done:
			default:
				// Not a protocol violation: a worker in another
				// language may never read its channel.
				c.m.log.Warn("control channel to worker closed", "slot", c.m.slotOf(c.pid), "pid", c.pid, "err", err)
			}
			c.close()
			return
		}
	}
}

// workerListener answers a worker's listen request. An address of one of
// the cluster's own listeners (-listen or adopted) gets that very socket (in
// reuseport mode the worker's slot's): a worker whose Ready closed its
// unclaimed inherited copy (TESTPLAN A19) asks for it again later, and a
// bind would fail with EADDRINUSE. No bindPolicy here: the worker had the
// socket already, so even a privileged port gains it nothing. Any other
// address goes to bindShared.
func (m *master) workerListener(pid int, network, address string) (*listener, bool, error) {
	for i, l := range m.listeners {
		if !isListenerAddr(network, address, l.addr) {
			continue
		}
		if m.cfg.Mode != ModeReuseport {
			return l, false, nil
		}
		// Only a set that exists: a worker of a slot scaled away, still
		// in its graceful stop, must not get new sockets into the
		// reuseport group, where they would take connections it resets
		// on exit (see closeRemovedSlots).
		set, ok := m.existingSlotSet(m.slotOf(pid))
		if !ok {
			return nil, false, fmt.Errorf("%w: %s://%s: the worker's slot has no sockets (scaled away)", ErrListen, network, address)
		}
		return set[i], false, nil
	}
	return m.bindShared(network, address)
}

// isListenerAddr reports whether network://address, as a worker sends it,
// names the bound address a. Literals only, never a resolution: the
// address is untrusted input (see bindPolicy). Port 0 never matches: it
// asks for a new socket.
func isListenerAddr(network, address string, a net.Addr) bool {
	var ip net.IP
	var port int
	switch a := a.(type) {
	case *net.UnixAddr:
		return network == "unix" && address != "" && a.Name == address
	case *net.TCPAddr:
		if network != "tcp" {
			return false
		}
		ip, port = a.IP, a.Port
	case *net.UDPAddr:
		if network != "udp" {
			return false
		}
		ip, port = a.IP, a.Port
	default:
		return false
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil || ap.Port() == 0 || int(ap.Port()) != port {
		return false
	}
	bound, ok := netip.AddrFromSlice(ip)
	if !ok || ap.Addr().WithZone("").Unmap() != bound.Unmap() {
		return false
	}
	// Link-local listeners on two interfaces differ only by zone.
	zone, want := ap.Addr().Zone(), addrZone(a)
	return zone == "" || want == "" || zone == want
}

// addrZone is a's IPv6 zone, if any.
func addrZone(a net.Addr) string {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.Zone
	case *net.UDPAddr:
		return a.Zone
	}
	return ""
}

// bindShared returns the listener for network://address, binding it on
// first use (bound says so). Listeners stay bound for the cluster's
// lifetime and serve every worker and generation that asks again; bind
// errors are not cached, so a later request retries.
func (m *master) bindShared(network, address string) (l *listener, bound bool, err error) {
	a, err := ParseAddr(network + "://" + address)
	if err != nil {
		return nil, false, err
	}
	if err := bindPolicy(a, m.cred); err != nil {
		return nil, false, err
	}
	s := &m.ctl
	s.bindMu.Lock()
	defer s.bindMu.Unlock()
	if l := s.binds[a.String()]; l != nil {
		return l, false, nil
	}
	if len(s.binds) >= maxBinds {
		return nil, false, fmt.Errorf("%w: %s: the master already holds %d listeners for workers", ErrListen, a, maxBinds)
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, false, fmt.Errorf("%w: %s: the master is stopping", ErrListen, a)
	}
	if l, err = bindFor(a, true, m.cred); err != nil {
		return nil, false, fmt.Errorf("%w: %s: %w", ErrListen, a, err)
	}
	if err := m.adoptDynamic(l); err != nil {
		l.close()
		return nil, false, err
	}
	if s.binds == nil {
		s.binds = make(map[string]*listener)
	}
	s.binds[a.String()] = l
	return l, true, nil
}

// unprivilegedPortStart is the lowest port the master binds on a
// worker's request; privileged ports are bound only through -listen.
// Where privilege starts is net.ipv4.ip_unprivileged_port_start (per
// network namespace, Linux 4.11), read at each request since an operator
// may change it; 1024, the kernel's default, when it cannot be read. It
// governs IPv6 as well.
func unprivilegedPortStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 65536 {
		return 1024
	}
	return n
}

// bindPolicy refuses what a worker may not have the master bind. The
// master may hold privileges its workers lack (CAP_NET_BIND_SERVICE as a
// file capability, which an exec drops), and what it binds outlives the
// worker, so it binds for a worker only what that worker could bind
// itself, gaining sharing, never privilege:
//   - tcp and udp: an IP literal, never a name (the worker resolves names:
//     a name would make the master query DNS for untrusted input while
//     holding bindMu), and port 0 or an unprivileged one
//     (unprivilegedPortStart);
//   - no control character anywhere (a newline would forge records of
//     the upgrade state, which names these listeners by address);
//   - unix: an absolute, clean path (filepath.Clean leaves it as is: no
//     "." or ".." component, no repeated or trailing slash), since the
//     kernel resolves "link/.." from the symlink's target while every
//     textual check (filepath.Dir) drops both; in an existing directory
//     the workers' user may write and search: the master's real user
//     (access(2), which drops the capabilities a non-root process got
//     from a file), or cred's when workers run as another user
//     (accessAs: a root master could write anywhere); and not one any
//     user may write without the sticky bit, where another user could
//     swap the socket (sockfile). sockfile never replaces a live socket
//     or anything that is no socket.
//
// These checks give the worker a clear error; they resolve the path
// before the bind does, so what enforces them is bindFor, which creates
// the socket file with the worker's rights (listenUnixAs); a root master
// without Credential has root workers, who could create it themselves.
func bindPolicy(a Addr, cred *supervise.Credential) error {
	// ParseAddr refuses these too; the address ends up in the upgrade
	// state, one record a line, where a newline would forge records.
	if i := ctlByte(a.Address); i >= 0 {
		return fmt.Errorf("%w: %q: control character %#x in the address", ErrListen, a.String(), a.Address[i])
	}
	switch a.Network {
	case "tcp", "udp":
		host, port, err := net.SplitHostPort(a.Address)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrListen, a, err)
		}
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%w: %s: the master binds IP addresses only, not names", ErrListen, a)
		}
		if p, _ := strconv.Atoi(port); p != 0 {
			if start := unprivilegedPortStart(); p < start {
				return fmt.Errorf("%w: %s: privileged port; only -listen binds ports below %d", ErrListen, a, start)
			}
		}
	case "unix":
		if !filepath.IsAbs(a.Address) || filepath.Clean(a.Address) != a.Address {
			return fmt.Errorf("%w: %s: not an absolute, clean path (no . or .. component, no repeated or trailing slash)", ErrListen, a)
		}
		dir := filepath.Dir(a.Address)
		var err error
		if cred != nil {
			err = accessAs(cred, dir, unix.W_OK|unix.X_OK)
		} else if err = unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
			err = os.NewSyscallError("access", err)
		}
		if err != nil {
			return fmt.Errorf("%w: %s: directory not writable by the workers' user: %w", ErrListen, a, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrListen, a, os.NewSyscallError("stat", err))
		}
		if st.Mode&unix.S_IWOTH != 0 && st.Mode&unix.S_ISVTX == 0 {
			return fmt.Errorf("%w: %s: directory writable by every user without the sticky bit", ErrListen, a)
		}
	}
	return nil
}

// slotOf returns the slot of a live worker, or -1.
func (m *master) slotOf(pid int) int {
	m.mu.Lock()
	id, ok := m.pids[pid]
	m.mu.Unlock()
	if !ok {
		for _, sl := range m.status().Slots {
			if sl.PID == pid {
				return sl.Slot
			}
		}
		return -1
	}
	return id.Slot
}

// logFromWorker logs a record a worker forwarded, with its slot and pid.
func (m *master) logFromWorker(pid int, msg *ctlMsg) {
	h := m.log.Handler()
	ctx := context.Background()
	if !h.Enabled(ctx, msg.Level) {
		return
	}
	t := msg.Time
	if t.IsZero() {
		t = time.Now()
	}
	r := slog.NewRecord(t, msg.Level, msg.Msg, 0)
	r.AddAttrs(slog.Int("slot", m.slotOf(pid)), slog.Int("pid", pid))
	for _, a := range msg.Attrs {
		// Handlers write duplicate keys as they come, and readers of
		// JSON logs keep the last: a worker's "pid" would otherwise
		// pass its record off as another worker's.
		switch a.Key {
		case "slot", "pid", slog.TimeKey, slog.LevelKey, slog.MessageKey, slog.SourceKey:
			a.Key = "worker." + a.Key
		}
		r.AddAttrs(a)
	}
	h.Handle(ctx, r)
}

// restartWorker SIGKILLs a worker for reason; the supervisor sees an
// unrequested exit, kills what is left of the worker's process group and
// respawns the slot with its backoff. The signal goes through the pidfd
// trackPID opened, never to a bare pid: the supervisor reaps a worker
// before its Exited event reaches watchEvents, so a pid still in m.pids
// (or in a status snapshot) may already name another process, and
// kill(-pid) would hit that process's group. A process group is not
// signalled here for the same reason; supervise, which knows when its
// worker is unreaped, cleans the group up.
func (m *master) restartWorker(pid int, reason string) { m.restartProc(pid, nil, reason) }

// restartProc is restartWorker for worker id only, when id is not nil: a
// timer armed for one worker must not kill a later one that got its pid.
func (m *master) restartProc(pid int, id *supervise.ID, reason string) {
	// Looked up before the kill: its exit event removes the pid.
	attrs := []any{"slot", m.slotOf(pid), "pid", pid}
	m.mu.Lock()
	if id, ok := m.pids[pid]; ok {
		attrs = append(attrs, "generation", id.Generation)
	}
	m.mu.Unlock()
	s := &m.ctl
	var err error = unix.ESRCH
	s.mu.Lock()
	if p := s.procs[pid]; p != nil && p.pidfd != nil && (id == nil || p.id == *id) && !pidfdDone(p.pidfd) {
		f := p.pidfd
		// Under s.mu: workerGone cannot close f meanwhile. A worker
		// that already exited (a frame cut short by its death) is
		// not reported killed.
		if rc, rerr := f.SyscallConn(); rerr == nil {
			rc.Control(func(fd uintptr) { err = unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0) })
		}
	}
	s.mu.Unlock()
	if err != nil {
		// ESRCH: already gone (or not a worker of this master).
		m.log.Debug("worker not killed", "pid", pid, "reason", reason, "err", os.NewSyscallError("pidfd_send_signal", err))
		return
	}
	m.log.Warn("worker killed to be replaced", append(attrs, "reason", reason)...)
}

// heartbeat records a sign of life from a worker: any control message, or
// WATCHDOG=1 from it or a descendant on NOTIFY_SOCKET.
func (m *master) heartbeat(pid int) {
	if m.cfg.Heartbeat <= 0 {
		return
	}
	s := &m.ctl
	s.mu.Lock()
	if s.beats == nil {
		s.beats = make(map[int]time.Time)
	}
	s.beats[pid] = time.Now()
	s.mu.Unlock()
}

// watchHeartbeats kills ready workers that stay silent for
// Heartbeat*HeartbeatFactor, until done is closed. A worker is watched
// from the moment it is ready: before that, StartTimeout applies.
func (m *master) watchHeartbeats(done <-chan struct{}) {
	hb := m.cfg.Heartbeat
	if hb <= 0 {
		return
	}
	limit := hb * HeartbeatFactor
	period := max(hb/2, 5*time.Millisecond)
	t := time.NewTicker(period)
	defer t.Stop()
	s := &m.ctl
	last := time.Now()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		now := time.Now()
		// A late tick means the master itself stood still (a frozen VM,
		// SIGSTOP, heavy reclaim): the heartbeats workers sent meanwhile
		// wait unread in their sockets. That time is not the workers'
		// silence: each watched worker's last beat moves forward by it (no
		// further than now), so silence is measured in the master's own
		// running time, and a master late again and again still judges.
		stood := now.Sub(last) - period
		last = now
		type lateWorker struct {
			pid int
			id  supervise.ID
		}
		var late []lateWorker
		// A worker that said RELOADING=1 still owes its heartbeats; one
		// that said STOPPING=1 does not, as systemd watches a service
		// only while it runs or reloads: the shutdown timeout bounds it.
		st := m.supStatus()
		s.mu.Lock()
		if s.beats == nil {
			s.beats = make(map[int]time.Time)
		}
		if s.watching == nil {
			s.watching = make(map[int]bool)
		}
		live := make(map[int]bool, len(st.Slots))
		for _, sl := range st.Slots {
			if sl.PID == 0 {
				continue
			}
			live[sl.PID] = true
			if sl.State != supervise.SlotReady || m.nstate.stopping(sl.PID, sl.ID) {
				continue
			}
			if c := s.chans[sl.PID]; c != nil && c.busy.Load() {
				s.beats[sl.PID] = now
				continue
			}
			if !s.watching[sl.PID] {
				// The full deadline counts from readiness: a beat from
				// before (a slow start) must not make a worker late at
				// once.
				s.watching[sl.PID] = true
				s.beats[sl.PID] = now
				continue
			}
			beat := s.beats[sl.PID]
			if stood > 0 && beat.Before(now) {
				if beat = beat.Add(stood); beat.After(now) {
					beat = now
				}
				s.beats[sl.PID] = beat
			}
			if now.Sub(beat) > limit {
				late = append(late, lateWorker{sl.PID, sl.ID})
				// Not again before it is replaced.
				s.beats[sl.PID] = now.Add(24 * time.Hour)
			}
		}
		// Forget workers that left the slots (their Exited event may have
		// been dropped), so the maps stay as small as the cluster.
		for pid := range s.beats {
			if !live[pid] && s.chans[pid] == nil {
				delete(s.beats, pid)
				delete(s.watching, pid)
			}
		}
		s.mu.Unlock()
		for _, w := range late {
			// By identity: the worker may have exited since the
			// snapshot, and its pid gone to another.
			m.restartProc(w.pid, &w.id, "no heartbeat for "+limit.String())
		}
	}
}

// send queues payload for the serving worker of slot.
func (m *master) send(slot int, payload []byte) error {
	if len(payload) > MaxMessage {
		return fmt.Errorf("%w: %d bytes, over %d", ErrTooLarge, len(payload), MaxMessage)
	}
	for _, sl := range m.status().Slots {
		if sl.Slot == slot && sl.PID != 0 {
			return m.sendPID(sl.PID, appendData(nil, payload))
		}
	}
	return fmt.Errorf("%w: slot %d", ErrNoWorker, slot)
}

// broadcast queues payload for the serving worker of every slot.
func (m *master) broadcast(payload []byte) error {
	if len(payload) > MaxMessage {
		return fmt.Errorf("%w: %d bytes, over %d", ErrTooLarge, len(payload), MaxMessage)
	}
	st, err := m.supervisor()
	if err != nil {
		return err
	}
	b := appendData(nil, payload)
	var errs []error
	for _, sl := range st.Status().Slots {
		if sl.PID != 0 {
			if err := m.sendPID(sl.PID, b); err != nil {
				errs = append(errs, fmt.Errorf("slot %d: %w", sl.Slot, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (m *master) sendPID(pid int, b []byte) error {
	s := &m.ctl
	s.mu.Lock()
	c := s.chans[pid]
	s.mu.Unlock()
	if c == nil {
		return fmt.Errorf("%w: pid %d has no control channel", ErrNoWorker, pid)
	}
	select {
	case c.out <- outFrame{b: b}:
		return nil
	case <-c.done:
		return fmt.Errorf("%w: pid %d has no control channel", ErrNoWorker, pid)
	default:
		return fmt.Errorf("%w: pid %d", ErrQueueFull, pid)
	}
}

// adoptDynamic hands a listener bound on a worker's request to the mode:
// in handoff mode the master accepts on it like on -listen ones.
func (m *master) adoptDynamic(l *listener) error { return m.handoffAdd(l) }
