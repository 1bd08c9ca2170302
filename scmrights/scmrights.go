package scmrights

import (
	"errors"
	"fmt"
	"os"
)

// MaxFDs is the most descriptors one message can carry: Linux's SCM_MAX_FD.
const MaxFDs = 253

var (
	// ErrTruncated reports that a message's descriptors did not all fit:
	// the kernel truncated the control data (MSG_CTRUNC), or more descriptors
	// arrived than the caller made room for. Every descriptor that arrived
	// has been closed. The error is a *TruncatedError.
	ErrTruncated = errors.New("scmrights: descriptors truncated")

	// ErrPayloadTruncated reports that a message on a message-preserving
	// socket (SOCK_SEQPACKET, SOCK_DGRAM) was larger than the receive
	// buffer (MSG_TRUNC). Its descriptors have been closed.
	ErrPayloadTruncated = errors.New("scmrights: payload truncated")

	// ErrMalformedControl reports control data the kernel should never
	// produce (a header with an impossible length). Descriptors found before
	// the malformed header have been closed.
	ErrMalformedControl = errors.New("scmrights: malformed control message")

	// ErrTooManyFDs reports an attempt to send more than MaxFDs descriptors
	// in one message.
	ErrTooManyFDs = errors.New("scmrights: more than 253 descriptors in one message")

	// ErrEmptyPayload reports an attempt to send descriptors without payload
	// bytes, or an empty message on a SOCK_SEQPACKET socket, where the peer
	// could not tell it from end of stream (see the package documentation).
	ErrEmptyPayload = errors.New("scmrights: empty payload")

	// ErrBroken reports a stream connection on which an earlier Send or
	// Write failed after writing part of its payload: the peer has a
	// fragment, and anything sent after it would be misread. Close it.
	ErrBroken = errors.New("scmrights: stream broken by a partial write")

	// ErrWrongSocket reports a descriptor that is not the kind of socket a
	// conversion expects (a FIFO where a listener was expected, say). The
	// error is a *SocketError.
	ErrWrongSocket = errors.New("scmrights: wrong kind of descriptor")

	// ErrNotSupported reports an operation this platform cannot do.
	ErrNotSupported = errors.New("scmrights: not supported on this platform")
)

// Message is one message of a batch (Conn.SendBatch, Conn.RecvBatch).
type Message struct {
	// Payload holds the bytes to send, or the buffer to receive into.
	Payload []byte
	// FDs holds the descriptors to send, or room for received ones:
	// len(FDs) is the most this message accepts.
	FDs []int

	// N and NFDs report what RecvMsg or RecvBatch received: Payload[:N]
	// and FDs[:NFDs].
	N, NFDs int
	// Cred holds the sender's credentials when HasCred is true: the kernel
	// attaches them when the receiving socket has SO_PASSCRED set
	// (Conn.SetPassCred; Linux only). The kernel checks them: an
	// unprivileged sender can only claim its own pid and its real,
	// effective or saved ids, but a sender with CAP_SYS_ADMIN, CAP_SETUID or
	// CAP_SETGID may claim others, and the pid may be reused by the time
	// the message is read.
	Cred    Ucred
	HasCred bool
	// Err is set by RecvBatch when this message failed (ErrTruncated,
	// ErrPayloadTruncated); its descriptors have been closed.
	Err error
}

// Ucred holds the credentials of the process at the other end of a unix
// socket, as the kernel recorded them when the connection was made.
type Ucred struct {
	PID, UID, GID int
}

// TruncatedError details an ErrTruncated: how many descriptors arrived
// (all closed), how many the caller made room for, and whether the kernel
// cut the control data (MSG_CTRUNC), in which case more may have been sent
// than arrived.
type TruncatedError struct {
	Arrived, Room int
	Kernel        bool
}

func (e *TruncatedError) Error() string {
	if e.Kernel {
		return fmt.Sprintf("scmrights: descriptors truncated: control data cut by the kernel (MSG_CTRUNC) with room for %d; the %d that arrived were closed", e.Room, e.Arrived)
	}
	return fmt.Sprintf("scmrights: descriptors truncated: %d arrived with room for %d; all closed", e.Arrived, e.Room)
}

// Is makes errors.Is(err, ErrTruncated) true.
func (e *TruncatedError) Is(target error) bool { return target == ErrTruncated }

// MessageDropped reports true: the message was consumed from the socket
// (on a stream, the bytes Recv counted in n) and its descriptors closed;
// the connection stays usable. It marks the error for code that does not
// import this package: ipcframe's packet Reader then drops only that
// frame, also when the message had no payload bytes, where the byte count
// alone cannot tell it from end of stream.
func (e *TruncatedError) MessageDropped() bool { return true }

// File wraps a received descriptor in an *os.File named name. The File
// takes ownership of fd.
func File(fd int, name string) *os.File { return os.NewFile(uintptr(fd), name) }

// SocketError describes a descriptor rejected by a conversion.
type SocketError struct {
	FD   int    // the descriptor (already closed when the error is returned)
	Got  string // what it is, e.g. "FIFO", "SOCK_DGRAM inet socket", "connected SOCK_STREAM inet socket"
	Want string // what was expected, e.g. "listening stream socket"
}

func (e *SocketError) Error() string {
	return fmt.Sprintf("scmrights: descriptor %d is a %s, want a %s", e.FD, e.Got, e.Want)
}

// Is makes errors.Is(err, ErrWrongSocket) true.
func (e *SocketError) Is(target error) bool { return target == ErrWrongSocket }
