//go:build unix && !aix

package scmrights

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a unix socket connection tuned for passing descriptors: it reuses
// its buffers, so Send and Recv do not allocate in steady state, and it
// sends and receives batches of messages in one system call where the kernel
// allows (Linux sendmmsg/recvmmsg).
//
// Send, SendBatch and Write may be called concurrently with each other and
// with Recv, RecvBatch and Read; calls of one direction are serialised, so
// concurrent sends never interleave their bytes. Close may be called at any
// time and unblocks pending calls; a second Close returns an error matching
// net.ErrClosed.
type Conn struct {
	uc     *net.UnixConn
	rc     syscall.RawConn
	sotype int // SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM

	wmu sync.Mutex
	w   writer
	rmu sync.Mutex
	r   reader
}

var (
	_ io.ReadWriteCloser = (*Conn)(nil)
	_ syscall.Conn       = (*Conn)(nil)
)

// NewConn wraps c. The Conn takes ownership: closing it closes c, and c
// should not be used directly afterwards except for its address methods.
func NewConn(c *net.UnixConn) (*Conn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var sotype int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		sotype, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, os.NewSyscallError("getsockopt", serr)
	}
	cn := &Conn{uc: c, rc: rc, sotype: sotype}
	cn.w.init()
	cn.r.init()
	return cn, nil
}

// UnixConn returns the underlying connection, for its addresses and
// options. Reading or writing it directly bypasses the Conn's guarantees.
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

// SyscallConn returns the raw connection, for socket options.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// Close closes the connection, unblocking pending calls.
func (c *Conn) Close() error { return c.uc.Close() }

// LocalAddr returns the local address.
func (c *Conn) LocalAddr() net.Addr { return c.uc.LocalAddr() }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.uc.RemoteAddr() }

// SetDeadline sets the read and write deadlines, as net.Conn does.
func (c *Conn) SetDeadline(t time.Time) error { return c.uc.SetDeadline(t) }

// SetReadDeadline sets the deadline for Recv, RecvBatch and Read.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for Send, SendBatch and Write.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.uc.SetWriteDeadline(t) }

// PeerCred returns the credentials of the peer process (SO_PEERCRED).
func (c *Conn) PeerCred() (Ucred, error) { return PeerCred(c.uc) }

// Send sends payload with fds as one message; see the package-level Send.
func (c *Conn) Send(payload []byte, fds ...int) error {
	if err := checkSend(c.sotype, payload, fds); err != nil {
		return opError("write", c.uc, err)
	}
	c.wmu.Lock()
	_, err := c.w.send(c.rc, c.sotype, payload, fds)
	c.wmu.Unlock()
	if err != nil {
		err = opError("write", c.uc, err)
	}
	return err
}

// Recv receives one message; see the package-level Recv.
func (c *Conn) Recv(buf []byte, fds []int) (n, nfds int, err error) {
	c.rmu.Lock()
	n, nfds, err = c.r.recv(c.rc, c.sotype, buf, fds, nil)
	c.rmu.Unlock()
	if err != nil {
		err = opError("read", c.uc, err)
	}
	return n, nfds, err
}

// RecvMsg receives one message as Recv does, into m.Payload and m.FDs,
// and reports m.N, m.NFDs and the sender's credentials (m.Cred,
// m.HasCred). It returns the error Recv would; m.Err is left alone.
//
// On SOCK_SEQPACKET an empty message and the end of stream both return
// io.EOF (recvmsg returns 0 for both), but with SetPassCred on, m.HasCred
// tells them apart: the kernel attaches credentials to every message it
// delivers, empty or not, and none to the end of stream. So io.EOF with
// m.HasCred true is an empty message, and the connection may still carry
// more. This holds for messages queued before SO_PASSCRED was set too
// (scm_recv decides as the message is read), though their credentials may
// then be empty (pid 0, the overflow uid and gid). (An empty message that RecvBatch read
// at the end of a batch and left pending is reported with HasCred false.)
func (c *Conn) RecvMsg(m *Message) error {
	c.rmu.Lock()
	n, nfds, err := c.r.recv(c.rc, c.sotype, m.Payload, m.FDs, m)
	c.rmu.Unlock()
	m.N, m.NFDs = n, nfds
	return opError("read", c.uc, err)
}

// SetPassCred turns SO_PASSCRED on or off: with it on, every received
// message carries the sender's pid, uid and gid, reported by RecvMsg and
// RecvBatch. Linux only; elsewhere it fails with ErrNotSupported.
func (c *Conn) SetPassCred(on bool) error {
	var serr error
	if err := c.rc.Control(func(fd uintptr) { serr = setPassCred(int(fd), on) }); err != nil {
		return err
	}
	return serr
}

// Read reads payload bytes from a message that carries no descriptors. A
// message that carries any fails with ErrTruncated, its descriptors closed:
// a plain reader never silently loses or leaks them.
func (c *Conn) Read(p []byte) (int, error) {
	n, _, err := c.Recv(p, nil)
	return n, err
}

// Write sends p as one message without descriptors. On a stream socket a
// short write is continued until all of p is written or an error occurs;
// empty p writes nothing. On SOCK_SEQPACKET empty p is ErrEmptyPayload.
func (c *Conn) Write(p []byte) (int, error) {
	if err := checkSend(c.sotype, p, nil); err != nil {
		return 0, opError("write", c.uc, err)
	}
	c.wmu.Lock()
	n, err := c.w.send(c.rc, c.sotype, p, nil)
	c.wmu.Unlock()
	return n, opError("write", c.uc, err)
}

// Send sends payload and the descriptors fds over c as one message. The
// descriptors remain the caller's. The whole payload is written: on a stream
// socket a short write is continued, with the descriptors on the first part
// only. If it fails part-way (a deadline, a closed peer), the peer holds a
// fragment and the stream is no longer usable: a Conn then refuses further
// sends with ErrBroken; after the package-level Send, close the connection.
// Descriptors with an empty payload, or an empty message on SOCK_SEQPACKET,
// fail with ErrEmptyPayload, more than MaxFDs with ErrTooManyFDs; nothing is
// sent then.
//
// Send allocates a little per call; use Conn on hot paths.
func Send(c *net.UnixConn, payload []byte, fds ...int) error {
	sotype := sotypeOf(c)
	if err := checkSend(sotype, payload, fds); err != nil {
		return opError("write", c, err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	w := writerPool.Get().(*writer)
	_, err = w.send(rc, sotype, payload, fds)
	w.broken = nil // the pool's writer carries no connection state
	writerPool.Put(w)
	return opError("write", c, err)
}

// Recv receives one message from c: its payload into buf and its
// descriptors into fds, returning how many of each arrived. len(fds) is the
// most descriptors the caller accepts; if more arrive, or the kernel
// truncated the control data (MSG_CTRUNC), Recv closes every descriptor that
// arrived and fails with ErrTruncated. On a message-preserving socket a
// payload larger than buf fails with ErrPayloadTruncated, its descriptors
// closed. Received descriptors are close-on-exec and belong to the caller.
// At end of stream Recv returns io.EOF. buf must not be empty on a stream
// socket (io.ErrShortBuffer). When a message fails (ErrTruncated,
// ErrPayloadTruncated), n still reports the payload bytes it consumed: on a
// stream socket they are gone from the stream, and a framing layer must
// account for them.
//
// Recv allocates a little per call; use Conn on hot paths.
func Recv(c *net.UnixConn, buf []byte, fds []int) (n, nfds int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	r := readerPool.Get().(*reader)
	n, nfds, err = r.recv(rc, sotypeOf(c), buf, fds, nil)
	readerPool.Put(r)
	return n, nfds, opError("read", c, err)
}

func checkSend(sotype int, payload []byte, fds []int) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("%w: %d", ErrTooManyFDs, len(fds))
	}
	if len(payload) == 0 && (len(fds) > 0 || sotype == unix.SOCK_SEQPACKET) {
		return ErrEmptyPayload
	}
	return nil
}

// sotypeOf derives the socket type from the address's network name, which
// package net sets from SO_TYPE.
func sotypeOf(c *net.UnixConn) int {
	if a := c.LocalAddr(); a != nil {
		switch a.Network() {
		case "unixpacket":
			return unix.SOCK_SEQPACKET
		case "unixgram":
			return unix.SOCK_DGRAM
		}
	}
	return unix.SOCK_STREAM
}

// opError wraps err as the net package does, so errors.Is(err, net.ErrClosed)
// and Timeout() keep working.
func opError(op string, c *net.UnixConn, err error) error {
	if err == nil || err == io.EOF || err == io.ErrShortBuffer {
		return err
	}
	laddr := c.LocalAddr()
	netw := "unix"
	if laddr != nil {
		netw = laddr.Network()
	}
	return &net.OpError{Op: op, Net: netw, Source: laddr, Addr: c.RemoteAddr(), Err: err}
}

// rawError strips the "raw-read"/"raw-write" *net.OpError a RawConn wraps
// its own errors in (a closed connection, a deadline), so opError wraps the
// cause once rather than nesting two OpErrors.
func rawError(err error) error {
	if oe, ok := err.(*net.OpError); ok && strings.HasPrefix(oe.Op, "raw-") {
		return oe.Err
	}
	return err
}

var maxSendSpace = unix.CmsgSpace(4 * MaxFDs)

// writer is the send state of one connection. fn is bound once so that
// passing it to RawConn.Write does not allocate a closure per call; the
// loop is its body rather than a method value, which would add a wrapper
// frame to every call (see sendmsg on why frames count).
type writer struct {
	p, oob []byte
	n      int // payload bytes written so far
	err    error
	broken error // set after a partial stream write; every later send fails
	oobBuf []byte
	fn     func(fd uintptr) bool
	mb     msgBuf

	batchWriter
}

func (w *writer) init() {
	w.oobBuf = make([]byte, maxSendSpace)
	// fn runs under the descriptor's write lock, which RawConn.Write holds
	// across waits: a short write is finished before any other send starts.
	w.fn = func(fd uintptr) bool {
		for {
			n, err := sendmsg(int(fd), &w.mb, w.p, w.oob)
			switch ready(err) {
			case callAgain:
				continue
			case callWait:
				return false
			}
			if err != nil {
				w.err = os.NewSyscallError("sendmsg", err)
				return true
			}
			w.oob = nil // the descriptors rode on the first byte; never send them twice
			w.n += n
			w.p = w.p[n:]
			if len(w.p) == 0 {
				return true
			}
		}
	}
}

var writerPool = sync.Pool{New: func() any {
	w := new(writer)
	w.init()
	return w
}}

func (w *writer) send(rc syscall.RawConn, sotype int, p []byte, fds []int) (int, error) {
	if w.broken != nil {
		return 0, w.broken
	}
	w.p, w.n, w.err = p, 0, nil
	w.oob = nil
	if len(fds) > 0 {
		w.oob = PutRights(w.oobBuf, fds)
	}
	err := rawError(rc.Write(w.fn))
	if err == nil {
		err = w.err
	}
	n := w.n
	w.p, w.oob, w.err = nil, nil, nil // do not keep the caller's memory alive
	if err != nil && n > 0 && sotype == unix.SOCK_STREAM {
		// The peer holds a fragment of this message; anything sent after
		// it would be read as its continuation.
		w.broken = fmt.Errorf("%w (%d of %d bytes written): %w", ErrBroken, n, len(p), err)
	}
	return n, err
}

// callResult says what to do after a non-blocking system call.
type callResult int

const (
	callDone  callResult = iota // finished, successfully or not
	callAgain                   // interrupted (EINTR): call again now
	callWait                    // would block (EAGAIN): park on the poller
)

// ready is the one place that decides what EINTR and EAGAIN mean for the
// RawConn callbacks.
func ready(err error) callResult {
	switch err {
	case unix.EINTR:
		return callAgain
	case unix.EAGAIN:
		return callWait
	}
	return callDone
}

// reader is the receive state of one connection.
type reader struct {
	p, oob         []byte
	n, oobn, flags int
	err            error
	oobBuf         []byte
	fn             func(fd uintptr) bool
	mb             msgBuf
	// eof is an end of stream RecvBatch saw after the messages it
	// returned (a trailing empty record), owed to the next receive.
	eof bool

	batchReader
}

func (r *reader) init() {
	r.oobBuf = make([]byte, rightsSpace(MaxFDs))
	r.fn = func(fd uintptr) bool { // a closure, not a method value: see writer
		for {
			n, oobn, flags, err := recvmsg(int(fd), &r.mb, r.p, r.oob)
			switch ready(err) {
			case callAgain:
				continue
			case callWait:
				return false
			}
			if err != nil {
				r.err = os.NewSyscallError("recvmsg", err)
				return true
			}
			r.n, r.oobn, r.flags = n, oobn, flags
			return true
		}
	}
}

// takeEOF returns the end of stream RecvBatch left pending, or the
// error any receive would get if the connection was closed since, so a
// caller's own Close still reads as net.ErrClosed.
func (r *reader) takeEOF(rc syscall.RawConn) error {
	r.eof = false
	if err := rawError(rc.Control(func(uintptr) {})); err != nil {
		return err
	}
	return io.EOF
}

var readerPool = sync.Pool{New: func() any {
	r := new(reader)
	r.init()
	return r
}}

// recv receives one message; if m is not nil, the sender's credentials are
// stored in it.
func (r *reader) recv(rc syscall.RawConn, sotype int, p []byte, fds []int, m *Message) (n, nfds int, err error) {
	if len(p) == 0 && (sotype == unix.SOCK_STREAM || !zeroLengthRecv) {
		// A zero-length read of a stream cannot be told from end of stream.
		return 0, 0, io.ErrShortBuffer
	}
	if r.eof {
		if m != nil {
			m.Cred, m.HasCred = Ucred{}, false
		}
		return 0, 0, r.takeEOF(rc)
	}
	r.p, r.oob = p, r.oobBuf[:rightsSpace(len(fds))]
	r.n, r.oobn, r.flags, r.err = 0, 0, 0, nil
	err = rawError(rc.Read(r.fn))
	if err == nil {
		err = r.err
	}
	oob := r.oob[:r.oobn]
	r.p, r.oob, r.err = nil, nil, nil
	if err != nil {
		return 0, 0, err
	}
	nfds, err = deliver(r.n, r.flags, oob, fds, m)
	if err == nil && r.n == 0 && nfds == 0 && sotype != unix.SOCK_DGRAM {
		// As in package net: a zero-length read is end of stream, and on
		// SOCK_SEQPACKET too (an empty message cannot be told from EOF).
		return 0, 0, io.EOF
	}
	return r.n, nfds, err
}

// deliver moves the descriptors in oob into fds and decides whether the
// message is whole. On any failure every descriptor that arrived is closed:
// a message is never delivered with fewer descriptors than were sent. If m
// is not nil, the credentials found in oob are stored in it.
func deliver(n, flags int, oob []byte, fds []int, m *Message) (int, error) {
	if flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) == 0 {
		if nfds, ok := rightsOnly(oob, fds); ok {
			if m != nil {
				m.Cred, m.HasCred = Ucred{}, false
			}
			return nfds, nil
		}
	}
	total := 0
	var credFn func([]byte)
	if m != nil {
		m.Cred, m.HasCred = Ucred{}, false
		credFn = func(data []byte) { m.Cred, m.HasCred = parseCred(data) }
	}
	werr := walkControl(oob, func(fd int) {
		if total < len(fds) {
			fds[total] = fd
		} else {
			unix.Close(fd)
		}
		total++
	}, closeUnwanted, credFn)
	kept := min(total, len(fds))
	switch {
	case werr != nil:
		closeFDs(fds[:kept])
		return 0, fmt.Errorf("%w after %d descriptors, all closed", werr, total)
	case flags&unix.MSG_CTRUNC != 0:
		closeFDs(fds[:kept])
		return 0, &TruncatedError{Arrived: total, Room: len(fds), Kernel: true}
	case total > len(fds):
		closeFDs(fds[:kept])
		return 0, &TruncatedError{Arrived: total, Room: len(fds)}
	case flags&unix.MSG_TRUNC != 0:
		closeFDs(fds[:kept])
		return 0, fmt.Errorf("%w: message larger than the %d-byte buffer; %d descriptors closed", ErrPayloadTruncated, n, total)
	}
	return total, nil
}

// rightsOnly is deliver's fast path for the common message: no control data,
// or a single SCM_RIGHTS message whose descriptors all fit in fds. It copies
// them and reports true; for anything else it touches nothing and reports
// false, and walkControl decides.
func rightsOnly(oob []byte, fds []int) (int, bool) {
	if len(oob) == 0 {
		return 0, true
	}
	// Read the header in place when it is aligned (Conn's own buffer always
	// is): copying it out, as walkControl does, costs a memmove call.
	if len(oob) < cmsgDataOff || uintptr(unsafe.Pointer(&oob[0]))%unsafe.Alignof(unix.Cmsghdr{}) != 0 {
		return 0, false
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	l := uint64(h.Len)
	if h.Level != unix.SOL_SOCKET || h.Type != unix.SCM_RIGHTS ||
		l < uint64(cmsgDataOff) || l > uint64(len(oob)) ||
		(l+uint64(cmsgAlign)-1)&^uint64(cmsgAlign-1) < uint64(len(oob)) { // another header follows
		return 0, false
	}
	data := oob[cmsgDataOff:l]
	nfds := len(data) / 4
	if nfds > len(fds) || len(data)%4 != 0 {
		return 0, false
	}
	for i := range nfds {
		fds[i] = int(int32(binary.NativeEndian.Uint32(data[4*i:])))
	}
	return nfds, true
}

// closeUnwanted closes a descriptor the caller never asked for (a pidfd
// from SO_PASSPIDFD): invariant 2 of the test plan.
func closeUnwanted(fd int) { unix.Close(fd) }

func closeFDs(fds []int) {
	for i, fd := range fds {
		unix.Close(fd)
		fds[i] = -1
	}
}

// PeerCred returns the credentials the kernel recorded for the other end of
// c when it was created (SO_PEERCRED): the process that called connect(2) or
// socketpair(2), at that moment. The peer cannot change them afterwards,
// which makes the uid the right check before trusting a control connection;
// but the socket may since have been passed to another process, and the
// pid may have been reused.
func PeerCred(c *net.UnixConn) (Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Ucred{}, err
	}
	var u Ucred
	var perr error
	if err := rc.Control(func(fd uintptr) { u, perr = peerCred(int(fd)) }); err != nil {
		return Ucred{}, err
	}
	return u, perr
}
