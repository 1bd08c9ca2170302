//go:build linux

package cluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
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
	// hoAckIdle is the smallest ack sent when the queue runs empty: one
	// ack per connection would cost a message per connection at low
	// load, while a few unreported ones only delay the load figure.
	hoAckIdle = 4
	// hoCloseWait bounds how long Close waits for the master to confirm
	// that nothing more of the listener is on its way.
	hoCloseWait = 5 * time.Second

	// hoReserve is what a worker short of descriptors keeps free of
	// connections: for net.FileConn's dup in Accept, for counting its
	// descriptors, and for a few the server opens between a grant and the
	// connections it covers.
	hoReserve = 4
	// hoAmple is the free descriptors at which a worker needs no grant:
	// a full window and a batch fit, whatever is on its way.
	hoAmple = hoWindow + hoMaxBatch + hoReserve
	// hoRecheck is how often a reader short of descriptors counts them
	// again while it waits, so that the room closed connections freed is
	// granted to the master, which sends nothing beyond a grant.
	hoRecheck = 50 * time.Millisecond
)

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
// Listeners of one process share its channel; there is at most one per
// name at a time. Close unblocks Accept, tells the master to stop sending
// that listener's connections, and gives back to the master (which passes
// them to another worker) every connection received and not accepted, so
// a worker that closes its listener before exiting loses none.
func HandoffListener(name string) (net.Listener, error) { return handoffListener(name) }

var hoWorkerSide struct {
	once sync.Once
	r    *hoReceiver
	err  error
}

// handoffListener is the worker side of handoff mode (see HandoffListener).
func handoffListener(name string) (net.Listener, error) {
	hoWorkerSide.once.Do(func() {
		hoWorkerSide.r, hoWorkerSide.err = openReceiver(os.Getenv(envConnFD))
	})
	if hoWorkerSide.err != nil {
		return nil, hoWorkerSide.err
	}
	return hoWorkerSide.r.listen(name, inheritedAddr(name))
}

// openReceiver adopts the connection channel named by HANDOFF_CONN_FD.
func openReceiver(v string) (*hoReceiver, error) {
	fd, err := strconv.Atoi(v)
	if v == "" || err != nil || fd < listenFDsStart {
		return nil, fmt.Errorf("%w: %s=%q", ErrNoHandoff, envConnFD, v)
	}
	// The descriptor arrived without close-on-exec; the worker's own
	// children must not hold it, or the master would never see the
	// worker's end close.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("%w: %s=%d: %w", ErrNoHandoff, envConnFD, fd, os.NewSyscallError("fcntl", err))
	}
	uc, err := scmrights.UnixConn(fd)
	if err != nil {
		return nil, fmt.Errorf("%w: %s=%d: %w", ErrNoHandoff, envConnFD, fd, err)
	}
	return newReceiver(uc)
}

// inheritedAddr is the local address of the inherited listener named
// name (descriptors 3.. in LISTEN_FDNAMES order), or a handoffAddr.
func inheritedAddr(name string) net.Addr {
	names := strings.Split(os.Getenv(envListenFDNames), ":")
	n, _ := strconv.Atoi(os.Getenv(envListenFDs))
	for i, nm := range names {
		if nm != name || i >= n {
			continue
		}
		sa, err := unix.Getsockname(listenFDsStart + i)
		if err != nil {
			break
		}
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
		case *unix.SockaddrInet6:
			var zone string
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil && a.ZoneId != 0 {
				zone = ifi.Name
			}
			return &net.TCPAddr{IP: append(net.IP(nil), a.Addr[:]...), Port: a.Port, Zone: zone}
		case *unix.SockaddrUnix:
			return &net.UnixAddr{Name: a.Name, Net: "unix"}
		}
		break
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

	// Descriptor room, also the token holder's. A batch that arrives
	// with the descriptor table too full for it is lost: the kernel
	// installs what fits and drops the rest (MSG_CTRUNC), and the master
	// closed its copies. So a worker near RLIMIT_NOFILE (short) counts its
	// free descriptors before each read, grants the master room for that
	// many connections (hoGrant) and leaves in the socket a batch that
	// would not fit.
	rc     syscall.RawConn
	short  bool
	recvd  uint32 // connections that arrived in hoConns messages
	grant  int64  // the last grant sent: a limit, or hoNoLimit
	rlimit int    // soft RLIMIT_NOFILE, as last read
	dents  []byte

	mu      sync.Mutex
	lns     map[string]*handoffLn // open listeners
	closing map[string]*handoffLn // closed, waiting for the master's DONE
	unacked int
}

func newReceiver(uc *net.UnixConn) (*hoReceiver, error) {
	c, err := scmrights.NewConn(uc)
	if err != nil {
		uc.Close()
		return nil, err
	}
	r := &hoReceiver{conn: c, gone: make(chan struct{}), token: make(chan struct{}, 1),
		buf: make([]byte, hoMaxMsg), fds: make([]int, hoMaxBatch), grant: hoNoLimit,
		lns: map[string]*handoffLn{}, closing: map[string]*handoffLn{}}
	r.rc, _ = c.SyscallConn()
	if free := r.free(); free >= 0 && free < hoAmple {
		r.short = true
	}
	r.token <- struct{}{}
	return r, nil
}

// free counts the descriptors the process can still open, below its soft
// RLIMIT_NOFILE, or returns -1 if it cannot tell (no /proc). Out of
// descriptors, it cannot open /proc/self/fd either: 0.
func (r *hoReceiver) free() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return -1
	}
	r.rlimit = int(min(rl.Cur, 1<<30))
	dir, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
			return 0
		}
		return -1
	}
	defer unix.Close(dir)
	if r.dents == nil {
		r.dents = make([]byte, 8<<10)
	}
	open := -1 // dir itself
	for {
		n, err := unix.Getdents(dir, r.dents)
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
		for b := r.dents[:n]; len(b) > nameAt; {
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

// end closes the channel: the master is gone, or the worker drops it.
func (r *hoReceiver) end() {
	r.goneOnce.Do(func() {
		r.conn.Close()
		close(r.gone)
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
	// Set before stop is looked at: an interrupt after that look fails
	// the wait below; one before it is seen by stop.
	if !deadline.IsZero() || r.stale.Swap(false) {
		_ = r.conn.SetReadDeadline(deadline)
	}
	if !deadline.IsZero() {
		defer r.stale.Store(true)
	}
	reset := false
	for {
		if r.short {
			// The wait ends in time to count again (see hoRecheck);
			// set before stop is looked at, as above.
			wait := time.Now().Add(hoRecheck)
			if !deadline.IsZero() && deadline.Before(wait) {
				wait = deadline
			}
			r.stale.Store(true)
			_ = r.conn.SetReadDeadline(wait)
		}
		if stop() {
			return false
		}
		if r.short && !r.fits(accepting) {
			return true
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
				if !r.short {
					_ = r.conn.SetReadDeadline(deadline)
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
				// means the table is nearly full below the limit.
				for _, fd := range r.msg.fds {
					if r.rlimit-fd < hoAmple {
						r.short = true
						break
					}
				}
			}
			r.deliver(&r.msg)
		case hoDone:
			r.mu.Lock()
			if l := r.closing[string(r.msg.name)]; l != nil {
				delete(r.closing, l.name)
				close(l.done)
			} else if l := r.lns[string(r.msg.name)]; l != nil {
				delete(r.lns, l.name)
				close(l.refused)
			}
			r.mu.Unlock()
		default:
			closeInts(r.msg.fds)
		}
	}
}

// fits counts the free descriptors, grants the master room for as many
// connections less hoReserve, and says whether the next message can be
// read: not a batch of at least as many connections as there are free
// descriptors (it waits in the socket), and, when accepting, nothing at
// all if none is queued and the reserve is all that is left.
func (r *hoReceiver) fits(accepting bool) bool {
	free := r.free()
	if free < 0 || free >= hoAmple+hoMaxBatch {
		// Room again (or no way to count): no limit.
		r.short = false
		r.setGrant(hoNoLimit)
		return true
	}
	r.setGrant(int64(r.recvd + uint32(max(0, free-hoReserve))))
	typ, count, queued := r.peek()
	if !queued {
		return !accepting || free > hoReserve
	}
	return typ != hoConns || count < free
}

// setGrant sends the master a grant if it differs from the last one.
func (r *hoReceiver) setGrant(limit int64) {
	if limit == r.grant {
		return
	}
	var p [5]byte
	if r.send(hoAppendGrant(p[:0], limit), nil) == nil {
		r.grant = limit
	}
}

// peek reports the type and, for a batch, the connection count of the
// next message without receiving it: MSG_PEEK with no room for control
// data installs no descriptor. queued is false only if nothing is queued;
// end of file or an error reads as a message of type 0, for Recv to see.
func (r *hoReceiver) peek() (typ byte, count int, queued bool) {
	var hdr [2]byte
	var n int
	var err error
	cerr := r.rc.Control(func(fd uintptr) {
		for {
			n, _, _, _, err = unix.Recvmsg(int(fd), hdr[:], nil, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err != unix.EINTR {
				return
			}
		}
	})
	switch {
	case cerr == nil && err == unix.EAGAIN:
		return 0, 0, false
	case cerr != nil || err != nil || n < 2:
		return 0, 0, true
	}
	return hdr[0], int(hdr[1]), true
}

// lost accounts for a batch p whose descriptors did not all fit: those
// that arrived were closed and the kernel dropped the rest (the clients
// see a reset). Acknowledged, so the master's window for this worker does
// not shrink for good; and from now on the worker counts before reading.
func (r *hoReceiver) lost(p []byte) {
	r.short = true
	if len(p) < 2 || p[0] != hoConns || p[1] == 0 || p[1] > hoMaxBatch {
		return
	}
	k := int(p[1])
	r.recvd += uint32(k)
	var a [5]byte
	_ = r.send(hoAppendAck(a[:0], k), nil)
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

// hoFileConn is net.FileConn; tests replace it to fail.
var hoFileConn = net.FileConn

// handoffLn is one handed-off listener. Accept and Close may be called
// concurrently; Close is idempotent (later calls return net.ErrClosed).
type handoffLn struct {
	r    *hoReceiver
	name string
	addr net.Addr
	ch   chan hoItem
	// retry holds connections an Accept could not turn into a net.Conn
	// for lack of descriptors or memory: served first by the next Accept,
	// as a kernel's accept queue keeps them under EMFILE.
	retry   chan hoItem
	closed  chan struct{}
	done    chan struct{} // the master's DONE after our UNSUB
	refused chan struct{} // the master's DONE without UNSUB: no such listener
	once    sync.Once
	// The read stop conditions of Accept and Close, bound once.
	acceptable, finished func() bool
}

var _ net.Listener = (*handoffLn)(nil)

func (r *hoReceiver) listen(name string, addr net.Addr) (net.Listener, error) {
	if name == "" || len(name) > hoMaxName {
		return nil, fmt.Errorf("%w: listener name %q", ErrNoHandoff, name)
	}
	l := &handoffLn{r: r, name: name, addr: addr, ch: make(chan hoItem, hoWindow+hoMaxBatch), retry: make(chan hoItem, hoWindow+hoMaxBatch),
		closed: make(chan struct{}), done: make(chan struct{}), refused: make(chan struct{})}
	l.acceptable, l.finished = l.canAccept, l.isFinished
	r.mu.Lock()
	if r.lns[name] != nil || r.closing[name] != nil {
		r.mu.Unlock()
		return nil, &net.OpError{Op: "listen", Net: "handoff", Addr: addr, Err: fmt.Errorf("already listening on %q", name)}
	}
	r.lns[name] = l
	r.mu.Unlock()
	if err := r.send(hoAppendName(nil, hoSub, name), nil); err != nil {
		r.mu.Lock()
		delete(r.lns, name)
		r.mu.Unlock()
		return nil, &net.OpError{Op: "listen", Net: "handoff", Addr: addr, Err: err}
	}
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
// that name), or the name itself when the worker cannot see it.
func (l *handoffLn) Addr() net.Addr { return l.addr }

// Accept returns the next connection the master handed over.
func (l *handoffLn) Accept() (net.Conn, error) {
	c, _, err := l.accept()
	return c, err
}

// canAccept says whether Accept has something to return, or to report.
func (l *handoffLn) canAccept() bool {
	if len(l.ch) > 0 || len(l.retry) > 0 {
		return true
	}
	select {
	case <-l.closed:
	case <-l.refused:
	case <-l.r.gone:
	default:
		return false
	}
	return true
}

// isFinished says whether Close may stop waiting for the master's DONE.
func (l *handoffLn) isFinished() bool {
	select {
	case <-l.done:
	case <-l.r.gone:
	default:
		return false
	}
	return true
}

// accept also returns the remote address the master reported.
func (l *handoffLn) accept() (net.Conn, string, error) {
	r := l.r
	for {
		select {
		case <-l.closed:
			return nil, "", l.opErr(net.ErrClosed)
		default:
		}
		var it hoItem
		select {
		case it = <-l.retry:
		case it = <-l.ch:
		default:
			select {
			case it = <-l.retry:
			case it = <-l.ch:
			case <-l.closed:
				return nil, "", l.opErr(net.ErrClosed)
			case <-l.refused:
				return nil, "", l.opErr(fmt.Errorf("%w: the master has no listener %q", ErrNoHandoff, l.name))
			case <-r.gone:
				// Serve what arrived; then the master is gone.
				select {
				case it = <-l.ch:
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
			case l.retry <- it:
				select {
				case <-l.closed:
					// Close may have emptied retry before it was put
					// there: whoever takes it now gives it back.
					select {
					case it := <-l.retry:
						r.giveBack(l.name, []hoItem{it})
					default:
					}
				default:
				}
				return nil, "", l.opErr(err)
			default:
			}
		}
		it.f.Close()
		r.accepted(len(l.ch) == 0)
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
// master, at once when the queue ran empty.
func (r *hoReceiver) accepted(empty bool) {
	r.mu.Lock()
	r.unacked++
	n := 0
	if r.unacked >= hoAckEvery || empty && r.unacked >= hoAckIdle {
		n, r.unacked = r.unacked, 0
	}
	r.mu.Unlock()
	if n > 0 {
		var p [5]byte
		// A lost ack (master gone) matters to nobody.
		_ = r.send(hoAppendAck(p[:0], n), nil)
	}
}

// Close stops the listener; see HandoffListener.
func (l *handoffLn) Close() error {
	first := false
	l.once.Do(func() { first = true })
	if !first {
		return &net.OpError{Op: "close", Net: "handoff", Addr: l.addr, Err: net.ErrClosed}
	}
	r := l.r
	r.mu.Lock()
	delete(r.lns, l.name)
	r.closing[l.name] = l
	r.mu.Unlock()
	close(l.closed)
	// An Accept of l reading the channel returns.
	r.interrupt()
	var p [2 + hoMaxName]byte
	if r.send(hoAppendName(p[:0], hoUnsub, l.name), nil) == nil {
		// Read the channel for the DONE if nobody else does.
		deadline := time.Now().Add(hoCloseWait)
		t := time.NewTimer(hoCloseWait)
	wait:
		for !l.finished() && time.Now().Before(deadline) {
			select {
			case <-l.done:
			case <-r.gone:
			case <-t.C:
				break wait
			case <-r.token:
				short := r.read(l.finished, deadline, false)
				r.token <- struct{}{}
				if short {
					// A batch waits for descriptors: count again soon.
					select {
					case <-l.done:
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
	r.mu.Lock()
	if r.closing[l.name] == l {
		delete(r.closing, l.name)
	}
	r.mu.Unlock()
	// Nothing more arrives for l: a reader gives back anything of this
	// name from now on, and the master sends none after DONE.
	var items []hoItem
	for {
		select {
		case it := <-l.retry:
			items = append(items, it)
			continue
		case it := <-l.ch:
			items = append(items, it)
			continue
		default:
		}
		break
	}
	r.giveBack(l.name, items)
	return nil
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
		if l := r.lns[string(e.name)]; l != nil {
			select {
			case l.ch <- it:
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
