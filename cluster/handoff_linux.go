//go:build linux

package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// handoff is the master's side of handoff mode: one accept loop per
// listener on the runtime netpoller, and the connection channel of every
// worker process. Connections are delivered to the subscribed worker with
// the fewest unacknowledged ones (ties in turn), never more than hoWindow
// to one worker, and never with a send that could block: a worker whose
// channel is full is skipped, so it cannot stall the others. A batch no
// worker can take waits in the master (at most hoMaxBatch connections per
// listener; the accept loop pauses meanwhile and the kernel's backlog holds
// the rest) and is never dropped while the master runs.
type handoff struct {
	log *slog.Logger

	mu      sync.Mutex
	lns     []*hoListener
	byName  map[string]int
	workers []*hoWorker
	// doomed: workers killed for breaking the protocol, or whose channel
	// failed, out of the rotation; their exit report (exited, sweep)
	// rescues what they never read, as for any worker that dies.
	doomed []*hoWorker
	// heldWs are the workers handoffCarried held, for resume: one gone
	// since is on no other list.
	heldWs  []*hoWorker
	rr      int
	started bool
	stopped bool
	wg      sync.WaitGroup
	// wake is closed, and replaced, when a worker can take more (an ack,
	// a subscription, a new worker): every waiting dispatcher retries.
	wake chan struct{}
	done chan struct{}
	warn warnLimiter
	// fdShort is when (hoClock) an accept last failed for lack of
	// descriptors, or 0: for hoShortFor after it, the workers' channels
	// are read with a peek first (see hoRecv).
	fdShort atomic.Int64
	// gate: a worker is sent connections only once ready (-ready
	// notify), so one that hangs or dies before READY=1 holds none.
	// Guarded by mu. (A worker's channel is registered by the spawn's
	// Done, on the supervisor's loop, which also serves MarkReadyPID: its
	// READY=1 cannot come first.)
	gate bool

	// pmu guards the pause of an in-place upgrade (pause, resume): while
	// paused no accept loop calls accept, and busy counts the accept loops
	// and give-backs that hold connections not yet delivered.
	pmu     sync.Mutex
	paused  bool
	busy    int
	idle    chan struct{} // closed when busy drops to 0 while paused
	resumed chan struct{} // closed by resume
}

// hoListener is one listening socket the master accepts on.
type hoListener struct {
	idx  int
	name string
	l    *listener
	f    *os.File // non-blocking duplicate, on the poller; nil until start
}

// hoWorker is one worker process's connection channel.
type hoWorker struct {
	pid, slot int
	conn      *scmrights.Conn
	rc        syscall.RawConn
	pidfd     int // -1 if it could not be opened
	// adopted: a worker of the image before an in-place upgrade. It
	// cannot report to this image (its NOTIFY_SOCKET is the old one's),
	// so ready and away stay as the old image left them.
	adopted bool
	// retired: an adopted worker out of the rotation: sent nothing, its
	// acks, UNSUBs and give-backs served. Adopted workers the old image
	// described (handoffCarry) serve until this image's workers are ready
	// (handoffRetireOld); the others are retired from the start. Set under
	// mu, which every send holds.
	retired atomic.Bool
	// ready: the worker reported ready (see handoff.gate).
	ready atomic.Bool
	// away: the worker said STOPPING=1, or RELOADING=1 and not READY=1
	// since: it is sent nothing new (setAway). Set under mu too, so no
	// send that began before is still under way once setAway returns.
	away atomic.Bool

	out atomic.Int64 // connections delivered and not yet acknowledged

	// held: an exec's state records what was sent to w (handoffCarried),
	// so w is sent nothing more until the exec failed (resume): a send
	// the state misses would put the new image's count of what it sent
	// behind the worker's, and past the worker's grant. Set and cleared
	// under mu (setHeld), which every send holds; w's reader reads it
	// without (take, awaitUnheld).
	held atomic.Bool
	// While held, w's reader takes nothing off the channel either: what
	// the worker sends after the state recorded its subscriptions (an
	// UNSUB, a SUB, acks) stays queued for the new image to read, or for
	// this one after resume, so the record stays true and no DONE is sent
	// for an UNSUB the new image will not know of. busy: the reader took
	// (or peeked at) a message and has not done with it; handoffCarried
	// waits on idle for that. Without a lock: the reader sets busy, then
	// reads held; handoffCarried sets held, then reads busy. Atomics being
	// sequentially consistent, one of them sees the other's store: the
	// reader backs off, or handoffCarried waits for it. The reader takes
	// mu only while held is set (to wake handoffCarried, or to wait for
	// the hold's end): mu is what every send to w holds, and a lock per
	// message received had acks contend with deliveries.
	busy atomic.Bool
	idle sync.Cond // L is &mu

	mu   sync.Mutex // serialises sends; guards the fields below
	subs []bool     // by listener index
	dead bool
	// unheld is closed when the hold ends (nil while not held).
	unheld chan struct{}
	// peer is the master's copy of the worker's end of the channel (-1
	// once taken; for an adopted worker, the old image's, if it had one). Held, it keeps what the
	// master sent and the worker never read queued after the worker dies,
	// where rescue takes it back, instead of the last close resetting
	// those connections.
	// It is a raw descriptor, off the runtime's poller: it is never
	// waited on, and registered it would wake the poller on every send.
	peer int
	// peerIno identifies the worker's end in its /proc/<pid>/fd (see
	// watch); heard is when the worker last sent anything (hoClock).
	peerIno uint64
	heard   atomic.Int64
	// owed lists the DONEs the worker is owed, in order: its channel was
	// full when an UNSUB asked for one. They are sent before anything else,
	// by the next send or by a retry (flushing: one is scheduled).
	owed     []hoOwed
	flushing bool
	// sent counts the connections sent (modulo 2³²); while limited, the
	// worker's last grant allows sending up to limit (see hoGrant): it is
	// short of descriptors.
	sent, limit uint32
	limited     bool
	buf         []byte
	// The non-blocking send's arguments (payload, control data) and
	// result, bound once so RawConn.Write does not allocate a closure per
	// message; oob is the buffer reused for the SCM_RIGHTS control message.
	p, ctl, oob []byte
	err         error
	fn          func(fd uintptr) bool
}

// hoBatch is up to hoMaxBatch connections of one listener.
type hoBatch struct {
	lidx    int
	name    string // the listener's, so sends need not read h.lns
	n       int
	fds     [hoMaxBatch]int
	addrEnd [hoMaxBatch]int
	addrs   []byte
	err     error
	// resumed is set, instead of accepting, while the master is paused.
	resumed <-chan struct{}
}

func (b *hoBatch) reset(lidx int, name string) {
	b.lidx, b.name, b.n, b.addrs, b.err, b.resumed = lidx, name, 0, b.addrs[:0], nil, nil
}

func (b *hoBatch) addr(i int) []byte {
	start := 0
	if i > 0 {
		start = b.addrEnd[i-1]
	}
	return b.addrs[start:b.addrEnd[i]]
}

func (b *hoBatch) push(fd int, addr []byte) {
	b.addrs = append(b.addrs, addr...)
	b.fds[b.n], b.addrEnd[b.n] = fd, len(b.addrs)
	b.n++
}

// drop removes the first k connections (delivered).
func (b *hoBatch) drop(k int) {
	base := b.addrEnd[k-1]
	copy(b.fds[:], b.fds[k:b.n])
	for i := k; i < b.n; i++ {
		b.addrEnd[i-k] = b.addrEnd[i] - base
	}
	b.addrs = b.addrs[:copy(b.addrs, b.addrs[base:])]
	b.n -= k
}

func (b *hoBatch) closeAll() {
	for _, fd := range b.fds[:b.n] {
		unix.Close(fd)
	}
	b.n = 0
}

// appendSockaddr formats an accepted peer's address without allocating.
func appendSockaddr(dst []byte, sa unix.Sockaddr) []byte {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).AppendTo(dst)
	case *unix.SockaddrInet6:
		// An IPv4 client of a dual-stack listener arrives as
		// ::ffff:a.b.c.d; the net package, whose RemoteAddr the worker's
		// connection reports, writes it as plain IPv4.
		ip := netip.AddrFrom16(a.Addr).Unmap()
		if a.ZoneId != 0 && ip.Is6() {
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				ip = ip.WithZone(ifi.Name)
			}
		}
		return netip.AddrPortFrom(ip, uint16(a.Port)).AppendTo(dst)
	case *unix.SockaddrUnix:
		if a.Name == "@" {
			// An unbound client: x/sys renders its empty address as an
			// abstract one.
			return dst
		}
		return append(dst, a.Name...)
	}
	return dst
}

func newHandoff(m *master) *handoff {
	h := &handoff{log: m.log, byName: map[string]int{}, wake: make(chan struct{}, 1), done: make(chan struct{}),
		gate: m.cfg.Ready == ReadyNotify}
	for _, l := range m.listeners {
		h.lns = append(h.lns, &hoListener{idx: len(h.lns), name: l.name, l: l})
		h.byName[l.name] = len(h.lns) - 1
	}
	return h
}

// handoffAdd makes the master accept on l too, in handoff mode (a
// listener a worker asked for at run time); in other modes it does
// nothing. l stays the caller's.
func (m *master) handoffAdd(l *listener) error {
	if m.mode.ho == nil {
		return nil
	}
	return m.mode.ho.add(l)
}

// handoffPause prepares handoff mode for an in-place exec: the master
// stops accepting (new connections wait in the kernel's backlog, which
// the listening sockets keep across the exec) and delivers to workers
// every connection it already accepted or was given back, waiting up to d
// for that. On nil it holds none: nothing accepted is lost by an execve
// that follows at once. On an error it is still paused; call
// handoffResume (and give up the exec, or accept that the connections the
// error counts are reset). In other modes it does nothing.
func (m *master) handoffPause(d time.Duration) error {
	if m.mode.ho == nil {
		return nil
	}
	return m.mode.ho.pause(d)
}

// handoffResume undoes handoffPause and handoffCarried's hold (an exec
// that failed); it does nothing if neither is in force.
func (m *master) handoffResume() {
	if m.mode.ho != nil {
		m.mode.ho.resume()
	}
}

func (h *handoff) add(l *listener) error {
	if err := modeAllows(ModeHandoff, l.addr.Network()); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return net.ErrClosed
	}
	if _, ok := h.byName[l.name]; ok {
		return nil
	}
	hl := &hoListener{idx: len(h.lns), name: l.name, l: l}
	if h.started {
		if err := h.open(hl); err != nil {
			return err
		}
	}
	h.lns = append(h.lns, hl)
	h.byName[l.name] = hl.idx
	return nil
}

// open puts a duplicate of the listener on the netpoller and starts its
// accept loop. O_NONBLOCK belongs to the open file description, so the
// workers' copies (descriptors 3..) become non-blocking too.
func (h *handoff) open(hl *hoListener) error {
	fd, err := scmrights.Dup(hl.l.file)
	if err != nil {
		return err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("fcntl", err)
	}
	hl.f = os.NewFile(uintptr(fd), hl.name)
	h.wg.Add(1)
	go h.acceptLoop(hl)
	return nil
}

func (h *handoff) start() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.started = true
	h.wg.Add(1)
	go h.watch()
	for _, hl := range h.lns {
		if err := h.open(hl); err != nil {
			h.log.Error("handoff: cannot accept on listener", "name", hl.name, "err", err)
		}
	}
}

// stop ends every accept loop and channel; connections still held by the
// master are closed (as a listener's backlog is reset when it closes).
func (h *handoff) stop() {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.stopped = true
	close(h.done)
	for _, hl := range h.lns {
		if hl.f != nil {
			hl.f.Close()
		}
	}
	ws := slices.Concat(h.workers, h.doomed)
	h.workers, h.doomed = nil, nil
	h.mu.Unlock()
	for _, w := range ws {
		w.close()
	}
	h.wg.Wait()
	// A doomed worker's reader may have ended long ago, leaving its peer
	// copy and pidfd to the rescue that now never comes.
	for _, w := range ws {
		w.release()
	}
}

func (h *handoff) wakeCh() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.wake
}

func (h *handoff) signal() {
	h.mu.Lock()
	close(h.wake)
	h.wake = make(chan struct{})
	h.mu.Unlock()
}

func (h *handoff) acceptLoop(hl *hoListener) {
	defer h.wg.Done()
	rc, err := hl.f.SyscallConn()
	if err != nil {
		h.log.Error("handoff: listener", "name", hl.name, "err", err)
		return
	}
	b := &hoBatch{addrs: make([]byte, 0, 64*hoMaxBatch)}
	fn := func(fd uintptr) bool { return h.acceptInto(b, int(fd)) }
	backoff := time.Duration(0)
	var timer *time.Timer
	var servers []*hoWorker
	for {
		// Nothing is accepted for a listener no ready worker serves: a
		// batch taken then would wait in the master, and keep an upgrade's
		// pause from ever succeeding, while the kernel's backlog keeps the
		// connections as well, across an exec too.
		var ok bool
		if servers, ok = h.awaitServer(hl, servers); !ok {
			return
		}
		b.reset(hl.idx, hl.name)
		if err := rc.Read(fn); err != nil {
			if b.n > 0 {
				b.closeAll()
				h.leave()
			}
			return // closed by stop
		}
		if b.resumed != nil {
			// Paused for an upgrade: new connections wait in the kernel's
			// backlog, which the listener keeps across the exec.
			select {
			case <-h.done:
				return
			case <-b.resumed:
			}
			continue
		}
		if b.err != nil {
			// EMFILE, ENFILE, ENOBUFS: the connection stays queued in the
			// kernel and the listener stays readable; back off (5 ms
			// doubling to 1 s, as TESTPLAN E1 asks) rather than spin on it.
			h.warn.warn(h.log, "handoff: accept", "name", hl.name, "err", os.NewSyscallError("accept4", b.err))
			if b.err == unix.EMFILE || b.err == unix.ENFILE {
				h.fdShort.Store(hoClock())
			}
			backoff = min(max(2*backoff, hoAcceptBackoffMin), hoAcceptBackoffMax)
		} else {
			backoff = 0
		}
		if b.n > 0 {
			ok := h.dispatch(b)
			if !ok {
				b.closeAll()
			}
			h.leave()
			if !ok {
				return
			}
		}
		if b.err != nil {
			if timer == nil {
				timer = time.NewTimer(backoff)
			} else {
				timer.Reset(backoff)
			}
			select {
			case <-h.done:
				timer.Stop()
				return
			case <-timer.C:
			}
		}
	}
}

// awaitServer waits until a ready worker subscribes to listener hl; false
// if the master stopped first. ws is scratch space, returned for reuse.
//
// Ready workers that take nothing from hl for hoUnservedAfter are a
// mistake the master cannot see otherwise: a worker that reads LISTEN_FDS
// itself instead of calling cluster.Listen, or that listens on other
// addresses only. Its clients wait in the backlog with no error anywhere,
// so that is logged once, until a worker serves hl again. The delay
// leaves a worker its time to subscribe after READY=1.
func (h *handoff) awaitServer(hl *hoListener, ws []*hoWorker) ([]*hoWorker, bool) {
	var since time.Time // ready workers not serving hl first seen
	var timer *time.Timer
	warned := false
	for {
		// Taken before looking, so a subscription in between is not missed.
		wake := h.wakeCh()
		h.mu.Lock()
		ws = append(ws[:0], h.workers...)
		h.mu.Unlock()
		others := 0
		for _, w := range ws {
			// The test candidates applies, without turning the rotation.
			if !w.retired.Load() && w.ready.Load() && !w.away.Load() {
				if w.subscribed(hl.idx) {
					if warned {
						h.log.Info("handoff: a worker serves the listener again", "name", hl.name)
					}
					if timer != nil {
						timer.Stop()
					}
					return ws, true
				}
				others++
			}
		}
		var due <-chan time.Time
		switch {
		case others == 0:
			since = time.Time{}
		case warned:
		case since.IsZero():
			since = time.Now()
			fallthrough
		default:
			if left := hoUnservedAfter - time.Since(since); left > 0 {
				if timer == nil {
					timer = time.NewTimer(left)
				} else {
					timer.Reset(left)
				}
				due = timer.C
				break
			}
			warned = true
			h.log.Warn("handoff: no worker takes connections from this listener; its clients wait in the kernel's backlog. "+
				"Under -mode handoff a worker takes them by calling cluster.Listen for the address (a worker that uses "+
				"LISTEN_FDS itself needs -mode shared or reuseport)",
				"name", hl.name, "ready_workers", others, "for", time.Since(since).Round(time.Millisecond))
		}
		select {
		case <-h.done:
			if timer != nil {
				timer.Stop()
			}
			return ws, false
		case <-wake:
		case <-due:
		}
	}
}

// subscribed says whether w, alive, subscribes to listener idx.
func (w *hoWorker) subscribed(idx int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.dead && idx < len(w.subs) && w.subs[idx]
}

// hoUnservedAfter is how long ready workers may leave a listener unserved
// before the master warns (a variable for tests).
var hoUnservedAfter = 5 * time.Second

const (
	// hoAcceptBackoff bounds the pause after accept failed for lack of
	// descriptors or memory; it doubles while the failure lasts.
	hoAcceptBackoffMin = 5 * time.Millisecond
	hoAcceptBackoffMax = time.Second
)

// acceptInto is the accept loop's poller callback: it fills b unless the
// master is paused. A batch that holds connections keeps h busy until the
// loop delivered it (leave).
func (h *handoff) acceptInto(b *hoBatch, fd int) bool {
	h.pmu.Lock()
	if h.paused {
		b.resumed = h.resumed
		h.pmu.Unlock()
		return true
	}
	h.busy++
	h.pmu.Unlock()
	// accept4 goes through RawSyscall and must never sleep. open set
	// O_NONBLOCK, but the flag belongs to the open file description every
	// worker shares as descriptor 3..: a worker that clears it (a blocking
	// accept, os.File.Fd) would leave accept4 asleep after the queue
	// drained, holding its P, so the batch waits for more connections and
	// any stop-the-world waits with it. One fcntl per wake-up restores it.
	if restored, err := ensureNonblock(fd); err != nil {
		b.err = err
	} else {
		if restored {
			h.warn.warn(h.log, "handoff: a listener was made blocking, presumably by a worker; set non-blocking again", "name", b.name)
		}
		b.acceptAll(fd)
	}
	done := b.n > 0 || b.err != nil
	if b.n == 0 {
		h.leave()
	}
	return done
}

// hold counts connections held outside an accept loop (a give-back) until
// leave, paused or not: they must reach a worker before an exec.
func (h *handoff) hold() {
	h.pmu.Lock()
	h.busy++
	h.pmu.Unlock()
}

func (h *handoff) leave() {
	h.pmu.Lock()
	h.busy--
	if h.busy == 0 && h.idle != nil {
		close(h.idle)
		h.idle = nil
	}
	h.pmu.Unlock()
}

// pause stops every accept loop from accepting (connections then wait in
// the kernel's backlog) and waits up to d until every connection the master
// already accepted, or was given back, has been delivered to a worker. On
// nil the master holds no connection, and holds none until resume unless a
// worker gives some back meanwhile. On an error (no worker could take them
// in time, or the master stopped) it stays paused, still delivering; the
// caller calls resume. pause may be called again while paused.
func (h *handoff) pause(d time.Duration) error {
	// A worker that died moments ago may not be reported yet: what it
	// never read is rescued now, counted below, rather than lost with the
	// exec that closes the master's copies of the workers' ends.
	h.sweep()
	h.pmu.Lock()
	if !h.paused {
		h.paused = true
		h.resumed = make(chan struct{})
	}
	if h.busy == 0 {
		h.pmu.Unlock()
		return nil
	}
	if h.idle == nil {
		h.idle = make(chan struct{})
	}
	idle, busy := h.idle, h.busy
	h.pmu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-idle:
		return nil
	case <-h.done:
		return fmt.Errorf("cluster: handoff pause: %w", net.ErrClosed)
	case <-t.C:
		return fmt.Errorf("cluster: handoff pause: %d accept loops or give-backs still hold connections no worker took within %v", busy, d)
	}
}

// resume lets the accept loops accept again after pause, and workers an
// exec's state recorded (held) be sent connections again.
func (h *handoff) resume() {
	h.pmu.Lock()
	if h.paused {
		h.paused = false
		close(h.resumed)
	}
	h.pmu.Unlock()
	held := false
	// The workers held by handoffCarried, also those gone meanwhile: out
	// of every list, a gone one's reader still waits for the hold to end
	// before it drains and closes its channel.
	h.mu.Lock()
	ws := slices.Concat(h.workers, h.doomed, h.heldWs)
	h.heldWs = nil
	h.mu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		held = held || w.held.Load()
		w.setHeld(false)
		// The DONEs the exec's state carried are this image's again.
		retry := len(w.owed) > 0 && !w.flushing && !w.dead
		w.flushing = w.flushing || retry
		w.mu.Unlock()
		if retry {
			h.flushLater(w)
		}
	}
	if held {
		// A give-back may wait for them (dispatch).
		h.signal()
	}
}

// acceptAll drains the accept queue, up to a batch: one wake-up of the
// poller serves every connection that queued up meanwhile.
func (b *hoBatch) acceptAll(fd int) bool {
	for b.n < hoMaxBatch {
		// Blocking: the worker's os.NewFile then leaves it off its poller,
		// and net.FileConn puts only its own duplicate there.
		var rsa unix.RawSockaddrAny
		nfd, salen, err := accept4(fd, &rsa, unix.SOCK_CLOEXEC)
		switch err {
		case nil:
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EAGAIN:
			return b.n > 0
		default:
			b.err = err
			return true
		}
		var tmp [64]byte
		b.push(nfd, appendRawSockaddr(tmp[:0], &rsa, salen))
	}
	return true
}

// accept4 is accept4(2) leaving the peer's address raw. x/sys's Accept4
// converts it, which for an inet address costs an allocation and a
// getsockopt(SO_PROTOCOL) on the listener (to tell L2TP apart): one system
// call more per connection on the master's hot path.
//
// The listener is non-blocking (acceptInto sees to it on every wake-up),
// so accept4 never sleeps: RawSyscall skips the scheduler's
// entersyscall/exitsyscall, whose first call after an idle spell also
// wakes the runtime's sysmon thread (a futex wake and a train of 20 µs
// sleeps). The master goes idle between most connections, so that was a
// wake-up per connection; the channel sendmsg and the close of the
// master's copies avoid it the same way.
func accept4(fd int, rsa *unix.RawSockaddrAny, flags int) (int, uint32, error) {
	n := uint32(unix.SizeofSockaddrAny)
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(rsa)), uintptr(unsafe.Pointer(&n)), uintptr(flags), 0, 0)
	if e != 0 {
		return -1, 0, e
	}
	return int(r), n, nil
}

// ensureNonblock sets O_NONBLOCK on fd unless it is set, and says whether
// it had to. fcntl's F_GETFL and F_SETFL never sleep (see accept4).
func ensureNonblock(fd int) (bool, error) {
	fl, _, e := unix.RawSyscall(unix.SYS_FCNTL, uintptr(fd), unix.F_GETFL, 0)
	if e != 0 {
		return false, e
	}
	if fl&unix.O_NONBLOCK != 0 {
		return false, nil
	}
	if _, _, e := unix.RawSyscall(unix.SYS_FCNTL, uintptr(fd), unix.F_SETFL, fl|unix.O_NONBLOCK); e != 0 {
		return false, e
	}
	return true, nil
}

// appendRawSockaddr formats the first n bytes of rsa, an address accept4
// returned, as appendSockaddr does.
func appendRawSockaddr(dst []byte, rsa *unix.RawSockaddrAny, n uint32) []byte {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		if n < unix.SizeofSockaddrInet4 {
			return dst
		}
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		sa := unix.SockaddrInet4{Port: netPort(p.Port), Addr: p.Addr}
		return appendSockaddr(dst, &sa)
	case unix.AF_INET6:
		if n < unix.SizeofSockaddrInet6 {
			return dst
		}
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		sa := unix.SockaddrInet6{Port: netPort(p.Port), ZoneId: p.Scope_id, Addr: p.Addr}
		return appendSockaddr(dst, &sa)
	case unix.AF_UNIX:
		p := (*unix.RawSockaddrUnix)(unsafe.Pointer(rsa))
		path := unsafe.Slice((*byte)(unsafe.Pointer(&p.Path[0])), len(p.Path))
		l := min(int(n)-int(unsafe.Offsetof(p.Path)), len(path))
		if l <= 0 {
			return dst // an unbound client
		}
		path = path[:l]
		abstract := path[0] == 0
		if abstract {
			path = path[1:]
		}
		if i := bytes.IndexByte(path, 0); i >= 0 {
			path = path[:i]
		}
		if abstract && len(path) > 0 {
			// Written with a leading @, as x/sys and net do.
			dst = append(dst, '@')
		}
		return append(dst, path...)
	}
	return dst
}

// netPort reads a port stored in network byte order.
func netPort(p uint16) int {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return int(b[0])<<8 | int(b[1])
}

// dispatch delivers every connection of b, waiting while no worker can
// take them. It returns false if the master stopped first; the
// connections left in b are then the caller's to close.
func (h *handoff) dispatch(b *hoBatch) bool {
	var cands []*hoWorker
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for b.n > 0 {
		// Taken before trying, so a wake-up in between is not missed.
		wake := h.wakeCh()
		cands = h.candidates(cands[:0])
		progress, full := false, false
		for _, w := range cands {
			k := min(b.n, hoWindow-int(w.out.Load()))
			if k <= 0 {
				continue
			}
			if hoBeforeSend != nil {
				hoBeforeSend()
			}
			sent, res, err := w.send(b, k)
			switch res {
			case sendOK:
				b.drop(sent)
				progress = true
			case sendFull:
				full = true
			case sendDead:
				// Whoever marked it dead (exit, stop, a violation)
				// takes care of the rest.
				h.unlist(w)
			case sendBroken:
				h.broken(w, err)
			}
			if b.n == 0 {
				return true
			}
		}
		if progress {
			continue
		}
		// An ack, a grant or a new subscriber wakes us at once; a full
		// channel drains without a message, so it is polled.
		var poll <-chan time.Time
		if full {
			if timer == nil {
				timer = time.NewTimer(time.Millisecond)
			} else {
				timer.Reset(time.Millisecond)
			}
			poll = timer.C
		}
		select {
		case <-h.done:
			return false
		case <-wake:
		case <-poll:
		}
	}
	return true
}

// markReady lets the worker process pid be sent connections: it reported
// ready. Until then its subscriptions wait (see gate).
func (h *handoff) markReady(pid int) {
	h.mu.Lock()
	found := false
	for _, w := range h.workers {
		// An adopted worker's reports go to the old image's socket; its
		// pid, once reaped, may be a new worker's.
		if w.pid == pid && !w.adopted {
			found = true
			w.ready.Store(true)
		}
	}
	h.mu.Unlock()
	if found {
		h.signal()
	}
}

// setAway takes the worker process pid out of the rotation (away) or puts
// it back, as its STOPPING=1, RELOADING=1 or READY=1 after a reload asks.
// Unlike remove, it leaves the worker's channel alone: what it was sent is
// its own to serve, its acks and give-backs are read, and its exit
// rescues what it never read (gone).
func (h *handoff) setAway(pid int, away bool) {
	h.mu.Lock()
	var ws []*hoWorker
	for _, w := range h.workers {
		if w.pid == pid && !w.adopted {
			ws = append(ws, w)
		}
	}
	h.mu.Unlock()
	for _, w := range ws {
		// Under the lock every send holds: none to w is in flight
		// once this returns.
		w.mu.Lock()
		w.away.Store(away)
		w.mu.Unlock()
	}
	if len(ws) > 0 && !away {
		h.signal()
	}
}

// candidates lists the live, ready workers not away, fewest unacknowledged connections
// first, starting the scan at a rotating index so ties take turns.
func (h *handoff) candidates(dst []*hoWorker) []*hoWorker {
	h.mu.Lock()
	n := len(h.workers)
	if n > 0 {
		h.rr = (h.rr + 1) % n
		for i := range n {
			dst = append(dst, h.workers[(h.rr+i)%n])
		}
	}
	h.mu.Unlock()
	dst = slices.DeleteFunc(dst, func(w *hoWorker) bool { return w.retired.Load() || !w.ready.Load() || w.away.Load() })
	// Insertion sort, stable: a handful of workers.
	for i := 1; i < len(dst); i++ {
		for j := i; j > 0 && dst[j].out.Load() < dst[j-1].out.Load(); j-- {
			dst[j], dst[j-1] = dst[j-1], dst[j]
		}
	}
	return dst
}

type sendResult int

const (
	sendOK     sendResult = iota
	sendSkip              // not subscribed, or no room granted
	sendFull              // the channel is full
	sendDead              // the channel is gone
	sendBroken            // the send failed otherwise: the worker is marked dead
)

// send tries to deliver the first k connections of b in one message,
// without blocking, fewer if the worker's grant allows fewer, and returns
// how many it sent. On success the master's copies are closed. A DONE the
// worker is owed goes first. sendBroken comes with the error, for broken.
func (w *hoWorker) send(b *hoBatch, k int) (int, sendResult, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dead {
		return 0, sendDead, nil
	}
	if b.lidx >= len(w.subs) || !w.subs[b.lidx] || w.away.Load() || w.retired.Load() || w.held.Load() {
		return 0, sendSkip, nil
	}
	// The window is checked again here, under mu: dispatchers of several
	// listeners may each have seen room for the same connections, and out
	// only grows under mu.
	room := min(w.room(), hoWindow-int(w.out.Load()))
	if room <= 0 {
		return 0, sendSkip, nil
	}
	if res, err := w.flushOwed(); res != sendOK {
		return 0, res, err
	}
	k = min(k, room)
	w.buf = hoAppendHeader(w.buf[:0], hoConns, k)
	for i := range k {
		w.buf = hoAppendEntry(w.buf, b.name, b.addr(i))
	}
	w.oob = scmrights.PutRights(w.oob, b.fds[:k])
	// Counted before the send: the worker may accept and ack them before
	// sendmsg returns here.
	w.out.Add(int64(k))
	if res, err := w.trySend(w.buf, w.oob); res != sendOK {
		w.out.Add(-int64(k))
		return 0, res, err
	}
	w.sent += uint32(k)
	for _, fd := range b.fds[:k] {
		closeCopy(fd)
	}
	return k, sendOK, nil
}

// trySend sends one message without blocking; w.mu is held. A failure
// other than a full channel marks w dead (sendBroken).
func (w *hoWorker) trySend(p, ctl []byte) (sendResult, error) {
	w.p, w.ctl, w.err = p, ctl, nil
	err := w.rc.Write(w.fn)
	if err == nil {
		err = w.err
	}
	w.p, w.ctl = nil, nil
	switch {
	case err == nil:
		return sendOK, nil
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOBUFS),
		// The kernel short of memory (a cgroup at its limit), or of
		// descriptors in flight (a master that is not root may have no
		// more than RLIMIT_NOFILE in flight, which the workers' reads
		// bring down): both pass, so the channel counts as full.
		errors.Is(err, unix.ENOMEM), errors.Is(err, unix.ETOOMANYREFS):
		return sendFull, nil
	}
	w.dead = true
	return sendBroken, os.NewSyscallError("sendmsg", err)
}

// hoOwed is a run of n DONEs of one name owed to a worker; an in-place
// upgrade carries them (handoffCarry.owed).
type hoOwed = owedRun

// hoMaxOwed bounds the runs of DONEs of one name owed to a worker: a
// worker that reads its channel is owed none for long, and one that sends
// UNSUBs without reading costs the master a count, not memory, as long as
// it names one listener after another no more than that many times, and
// no more than hoMaxOwedRun times in a row. Both are what an upgrade
// state's "o" records carry (maxCarryOwed, maxCarryOwedRun): a worker
// owed more could not be handed over.
const (
	hoMaxOwed    = maxCarryOwed
	hoMaxOwedRun = maxCarryOwedRun
)

// owe sends the DONE for name that an UNSUB (or a SUB of an unknown name)
// asked for, without blocking: if the channel is full it is owed, and sent
// before anything else once there is room. idx >= 0 is the listener to
// unsubscribe from first, under the same lock every send holds, so nothing
// of that listener follows the DONE. An error means w broke the protocol.
func (h *handoff) owe(w *hoWorker, idx int, name []byte) error {
	w.mu.Lock()
	if idx >= 0 && idx < len(w.subs) {
		w.subs[idx] = false
	}
	if w.dead {
		w.mu.Unlock()
		return nil
	}
	res, err := sendFull, error(nil)
	switch {
	case !w.held.Load():
		res, err = w.flushOwed()
	case len(w.owed) > 0:
		// Held, what is owed is the exec's state's, for the new image to
		// send: it is not sent here, and this one goes after it. (Held
		// here means the message was taken just before the hold began:
		// handoffCarried waits for it to be handled, so the state records
		// this DONE too, and resume restarts the flushing.)
	default:
		res = sendOK
	}
	if res == sendOK {
		w.buf = hoAppendName(w.buf[:0], hoDone, string(name))
		res, err = w.trySend(w.buf, nil)
	}
	if res == sendFull {
		// Every UNSUB gets its DONE, however many of a name: the worker
		// pairs them in order (a DONE missing would leave a later one
		// taken for the refusal of its next SUB).
		switch k := len(w.owed); {
		case k > 0 && w.owed[k-1].name == string(name) && w.owed[k-1].n >= hoMaxOwedRun:
			w.mu.Unlock()
			return fmt.Errorf("more than %d UNSUBs of a listener without reading the channel", hoMaxOwedRun)
		case k > 0 && w.owed[k-1].name == string(name):
			w.owed[k-1].n++
		case k >= hoMaxOwed:
			w.mu.Unlock()
			return fmt.Errorf("%d listeners unsubscribed without reading the channel", k+1)
		default:
			w.owed = append(w.owed, hoOwed{string(name), 1})
		}
	}
	retry := len(w.owed) > 0 && !w.flushing && !w.held.Load()
	w.flushing = w.flushing || retry
	w.mu.Unlock()
	if res == sendBroken {
		h.broken(w, err)
	}
	if retry {
		h.flushLater(w)
	}
	return nil
}

// flushOwed sends the DONEs w is owed, in order; w.mu is held. sendOK
// means none is left.
func (w *hoWorker) flushOwed() (sendResult, error) {
	for len(w.owed) > 0 {
		w.buf = hoAppendName(w.buf[:0], hoDone, w.owed[0].name)
		if res, err := w.trySend(w.buf, nil); res != sendOK {
			return res, err
		}
		if w.owed[0].n--; w.owed[0].n == 0 {
			w.owed = w.owed[1:]
		}
	}
	w.owed = nil
	return sendOK, nil
}

// hoFlush bounds the wait between tries of a DONE owed to a worker whose
// channel is full: it doubles, as the worker seems slow to read.
const (
	hoFlushMin = time.Millisecond
	hoFlushMax = 100 * time.Millisecond
)

// flushLater sends w's owed DONEs once its channel has room: a full
// channel drains without a message, so it is polled, and a worker waiting
// for its DONE reads.
func (h *handoff) flushLater(w *hoWorker) {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	go func() {
		defer h.wg.Done()
		d := hoFlushMin
		t := time.NewTimer(d)
		defer t.Stop()
		for {
			select {
			case <-h.done:
				return
			case <-t.C:
			}
			w.mu.Lock()
			res, err := sendDead, error(nil)
			if !w.dead && !w.held.Load() {
				res, err = w.flushOwed()
			}
			// Held: left to the new image, or to resume.
			if res != sendFull {
				w.flushing = false
			}
			w.mu.Unlock()
			switch res {
			case sendFull:
				d = min(2*d, hoFlushMax)
				t.Reset(d)
				continue
			case sendBroken:
				h.broken(w, err)
			}
			return
		}
	}()
}

// broken restarts a worker whose channel failed for a reason that does not
// pass (send marked it dead): it can no longer be sent connections, so it
// is killed and the supervisor replaces it. What it never read is rescued
// when its exit is reported; its reader goes on serving what it sends.
func (h *handoff) broken(w *hoWorker, err error) {
	h.log.Error("handoff: cannot send to worker; restarting it", "slot", w.slot, "pid", w.pid, "err", err)
	w.kill(h.log)
	if !h.doom(w) {
		h.unlist(w)
	}
}

// doom moves w, killed, from the rotation to the doomed until its exit is
// reported; false (nothing done) if w has no peer copy, so nothing to
// rescue, or the master stopped.
func (h *handoff) doom(w *hoWorker) bool {
	w.mu.Lock()
	keep := w.peer >= 0
	w.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !keep || h.stopped {
		return false
	}
	if i := slices.Index(h.workers, w); i >= 0 {
		h.workers = slices.Delete(h.workers, i, i+1)
	}
	if !slices.Contains(h.doomed, w) {
		h.doomed = append(h.doomed, w)
	}
	return true
}

// room is how many more connections w's grant allows; w.mu is held.
func (w *hoWorker) room() int {
	if !w.limited {
		return math.MaxInt
	}
	// Serial arithmetic: a grant behind what was sent is no room.
	return max(0, int(int32(w.limit-w.sent)))
}

// closeCopy closes the master's copy of a delivered connection. The worker
// holds its own reference by now, so close(2) only drops ours and never
// sleeps, and RawSyscall spares the scheduler (see accept4). The exception
// is a socket with SO_LINGER on that the worker already served and closed:
// ours is then the last reference, and close waits for the peer to
// acknowledge the FIN, which must not happen while holding a P (a
// stop-the-world would wait for it). Such a socket gets the ordinary call.
func closeCopy(fd int) {
	if lingers(fd) {
		unix.Close(fd)
		return
	}
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// lingers says whether the socket fd has SO_LINGER on (or cannot tell).
func lingers(fd int) bool {
	var l unix.Linger
	n := uint32(unsafe.Sizeof(l))
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), uintptr(unsafe.Pointer(&n)), 0)
	return e != 0 || l.Onoff != 0
}

// hoBeforeSend, if set, runs in dispatch between sizing a send to a
// worker and making it (tests: dispatchers that size theirs at once).
var hoBeforeSend func()

// hoSendFault, if set, runs before each of the master's sends on a
// channel; a non-zero result fails the send with that errno (tests).
var hoSendFault func() unix.Errno

// write is the non-blocking sendmsg: it never parks on the poller, so a
// worker that does not read cannot hold up the dispatcher.
func (w *hoWorker) write(fd uintptr) bool {
	iov := unix.Iovec{Base: unsafe.SliceData(w.p)}
	iov.SetLen(len(w.p))
	msg := unix.Msghdr{Iov: &iov, Iovlen: 1, Control: unsafe.SliceData(w.ctl)}
	msg.SetControllen(len(w.ctl))
	for {
		if hoSendFault != nil {
			if e := hoSendFault(); e != 0 {
				w.err = e
				return true
			}
		}
		// MSG_DONTWAIT: never sleeps, so RawSyscall (see accept4).
		_, _, e := unix.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			w.err = e
		}
		return true
	}
}

// subscribe turns w's subscription to listener idx on. A DONE of that
// listener still owed stays owed, and goes first: it answers an UNSUB
// the worker sent before this SUB, and the worker waits for it (were it
// dropped, the next DONE of the name, for a later UNSUB, would be taken
// for it, and a DONE then missing for that one would be taken for the
// refusal of a SUB).
func (w *hoWorker) subscribe(idx int) {
	w.mu.Lock()
	for len(w.subs) <= idx {
		w.subs = append(w.subs, false)
	}
	w.subs[idx] = true
	w.mu.Unlock()
}

func (w *hoWorker) close() {
	w.mu.Lock()
	w.dead = true
	w.mu.Unlock()
	w.conn.Close()
}

// prepare creates a spawn's connection channel: the worker's end becomes
// descriptor fdnum, named by HANDOFF_CONN_FD; the master's end is
// registered once the spawn succeeded, and closed if it failed.
func (h *handoff) prepare(id supervise.ID, fdnum int, l *supervise.Launch) error {
	conn, remote, err := newChannelPair(unix.SOCK_SEQPACKET)
	if err != nil {
		return fmt.Errorf("cluster: connection channel: %w", err)
	}
	l.ExtraFiles = append(l.ExtraFiles, remote)
	l.Env = append(l.Env, envConnFD+"="+strconv.Itoa(fdnum), envConnVersion+"=2")
	prev := l.Done
	l.Done = func(pid int, err error) {
		peer := -1
		if err == nil && pid > 0 {
			// Without the copy the worker's unread connections are lost
			// with it, as before there were copies.
			if fd, derr := scmrights.Dup(remote); derr == nil {
				peer = fd
			}
		}
		remote.Close()
		if err != nil || pid <= 0 {
			conn.Close()
		} else {
			h.register(pid, id.Slot, conn, peer)
		}
		if prev != nil {
			prev(pid, err)
		}
	}
	return nil
}

// handoffAdoptOld serves, in the image an in-place upgrade started, the
// connection channel of a worker of the image before (pid, its slot), whose
// master end f was kept across the exec: the master reads what that worker
// sends (acks; an UNSUB, answered with DONE so the worker's Close returns
// at once; the connections it gives back, which go to the other workers).
// If the old image described the channel (an "h" record: its
// subscriptions, what it has not acknowledged, its grant), the worker
// stays in the rotation, as ready as it was, until handoffRetireOld: the
// old workers serve until the new ones are ready, as in a restart.
// Otherwise it is sent nothing. peer is the old image's copy of the
// worker's end (-1: none), so that what the old image sent and the worker
// never read is passed on if the worker dies. The channel is closed when
// the worker is gone or the master stops. It takes ownership of f and
// peer, also on error; in other modes it only closes them.
func (m *master) handoffAdoptOld(pid, slot int, f *os.File, peer int) error {
	defer f.Close()
	fail := func(err error) error {
		if peer >= 0 {
			unix.Close(peer)
		}
		return err
	}
	if m.mode.ho == nil {
		return fail(nil)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return fail(fmt.Errorf("cluster: connection channel of pid %d: %w", pid, err))
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return fail(fmt.Errorf("cluster: connection channel of pid %d: %w", pid, ErrNoHandoff))
	}
	conn, err := scmrights.NewConn(uc)
	if err != nil {
		uc.Close()
		return fail(fmt.Errorf("cluster: connection channel of pid %d: %w", pid, err))
	}
	var carry *handoffCarry
	var subs []string
	if m.up != nil && m.up.state != nil {
		for i := range m.up.state.handoff {
			if c := &m.up.state.handoff[i]; c.pid == pid {
				carry = c
				subs = m.carriedNames(c.subs)
			}
		}
	}
	m.mode.ho.registerAs(pid, slot, conn, peer, true, carry, subs)
	return nil
}

// carriedNames returns this image's names of the listeners an "h" record
// names by descriptor: an L record's name (adopt keeps it), or the name of
// the listener adopted from a B record (adoptBinds runs first). One not
// adopted is left out: the worker is sent nothing of it.
func (m *master) carriedNames(fds []int) []string {
	st := m.up.state
	var names []string
	for _, fd := range fds {
		if i := slices.IndexFunc(st.listeners, func(a Activated) bool { return a.FD == fd }); i >= 0 {
			names = append(names, st.listeners[i].Name)
			continue
		}
		if i := slices.IndexFunc(st.binds, func(b namedFD) bool { return b.fd == fd }); i >= 0 {
			m.ctl.bindMu.Lock()
			l := m.ctl.binds[st.binds[i].name]
			m.ctl.bindMu.Unlock()
			if l != nil {
				names = append(names, l.name)
			}
		}
	}
	return names
}

// handoffRetireOld takes every adopted worker out of the rotation, before
// it is told to stop: connections go to this image's workers only, and
// those an old worker gives back are passed on to them. Once it returns,
// no send to an old worker is under way.
func (m *master) handoffRetireOld() {
	if m.mode.ho == nil {
		return
	}
	for _, w := range m.mode.ho.snapshotAll() {
		if w.adopted {
			w.mu.Lock()
			w.retired.Store(true)
			w.mu.Unlock()
		}
	}
}

// handoffCarried describes, for an in-place upgrade, the channels of the
// workers in handed (those the exec hands over) that are in the rotation:
// the new image goes on sending them connections until its own workers
// are ready. Listeners are named by descriptor, as the state's L and B
// records name them. A worker described is held: sent nothing more until
// the exec failed (handoffResume), so what the state says it was sent
// stays true; a connection given back meanwhile goes to another worker
// or waits, and is reset by the exec, as one held by the pause would be.
// Nor is anything more read from it (see hoWorker.held): what it sends
// meanwhile stays queued for the new image, so its subscriptions and the
// DONEs it is owed, recorded here, stay true too.
func (m *master) handoffCarried(handed map[int]bool) []handoffCarry {
	h := m.mode.ho
	if h == nil {
		return nil
	}
	h.mu.Lock()
	fds := make([]int, len(h.lns))
	for i, hl := range h.lns {
		// The descriptor upgradeState gives the listener's file.
		fd, err := fileFD(hl.l.file)
		if err != nil {
			fd = -1
		}
		fds[i] = fd
	}
	ws := slices.Clone(h.workers)
	h.mu.Unlock()
	var out []handoffCarry
	for _, w := range ws {
		if !handed[w.pid] || w.retired.Load() {
			continue
		}
		w.mu.Lock()
		// Held before busy is read (see busy): no message is taken off
		// the channel from now on, and one taken before is handled
		// first, so the record tells all the old image did with what it
		// read. (A send meanwhile skips w, as one after does.)
		w.setHeld(true)
		for w.busy.Load() {
			w.idle.Wait()
		}
		dead := w.dead
		c := handoffCarry{pid: w.pid, sent: w.sent, limited: w.limited, limit: w.limit, ready: w.ready.Load(), away: w.away.Load()}
		for i, on := range w.subs {
			if on && i < len(fds) && fds[i] >= 0 {
				c.subs = append(c.subs, fds[i])
			}
		}
		// Read under mu, which every send holds: no send is counted
		// here and missing from sent, or the reverse; held keeps it so.
		c.out = int(max(0, w.out.Load()))
		// Sent by the new image first; not here while held (owe,
		// flushLater), so none is sent twice. What the worker's channel
		// still holds unread is its own (handled by the new image).
		c.owed = slices.Clone(w.owed)
		if dead {
			w.setHeld(false)
		}
		w.mu.Unlock()
		if !dead {
			out = append(out, c)
			h.mu.Lock()
			h.heldWs = append(h.heldWs, w)
			h.mu.Unlock()
		}
	}
	return out
}

// setHeld holds w (see held) or ends the hold; w.mu is held.
func (w *hoWorker) setHeld(on bool) {
	switch {
	case on && w.unheld == nil:
		w.unheld = make(chan struct{})
	case !on && w.unheld != nil:
		close(w.unheld)
		w.unheld = nil
	}
	w.held.Store(on)
}

// take marks a message about to be taken off w's channel (busy); false if
// w is held, when nothing is to be taken, unless force. Only w's reader
// calls take, free and awaitUnheld; none takes mu unless w is held.
func (w *hoWorker) take(force bool) bool {
	w.busy.Store(true)
	if force || !w.held.Load() {
		return true
	}
	w.free()
	return false
}

// free ends busy: the reader is done with the message it took, or took
// none.
func (w *hoWorker) free() {
	if w.busy.Swap(false) && w.held.Load() {
		// handoffCarried may wait for it: woken under mu, which it
		// holds from its read of busy to its wait, so the wake-up
		// cannot fall in between and be lost.
		w.mu.Lock()
		w.idle.Broadcast()
		w.mu.Unlock()
	}
}

// awaitUnheld is free, then waits while w is held; false if stop ended
// the wait (the channel is closing then: the reader goes on to its end).
func (w *hoWorker) awaitUnheld(stop <-chan struct{}) bool {
	w.free()
	if !w.held.Load() {
		return true
	}
	w.mu.Lock()
	ch := w.unheld
	w.mu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-stop:
		return false
	}
}

// hoEpoch is the base of hoClock.
var hoEpoch = time.Now()

// hoClock is monotonic nanoseconds, for hoWorker.heard.
func hoClock() int64 { return int64(time.Since(hoEpoch)) }

// register serves the connection channel of a new worker; peer is the
// master's copy of the worker's end (see hoWorker.peer; -1 for none),
// owned from here.
func (h *handoff) register(pid, slot int, conn *scmrights.Conn, peer int) {
	h.registerAs(pid, slot, conn, peer, false, nil, nil)
}

// registerAs is register for this image's workers, and for an adopted one
// (a previous image's) with what that image told of it (carry, or nil),
// subs being the names here of the listeners carry subscribes to.
func (h *handoff) registerAs(pid, slot int, conn *scmrights.Conn, peer int, adopted bool, carry *handoffCarry, subs []string) {
	rc, _ := conn.SyscallConn()
	w := &hoWorker{pid: pid, slot: slot, conn: conn, rc: rc, pidfd: -1, adopted: adopted, peer: peer}
	w.idle.L = &w.mu
	w.heard.Store(hoClock())
	if peer >= 0 {
		var st unix.Stat_t
		if unix.Fstat(peer, &st) == nil {
			w.peerIno = st.Ino
		}
	}
	w.fn = w.write
	if adopted && carry == nil {
		// What the old image delivered and the worker has not reported
		// is unknown here; at most a window's worth.
		w.out.Store(hoWindow)
		w.retired.Store(true)
	} else if adopted {
		// Kept as it is, above the window too (an older image's, or
		// anything the parser bounds): the old image recorded it under
		// the send lock and sent nothing more (held), so the worker
		// acknowledges no more than that; acks an older image read after
		// the record (this one reads nothing more) only leave it counted
		// busier than it is.
		w.out.Store(int64(carry.out))
		w.sent, w.limited, w.limit = carry.sent, carry.limited, carry.limit
		w.away.Store(carry.away)
		// Before anything else is sent: the first send flushes them, or
		// flushLater below.
		w.owed = slices.Clone(carry.owed)
		w.flushing = len(w.owed) > 0
	}
	// The worker is alive and not yet reaped (Done runs before the
	// supervisor can reap it), so the pidfd names this very process.
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		w.pidfd = fd
	}
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		w.release()
		return
	}
	w.ready.Store(!h.gate)
	if carry != nil {
		w.ready.Store(carry.ready)
		for _, name := range subs {
			// A listener this image does not have is none of its
			// business: the worker is sent nothing of it.
			if idx, ok := h.byName[name]; ok {
				w.subscribe(idx)
			}
		}
	}
	h.workers = append(h.workers, w)
	h.wg.Add(1)
	h.mu.Unlock()
	go h.read(w)
	if carry != nil && len(carry.owed) > 0 {
		h.flushLater(w)
	}
	if carry != nil {
		// An accept loop may wait for a server (awaitServer).
		h.signal()
	}
}

// release closes what w holds; the caller made sure nobody else uses it.
func (w *hoWorker) release() {
	w.close()
	if peer := w.takePeer(); peer >= 0 {
		unix.Close(peer)
	}
	w.closePidfd()
}

// closePidfd closes w's pidfd, if it still has one.
func (w *hoWorker) closePidfd() {
	w.mu.Lock()
	if w.pidfd >= 0 {
		unix.Close(w.pidfd)
		w.pidfd = -1
	}
	w.mu.Unlock()
}

// dupPeer returns a close-on-exec duplicate of w's copy of the worker's
// end, for an in-place upgrade to carry over; -1 if w has none.
func (w *hoWorker) dupPeer() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.peer < 0 {
		return -1
	}
	fd, err := unix.FcntlInt(uintptr(w.peer), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// heldOpen says whether w's channel cannot have reached end of file: the
// master holds its copy of the worker's end and has not shut its own.
func (w *hoWorker) heldOpen() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.dead && w.peer >= 0
}

// takePeer hands over w's copy of the worker's end, -1 if taken.
func (w *hoWorker) takePeer() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.peer
	w.peer = -1
	return p
}

// unlist takes w out of the rotation.
func (h *handoff) unlist(w *hoWorker) {
	h.mu.Lock()
	for i, x := range h.workers {
		if x == w {
			h.workers = append(h.workers[:i], h.workers[i+1:]...)
			break
		}
	}
	h.mu.Unlock()
}

// remove takes w out of the rotation: nothing more is sent to it. Its
// channel is shut for reading, not closed: connections the worker gave
// back right before it went are still queued there, and closing would
// reset them. The reader drains them, reads end of file (shutdown(2)
// SHUT_RD makes recvmsg return 0 once the queue is empty, even if a
// descendant, or the master's peer copy, still holds the worker's end)
// and closes the channel. What the worker was sent and never read is
// rescued once it is known dead (exited, sweep); connections it had read
// and not accepted are lost with it.
func (h *handoff) remove(w *hoWorker) {
	h.unlist(w)
	w.mu.Lock()
	w.dead = true
	w.mu.Unlock()
	// A DONE blocked on the worker's full channel gives up.
	_ = w.conn.SetWriteDeadline(time.Unix(1, 0))
	_ = w.conn.UnixConn().CloseRead()
}

// exited removes the worker process pid, whose channel may stay open in a
// descendant that inherited it. A worker whose pidfd shows it alive is a
// newer process that got the reaped pid: it stays.
func (h *handoff) exited(pid int) {
	for _, w := range h.snapshotAll() {
		if w.pid == pid && w.exited(true) {
			h.gone(w)
		}
	}
}

// gone takes the dead worker w out of the rotation and rescues what it
// never read.
func (h *handoff) gone(w *hoWorker) {
	// Held from before the peer is taken until every dispatcher holds its
	// own: an upgrade's pause that finds the peer taken waits for what
	// this call reads back.
	h.hold()
	defer h.leave()
	// Taken first: the reader closes w's peer when it ends, which remove
	// brings about.
	peer := w.takePeer()
	h.remove(w)
	if h.forget(w) {
		// Its reader may be gone (a violation), leaving this to us.
		w.closePidfd()
	}
	if peer < 0 {
		return
	}
	defer unix.Close(peer)
	batches := h.takeUnread(w, peer)
	if len(batches) == 0 {
		return
	}
	total := 0
	for _, b := range batches {
		total += b.n
	}
	h.log.Info("handoff: passed on the connections a gone worker never read", "slot", w.slot, "pid", w.pid, "connections", total)
	// One dispatcher per listener: one without a live subscriber must
	// not hold up the others.
	h.passOn(batches)
}

// takeUnread reads, from peer (the master's copy of the dead worker w's
// end), the connections the master sent w and w never read, one batch per
// listener (hoBatch holds up to hoMaxBatch; more make more batches).
// Nothing else can be queued there: only the master writes to that end,
// and only w's process (and descendants that inherited its end, if any)
// read it, so the messages are the master's own.
func (h *handoff) takeUnread(w *hoWorker, peer int) []*hoBatch {
	buf := make([]byte, hoMaxMsg)
	oob := make([]byte, unix.CmsgSpace(hoMaxBatch*4))
	fds := make([]int, 0, hoMaxBatch)
	var msg hoMsg
	var out []*hoBatch
	open := map[int]*hoBatch{} // by listener: the batch being filled
	reset := false
	for {
		// MSG_DONTWAIT: the channel's file status flags are shared with
		// the worker's descriptor and left alone.
		n, oobn, flags, _, err := unix.Recvmsg(peer, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.ECONNRESET && !reset:
			// The master's end was shut with the worker's messages
			// unread: reported once, before what is queued here.
			reset = true
			continue
		case err == unix.EAGAIN:
			return out
		case err != nil:
			h.log.Warn("handoff: cannot read back what a gone worker never read", "slot", w.slot, "pid", w.pid, "err", os.NewSyscallError("recvmsg", err))
			return out
		case n == 0 && oobn == 0:
			return out
		}
		var ferr error
		fds, ferr = scmrights.AppendRights(fds[:0], oob[:oobn])
		if ferr != nil || flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0 {
			closeInts(fds)
			h.log.Warn("handoff: a message a gone worker never read was cut; its connections are lost", "slot", w.slot, "pid", w.pid, "flags", flags, "err", ferr)
			continue
		}
		if err := decodeHandoff(buf[:n], fds, &msg); err != nil || msg.typ != hoConns {
			closeInts(msg.fds) // a DONE carries none; errors closed them
			continue
		}
		h.mu.Lock()
		for i := range msg.n {
			li, ok := h.byName[string(msg.entries[i].name)]
			if !ok {
				// Impossible: the master wrote the name.
				unix.Close(msg.fds[i])
				continue
			}
			b := open[li]
			if b == nil || b.n == hoMaxBatch {
				b = &hoBatch{}
				b.reset(li, h.lns[li].name)
				open[li] = b
				out = append(out, b)
			}
			b.push(msg.fds[i], msg.entries[i].addr)
		}
		h.mu.Unlock()
	}
}

// hoQuiet is how long a worker with connections outstanding may stay
// silent before watch looks for its end of the channel.
const hoQuiet = 2 * time.Second

// watch finds workers that closed their end of the connection channel and
// live on (an exec that closed it, a bug): the master's peer copy keeps
// the channel open, so no end of file says so, and connections sent there
// would wait for the process's exit. A worker with connections outstanding
// that has sent nothing for hoQuiet, whose process provably no longer
// holds its end (its /proc/<pid>/fd read in full, without the inode) and
// is still the same process (its pidfd) is taken out, and what it never
// read is rescued. A healthy worker acknowledges as it accepts, and one
// that holds a few quietly is looked at every few seconds.
func (h *handoff) watch() {
	defer h.wg.Done()
	t := time.NewTicker(hoQuiet / 2)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-t.C:
			// A dead worker whose exit report is late (a busy event
			// loop) is found here too.
			h.sweep()
			now := hoClock()
			for _, w := range h.snapshot() {
				// A retired worker is sent nothing, and one that closes
				// its end while it drains must not be killed for it.
				if w.retired.Load() || w.peerIno == 0 || w.out.Load() == 0 || now-w.heard.Load() < int64(hoQuiet) {
					continue
				}
				if closedEnd(w) {
					// It cannot serve in handoff mode any more: killed, as
					// a worker that breaks the protocol is, so the
					// supervisor replaces it.
					h.log.Warn("handoff: worker closed its connection channel and lives on; restarting it and passing on what it did not read", "slot", w.slot, "pid", w.pid)
					w.kill(h.log)
					h.gone(w)
				}
			}
		}
	}
}

// closedEnd reports whether w's process, alive, provably holds no
// descriptor of its end of the channel. Whatever /proc cannot tell (no
// pidfd, the process gone or hidden, a descriptor it may not read, no
// descriptors listed at all) says false: a worker is never dropped on a
// guess; a dead one is the supervisor's to report.
func closedEnd(w *hoWorker) bool {
	if !w.alive() {
		return false
	}
	dir := "/proc/" + strconv.Itoa(w.pid) + "/fd"
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	want := "socket:[" + strconv.FormatUint(w.peerIno, 10) + "]"
	seen := 0
	for {
		names, err := f.Readdirnames(256)
		for _, n := range names {
			l, err := os.Readlink(dir + "/" + n)
			switch {
			case err == nil && l == want:
				return false
			case err == nil:
				seen++
			case !errors.Is(err, os.ErrNotExist):
				return false // EACCES without CAP_SYS_PTRACE, say
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return false
		}
	}
	// Still the same process after the scan, so the pid named it
	// throughout.
	return seen > 0 && w.alive()
}

// alive reports whether w's process is known to be running (by its pidfd,
// polled under w.mu, which release takes to close it).
func (w *hoWorker) alive() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pidfd >= 0 && !pidfdPolled(w.pidfd)
}

// kill sends w's process SIGKILL through its pidfd, if it has one.
func (w *hoWorker) kill(log *slog.Logger) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pidfd >= 0 {
		if err := unix.PidfdSendSignal(w.pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			log.Error("handoff: cannot kill worker", "pid", w.pid, "err", os.NewSyscallError("pidfd_send_signal", err))
		}
	}
}

// sweep removes every worker whose pidfd reports it exited, whatever the
// master learnt of it: its Exited event may have been dropped, and a
// descendant holding its channel end keeps the channel from reaching end
// of file, so a connection could be sent to a dead worker.
func (h *handoff) sweep() int {
	n := 0
	for _, w := range h.snapshotAll() {
		if w.exited(false) {
			h.gone(w)
			n++
		}
	}
	return n
}

// snapshot copies the workers in the rotation.
func (h *handoff) snapshot() []*hoWorker {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.workers)
}

// snapshotAll copies the workers in the rotation and the doomed.
func (h *handoff) snapshotAll() []*hoWorker {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Concat(h.workers, h.doomed)
}

// forget takes w off the doomed, and says whether it was there.
func (h *handoff) forget(w *hoWorker) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := slices.Index(h.doomed, w)
	if i >= 0 {
		h.doomed = slices.Delete(h.doomed, i, i+1)
	}
	return i >= 0
}

// exited reports whether w's process exited by its pidfd; unknown (no
// pidfd) is reported as unknown.
func (w *hoWorker) exited(unknown bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pidfd < 0 {
		return unknown
	}
	return pidfdPolled(w.pidfd)
}

// bad restarts a worker that broke the protocol: it is killed (the
// supervisor respawns it) and its channel closed. Nothing it sent reaches
// the master's state or another worker. What the master sent it and it
// never read is rescued once its exit is reported, as for any worker that
// dies: true if w is kept for that (doomed; its reader ends without
// releasing it).
func (h *handoff) bad(w *hoWorker, err error) bool {
	h.log.Warn("handoff: worker broke the connection protocol; restarting it", "slot", w.slot, "pid", w.pid, "err", err)
	w.kill(h.log)
	// Nothing else it sent is read: its channel is closed at once.
	w.close()
	return h.doom(w)
}

// hoRecv is the master's receive of one worker's messages. A message is
// received whole, with its descriptors (the control buffer has room for
// the most a worker may send), in one recvmsg. While the master may be
// short of descriptors it is first peeked with them instead (the kernel
// installs copies and leaves the message queued) and dequeued only once
// all of them arrived: a give-back that comes while the master is out of
// descriptors (MSG_CTRUNC: the kernel drops what it could not install)
// then stays queued until there is room, instead of being lost. The peek
// costs a second recvmsg per message, so it is used only when a give-back
// may come (the worker unsubscribed) or descriptors were lately short (an
// accept failed with EMFILE or ENFILE, or a receive was cut).
type hoRecv struct {
	w        *hoWorker
	held     bool // call found w held, and took nothing
	force    bool // take even if w is held: the master stopped
	buf, oob []byte
	one      [1]byte
	mode     int
	n, oobn  int
	flags    int
	err      error
	fn       func(fd uintptr) bool
}

// hoRecv modes.
const (
	hoRecvWhole   = iota // receive a message with its descriptors
	hoRecvPeek           // the same, left queued
	hoRecvDequeue        // drop the message peeked
)

// hoShortFor is how long after an accept's EMFILE or ENFILE messages are
// peeked.
const hoShortFor = time.Second

func newHoRecv() *hoRecv {
	r := &hoRecv{buf: make([]byte, hoMaxMsg), oob: make([]byte, unix.CmsgSpace(4*hoMaxBatch))}
	r.fn = r.call
	return r
}

// call is the RawConn.Read function: false (wait) while nothing is queued.
func (r *hoRecv) call(fd uintptr) bool {
	var iov unix.Iovec
	var msg unix.Msghdr
	flags := unix.MSG_DONTWAIT | unix.MSG_CMSG_CLOEXEC
	if r.mode == hoRecvDequeue {
		// Dequeue what was peeked: without room for control data the
		// kernel drops the descriptors, whose copies the peek installed.
		iov.Base = &r.one[0]
		iov.SetLen(len(r.one))
	} else {
		iov.Base = unsafe.SliceData(r.buf)
		iov.SetLen(len(r.buf))
		msg.Control = unsafe.SliceData(r.oob)
		msg.SetControllen(len(r.oob))
		if r.mode == hoRecvPeek {
			flags |= unix.MSG_PEEK
		}
	}
	msg.Iov, msg.Iovlen = &iov, 1
	// A peek takes the message as a receive does (busy): what is peeked
	// is acted on (a malformed message kills the worker), so a held
	// worker's is left unread alike. The dequeue after it goes on with
	// the message the peek took: a hold begun since waits for it.
	take := r.mode != hoRecvDequeue
	if take && !r.w.take(r.force) {
		r.held = true
		return true
	}
	for {
		// Raw: MSG_DONTWAIT never blocks, and entersyscall would wake the
		// runtime's sysmon from its sleep at every message, which then
		// polls every 20 µs while the master is busy (a nanosleep each).
		n, _, e := unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&msg)), uintptr(flags))
		switch e {
		case 0:
			r.n, r.oobn, r.flags, r.err = int(n), int(msg.Controllen), int(msg.Flags), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if take {
				r.w.free()
			}
			return false
		default:
			r.err = os.NewSyscallError("recvmsg", e)
		}
		return true
	}
}

// recv runs call on w's channel in mode.
func (r *hoRecv) recv(w *hoWorker, mode int) error {
	r.w, r.held = w, false
	r.mode, r.n, r.oobn, r.flags, r.err = mode, 0, 0, 0, nil
	if err := w.rc.Read(r.fn); err != nil {
		return err
	}
	if r.held {
		return errHoHeld
	}
	return r.err
}

// errHoHeld: the worker is held, and nothing was received.
var errHoHeld = errors.New("held")

// dequeue drops the message last peeked, if it was.
func (r *hoRecv) dequeue(w *hoWorker) {
	if r.mode == hoRecvPeek {
		_ = r.recv(w, hoRecvDequeue)
	}
}

// hoCutMin and hoCutMax bound the wait before the master peeks again at a
// message whose descriptors it had no room for; the wait doubles while
// that lasts. A cut is blamed on the worker only if it lasts hoCutBlame
// and hoCutTries peeks while the master finds room for the descriptors
// each time.
const (
	hoCutMin   = 5 * time.Millisecond
	hoCutMax   = time.Second
	hoCutBlame = 100 * time.Millisecond
	hoCutTries = 3
)

// read serves one worker's messages until its channel closes.
func (h *handoff) read(w *hoWorker) {
	defer h.wg.Done()
	keep := false
	defer func() {
		// handoffCarried may wait for the message taken.
		w.free()
		if !keep {
			h.unlist(w)
			w.release()
		}
	}()
	r := newHoRecv()
	fds := make([]int, 0, hoMaxBatch)
	var msg hoMsg
	reset := false
	// unsubbed: the worker sent a U, so a give-back (R) may come; cut: the
	// last receive was cut; roomy counts the cut peeks since roomySince
	// for which the master found room.
	unsubbed, cut := false, false
	roomy, roomySince := 0, int64(0)
	backoff := time.Duration(0)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if !w.awaitUnheld(h.done) {
			r.force = true
		}
		mode := hoRecvWhole
		if unsubbed || cut {
			mode = hoRecvPeek
		} else if t := h.fdShort.Load(); t != 0 && hoClock()-t < int64(hoShortFor) {
			mode = hoRecvPeek
		}
		err := r.recv(w, mode)
		if err == errHoHeld {
			continue
		}
		if err == nil && r.n == 0 && r.oobn == 0 {
			// End of file, or an empty message: the same to recvmsg. While
			// the master holds a copy of the worker's end and has not shut
			// its own, the channel cannot end: the worker sent it.
			if w.heldOpen() {
				r.dequeue(w)
				keep = h.bad(w, fmt.Errorf("%w: empty", ErrHandoffMessage))
				return
			}
			err = io.EOF
		}
		if err != nil {
			switch {
			case errors.Is(err, unix.ECONNRESET) && !reset:
				// The worker's end closed with connections it was sent
				// unread: the kernel reports that once, before what the
				// worker sent (connections given back), then end of file.
				// Only a worker without a peer copy gets here (adopted,
				// from an image that kept none).
				reset = true
				continue
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			default:
				h.warn.warn(h.log, "handoff: channel", "slot", w.slot, "pid", w.pid, "err", err)
			}
			return
		}
		var ferr error
		fds, ferr = scmrights.AppendRights(fds[:0], r.oob[:r.oobn])
		var verr error
		switch {
		case ferr != nil:
			verr = ferr
		case r.flags&unix.MSG_TRUNC != 0:
			verr = fmt.Errorf("message larger than the %d-byte buffer", hoMaxMsg)
		case r.flags&unix.MSG_CTRUNC != 0 && len(fds) >= hoMaxBatch:
			verr = fmt.Errorf("more than %d descriptors", hoMaxBatch)
		}
		if verr != nil {
			closeInts(fds)
			// Dequeued first: closed with it unread, the channel would
			// report a reset to the worker rather than end of file.
			r.dequeue(w)
			keep = h.bad(w, fmt.Errorf("%w: %w", ErrHandoffMessage, verr))
			return
		}
		if r.flags&unix.MSG_CTRUNC != 0 && mode == hoRecvWhole {
			// Fewer installed than sent, and fewer than there was room
			// for: a descriptor table (the master's, or the system's) was
			// full, unnoticed, and the rest are gone with the message.
			// Messages are peeked from now on until one arrives whole.
			closeInts(fds)
			cut = true
			if !h.lostCut(w, r.buf[:r.n]) {
				keep = h.bad(w, fmt.Errorf("%w: descriptors with a message of type %q", ErrHandoffMessage, r.buf[0]))
				return
			}
			continue
		}
		if r.flags&unix.MSG_CTRUNC != 0 {
			// Peeked: the message stays queued. The worker is not to
			// blame unless the master had room all along.
			closeInts(fds)
			cut = true
			if h.fdRoom(r.buf[:r.n]) {
				now := hoClock()
				if roomy == 0 {
					roomySince = now
				}
				if roomy++; roomy >= hoCutTries && now-roomySince >= int64(hoCutBlame) {
					r.dequeue(w)
					keep = h.bad(w, fmt.Errorf("%w: control data cut although the master has descriptors free", ErrHandoffMessage))
					return
				}
			} else {
				// Short now: whatever came before was the master's doing
				// too.
				roomy = 0
				h.warn.warn(h.log, "handoff: out of descriptors for connections a worker gave back; retrying", "slot", w.slot, "pid", w.pid)
			}
			// The room found may be gone again at once (the master's own
			// pressure comes and goes): wait before each new peek, done
			// with this one, which a hold need not wait for.
			w.free()
			backoff = min(max(2*backoff, hoCutMin), hoCutMax)
			if timer == nil {
				timer = time.NewTimer(backoff)
			} else {
				timer.Reset(backoff)
			}
			select {
			case <-h.done:
				return
			case <-timer.C:
			}
			continue
		}
		cut, roomy, backoff = false, 0, 0
		n := r.n
		if mode == hoRecvPeek {
			if err := r.recv(w, hoRecvDequeue); err != nil {
				// Only this goroutine reads the channel: the message
				// peeked is there, unless the channel was closed
				// meanwhile.
				closeInts(fds)
				return
			}
		}
		w.heard.Store(hoClock())
		if err := decodeHandoff(r.buf[:n], fds, &msg); err != nil {
			keep = h.bad(w, err)
			return
		}
		if msg.typ == hoUnsub {
			unsubbed = true
		}
		if err := h.handle(w, &msg); err != nil {
			keep = h.bad(w, err)
			return
		}
	}
}

// lostCut accounts for a message received whole whose descriptors did not
// all fit in the master's table (their connections are gone): a give-back
// still counts as acknowledged. False if the message is one that carries
// no descriptors: the worker broke the protocol.
func (h *handoff) lostCut(w *hoWorker, p []byte) bool {
	if len(p) == 0 || p[0] != hoReturn {
		return false
	}
	n := 0
	if len(p) >= 2 {
		n = min(int(p[1]), int(w.out.Load()))
	}
	if n > 0 && ack(w, n) {
		h.signal()
	}
	h.log.Error("handoff: out of descriptors: connections a worker gave back were lost; reading with a peek first for now", "slot", w.slot, "pid", w.pid, "connections", n)
	return true
}

// fdRoom says whether the master can open as many descriptors as the
// message p (of a cut receive) carries, by opening and closing them: if
// not, the cut was the master's lack of room, not the worker's doing.
func (h *handoff) fdRoom(p []byte) bool {
	need := 1
	if len(p) >= 2 && (p[0] == hoReturn || p[0] == hoConns) {
		need = max(1, min(int(p[1]), hoMaxBatch))
	}
	var fds [hoMaxBatch]int
	got := 0
	defer func() { closeInts(fds[:got]) }()
	for got < need {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			return false
		}
		fds[got] = fd
		got++
	}
	return true
}

// handle acts on one valid message from w. An error means w broke the
// protocol; descriptors of the message are closed by then.
func (h *handoff) handle(w *hoWorker, msg *hoMsg) error {
	switch msg.typ {
	case hoAck:
		if !ack(w, msg.n) {
			return fmt.Errorf("ack of %d connections, %d outstanding", msg.n, w.out.Load())
		}
		h.signal()
	case hoGrant:
		w.mu.Lock()
		before := w.room()
		w.limited, w.limit = msg.limit != hoNoLimit, uint32(msg.limit)
		more := w.room() > before
		w.mu.Unlock()
		if more {
			h.signal()
		}
	case hoSub, hoUnsub:
		h.mu.Lock()
		idx, ok := h.byName[string(msg.name)]
		h.mu.Unlock()
		if msg.typ == hoSub && ok {
			w.subscribe(idx)
			h.signal()
			return nil
		}
		if !ok {
			idx = -1
		}
		// After a DONE, nothing of that listener reaches the worker: the
		// subscription is dropped under w.mu, which every send holds. For
		// an unknown name, DONE tells the worker there is nothing to take.
		// Never a blocking send: this reader must go on reading, and a
		// send waiting for room would hold the channel's write lock, which
		// every dispatcher needs.
		return h.owe(w, idx, msg.name)
	case hoReturn:
		if !ack(w, msg.n) {
			closeInts(msg.fds)
			return fmt.Errorf("%d connections returned, %d outstanding", msg.n, w.out.Load())
		}
		h.signal()
		return h.takeBack(msg)
	default:
		closeInts(msg.fds)
		return fmt.Errorf("message type %q is the master's", msg.typ)
	}
	return nil
}

// ack counts n connections as accepted or returned; only w's reader calls
// it.
func ack(w *hoWorker, n int) bool {
	for {
		out := w.out.Load()
		if int64(n) > out {
			return false
		}
		if w.out.CompareAndSwap(out, out-int64(n)) {
			return true
		}
	}
}

// takeBack re-dispatches connections a worker returned (it closed the
// listener they were for). Each descriptor must be a connected stream
// socket of its listener's family, or the whole message is refused: a
// worker's garbage never reaches another worker.
func (h *handoff) takeBack(msg *hoMsg) error {
	idx := make([]int, msg.n)
	names := make([]string, msg.n)
	for i := range msg.n {
		h.mu.Lock()
		li, ok := h.byName[string(msg.entries[i].name)]
		var local net.Addr
		if ok {
			local, names[i] = h.lns[li].l.addr, h.lns[li].name
		}
		h.mu.Unlock()
		if !ok {
			closeInts(msg.fds)
			return fmt.Errorf("connection %d returned for unknown listener %q", i, msg.entries[i].name)
		}
		if err := checkReturned(msg.fds[i], local); err != nil {
			closeInts(msg.fds)
			return fmt.Errorf("connection %d: %w", i, err)
		}
		idx[i] = li
	}
	// One batch per listener, each passed on by a dispatcher of its own,
	// as gone does: this reader goes on reading the worker (its acks, a
	// new SUB for the very listener it closed), and a listener nobody
	// serves holds up no other.
	var batches []*hoBatch
	for i := range msg.n {
		var b *hoBatch
		for _, x := range batches {
			if x.lidx == idx[i] {
				b = x
			}
		}
		if b == nil {
			b = &hoBatch{}
			b.reset(idx[i], names[i])
			batches = append(batches, b)
		}
		b.push(msg.fds[i], msg.entries[i].addr)
	}
	h.passOn(batches)
	return nil
}

// passOn dispatches each batch in a goroutine of its own, counted until
// delivered, so an upgrade's pause waits for them; closed if the master
// stopped.
func (h *handoff) passOn(batches []*hoBatch) {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		for _, b := range batches {
			b.closeAll()
		}
		return
	}
	h.wg.Add(len(batches))
	h.mu.Unlock()
	for _, b := range batches {
		h.hold()
		go func() {
			defer h.wg.Done()
			defer h.leave()
			if !h.dispatch(b) {
				b.closeAll()
			}
		}()
	}
}

// checkReturned checks that fd is a connection accepted on the listener
// whose address is local: a connected stream socket of its family whose
// own address is the listener's (the same port, or the same socket file).
// A worker's other sockets (an unconnected one, a connection it dialled)
// never reach another worker.
func checkReturned(fd int, local net.Addr) error {
	network := local.Network()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return errors.New("not a socket")
	}
	typ, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	acc, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	dom, err3 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err := errors.Join(err1, err2, err3); err != nil {
		return os.NewSyscallError("getsockopt", err)
	}
	want := dom == unix.AF_INET || dom == unix.AF_INET6
	if network == "unix" {
		want = dom == unix.AF_UNIX
	}
	if typ != unix.SOCK_STREAM || acc != 0 || !want {
		return fmt.Errorf("not a connected %s stream socket", network)
	}
	// ENOTCONN: socket(2) without connect(2), or shut down.
	if _, err := unix.Getpeername(fd); err != nil {
		return fmt.Errorf("not a connected %s stream socket: %w", network, os.NewSyscallError("getpeername", err))
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return os.NewSyscallError("getsockname", err)
	}
	var same bool
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		same = network != "unix" && addrPort(local) == a.Port
	case *unix.SockaddrInet6:
		same = network != "unix" && addrPort(local) == a.Port
	case *unix.SockaddrUnix:
		same = network == "unix" && a.Name == local.String()
	}
	if !same {
		return fmt.Errorf("a socket of %s, not a connection of listener %s", appendSockaddr(nil, sa), local)
	}
	return nil
}

// addrPort is the port of a TCP address, or -1.
func addrPort(a net.Addr) int {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.Port
	}
	return -1
}

func closeInts(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
