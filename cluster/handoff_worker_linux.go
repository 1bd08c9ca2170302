//go:build linux

package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

const (
	// hoAckEvery bounds the accepted connections a worker reports in one
	// ack.
	hoAckEvery = 16
	// hoAckIdle is the pending count acknowledged at once when the queue
	// runs empty; fewer wait up to hoAckDelay, gathering the connections
	// accepted meanwhile. At low load that spares the master a message,
	// and its reader a wake-up, per connection; the master's least-loaded
	// choice is off by at most hoAckIdle-1 per worker, for that long.
	hoAckIdle  = 4
	hoAckDelay = time.Millisecond
	// hoAckRetry is the wait before an ack the channel had no room for is
	// tried again: Accept never waits for the master to read.
	hoAckRetry = 20 * time.Millisecond
	// hoReserve is what a worker short of descriptors keeps free of
	// connections: for net.FileConn's dup in Accept, for counting its
	// descriptors, and for a few the server opens between a grant and the
	// connections it covers.
	hoReserve = 4
	// hoAmple is the free descriptors at which a worker needs no grant:
	// a full window and a batch fit, whatever is on its way.
	hoAmple = hoWindow + hoMaxBatch + hoReserve
	// hoRecheck is how often a worker short of descriptors counts them
	// again, also while it waits: the room closed connections freed is
	// granted to the master, which sends nothing beyond a grant.
	// hoRecheckIdle is the same for a worker with room: the server may
	// open descriptors of its own at any time. A count that takes long
	// (a large table) is repeated no more than once per 100 times its
	// cost.
	hoRecheck     = 50 * time.Millisecond
	hoRecheckIdle = 250 * time.Millisecond
)

// hoCloseWait bounds how long Close waits for the master to confirm that
// nothing more of the listener is on its way (a variable for tests).
var hoCloseWait = 5 * time.Second

// HandoffListener returns the listener of a handoff-mode worker for the
// master's listener named name (its LISTEN_FDNAMES entry): the master
// accepts, and Accept returns the connections it passes over
// HANDOFF_CONN_FD as ordinary *net.TCPConn or *net.UnixConn. Listen does
// this by itself in handoff mode; HandoffListener is for workers that pick
// their listeners by name.
//
// When the process is out of descriptors (EMFILE), Accept keeps the
// connection and returns a temporary error, as a kernel listener leaves
// it queued: a server backs off and calls again (net/http does). Near its
// RLIMIT_NOFILE a worker tells the master how many connections it has
// descriptors for, and leaves in the channel a batch that would not fit;
// Accept fails with EMFILE meanwhile, and no connection is reset.
//
// Listeners of one process share its channel. Every call returns a new
// listener; those of one name share the master's connections for it, each
// connection going to whichever Accept takes it first, as goroutines
// accepting on one kernel socket do. Close unblocks the listener's Accept;
// connections queued stay for the others of its name. The last Close of a
// name tells the master to stop sending its connections, and gives back to
// the master (which passes them to another worker) every connection
// received and not accepted, so a worker that closes its listeners before
// exiting loses none.
//
// As for Listen, make the first call of the worker API before anything
// marks the LISTEN_FDS descriptors close-on-exec: those the process has
// marked by then are not taken as inherited, and their addresses are not
// known (Addr is then the name). Called first, HandoffListener leaves
// LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES in the environment (every
// other call of the API removes them), so code that reads them, such as
// go-systemd's activation.Files, still finds the sockets after it.
func HandoffListener(name string) (net.Listener, error) { return handoffListener(name, nil) }

var hoWorkerSide struct {
	once sync.Once
	r    *hoReceiver
	err  error
}

// handoffListener is the worker side of handoff mode (see HandoffListener);
// addr is the listener's address, or nil to look it up among the inherited
// descriptors (inheritedAddr). Called before the rest of the worker API, by
// a program that does its own socket activation and sd_notify, it sets the
// worker up (control channel, heartbeats) but leaves the environment as it
// is, where such a program reads it.
func handoffListener(name string, addr net.Addr) (net.Listener, error) {
	w := setUp(false)
	hoWorkerSide.once.Do(func() {
		if w.connErr != nil {
			hoWorkerSide.err = fmt.Errorf("%w: %w", ErrNoHandoff, w.connErr)
			return
		}
		hoWorkerSide.r, hoWorkerSide.err = openReceiver(w.connFD, w.connVersion)
	})
	if hoWorkerSide.err != nil {
		return nil, hoWorkerSide.err
	}
	if addr == nil {
		addr = inheritedAddr(w, name)
	}
	return hoWorkerSide.r.listen(name, addr)
}

// openReceiver adopts the connection channel named by HANDOFF_CONN_FD, v,
// with HANDOFF_CONN_VERSION version, both as the process started with
// them. The worker's set-up checked that the descriptor was inherited and
// marked it close-on-exec (initWorker).
func openReceiver(v, version string) (*hoReceiver, error) {
	fd := envFD(v)
	if fd < 0 {
		return nil, fmt.Errorf("%w: %s=%q", ErrNoHandoff, envConnFD, v)
	}
	uc, err := scmrights.UnixConn(fd)
	if err != nil {
		return nil, fmt.Errorf("%w: %s=%d: %w", ErrNoHandoff, envConnFD, fd, err)
	}
	v2, _ := strconv.Atoi(version)
	return newReceiver(uc, v2 >= 2)
}

// inheritedAddr is the local address, recorded when the worker adopted
// its inherited descriptors, of the listener named name (LISTEN_FDNAMES),
// or a handoffAddr: Ready may have closed that descriptor since, and its
// number may name something else by now.
func inheritedAddr(w *wstate, name string) net.Addr {
	// Names and addresses never change after adoption.
	for _, in := range w.inh {
		if in.name == name && in.addr != nil {
			return in.addr
		}
	}
	return handoffAddr(name)
}

// handoffAddr names a listener whose address the worker cannot see.
type handoffAddr string

func (a handoffAddr) Network() string { return "handoff" }
func (a handoffAddr) String() string  { return string(a) }

// hoReceiver is a worker's end of its connection channel. No goroutine of
// its own reads it: a goroutine waiting in Accept (or in Close, for the
// master's DONE) reads the channel itself while it holds the read token,
// and sorts what arrives into the listeners by name. A connection for the
// listener whose Accept read it is returned by that very goroutine, without
// the park and unpark of a hand-over between goroutines; while nobody
// waits, messages wait in the socket (the master's window bounds them).
type hoReceiver struct {
	conn     *scmrights.Conn
	gone     chan struct{} // closed when the channel ends (master gone)
	goneOnce sync.Once
	// token holds a value while nobody reads; a reader takes it.
	token chan struct{}
	// stale says a read deadline may be set (an interrupt, or Close's
	// wait) that the next reader must clear.
	stale atomic.Bool
	// The token holder's scratch.
	buf []byte
	fds []int
	msg hoMsg

	// dl is the read deadline last set by a reader.
	dl time.Time

	// Descriptor room, also the token holder's. A batch that arrives
	// with the descriptor table too full for it is lost: the kernel
	// installs what fits and drops the rest (MSG_CTRUNC), and the master
	// closed its copies. So a worker counts its free descriptors now and
	// then (see count); near RLIMIT_NOFILE (short) it grants the master
	// room for that many connections (hoGrant), and leaves in the socket
	// a batch that would not fit.
	rc     syscall.RawConn
	grants bool // the master takes hoGrant (HANDOFF_CONN_VERSION 2)
	short  bool
	recvd  uint32 // connections that arrived in hoConns messages
	grant  int64  // the last grant sent: a limit, or hoNoLimit
	rlimit int    // soft RLIMIT_NOFILE, as last read
	// The last count: free descriptors (free0, a lower bound) with recvd0
	// connections received; the next is due at next.
	free0  int
	recvd0 uint32
	next   time.Time
	scan   []byte // getdents and /proc/self/status scratch
	// peekFn and its results (see waitPeek).
	peekFn  func(fd uintptr) bool
	peekHdr [2]byte
	peekN   int

	mu  sync.Mutex
	lns map[string]*hoSubscription // subscriptions with open listeners
	// closing holds, per name, the subscriptions unsubscribed and waiting
	// for the master's DONE, oldest first: the master answers every UNSUB
	// with one DONE, in order, so each DONE of the name belongs to the
	// first of them. One stays there until its DONE arrives, also after
	// its Close stopped waiting (hoCloseWait): taken as the answer to a
	// later SUB, that DONE would say the master has no such listener,
	// while the master serves it (connections would go back and forth).
	// A Listen of the name meanwhile subscribes anew, but sends its SUB
	// only once the UNSUB is sent (unsubSent), so the master reads them
	// in the order lns changed; connections of the name that arrive before
	// the DONE go to the new subscription.
	closing map[string][]*hoSubscription
	unacked int
	// ackTimer sends the pending acks: those the channel had no room for
	// (retrying: no ack is tried before it fires), or a small count
	// waiting hoAckDelay for company (armed: it is set).
	ackTimer *time.Timer
	armed    bool
	retrying bool
}

// newReceiver adopts uc; grants says whether the master takes hoGrant.
func newReceiver(uc *net.UnixConn, grants bool) (*hoReceiver, error) {
	c, err := scmrights.NewConn(uc)
	if err != nil {
		uc.Close()
		return nil, err
	}
	r := &hoReceiver{conn: c, gone: make(chan struct{}), token: make(chan struct{}, 1),
		buf: make([]byte, hoMaxMsg), fds: make([]int, hoMaxBatch), grants: grants, grant: hoNoLimit,
		lns: map[string]*hoSubscription{}, closing: map[string][]*hoSubscription{}}
	r.rc, _ = c.SyscallConn()
	r.peekFn = r.peekOnce
	// A worker short from the start grants before its first SUB: the
	// master must not fill a window it has no room for.
	r.count(time.Now())
	r.token <- struct{}{}
	return r, nil
}

// est is the free descriptors now by the last count: each connection
// received since takes one; those closed since are not seen.
func (r *hoReceiver) est() int { return r.free0 - int(r.recvd-r.recvd0) }

// count takes stock of the free descriptors, then decides whether the
// worker is short (with a margin before it is not), sends the grant that
// follows and sets when to count again.
func (r *hoReceiver) count(now time.Time) {
	free := r.free()
	cost := time.Since(now)
	every := hoRecheckIdle
	switch {
	case free < 0:
		// No /proc: nothing to go by but a cut batch (see lost).
		r.short, free = false, math.MaxInt32
	case r.short:
		r.short = free < hoAmple+hoMaxBatch
	default:
		r.short = free < hoAmple
	}
	r.free0, r.recvd0 = free, r.recvd
	if r.short {
		every = hoRecheck
		r.setGrant(int64(r.recvd + uint32(max(0, free-hoReserve))))
	} else {
		r.setGrant(hoNoLimit)
	}
	r.next = now.Add(max(every, 100*cost))
}

// free returns how many descriptors the process can still open below its
// soft RLIMIT_NOFILE, at least: -1 if it cannot tell (no /proc), 0 if it
// cannot open /proc/self/fd for lack of them. Reading the table's size
// (FDSize in /proc/self/status, which no descriptor is above) is enough
// when that is far below the limit; else the open descriptors are counted,
// which takes time in proportion to them.
func (r *hoReceiver) free() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return -1
	}
	r.rlimit = int(min(rl.Cur, 1<<30))
	if r.scan == nil {
		r.scan = make([]byte, 8<<10)
	}
	if !r.short {
		if size := r.fdSize(); size >= 0 && r.rlimit-size >= hoAmple+hoMaxBatch {
			return r.rlimit - size
		}
	}
	dir, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
			return 0
		}
		return -1
	}
	defer unix.Close(dir)
	open := -1 // dir itself
	for {
		n, err := unix.Getdents(dir, r.scan)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1
		}
		if n <= 0 {
			break
		}
		const (
			reclenAt = unsafe.Offsetof(unix.Dirent{}.Reclen)
			nameAt   = int(unsafe.Offsetof(unix.Dirent{}.Name))
		)
		for b := r.scan[:n]; len(b) > nameAt; {
			reclen := int(*(*uint16)(unsafe.Pointer(&b[reclenAt])))
			if reclen <= nameAt || reclen > len(b) {
				return -1
			}
			if b[nameAt] != '.' { // not . or ..
				open++
			}
			b = b[reclen:]
		}
	}
	return max(0, r.rlimit-open)
}

// fdSize reads FDSize from /proc/self/status, or returns -1.
func (r *hoReceiver) fdSize() int {
	fd, err := unix.Open("/proc/self/status", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	defer unix.Close(fd)
	n, err := unix.Read(fd, r.scan)
	if err != nil || n <= 0 {
		return -1
	}
	b := r.scan[:n]
	const key = "\nFDSize:"
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return -1
	}
	size, ok := 0, false
	for _, c := range b[i+len(key):] {
		switch {
		case c == ' ' || c == '\t':
			if ok {
				return size
			}
		case c >= '0' && c <= '9' && size < 1<<30:
			size, ok = size*10+int(c-'0'), true
		default:
			if ok {
				return size
			}
			return -1
		}
	}
	return -1
}

// end closes the channel: the master is gone, or the worker drops it.
func (r *hoReceiver) end() {
	r.goneOnce.Do(func() {
		r.conn.Close()
		close(r.gone)
		r.mu.Lock()
		if r.ackTimer != nil {
			r.ackTimer.Stop()
		}
		r.mu.Unlock()
	})
}

// interrupt makes the goroutine reading, if any, look at its stop
// condition again: a read deadline in the past fails its recvmsg wait
// without consuming a message.
func (r *hoReceiver) interrupt() {
	r.stale.Store(true)
	_ = r.conn.SetReadDeadline(time.Unix(1, 0))
}

// read reads and sorts the master's messages, the caller holding the
// token, until stop reports true, deadline passes (zero: none) or the
// channel ends. It returns true, having read nothing more, when the
// process is short of descriptors for the next batch, or for any
// connection at all if accepting: Accept then fails with EMFILE, as
// accept(2) does.
func (r *hoReceiver) read(stop func() bool, deadline time.Time, accepting bool) bool {
	reset := false
	for {
		now := time.Now()
		if !now.Before(r.next) || !r.short && r.est() < hoAmple {
			r.count(now)
		}
		// The wait ends in time for the next count. Set before stop is
		// looked at: an interrupt after that look fails the wait below;
		// one before it is seen by stop.
		want := deadline
		if want.IsZero() || r.next.Before(want) {
			want = r.next
		}
		if r.stale.Swap(false) || !want.Equal(r.dl) {
			_ = r.conn.SetReadDeadline(want)
			r.dl = want
		}
		if stop() {
			return false
		}
		if r.short {
			est := r.est()
			if accepting && est <= hoReserve {
				return true
			}
			typ, count, err := r.waitPeek()
			if err == nil && typ == hoConns && count >= est {
				if time.Now().Before(r.next) {
					return true
				}
				continue // count again first
			}
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					if !deadline.IsZero() && !time.Now().Before(deadline) {
						return false
					}
					continue
				}
				r.end()
				return false
			}
		}
		if hoBeforeRecv != nil {
			hoBeforeRecv()
		}
		n, nfd, err := r.conn.Recv(r.buf, r.fds)
		if err != nil {
			switch {
			case errors.Is(err, unix.ECONNRESET) && !reset:
				// The master's end closed with our messages unread: the
				// kernel reports that once, before what the master sent
				// (connections to serve still), then end of file.
				reset = true
				continue
			case errors.Is(err, os.ErrDeadlineExceeded):
				if !deadline.IsZero() && !time.Now().Before(deadline) {
					return false
				}
				continue
			case errors.Is(err, scmrights.ErrTruncated):
				r.lost(r.buf[:n])
				continue
			case errors.Is(err, scmrights.ErrPayloadTruncated):
				// The master never sends more than hoMaxMsg; the
				// descriptors were closed.
				continue
			}
			r.end()
			return false
		}
		if err := decodeHandoff(r.buf[:n], r.fds[:nfd], &r.msg); err != nil {
			continue // descriptors closed by the decoder
		}
		switch r.msg.typ {
		case hoConns:
			r.recvd += uint32(r.msg.n)
			if !r.short {
				// Descriptors are allocated lowest first: one this high
				// means the table is nearly full below the limit, with
				// descriptors the server opened itself.
				for _, fd := range r.msg.fds {
					if r.rlimit-fd < hoAmple {
						r.next = time.Time{}
						break
					}
				}
			}
			r.deliver(&r.msg)
		case hoDone:
			r.mu.Lock()
			if q := r.closing[string(r.msg.name)]; len(q) > 0 {
				s := q[0]
				r.unclosing(s)
				close(s.done)
			} else if s := r.lns[string(r.msg.name)]; s != nil {
				delete(r.lns, s.name)
				close(s.refused)
			}
			r.mu.Unlock()
		default:
			closeInts(r.msg.fds)
		}
	}
}

// setGrant sends the master a grant if it differs from the last one and
// the master takes grants.
func (r *hoReceiver) setGrant(limit int64) {
	if limit == r.grant || !r.grants {
		return
	}
	var p [5]byte
	if r.send(hoAppendGrant(p[:0], limit), nil) == nil {
		r.grant = limit
	}
}

// waitPeek waits until a message is queued (or the read deadline passes,
// or the channel closes) and reports its type and, for a batch, its
// connection count without receiving it: MSG_PEEK with no room for control
// data installs no descriptor. A message it cannot peek (end of file, an
// error to report) reads as type 0, for Recv to see.
func (r *hoReceiver) waitPeek() (typ byte, count int, err error) {
	if err := r.rc.Read(r.peekFn); err != nil {
		return 0, 0, err
	}
	if r.peekN < 2 {
		return 0, 0, nil
	}
	return r.peekHdr[0], int(r.peekHdr[1]), nil
}

// peekOnce is waitPeek's RawConn.Read function: false (wait) while
// nothing is queued.
func (r *hoReceiver) peekOnce(fd uintptr) bool {
	iov := unix.Iovec{Base: &r.peekHdr[0]}
	iov.SetLen(len(r.peekHdr))
	msg := unix.Msghdr{Iov: &iov, Iovlen: 1}
	for {
		n, _, e := unix.Syscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&msg)), unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			r.peekN = int(n)
		default:
			r.peekN = -1
		}
		return true
	}
}

// lost accounts for a batch p whose descriptors did not all fit: those
// that arrived were closed and the kernel dropped the rest (the clients
// see a reset). Acknowledged, so the master's window for this worker does
// not shrink for good; and the descriptors are counted at once.
func (r *hoReceiver) lost(p []byte) {
	r.next = time.Time{}
	if len(p) < 2 || p[0] != hoConns || p[1] == 0 || p[1] > hoMaxBatch {
		return
	}
	k := int(p[1])
	r.recvd += uint32(k)
	r.ack(k)
}

// hoItem is a received connection not yet accepted.
type hoItem struct {
	fd   int
	addr string   // the remote address the master saw
	f    *os.File // owns fd once an Accept tried it (see retry)
}

// close closes the item's descriptor.
func (it hoItem) close() {
	if it.f != nil {
		it.f.Close()
	} else {
		unix.Close(it.fd)
	}
}

// hoBeforeRecv, if set, runs before each recvmsg of a worker (tests).
var hoBeforeRecv func()

// hoBeforeUnsub, if set, runs in the last Close of a name before it sends
// UNSUB, the name already out of lns (tests).
var hoBeforeUnsub func(name string)

// hoFileConn is net.FileConn; tests replace it to fail.
var hoFileConn = net.FileConn

// hoSubscription is a worker's subscription to one of the master's listeners,
// shared by every open handoffLn of its name: the first Listen subscribes
// (SUB), the last Close unsubscribes (UNSUB). Its queues are the
// connections received and not accepted yet.
type hoSubscription struct {
	name string
	ch   chan hoItem
	// retry holds connections an Accept could not turn into a net.Conn
	// for lack of descriptors or memory: served first by the next Accept,
	// as a kernel's accept queue keeps them under EMFILE.
	retry chan hoItem
	open  int // open listeners, under the receiver's mu
	// subbed is closed once the SUB is sent, or failed with subErr.
	subbed chan struct{}
	subErr error
	closed chan struct{} // the last listener closed
	// unsubSent is closed once the last Close sent UNSUB (or failed to).
	unsubSent chan struct{}
	done      chan struct{} // the master's DONE after our UNSUB
	refused   chan struct{} // the master's DONE without UNSUB: no such listener
	// Close's read stop condition, bound once.
	finished func() bool
}

// handoffLn is one handed-off listener. Accept and Close may be called
// concurrently; Close is idempotent (later calls return net.ErrClosed).
type handoffLn struct {
	r      *hoReceiver
	s      *hoSubscription
	addr   net.Addr
	closed chan struct{}
	once   sync.Once
	// Accept's read stop condition, bound once.
	acceptable func() bool
}

var _ net.Listener = (*handoffLn)(nil)

func (r *hoReceiver) listen(name string, addr net.Addr) (net.Listener, error) {
	if name == "" || len(name) > hoMaxName {
		return nil, fmt.Errorf("%w: listener name %q", ErrNoHandoff, name)
	}
	select {
	case <-r.gone:
		return nil, &net.OpError{Op: "listen", Net: "handoff", Addr: addr, Err: fmt.Errorf("%w: the master closed the channel", ErrMasterGone)}
	default:
	}
	r.mu.Lock()
	s := r.lns[name]
	for s == nil {
		// A subscription of the name closing: its UNSUB goes first. Else
		// the master could read our SUB first (a no-op: still subscribed),
		// then the UNSUB, and unsubscribe us for good.
		q := r.closing[name]
		if len(q) == 0 {
			break
		}
		sent := q[len(q)-1].unsubSent
		select {
		case <-sent:
		default:
			r.mu.Unlock()
			<-sent
			r.mu.Lock()
			s = r.lns[name]
			continue
		}
		break
	}
	first := s == nil
	if first {
		s = &hoSubscription{name: name, ch: make(chan hoItem, hoWindow+hoMaxBatch), retry: make(chan hoItem, hoWindow+hoMaxBatch),
			subbed: make(chan struct{}), closed: make(chan struct{}), unsubSent: make(chan struct{}),
			done: make(chan struct{}), refused: make(chan struct{})}
		s.finished = func() bool { return s.isFinished(r) }
		r.lns[name] = s
	}
	s.open++
	r.mu.Unlock()
	if first {
		// Not under mu: a send may wait for room, and the reader that
		// makes it needs mu.
		s.subErr = r.send(hoAppendName(nil, hoSub, name), nil)
		if s.subErr != nil {
			r.mu.Lock()
			if r.lns[name] == s {
				delete(r.lns, name)
			}
			r.mu.Unlock()
		}
		close(s.subbed)
	} else {
		<-s.subbed
	}
	if s.subErr != nil {
		return nil, &net.OpError{Op: "listen", Net: "handoff", Addr: addr, Err: s.subErr}
	}
	l := &handoffLn{r: r, s: s, addr: addr, closed: make(chan struct{})}
	l.acceptable = l.canAccept
	return l, nil
}

func (r *hoReceiver) send(p []byte, fds []int) error {
	select {
	case <-r.gone:
		return fmt.Errorf("%w: the master closed the channel", ErrMasterGone)
	default:
	}
	return r.conn.Send(p, fds...)
}

// Addr returns the listener's address (from the inherited descriptor of
// that name, or the socket the master bound on request), or the name
// itself when the worker cannot see it.
func (l *handoffLn) Addr() net.Addr { return l.addr }

// Accept returns the next connection the master handed over.
func (l *handoffLn) Accept() (net.Conn, error) {
	c, _, err := l.accept()
	return c, err
}

// canAccept says whether Accept has something to return, or to report.
func (l *handoffLn) canAccept() bool {
	if len(l.s.ch) > 0 || len(l.s.retry) > 0 {
		return true
	}
	select {
	case <-l.closed:
	case <-l.s.refused:
	case <-l.r.gone:
	default:
		return false
	}
	return true
}

// isFinished says whether the last Close may stop waiting for the master's
// DONE.
func (s *hoSubscription) isFinished(r *hoReceiver) bool {
	select {
	case <-s.done:
	case <-r.gone:
	default:
		return false
	}
	return true
}

// accept also returns the remote address the master reported.
func (l *handoffLn) accept() (net.Conn, string, error) {
	r, s := l.r, l.s
	for {
		select {
		case <-l.closed:
			return nil, "", l.opErr(net.ErrClosed)
		default:
		}
		var it hoItem
		select {
		case it = <-s.retry:
		case it = <-s.ch:
		default:
			select {
			case it = <-s.retry:
			case it = <-s.ch:
			case <-l.closed:
				return nil, "", l.opErr(net.ErrClosed)
			case <-s.refused:
				return nil, "", l.opErr(fmt.Errorf("%w: the master has no listener %q", ErrNoHandoff, s.name))
			case <-r.gone:
				// Serve what arrived; then the master is gone.
				select {
				case it = <-s.ch:
				default:
					return nil, "", l.opErr(ErrMasterGone)
				}
			case <-r.token:
				// Nothing queued: read the channel in this goroutine.
				short := r.read(l.acceptable, time.Time{}, true)
				r.token <- struct{}{}
				if short && !l.acceptable() {
					return nil, "", l.opErr(os.NewSyscallError("accept", unix.EMFILE))
				}
				continue
			}
		}
		// The master accepted it; net.FileConn still checks the socket
		// type, so scmrights.NetConn's five system calls of inspection
		// would only slow the hot path.
		if it.f == nil {
			it.f = os.NewFile(uintptr(it.fd), "handoff")
		}
		c, err := hoFileConn(it.f)
		if err != nil && retryable(err) {
			// Kept, not closed: the client would see a reset. The error
			// is temporary, so a server backs off and calls again.
			select {
			case s.retry <- it:
				select {
				case <-s.closed:
					// The last Close may have emptied retry before it
					// was put there: whoever takes it now gives it back.
					select {
					case it := <-s.retry:
						r.giveBack(s.name, []hoItem{it})
					default:
					}
				default:
				}
				return nil, "", l.opErr(err)
			default:
			}
		}
		it.f.Close()
		r.accepted(len(s.ch) == 0)
		if err != nil {
			continue // not a connection: nothing to serve
		}
		return c, it.addr, nil
	}
}

// retryable says whether FileConn failed for lack of descriptors or
// memory, which may be over at the next try.
func retryable(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM)
}

func (l *handoffLn) opErr(err error) error {
	return &net.OpError{Op: "accept", Net: "handoff", Addr: l.addr, Err: err}
}

// accepted counts one accepted connection and acknowledges a batch to the
// master: every hoAckEvery, and when the queue runs empty, at once with
// hoAckIdle or more pending, else within hoAckDelay. An idle worker thus
// has nothing outstanding a millisecond after its last Accept, and the
// master's least-loaded choice sees every worker's backlog as it is; under
// load the queue is rarely empty and acks are few. (Holding a small ack
// until hoAckEvery, to save a message per connection at low load, left a
// worker looking busier than it was for as long, and consecutive
// connections went to the other worker.)
func (r *hoReceiver) accepted(empty bool) {
	r.mu.Lock()
	r.unacked++
	n := 0
	switch {
	case r.retrying:
	case r.unacked >= hoAckEvery, empty && r.unacked >= hoAckIdle:
		// An armed delay then finds nothing pending.
		n, r.unacked = r.unacked, 0
	case empty:
		r.armAck(hoAckDelay)
	}
	r.mu.Unlock()
	if n > 0 {
		r.ack(n)
	}
}

// armAck makes the pending acks go out after d, unless a send is due
// already; r.mu is held.
func (r *hoReceiver) armAck(d time.Duration) {
	if r.armed {
		return
	}
	r.armed = true
	if r.ackTimer == nil {
		r.ackTimer = time.AfterFunc(d, r.ackPending)
	} else {
		r.ackTimer.Reset(d)
	}
}

// ackPending acknowledges whatever is pending (ackTimer): the acks a full
// channel left, with the connections accepted since.
func (r *hoReceiver) ackPending() {
	r.mu.Lock()
	r.armed, r.retrying = false, false
	r.mu.Unlock()
	for range hoWindow {
		r.mu.Lock()
		// An ack counts at most a window (the decoder's bound).
		n := min(r.unacked, hoWindow)
		r.unacked -= n
		r.mu.Unlock()
		if n == 0 || !r.ack(n) {
			return
		}
	}
}

// ack sends an ack of n connections without blocking: if the channel has
// no room (a master that does not read, for the moment), n is pending
// again and tried later (false). A lost ack (master gone) matters to
// nobody.
func (r *hoReceiver) ack(n int) bool {
	var p [5]byte
	if err := r.sendNow(hoAppendAck(p[:0], n)); errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM) {
		r.mu.Lock()
		r.unacked += n
		if r.armed && !r.retrying && r.ackTimer.Stop() {
			// A delay was armed: the retry's wait replaces it.
			r.armed = false
		}
		r.retrying = true
		r.armAck(hoAckRetry)
		r.mu.Unlock()
		return false
	}
	return true
}

// sendNow sends p without blocking and without the channel's write lock,
// which a blocked send (a give-back, a grant) holds while it waits: a
// SOCK_SEQPACKET message is sent whole or not at all, so concurrent senders
// cannot interleave.
func (r *hoReceiver) sendNow(p []byte) error {
	select {
	case <-r.gone:
		return fmt.Errorf("%w: the master closed the channel", ErrMasterGone)
	default:
	}
	var serr error
	err := r.rc.Control(func(fd uintptr) {
		for {
			_, serr = unix.SendmsgN(int(fd), p, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			if serr != unix.EINTR {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("sendmsg", serr)
	}
	return nil
}

// Close stops the listener; see HandoffListener.
func (l *handoffLn) Close() error {
	first := false
	l.once.Do(func() { first = true })
	if !first {
		return &net.OpError{Op: "close", Net: "handoff", Addr: l.addr, Err: net.ErrClosed}
	}
	r, s := l.r, l.s
	close(l.closed)
	r.mu.Lock()
	s.open--
	last := s.open == 0
	// Refused, s left lns when its DONE was read. A later Listen of the
	// name, which nothing made wait, may then have subscribed anew (the
	// name became known: a worker's Listen had the master bind it): the
	// master's subscription is the newer one's, and an UNSUB now would
	// end it. Decided under mu, with s entering closing, so that a Listen
	// after this one waits for its UNSUB.
	unsubscribe := last && (r.lns[s.name] == s || r.lns[s.name] == nil)
	if last {
		if r.lns[s.name] == s {
			delete(r.lns, s.name)
		}
		if unsubscribe {
			// Also when refused with no newer subscription: the DONE
			// taken for a refusal may have been meant for another
			// UNSUB, and with the master subscribed still connections
			// would go back and forth. For a name it does not know the
			// master just answers DONE.
			r.closing[s.name] = append(r.closing[s.name], s)
		}
	}
	r.mu.Unlock()
	// An Accept of l reading the channel returns.
	r.interrupt()
	if !last {
		// The other listeners of the name serve what is queued.
		return nil
	}
	close(s.closed)
	if !unsubscribe {
		// No UNSUB, no DONE: nothing more arrives for s (a reader gives
		// what comes for the name to the newer subscription).
		close(s.unsubSent)
		r.giveBackQueued(s)
		return nil
	}
	if hoBeforeUnsub != nil {
		hoBeforeUnsub(s.name)
	}
	var p [2 + hoMaxName]byte
	unsub := r.send(hoAppendName(p[:0], hoUnsub, s.name), nil)
	close(s.unsubSent)
	// Given back before the wait (and after the UNSUB, so that the master
	// passes them to another worker): they hold descriptors that a batch
	// queued ahead of the DONE may need (see hoReceiver.read).
	r.giveBackQueued(s)
	if unsub == nil {
		// Read the channel for the DONE if nobody else does.
		deadline := time.Now().Add(hoCloseWait)
		t := time.NewTimer(hoCloseWait)
	wait:
		for !s.finished() && time.Now().Before(deadline) {
			select {
			case <-s.done:
			case <-r.gone:
			case <-t.C:
				break wait
			case <-r.token:
				short := r.read(s.finished, deadline, false)
				r.token <- struct{}{}
				if short {
					// A batch waits for descriptors: count again soon.
					select {
					case <-s.done:
					case <-r.gone:
					case <-t.C:
						break wait
					case <-time.After(hoRecheck):
					}
				}
			}
		}
		t.Stop()
	}
	select {
	case <-s.done:
	case <-r.gone:
	default:
		if unsub == nil {
			// Gave up waiting: s stays in closing, where its DONE, when
			// it comes, finds it (see closing).
			break
		}
		// No UNSUB, no DONE.
		r.mu.Lock()
		r.unclosing(s)
		r.mu.Unlock()
	}
	// Nothing more arrives for s: a reader gives back anything of this
	// name from now on (to a later subscription of the name, if any), and
	// the master sends none after DONE.
	r.giveBackQueued(s)
	return nil
}

// unclosing drops s from the subscriptions waiting for a DONE; r.mu is
// held.
func (r *hoReceiver) unclosing(s *hoSubscription) {
	q := r.closing[s.name]
	if i := slices.Index(q, s); i >= 0 {
		q = slices.Delete(q, i, i+1)
	}
	if len(q) == 0 {
		delete(r.closing, s.name)
	} else {
		r.closing[s.name] = q
	}
}

// giveBackQueued gives back every connection queued on s.
func (r *hoReceiver) giveBackQueued(s *hoSubscription) {
	var items []hoItem
	for {
		select {
		case it := <-s.retry:
			items = append(items, it)
			continue
		case it := <-s.ch:
			items = append(items, it)
			continue
		default:
		}
		break
	}
	r.giveBack(s.name, items)
}

// giveBack returns connections to the master in RETURN messages, or
// closes them if the master is gone.
func (r *hoReceiver) giveBack(name string, items []hoItem) {
	for len(items) > 0 {
		k := min(len(items), hoMaxBatch)
		p := hoAppendHeader(nil, hoReturn, k)
		fds := make([]int, k)
		for i, it := range items[:k] {
			p = hoAppendEntry(p, name, []byte(it.addr))
			// An os.File of a retried item still owns it.fd (it is
			// blocking, so its Fd changes nothing) until closed below.
			fds[i] = it.fd
		}
		// The master holds its own copies once sent.
		_ = r.send(p, fds)
		for _, it := range items[:k] {
			it.close()
		}
		items = items[k:]
	}
}

// deliver queues each connection on its open listener and gives back the
// rest (a listener closed meanwhile).
func (r *hoReceiver) deliver(msg *hoMsg) {
	var back []hoItem
	var backName string
	r.mu.Lock()
	for i := range msg.n {
		e := msg.entries[i]
		it := hoItem{fd: msg.fds[i], addr: string(e.addr)}
		if s := r.lns[string(e.name)]; s != nil {
			select {
			case s.ch <- it:
				continue
			default:
				// Beyond the master's window: never happens with a
				// well-behaved master; give it back rather than block.
			}
		}
		if len(back) > 0 && backName != string(e.name) {
			r.mu.Unlock()
			r.giveBack(backName, back)
			r.mu.Lock()
			back = back[:0]
		}
		backName = string(e.name)
		back = append(back, it)
	}
	r.mu.Unlock()
	if len(back) > 0 {
		r.giveBack(backName, back)
	}
}
