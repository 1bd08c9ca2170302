package scmrights

import (
	"errors"
	"fmt"
)

// MaxFDs is the most descriptors one message can carry: Linux's SCM_MAX_FD.
const MaxFDs = 253

var (
	// ErrTruncated reports that a message's descriptors did not all fit:
	// the kernel truncated the control data (MSG_CTRUNC), or more descriptors
	// arrived than the caller made room for. Every descriptor that arrived
	// has been closed.
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
	// bytes (see the package documentation).
	ErrEmptyPayload = errors.New("scmrights: descriptors need at least one payload byte")

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
	// (Conn.SetPassCred; Linux only). They cannot be forged by the sender.
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
