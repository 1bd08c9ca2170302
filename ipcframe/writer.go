package ipcframe

import (
	"fmt"
	"io"
	"net"
	"sync"
)

// WriterOptions adjusts a Writer. The zero value, or nil, means the
// documented defaults.
type WriterOptions struct {
	// MaxFrame is the longest payload the Writer sends; longer ones fail
	// with ErrFrameTooLarge and nothing is written. 0 (or negative) means
	// DefaultMaxFrame (1 MiB); larger than MaxFrameLimit means
	// MaxFrameLimit. Keep it no larger than the peer Reader's MaxFrame.
	//
	// On SOCK_SEQPACKET every frame is one message, which must also fit
	// the socket's send buffer: Linux refuses a larger one with EMSGSIZE
	// (unix_dgram_sendmsg: more than sk_sndbuf-32 bytes; about 208 KiB
	// with the default SO_SNDBUF, net.core.wmem_default), so the default
	// MaxFrame is more than such a socket can send. The Writer does not
	// cap MaxFrame itself: it cannot see the socket type of every
	// io.Writer, and SO_SNDBUF may change at any time. Such a frame fails
	// with that error having written nothing and the Writer stays usable;
	// set MaxFrame below the send buffer, or raise SO_SNDBUF, on packet
	// transports that send large frames.
	MaxFrame int
}

// Writer writes frames, each with exactly one call to the underlying
// writer: Write, FDWriter's Send for frames with descriptors, or, on a
// *net.TCPConn or *net.UnixConn, one writev (net.Buffers) for payloads of
// 4 KiB or more, which saves copying them. A frame's header and payload
// therefore never leave in separate system calls, unless the kernel takes
// only part of one call, in which case the rest follows before anything
// else.
//
// A Writer is safe for concurrent use: frames from concurrent calls never
// interleave. It keeps a scratch buffer for copying small frames, and
// releases it after a frame larger than 64 KiB.
//
// Failures. An argument error (ErrFrameTooLarge, ErrTooManyFDs,
// ErrNoFDTransport) writes nothing and leaves the Writer usable. A frame
// with descriptors goes through FDWriter.Send, which reports no byte count;
// the FDWriter itself must refuse every later send once one of its writes
// was partial (*scmrights.Conn does, with scmrights.ErrBroken), so the
// Writer stays usable after a failed Send and passes on whatever the
// FDWriter says next: a timeout or ETOOMANYREFS (the sender's in-flight
// descriptor limit) that wrote nothing drops only that frame, which may be
// retried. On a plain Write (or writev) the byte count is known: a write
// that fails having written nothing leaves the Writer usable, whatever the
// error (a timeout, EMSGSIZE for a SOCK_SEQPACKET frame larger than the
// send buffer, see WriterOptions.MaxFrame), so both paths agree; a
// transport that is really gone reports its error again on the next call.
// A write that wrote part of a frame is final, the Writer returning that
// error from every later call, because the peer holds a fragment.
type Writer struct {
	mu       sync.Mutex
	w        io.Writer
	fw       FDWriter // nil: descriptors cannot be sent
	maxFrame int
	buf      []byte
	err      error // final error

	// gather is set for sockets whose writev Go exposes (net.Buffers):
	// header and payload then leave in one writev without copying the
	// payload. vec and bufs are kept here so that writing does not allocate.
	gather bool
	vec    [2][]byte
	bufs   net.Buffers
}

// NewWriter returns a Writer writing frames to w. If w also implements
// FDWriter (as *scmrights.Conn does), WriteFrameFDs can attach descriptors.
func NewWriter(w io.Writer, opts *WriterOptions) *Writer {
	var o WriterOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxFrame <= 0 {
		o.MaxFrame = DefaultMaxFrame
	}
	wr := &Writer{w: w, maxFrame: min(o.MaxFrame, MaxFrameLimit)}
	switch w.(type) {
	case *net.TCPConn, *net.UnixConn:
		// net.Buffers.WriteTo is one writev on these (continued, like
		// Write, if the kernel takes part); on other writers it would be
		// one Write per buffer, splitting the frame.
		wr.gather = true
	}
	if fw, ok := w.(FDWriter); ok && canPassFDs {
		wr.fw = fw
	}
	return wr
}

// gatherMin is the payload size from which writev beats copying the
// payload behind the header.
const gatherMin = 4 << 10

// WriteFrame writes one frame carrying payload and no descriptors.
// A zero-length payload is a valid frame.
func (w *Writer) WriteFrame(payload []byte) error {
	return w.WriteFrameFDs(payload)
}

// WriteFrameFDs writes one frame carrying payload and the descriptors fds,
// which ride on the frame's first header byte in a single Send: the header
// guarantees payload bytes for them even when payload is empty (TESTPLAN
// A14). The descriptors stay the caller's. More than MaxFDsPerFrame fail
// with ErrTooManyFDs; there are no continuation frames.
func (w *Writer) WriteFrameFDs(payload []byte, fds ...int) error {
	if len(payload) > w.maxFrame {
		return fmt.Errorf("%w: %d-byte payload, limit %d", ErrFrameTooLarge, len(payload), w.maxFrame)
	}
	if len(fds) > MaxFDsPerFrame {
		return fmt.Errorf("%w: %d descriptors in one frame, at most %d", ErrTooManyFDs, len(fds), MaxFDsPerFrame)
	}
	if len(fds) > 0 && w.fw == nil {
		if !canPassFDs {
			return fmt.Errorf("%w: %w", ErrNoFDTransport, ErrNotSupported)
		}
		return ErrNoFDTransport
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	err := w.write(payload, fds)
	if cap(w.buf) > maxKeptBuf {
		w.buf = nil // do not hold a large frame's memory between frames
	}
	return err
}

// maxKeptBuf is the largest scratch buffer a Writer keeps between frames,
// as large as a Reader's default buffer.
const maxKeptBuf = DefaultBufferSize

// write writes one checked frame, with w.mu held.
func (w *Writer) write(payload []byte, fds []int) error {
	w.buf = appendHeader(w.buf[:0], len(payload), len(fds))
	if len(fds) > 0 {
		w.buf = append(w.buf, payload...)
		// Send reports no byte count; after a partial write the FDWriter
		// refuses later sends itself (FDWriter contract), so the Writer
		// need not guess from the error whether bytes left.
		return w.fw.Send(w.buf, fds...)
	}
	var n int
	var err error
	total := HeaderSize + len(payload)
	if w.gather && len(payload) >= gatherMin {
		w.vec = [2][]byte{w.buf, payload}
		w.bufs = w.vec[:]
		var n64 int64
		n64, err = w.bufs.WriteTo(w.w)
		n = int(n64)
		w.vec, w.bufs = [2][]byte{}, nil // do not keep the caller's payload alive
	} else {
		w.buf = append(w.buf, payload...)
		n, err = w.w.Write(w.buf)
	}
	switch {
	case err == nil && n == total:
		return nil
	case err == nil:
		err = io.ErrShortWrite
	}
	if n == 0 {
		// Nothing reached the peer, which therefore holds no fragment:
		// only this frame failed. Whether the error is transient (a
		// timeout, EMSGSIZE) is not this package's guess to make; a dead
		// transport fails the next write the same way.
		return err
	}
	w.err = err
	return err
}
