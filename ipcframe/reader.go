package ipcframe

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// DefaultBufferSize is the default size of a Reader's buffer: 64 KiB.
const DefaultBufferSize = 64 << 10

// minBufferSize keeps the buffer able to hold a header and a small frame.
const minBufferSize = 64

// maxEmptyReads bounds how often a broken io.Reader may return (0, nil)
// before a read fails with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// directRead is the smallest rest of a frame read straight into the
// caller's slice rather than through the buffer: below it, copying costs
// less than the extra read.
const directRead = 16 << 10

// ReaderOptions adjusts a Reader. The zero value, or nil, means the
// documented defaults.
type ReaderOptions struct {
	// MaxFrame is the longest payload accepted, checked against the header
	// before anything is allocated. 0 (or negative) means DefaultMaxFrame
	// (1 MiB); larger than MaxFrameLimit means MaxFrameLimit.
	MaxFrame int

	// MaxFDs is the most descriptors one frame may declare and one read may
	// return. 0 (or negative), or more than MaxFDsPerFrame, means
	// MaxFDsPerFrame (253). On a stream a header declaring more is
	// ErrBadHeader and final: the control buffer has no room for them.
	MaxFDs int

	// BufferSize is the size of the read buffer on stream transports.
	// 0 (or negative) means DefaultBufferSize (64 KiB); sizes under 64
	// bytes mean 64. Frames that do not fit in the buffer are read mostly
	// straight into the caller's dst.
	BufferSize int

	// Packet declares a message-preserving transport (SOCK_SEQPACKET): every
	// read returns exactly one whole frame. The Reader then holds one
	// buffer of MaxFrame+HeaderSize+1 bytes and ignores BufferSize.
	Packet bool
}

// Reader reads frames from a stream or packet transport.
//
// If the io.Reader given to NewReader also implements FDReader (as
// *scmrights.Conn does) and the platform is Linux, the Reader receives bytes
// and descriptors together and gives every frame exactly the descriptors
// that arrived with its first byte. Otherwise it uses plain Read, and a frame
// that declares descriptors fails with ErrNoFDTransport.
//
// A Reader is not safe for concurrent use: one goroutine reads. Payloads are
// appended to the caller's dst; nothing returned aliases the Reader's own
// buffer. To unblock a pending read, set a deadline on or close the
// underlying connection.
//
// Errors. Every error is one of three kinds:
//   - A timeout (os.ErrDeadlineExceeded) is never final: the Reader keeps
//     what it has received of the frame, including the part of a frame
//     larger than the buffer already copied out, and the next read, once
//     the deadline is moved, resumes that frame.
//   - An error matching ErrFrameDropped means one frame was dropped and its
//     descriptors closed; the next read returns the next frame. These are
//     the only errors matching ErrFDCount (also descriptors the FDReader
//     lost, see FDReader), ErrNoFDTransport or ErrTooManyFDs (a frame with
//     more descriptors than len(fds)).
//   - Every other error is final: the Reader returns it again on every
//     later call and has closed every descriptor it held. io.EOF means the
//     stream ended on a frame boundary, io.ErrUnexpectedEOF inside a frame;
//     ErrBadHeader (including a header declaring more than MaxFDs
//     descriptors), ErrFrameTooLarge, ErrFDProtocol and errors of the
//     underlying reader end the stream.
//
// On a packet transport (ReaderOptions.Packet) every message stands alone:
// a bad header, an oversized frame or a message the transport consumed but
// failed (payload or descriptors truncated, MSG_TRUNC or MSG_CTRUNC, also
// on an empty message: see FDReader) drops only that message, so those
// errors match ErrFrameDropped too.
//
// A loop that skips dropped frames must therefore test ErrFrameDropped (or
// the sentinels above), never "any error but io.EOF".
//
// Held descriptors. Descriptors that arrived for frames not yet returned are
// held by the Reader, at most 2*MaxFDs at a time (one frame being read and
// one that arrived with its tail). Close releases them.
type Reader struct {
	rd       io.Reader
	fr       FDReader // nil: plain reads, no descriptors
	maxFrame int
	maxFDs   int
	packet   bool

	buf  []byte
	r, w int   // unread bytes are buf[r:w]
	base int64 // stream offset of buf[0]; base+w == rcvd
	rcvd int64 // bytes received so far

	// Descriptor attribution on streams. last is the start offset of the
	// latest frame whose first byte has been received (-1: none yet); next
	// is the start of the frame after it, known once last's header is
	// complete. A recv that returns descriptors gives them to last if last
	// lies in the bytes it returned; otherwise they rode on a byte that does
	// not start a frame (TESTPLAN A8).
	last, next int64
	nextKnown  bool
	fdbuf      []int   // two slots of maxFDs each
	held       [2]held // frames' descriptors, oldest first
	nheld      int
	stray      int   // descriptors (already closed) that arrived mid-frame...
	strayLost  error // ...or were lost by the FDReader mid-frame...
	strayStart int64 // ...in the frame starting here

	// pending came with data from a read and is reported by the next:
	// io.EOF, or a timeout while the frame still needs bytes.
	pending error
	err     error // final error

	// A frame larger than the buffer whose read a timeout interrupted after
	// part of its payload left the buffer: its header, stream offset and
	// the payload received so far, so that the next read resumes it.
	inFrame  bool
	cur      Header
	curStart int64
	part     []byte

	// exact is set while frames are larger than the buffer: headers and
	// payload tails are then read with exact lengths, so the buffer is
	// empty at each frame's start and its payload goes straight into dst
	// with one read, not through the buffer with a copy. A frame that
	// fits the buffer clears it.
	exact bool
}

// held records descriptors that arrived with the first byte of the frame
// starting at offset start; they sit in slot of fdbuf.
type held struct {
	start int64
	slot  int
	n     int
	lost  error // the FDReader lost descriptors for this frame (see recv)
}

// NewReader returns a Reader reading frames from rd. See ReaderOptions for
// the defaults a nil opts means.
func NewReader(rd io.Reader, opts *ReaderOptions) *Reader {
	var o ReaderOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxFrame <= 0 {
		o.MaxFrame = DefaultMaxFrame
	}
	o.MaxFrame = min(o.MaxFrame, MaxFrameLimit)
	if o.MaxFDs <= 0 || o.MaxFDs > MaxFDsPerFrame {
		o.MaxFDs = MaxFDsPerFrame
	}
	r := &Reader{rd: rd, maxFrame: o.MaxFrame, maxFDs: o.MaxFDs, packet: o.Packet, last: -1, nextKnown: true}
	if fr, ok := rd.(FDReader); ok && canPassFDs {
		r.fr = fr
		r.fdbuf = make([]int, 2*o.MaxFDs)
	}
	if o.Packet {
		// One byte more than the largest valid frame: a longer message then
		// shows as a length mismatch even where the transport cuts it
		// silently.
		r.buf = make([]byte, HeaderSize+o.MaxFrame+1)
		return r
	}
	if o.BufferSize <= 0 {
		o.BufferSize = DefaultBufferSize
	}
	r.buf = make([]byte, min(max(o.BufferSize, minBufferSize), MaxFrameLimit+HeaderSize))
	return r
}

// ReadFrame reads the next frame and appends its payload to dst, returning
// the extended slice; it allocates only if dst lacks capacity. A frame that
// carries descriptors fails (they are closed, the frame dropped): use
// ReadFrameFDs for those. On error the returned slice has dst's length and
// contents.
func (r *Reader) ReadFrame(dst []byte) ([]byte, error) {
	dst, _, err := r.ReadFrameFDs(dst, nil)
	return dst, err
}

// ReadFrameFDs reads the next frame, appends its payload to dst and stores
// its descriptors in fds, returning the extended slice and how many
// descriptors arrived. fds[:nfds] then belong to the caller, close-on-exec.
// A frame with more descriptors than len(fds) is dropped, its descriptors
// closed, with an error matching ErrTooManyFDs and ErrFrameDropped. On
// error the returned slice has dst's length and contents and nfds is 0. A
// frame larger than the buffer is read straight into dst's spare capacity;
// dst grows with the bytes that have arrived (at most doubling what has
// arrived, never beyond the declared length), not with the declared length,
// so a header alone never costs MaxFrame of memory.
func (r *Reader) ReadFrameFDs(dst []byte, fds []int) (payload []byte, nfds int, err error) {
	if r.err != nil {
		return dst, 0, r.err
	}
	if r.packet {
		return r.readPacket(dst, fds)
	}
	var h Header
	var start int64
	if r.inFrame {
		h, start = r.cur, r.curStart
	} else {
		if h, err = r.header(); err != nil {
			return dst, 0, err
		}
		start = r.base + int64(r.r)
	}
	orig := len(dst)
	dst, err = r.payload(dst, h, start)
	if err != nil {
		return dst[:orig], 0, err
	}
	r.frameDone()
	nfds, err = r.deliver(start, h, fds)
	if err != nil {
		return dst[:orig], 0, err
	}
	return dst, nfds, nil
}

// Close closes every descriptor the Reader holds for frames not yet
// returned and makes later reads fail with ErrClosed. It does not close the
// underlying connection. It is idempotent and must not run concurrently with
// a read.
func (r *Reader) Close() error {
	r.fail(ErrClosed)
	return nil
}

// header reads and checks the next frame's header, leaving it unconsumed at
// buf[r:].
func (r *Reader) header() (Header, error) {
	for r.w-r.r < HeaderSize {
		limit := 0
		if r.exact {
			limit = HeaderSize - (r.w - r.r)
		}
		if err := r.fill(limit); err != nil {
			return Header{}, r.readErr(err, r.w > r.r)
		}
	}
	h, err := ParseHeader(r.buf[r.r:r.w])
	if err != nil {
		return Header{}, r.fail(err)
	}
	if h.Len > r.maxFrame {
		return Header{}, r.fail(fmt.Errorf("%w: header declares %d bytes, limit %d", ErrFrameTooLarge, h.Len, r.maxFrame))
	}
	if h.FDs > r.maxFDs {
		// Final, not a dropped frame: the descriptors cannot be received
		// (the control buffer holds MaxFDs), so the stream cannot go on.
		e := &HeaderError{Reason: fmt.Sprintf("%d descriptors declared, reader limit %d", h.FDs, r.maxFDs)}
		copy(e.Header[:], r.buf[r.r:r.w])
		return Header{}, r.fail(e)
	}
	return h, nil
}

// payload consumes the frame whose header is at buf[r:], or resumes the
// interrupted frame (r.inFrame), and appends its payload to dst.
func (r *Reader) payload(dst []byte, h Header, start int64) ([]byte, error) {
	if r.inFrame {
		// The frame continues in r.part, which the Reader owns, so further
		// timeouts cost no copy; dst receives it once, complete.
		part, err := r.stream(r.part, 0, h.Len)
		if err != nil {
			r.part = part
			return dst, r.interrupted(h, start, err)
		}
		r.inFrame = false
		if cap(dst)-len(dst) < len(part) {
			// Exactly the frame: append's growth could reserve up to twice.
			nd := make([]byte, len(dst), len(dst)+len(part))
			copy(nd, dst)
			dst = nd
		}
		dst = append(dst, part...)
		r.part = part[:0]
		if cap(r.part) > len(r.buf) {
			r.part = nil // do not hold a large frame's memory between frames
		}
		return dst, nil
	}
	total := HeaderSize + h.Len
	if total <= len(r.buf) {
		r.exact = false
		if r.r+total > len(r.buf) {
			r.compact()
		}
		for r.w-r.r < total {
			if err := r.fill(0); err != nil {
				// A timeout leaves the partial frame buffered.
				return dst, r.readErr(err, true)
			}
		}
		dst = append(dst, r.buf[r.r+HeaderSize:r.r+total]...)
		r.consume(total)
		return dst, nil
	}
	// Larger than the buffer: what is buffered, then the rest into dst.
	r.exact = true
	orig := len(dst)
	have := r.w - r.r - HeaderSize
	dst = growFrame(dst, orig, have, h.Len)
	dst = append(dst, r.buf[r.r+HeaderSize:r.w]...)
	r.consume(r.w - r.r)
	dst, err := r.stream(dst, orig, h.Len)
	if err != nil {
		// dst is the caller's: keep what arrived in the Reader's own memory.
		r.part = append(r.part[:0], dst[orig:]...)
		return dst, r.interrupted(h, start, err)
	}
	return dst, nil
}

// stream reads the rest of a frame of n bytes that started at b[orig] and
// has part of its payload in b[orig:] already, with the buffer empty. The
// buffer is empty again after every step: each step copies out all it read
// or ends the frame. Reads straight into b end at the frame's end, so none
// holds another frame's first byte. They need b to have room: the whole
// rest, or a buffer's worth; otherwise bytes go through the buffer, so that
// memory follows the bytes that arrived, not the length a possibly hostile
// header claims (A1). A rest shorter than directMin goes through the buffer
// too, where a copy costs less than a second read; outside exact mode
// that read also takes in what follows.
func (r *Reader) stream(b []byte, orig, n int) ([]byte, error) {
	directMin := min(len(r.buf), directRead)
	for need, empty := n-(len(b)-orig), 0; need > 0; {
		if spare := cap(b) - len(b); need >= directMin && spare >= min(need, len(r.buf)) {
			k, err := r.recv(b[len(b):len(b)+min(need, spare)], false)
			b = b[:len(b)+k]
			need -= k
			switch {
			case err == nil && k == 0:
				if empty++; empty >= maxEmptyReads {
					return b, io.ErrNoProgress
				}
			case err == nil:
				// Consecutive empty reads count, as in bufio: a reader
				// that alternates them with data is slow, not broken.
				empty = 0
			case need == 0 && deferrable(err):
				r.pending = err
			default:
				return b, err
			}
			continue
		}
		limit := 0
		if r.exact {
			// The rest of this frame and the next header, never more:
			// the next payload then goes straight into dst too.
			limit = need + HeaderSize
		}
		if err := r.fill(limit); err != nil {
			return b, err
		}
		c := min(need, r.w-r.r)
		b = growFrame(b, orig, c, n)
		b = append(b, r.buf[r.r:r.r+c]...)
		r.consume(c)
		need -= c
	}
	return b, nil
}

// growFrame makes room in dst for c more bytes of a frame of n bytes that
// started at dst[orig]. The frame's capacity is always n>>k for some k:
// at most twice what has arrived (c included), never beyond n, and all
// the capacities a frame goes through sum to less than 2n. Memory is thus
// committed only for bytes the peer has sent (A1).
func growFrame(dst []byte, orig, c, n int) []byte {
	if cap(dst)-len(dst) >= c {
		return dst
	}
	need := len(dst) - orig + c
	size := n
	for size/2 >= need {
		size /= 2
	}
	// make, not append: append's growth could reserve beyond the frame.
	nd := make([]byte, len(dst), orig+size)
	copy(nd, dst)
	return nd
}

// interrupted ends a read that failed after part of a frame larger than
// the buffer left the buffer (that part is in r.part). A timeout keeps it
// so the next read resumes the frame; any other error is final.
func (r *Reader) interrupted(h Header, start int64, err error) error {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return r.readErr(err, true)
	}
	r.inFrame, r.cur, r.curStart = true, h, start
	return err
}

// deliver hands the descriptors that came with the frame starting at start
// to the caller, or closes them and rejects the frame.
func (r *Reader) deliver(start int64, h Header, fds []int) (int, error) {
	if r.fr == nil {
		if h.FDs > 0 {
			return 0, errNoFDTransport(h.FDs)
		}
		return 0, nil
	}
	var got []int
	var lost error
	for r.nheld > 0 && r.held[0].start <= start {
		e := r.held[0]
		r.held[0] = r.held[1]
		r.nheld--
		s := r.slot(e.slot)[:e.n]
		if e.start < start {
			// Cannot happen with the attribution above; closing is the only
			// safe answer to descriptors no frame claimed.
			closeFDs(s)
			continue
		}
		got, lost = s, e.lost
	}
	stray := 0
	if (r.stray > 0 || r.strayLost != nil) && r.strayStart == start {
		stray, r.stray = r.stray, 0
		if lost == nil {
			lost = r.strayLost
		}
		r.strayLost = nil
	}
	switch {
	case stray > 0 || lost != nil || len(got) != h.FDs:
		closeFDs(got)
		return 0, &FDCountError{Declared: h.FDs, Arrived: len(got), Misplaced: stray, Lost: lost}
	case len(got) > len(fds):
		closeFDs(got)
		return 0, errNoRoom(len(got), len(fds))
	}
	return copy(fds, got), nil
}

func errNoFDTransport(n int) error {
	if !canPassFDs {
		return fmt.Errorf("%w: frame declares %d descriptors (%w): %w", ErrNoFDTransport, n, ErrFrameDropped, ErrNotSupported)
	}
	return fmt.Errorf("%w: frame declares %d descriptors (%w)", ErrNoFDTransport, n, ErrFrameDropped)
}

func errNoRoom(n, room int) error {
	return fmt.Errorf("%w: frame carries %d descriptors, room for %d (closed, %w)", ErrTooManyFDs, n, room, ErrFrameDropped)
}

// readPacket reads one message, which must be exactly one frame.
func (r *Reader) readPacket(dst []byte, fds []int) ([]byte, int, error) {
	var n, nfds int
	var err error
	var got []int
	if r.pending != nil {
		err, r.pending = r.pending, nil
	} else if r.fr != nil {
		slot := r.slot(0)
		n, nfds, err = r.fr.Recv(r.buf, slot)
		if n < 0 || n > len(r.buf) || nfds < 0 || nfds > len(slot) {
			closeReturned(slot, nfds)
			return dst, 0, r.fail(errBadRecv(n, nfds))
		}
		got = slot[:nfds]
	} else {
		n, err = r.rd.Read(r.buf)
		if n < 0 || n > len(r.buf) {
			return dst, 0, r.fail(errBadRecv(n, 0))
		}
	}
	if err != nil {
		switch {
		case n == 0 && messageDropped(err):
			// An empty message whose descriptors the transport cut
			// (MSG_CTRUNC): consumed and failed like any other, so only
			// it is dropped. Without the mark, an error with no bytes is
			// the connection's (io.EOF, a reset, a close).
			closeFDs(got)
			return dst, 0, &droppedError{err}
		case n == 0:
			closeFDs(got)
			return dst, 0, r.readErr(err, false)
		case err == io.EOF:
			r.pending = err
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The message is whole: a later read meets the deadline again
			// if it still stands.
		default:
			// The transport consumed the message but failed it (payload
			// or descriptors truncated: MSG_TRUNC, MSG_CTRUNC). Message
			// boundaries make dropping just this one safe.
			closeFDs(got)
			return dst, 0, &droppedError{err}
		}
	}
	// In packet mode every message stands alone, so a bad one is dropped
	// and the next read starts clean.
	h, err := ParseHeader(r.buf[:n])
	switch {
	case err != nil:
	case h.Len > r.maxFrame:
		err = fmt.Errorf("%w: header declares %d bytes, limit %d", ErrFrameTooLarge, h.Len, r.maxFrame)
	case n != HeaderSize+h.Len:
		e := &HeaderError{Reason: fmt.Sprintf("message of %d bytes, header declares a %d-byte payload", n, h.Len)}
		copy(e.Header[:], r.buf[:n])
		err = e
	case h.FDs > r.maxFDs:
		e := &HeaderError{Reason: fmt.Sprintf("%d descriptors declared, reader limit %d", h.FDs, r.maxFDs)}
		copy(e.Header[:], r.buf[:n])
		err = e
	case r.fr == nil && h.FDs > 0:
		err = errNoFDTransport(h.FDs)
	case len(got) != h.FDs:
		err = &FDCountError{Declared: h.FDs, Arrived: len(got)}
	case len(got) > len(fds):
		err = errNoRoom(len(got), len(fds))
	}
	if err != nil {
		closeFDs(got)
		if !errors.Is(err, ErrFrameDropped) {
			err = &droppedError{err}
		}
		return dst, 0, err
	}
	return append(dst, r.buf[HeaderSize:n]...), copy(fds, got), nil
}

// closeReturned closes the descriptors a misbehaving FDReader reported
// together with an out-of-range byte count, when their count is in range:
// they are in slot and nobody else will close them.
func closeReturned(slot []int, nfds int) {
	if nfds > 0 && nfds <= len(slot) {
		closeFDs(slot[:nfds])
	}
}

func errBadRecv(n, nfds int) error {
	return fmt.Errorf("ipcframe: underlying reader returned %d bytes and %d descriptors, out of range", n, nfds)
}

// fill reads once into the free tail of the buffer, compacting it first if
// the tail is empty; at most limit bytes if limit is positive.
func (r *Reader) fill(limit int) error {
	if r.w == len(r.buf) {
		r.compact()
	}
	end := len(r.buf)
	if limit > 0 {
		end = min(end, r.w+limit)
	}
	for empty := 0; ; {
		n, err := r.recv(r.buf[r.w:end], true)
		if err == nil && n > 0 {
			return nil
		}
		if err != nil {
			if n > 0 && deferrable(err) {
				r.pending = err
				return nil
			}
			return err
		}
		if empty++; empty >= maxEmptyReads {
			return io.ErrNoProgress
		}
	}
}

// recv reads once into p; intoBuf says p is buf[w:]. On an FDReader it
// attributes the descriptors that arrived (see Reader.last).
func (r *Reader) recv(p []byte, intoBuf bool) (int, error) {
	if r.pending != nil {
		err := r.pending
		r.pending = nil
		return 0, err
	}
	if r.fr == nil {
		n, err := r.rd.Read(p)
		if n < 0 || n > len(p) {
			return 0, errBadRecv(n, 0)
		}
		r.advance(n, intoBuf)
		return n, err
	}
	si := r.freeSlot()
	if si < 0 {
		return 0, fmt.Errorf("%w: descriptors of more than two unread frames held", ErrFDProtocol)
	}
	slot := r.slot(si)
	n, nfds, err := r.fr.Recv(p, slot)
	if n < 0 || n > len(p) || nfds < 0 || nfds > len(slot) {
		closeReturned(slot, nfds)
		return 0, errBadRecv(n, nfds)
	}
	from := r.rcvd
	r.advance(n, intoBuf)
	if n > 0 && err != nil && !deferrable(err) {
		// FDReader contract: the descriptors that came with these bytes
		// were lost (closed by Recv: MSG_CTRUNC on EMFILE, more than
		// MaxFDs). Like stray descriptors, that costs the frame that owns
		// them, not the stream.
		closeFDs(slot[:nfds])
		if r.last >= from {
			r.held[r.nheld] = held{start: r.last, slot: si, lost: err}
			r.nheld++
			return n, nil
		}
		if (r.stray > 0 || r.strayLost != nil) && r.strayStart != r.last {
			return n, fmt.Errorf("%w: descriptors arrived inside two different frames", ErrFDProtocol)
		}
		r.strayStart, r.strayLost = r.last, err
		return n, nil
	}
	if nfds == 0 {
		return n, err
	}
	fds := slot[:nfds]
	switch {
	case n == 0:
		// A stream cannot carry descriptors without a byte; nothing can
		// own these.
		closeFDs(fds)
		if err == nil {
			err = fmt.Errorf("%w: %d descriptors arrived without data", ErrFDProtocol, nfds)
		}
	case r.last >= from:
		r.held[r.nheld] = held{start: r.last, slot: si, n: nfds}
		r.nheld++
	default:
		// They rode on a byte inside frame last, not on its first byte: the
		// sender broke the protocol. Close them now; frame last fails.
		closeFDs(fds)
		if (r.stray > 0 || r.strayLost != nil) && r.strayStart != r.last {
			return n, fmt.Errorf("%w: descriptors arrived inside two different frames", ErrFDProtocol)
		}
		r.strayStart = r.last
		r.stray += nfds
	}
	return n, err
}

// advance accounts for n new bytes and moves the frame-start walk over them.
func (r *Reader) advance(n int, intoBuf bool) {
	r.rcvd += int64(n)
	if intoBuf {
		r.w += n
	} else {
		// Direct reads happen only with the buffer empty; keep buf[0] at the
		// next byte to arrive.
		r.base += int64(n)
	}
	if r.fr == nil {
		return
	}
	for {
		if !r.nextKnown {
			// last's header must be complete, and it is in the buffer: the
			// buffer only drops bytes of frames already returned, and reads
			// that bypass the buffer end before the next frame starts.
			off := r.last - r.base
			if r.last+HeaderSize > r.rcvd || off < 0 || off+HeaderSize > int64(r.w) {
				return
			}
			h, err := ParseHeader(r.buf[off : off+HeaderSize])
			if err != nil {
				// The read of this header will fail; descriptors arriving
				// meanwhile are charged to frame last and closed with it.
				return
			}
			r.next, r.nextKnown = r.last+HeaderSize+int64(h.Len), true
		}
		if r.next >= r.rcvd {
			return
		}
		r.last, r.nextKnown = r.next, false
	}
}

func (r *Reader) slot(i int) []int { return r.fdbuf[i*r.maxFDs : (i+1)*r.maxFDs] }

// freeSlot returns a descriptor slot no held entry uses, or -1.
func (r *Reader) freeSlot() int {
	for i := range 2 {
		used := false
		for _, e := range r.held[:r.nheld] {
			used = used || e.slot == i
		}
		if !used {
			return i
		}
	}
	return -1
}

// deferrable reports whether err, returned together with data, may wait
// until that data is used: end of stream or a timeout. Any other error with
// data (descriptors truncated, say) fails the stream at once.
func deferrable(err error) bool {
	return err == io.EOF || errors.Is(err, os.ErrDeadlineExceeded)
}

// readErr classifies a read error. A timeout leaves the Reader as it was
// (the partial frame stays buffered); anything else is final.
func (r *Reader) readErr(err error, midFrame bool) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if err == io.EOF && midFrame {
		err = io.ErrUnexpectedEOF
	}
	return r.fail(err)
}

// fail makes err final and closes every descriptor held (TESTPLAN A3).
func (r *Reader) fail(err error) error {
	if r.err == nil || err == ErrClosed {
		r.err = err
	}
	for _, e := range r.held[:r.nheld] {
		closeFDs(r.slot(e.slot)[:e.n])
	}
	r.nheld, r.stray, r.strayLost = 0, 0, nil
	r.inFrame, r.part = false, nil
	return r.err
}

// frameDone is called once a frame's bytes are all consumed. A timeout that
// came with its last bytes no longer applies: the next read may come after
// the deadline moved, and meets it again if it did not. io.EOF stays.
func (r *Reader) frameDone() {
	if r.pending != io.EOF {
		r.pending = nil
	}
}

func (r *Reader) consume(k int) {
	r.r += k
	if r.r == r.w {
		r.base += int64(r.w)
		r.r, r.w = 0, 0
	}
}

func (r *Reader) compact() {
	copy(r.buf, r.buf[r.r:r.w])
	r.base += int64(r.r)
	r.w -= r.r
	r.r = 0
}
