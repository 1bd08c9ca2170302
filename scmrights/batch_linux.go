package scmrights

import (
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchMax is the kernel's UIO_MAXIOV, the most messages one sendmmsg or
// recvmmsg call takes.
const batchMax = 1024

// mmsgs is the per-connection scratch of a batch call, grown once to the
// largest batch seen and reused.
type mmsgs struct {
	hdr []unix.Mmsghdr
	iov []unix.Iovec
	oob []byte
}

func (m *mmsgs) reset(n, oobSize int) {
	if cap(m.hdr) < n {
		m.hdr = make([]unix.Mmsghdr, n)
		m.iov = make([]unix.Iovec, n)
	}
	m.hdr, m.iov = m.hdr[:n], m.iov[:n]
	if cap(m.oob) < oobSize {
		m.oob = make([]byte, oobSize)
	}
	m.oob = m.oob[:oobSize]
}

func syscall6For(n int) func(trap, a1, a2, a3, a4, a5, a6 uintptr) (r1, r2 uintptr, err unix.Errno) {
	if n <= rawMax {
		return unix.RawSyscall6
	}
	return unix.Syscall6
}

func (m *mmsgs) set(i int, p, oob []byte) {
	fillMsg(&m.hdr[i].Hdr, &m.iov[i], p, oob)
	m.hdr[i].Len = 0
}

// release drops the references to the caller's buffers.
func (m *mmsgs) release() {
	clear(m.hdr)
	clear(m.iov)
}

type batchWriter struct {
	mm    mmsgs
	msgs  []Message
	next  int
	bytes int // payload bytes in the batch, to choose RawSyscall or Syscall
	bfn   func(fd uintptr) bool
}

type batchReader struct {
	mm  mmsgs
	k   int
	bfn func(fd uintptr) bool
}

// SendBatch sends msgs in order, each as one message, and returns how many
// were sent whole. On SOCK_SEQPACKET and SOCK_DGRAM sockets it uses
// sendmmsg, up to 1024 messages per system call. On SOCK_STREAM it sends the
// messages one sendmsg each within a single hold of the write lock: sendmmsg
// would carry on after a short write and interleave the next message's bytes
// into the stream. Every message is checked (ErrTooManyFDs, ErrEmptyPayload)
// before anything is sent.
func (c *Conn) SendBatch(msgs []Message) (int, error) {
	for i := range msgs {
		if err := checkSend(c.sotype, msgs[i].Payload, msgs[i].FDs); err != nil {
			return 0, opError("write", c.uc, err)
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.sotype == unix.SOCK_STREAM {
		for i := range msgs {
			if _, err := c.w.send(c.rc, c.sotype, msgs[i].Payload, msgs[i].FDs); err != nil {
				return i, opError("write", c.uc, err)
			}
		}
		return len(msgs), nil
	}
	w := &c.w
	if w.bfn == nil {
		w.bfn = w.writeBatch
	}
	sent := 0
	for sent < len(msgs) {
		chunk := msgs[sent:min(len(msgs), sent+batchMax)]
		oobSize := 0
		for i := range chunk {
			if len(chunk[i].FDs) > 0 {
				oobSize += unix.CmsgSpace(4 * len(chunk[i].FDs))
			}
		}
		w.mm.reset(len(chunk), oobSize)
		w.bytes = 0
		off := 0
		for i := range chunk {
			w.bytes += len(chunk[i].Payload)
			var oob []byte
			if fds := chunk[i].FDs; len(fds) > 0 {
				oob = PutRights(w.mm.oob[off:], fds)
				off += len(oob)
			}
			w.mm.set(i, chunk[i].Payload, oob)
		}
		w.msgs, w.next, w.err = chunk, 0, nil
		err := rawError(c.rc.Write(w.bfn))
		if err == nil {
			err = w.err
		}
		sent += w.next
		w.msgs, w.err = nil, nil
		w.mm.release()
		if err != nil {
			return sent, opError("write", c.uc, err)
		}
	}
	return sent, nil
}

func (w *writer) writeBatch(fd uintptr) bool {
	for w.next < len(w.msgs) {
		hdr := w.mm.hdr[w.next:]
		r, _, e := syscall6For(w.bytes)(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hdr[0])), uintptr(len(hdr)), sendFlags, 0, 0)
		if e != 0 {
			switch ready(e) {
			case callAgain:
				continue
			case callWait:
				return false
			}
			w.err = os.NewSyscallError("sendmmsg", e)
			return true
		}
		w.next += int(r)
	}
	return true
}

// RecvBatch receives up to len(msgs) messages (at most 1024) in one
// recvmmsg call, waiting only until the first arrives. For each message i <
// n, msgs[i].N and msgs[i].NFDs report what arrived, as Recv would; a
// message that failed (ErrTruncated, ErrPayloadTruncated) has msgs[i].Err
// set and its descriptors closed, and the messages after it are still
// valid. The returned error is set only when no message was received
// (io.EOF at end of stream, a deadline, a closed connection).
//
// On SOCK_SEQPACKET an empty record that ends the batch reads as end of
// stream, as it does for Recv: the messages before it are returned, and the
// next RecvBatch or Recv returns io.EOF. An empty record followed by more
// messages in the same batch is returned as a message with N == 0.
func (c *Conn) RecvBatch(msgs []Message) (n int, err error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	if len(msgs) > batchMax {
		msgs = msgs[:batchMax]
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	r := &c.r
	if r.eof {
		if err := r.takeEOF(c.rc); err != io.EOF {
			return 0, opError("read", c.uc, err)
		}
		return 0, io.EOF
	}
	if r.bfn == nil {
		r.bfn = r.readBatch
	}
	oobSize := 0
	for i := range msgs {
		if c.sotype == unix.SOCK_STREAM && len(msgs[i].Payload) == 0 {
			return 0, io.ErrShortBuffer
		}
		oobSize += rightsSpace(len(msgs[i].FDs))
	}
	r.mm.reset(len(msgs), oobSize)
	off := 0
	for i := range msgs {
		sz := rightsSpace(len(msgs[i].FDs))
		r.mm.set(i, msgs[i].Payload, r.mm.oob[off:off+sz:off+sz])
		off += sz
	}
	r.k, r.err = 0, nil
	err = rawError(c.rc.Read(r.bfn))
	if err == nil {
		err = r.err
	}
	r.err = nil
	if err != nil {
		r.mm.release()
		return 0, opError("read", c.uc, err)
	}
	off = 0
	for i := 0; i < r.k; i++ {
		m := &msgs[i]
		h := &r.mm.hdr[i]
		sz := rightsSpace(len(m.FDs))
		oob := r.mm.oob[off : off+int(h.Hdr.Controllen)]
		off += sz
		m.N = int(h.Len)
		m.NFDs, m.Err = deliver(m.N, int(h.Hdr.Flags), oob, m.FDs, m)
	}
	r.mm.release()
	k := r.k
	if c.sotype != unix.SOCK_DGRAM {
		// recvmmsg reads on past end of stream, filling the remaining
		// entries with empty records: the stream ended at the first entry
		// after which every entry is empty. An empty entry followed by
		// data was an empty SEQPACKET message from a peer and is kept. A
		// trailing empty record from a peer that stays open cannot be
		// told from that end; Recv reads it as io.EOF, and so does the
		// next call here rather than losing it.
		for k > 0 && msgs[k-1].N == 0 && msgs[k-1].NFDs == 0 && msgs[k-1].Err == nil {
			k--
		}
		if k == 0 {
			return 0, io.EOF
		}
		r.eof = k < r.k
	}
	return k, nil
}

func (r *reader) readBatch(fd uintptr) bool {
	for {
		hdr := r.mm.hdr
		// Syscall, never RawSyscall: a batch installs descriptors for up
		// to 1024 messages, which may wait for the descriptor table to
		// grow (see rawMaxFDs).
		k, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hdr[0])), uintptr(len(hdr)), recvFlags, 0, 0)
		if e != 0 {
			switch ready(e) {
			case callAgain:
				continue
			case callWait:
				return false
			}
			r.err = os.NewSyscallError("recvmmsg", e)
			return true
		}
		r.k = int(k)
		return true
	}
}
