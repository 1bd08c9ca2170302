package ipcframe

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire format constants; docs/protocol.md is the specification.
const (
	// HeaderSize is the size of the fixed frame header.
	HeaderSize = 8
	// Magic is the first byte of every frame header ('h').
	Magic = 0x68
	// Version is the protocol version this package speaks.
	Version = 1
	// MaxFDsPerFrame is the most descriptors one frame may carry: Linux's
	// SCM_MAX_FD, the most one sendmsg can carry. Frames are never split
	// across messages to carry more; such sends are refused.
	MaxFDsPerFrame = 253
	// DefaultMaxFrame is the default largest payload a Reader accepts and a
	// Writer sends: 1 MiB.
	DefaultMaxFrame = 1 << 20
	// MaxFrameLimit is the largest MaxFrame an option may set (1 GiB). The
	// length field could say 4 GiB, but no control message needs that and
	// the limit keeps lengths within int on every platform.
	MaxFrameLimit = 1 << 30
)

var (
	// ErrBadHeader reports a frame header that is not a version 1 header:
	// wrong magic, unknown version, reserved bits set, or a descriptor count
	// above MaxFDsPerFrame. The stream cannot be resynchronised after it.
	// Errors carrying it are *HeaderError values.
	ErrBadHeader = errors.New("ipcframe: bad frame header")

	// ErrFrameTooLarge reports a payload longer than the configured maximum,
	// detected from the header before anything is allocated, or a payload
	// passed to a Writer that exceeds the Writer's maximum.
	ErrFrameTooLarge = errors.New("ipcframe: frame too large")

	// ErrTooManyFDs reports more descriptors than allowed for one frame:
	// more than MaxFDsPerFrame passed to a Writer (nothing is written), or,
	// from a Reader, a frame with more descriptors than the caller's fds
	// slice has room for (the frame is dropped, ErrFrameDropped). A header
	// declaring more than the Reader's MaxFDs is ErrBadHeader instead,
	// because that ends the stream.
	ErrTooManyFDs = errors.New("ipcframe: too many descriptors")

	// ErrFDCount reports a frame whose descriptors do not match its header,
	// or were lost by the transport; the frame is dropped (ErrFrameDropped). Errors carrying it are
	// *FDCountError values.
	ErrFDCount = errors.New("ipcframe: descriptor count mismatch")

	// ErrNoFDTransport reports descriptors on a connection that cannot carry
	// them: a Writer whose io.Writer has no Send method, or a frame that
	// declares descriptors read from a Reader whose io.Reader has no Recv
	// method (a pipe, TCP, ssh stdio); that frame is dropped
	// (ErrFrameDropped).
	ErrNoFDTransport = errors.New("ipcframe: transport cannot carry descriptors")

	// ErrFrameDropped is matched by every Reader error after which the
	// Reader goes on: one frame was dropped, its descriptors closed, and
	// the next read returns the next frame. Reader errors that match
	// neither it nor os.ErrDeadlineExceeded are final.
	ErrFrameDropped = errors.New("ipcframe: frame dropped")

	// ErrFDProtocol reports descriptors a stream Reader cannot attribute to
	// any single frame: descriptors inside two frames returned by one read,
	// descriptors without bytes, or descriptors of more than two unread
	// frames at once. It is final; every descriptor held has been closed.
	ErrFDProtocol = errors.New("ipcframe: descriptors outside the framing protocol")

	// ErrClosed reports use of a Reader after Close.
	ErrClosed = errors.New("ipcframe: reader closed")

	// ErrNotSupported reports descriptor passing on a platform where this
	// package does not implement it (anything but Linux).
	ErrNotSupported = errors.New("ipcframe: descriptor passing not supported on this platform")
)

// HeaderError describes a rejected frame header.
type HeaderError struct {
	Header [HeaderSize]byte // the bytes as received
	Reason string           // which rule they break
}

func (e *HeaderError) Error() string {
	return fmt.Sprintf("ipcframe: bad frame header % x: %s", e.Header[:], e.Reason)
}

// Is makes errors.Is(err, ErrBadHeader) true.
func (e *HeaderError) Is(target error) bool { return target == ErrBadHeader }

// FDCountError describes a frame whose descriptors did not match the count
// its header declares: fewer arrived (TESTPLAN A7), more arrived, some
// arrived on bytes other than the frame's first (A8), or the transport lost
// them (A11: the receiver ran out of descriptors and the kernel truncated
// them, MSG_CTRUNC). Every descriptor that arrived for the frame has been
// closed and the frame dropped; the Reader stays usable.
type FDCountError struct {
	Declared  int // descriptors the header declared
	Arrived   int // descriptors that came with the frame's first byte
	Misplaced int // descriptors that came with later bytes of the frame

	// Lost is the error the FDReader returned with bytes of the frame when
	// it lost their descriptors (see FDReader), or nil. errors.Is and
	// errors.As reach it through Unwrap.
	Lost error
}

func (e *FDCountError) Error() string {
	if e.Lost != nil {
		return fmt.Sprintf("ipcframe: frame declares %d descriptors; the transport lost those that arrived with it (all closed, frame dropped): %v", e.Declared, e.Lost)
	}
	if e.Misplaced > 0 {
		return fmt.Sprintf("ipcframe: frame declares %d descriptors, %d arrived with its first byte and %d with later bytes (all closed, frame dropped)", e.Declared, e.Arrived, e.Misplaced)
	}
	return fmt.Sprintf("ipcframe: frame declares %d descriptors, %d arrived (all closed, frame dropped)", e.Declared, e.Arrived)
}

// Is makes errors.Is(err, ErrFDCount) and errors.Is(err, ErrFrameDropped)
// true.
func (e *FDCountError) Is(target error) bool {
	return target == ErrFDCount || target == ErrFrameDropped
}

// Unwrap returns Lost.
func (e *FDCountError) Unwrap() error { return e.Lost }

// droppedError marks an error that dropped one frame of a packet
// transport (a bad or oversized message, or one the transport truncated),
// after which the Reader
// goes on: it matches ErrFrameDropped as well as its cause.
type droppedError struct{ err error }

func (e *droppedError) Error() string   { return e.err.Error() + " (frame dropped)" }
func (e *droppedError) Unwrap() []error { return []error{e.err, ErrFrameDropped} }

// messageDropped reports whether err, returned by a read that returned no
// bytes, carries the FDReader's mark of a message consumed and discarded
// (see FDReader). A method, not a sentinel: ipcframe does not import
// scmrights, and scmrights must not import ipcframe.
func messageDropped(err error) bool {
	var d interface{ MessageDropped() bool }
	return errors.As(err, &d) && d.MessageDropped()
}

// FDReader is a connection that returns bytes together with the
// descriptors that arrived with them, as one recvmsg does.
// *scmrights.Conn implements it.
//
// Recv reads into buf and stores received descriptors in fds, returning how
// many of each arrived; fds[:nfds] then belong to the caller, also when err
// is not nil. If more descriptors arrive than len(fds) has room for, or the
// kernel truncated them, Recv must close every one that arrived and return
// an error with nfds == 0: a descriptor it closed itself must not be
// counted, or the Reader would close that number again, and by then it may
// name an unrelated file. An error may come with n > 0: those bytes were
// consumed. Such an error, unless io.EOF or a timeout, must mean that the
// descriptors that came with those bytes were lost and nothing else: the
// Reader drops the frame that owned them (an *FDCountError whose Lost is
// that error) and goes on reading. Recv returns io.EOF at end of stream.
//
// On a packet transport (ReaderOptions.Packet) a message can also fail
// without a byte: an empty message whose descriptors did not fit
// (MSG_CTRUNC). Recv then returns n == 0 and an error that has a method
// MessageDropped() bool reporting true, reachable with errors.As
// (*scmrights.TruncatedError has it); the Reader drops that message
// (ErrFrameDropped) and reads the next. Any other error without bytes,
// except a timeout, is the connection's and final, like io.EOF. The same
// holds for Read when the Reader does not use Recv.
type FDReader interface {
	Recv(buf []byte, fds []int) (n, nfds int, err error)
}

// FDWriter is a connection that sends bytes with descriptors attached to
// their first byte, as one sendmsg does. *scmrights.Conn implements it.
//
// Send must write all of payload, continuing short writes itself with the
// descriptors on the first part only, and leave fds open for the caller.
// If a Send fails after writing part of payload to a stream, the peer holds
// a fragment: the FDWriter must then fail every later Send and Write
// (*scmrights.Conn does, with scmrights.ErrBroken). A Writer relies on that
// and stays usable after a failed Send.
type FDWriter interface {
	Send(payload []byte, fds ...int) error
}

// Header is a decoded frame header.
type Header struct {
	Len int // payload length in bytes, excluding the header
	FDs int // descriptors that travel with the frame's first byte
}

// ParseHeader decodes the first HeaderSize bytes of b. It checks the magic,
// version, reserved byte and descriptor count (errors are *HeaderError,
// matching ErrBadHeader; so is b shorter than HeaderSize). A length above
// MaxFrameLimit, which no Reader accepts, is an error wrapping
// ErrFrameTooLarge; below that, checking Len against a maximum is the
// caller's policy (see ReaderOptions.MaxFrame).
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		e := &HeaderError{Reason: fmt.Sprintf("%d bytes, want %d", len(b), HeaderSize)}
		copy(e.Header[:], b)
		return Header{}, e
	}
	var reason string
	switch {
	case b[0] != Magic:
		reason = "wrong magic"
	case b[1] != Version:
		reason = fmt.Sprintf("unsupported version %d", b[1])
	case b[3] != 0:
		reason = "reserved byte not zero"
	case b[2] > MaxFDsPerFrame:
		reason = fmt.Sprintf("%d descriptors declared, at most %d", b[2], MaxFDsPerFrame)
	default:
		// Checked as uint32: on 32-bit platforms a larger length would
		// wrap negative as an int.
		n := binary.BigEndian.Uint32(b[4:8])
		if n > MaxFrameLimit {
			return Header{}, fmt.Errorf("%w: header declares %d bytes, above MaxFrameLimit (%d)", ErrFrameTooLarge, n, MaxFrameLimit)
		}
		return Header{Len: int(n), FDs: int(b[2])}, nil
	}
	e := &HeaderError{Reason: reason}
	copy(e.Header[:], b)
	return Header{}, e
}

// AppendFrame appends to dst the frame carrying payload and no descriptors,
// and returns the extended slice. It allocates only if dst lacks capacity.
// A payload longer than MaxFrameLimit is a programming error and panics.
func AppendFrame(dst, payload []byte) []byte {
	if len(payload) > MaxFrameLimit {
		panic("ipcframe: AppendFrame payload longer than MaxFrameLimit")
	}
	dst = appendHeader(dst, len(payload), 0)
	return append(dst, payload...)
}

// appendHeader appends a header; n and nfds have been checked by the caller.
func appendHeader(dst []byte, n, nfds int) []byte {
	return append(dst, Magic, Version, byte(nfds), 0,
		byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}
