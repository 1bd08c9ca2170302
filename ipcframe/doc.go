// Package ipcframe reads and writes length-prefixed frames over any byte
// stream (pipes, TCP, ssh stdio, unix sockets) and, over unix sockets,
// frames that carry file descriptors. It is the wire of handoff's control
// channels. docs/protocol.md specifies the format.
//
// # Frames
//
// A frame is an 8-byte header (magic 'h', version 1, descriptor count, a
// reserved zero byte, big-endian uint32 payload length) followed by the
// payload. A zero-length payload is a valid frame that carries nothing but
// its header (and possibly descriptors): applications may use it as a
// keep-alive. Headers are checked before anything is allocated: a wrong
// magic or version is ErrBadHeader, a length above the Reader's MaxFrame is
// ErrFrameTooLarge, and on a stream both are final, because there is no way
// to find the next frame after them (on SOCK_SEQPACKET only that message is
// dropped). A frame's memory grows with the bytes that arrive, not with the
// length its header claims.
//
// # Errors
//
// A Reader error is a timeout, a dropped frame or final. A timeout
// (os.ErrDeadlineExceeded) is never final: the next read resumes the frame
// where it stopped. Errors matching ErrFrameDropped (among them every
// *FDCountError, including descriptors the transport lost, ErrNoFDTransport
// and a frame with more descriptors than the caller's fds slice,
// ErrTooManyFDs; on SOCK_SEQPACKET also a bad, oversized or truncated
// message) dropped one frame, its descriptors closed; the next read
// returns the next frame. Every other error is final and repeats on every
// later read: io.EOF, io.ErrUnexpectedEOF, ErrBadHeader and
// ErrFrameTooLarge on a stream, ErrFDProtocol, ErrClosed and other errors
// of the underlying connection. A read loop skips ErrFrameDropped and
// stops on anything else but a timeout.
//
// # Descriptors
//
// On Linux, when the underlying connection implements FDReader / FDWriter
// (*scmrights.Conn does; this package does not import it), a frame may carry
// up to MaxFDsPerFrame (253, SCM_MAX_FD) descriptors. The Writer sends the
// header, payload and descriptors in one sendmsg, so the descriptors ride on
// the header's first byte. The Reader keeps receiving bytes and descriptors
// together (never a plain read) and relies on a Linux fact: a recvmsg on an
// AF_UNIX stream stops right after the first skb that carries descriptors.
// The descriptors one recvmsg returns therefore belong to the last frame
// whose first byte lies in the bytes it returned. The Reader applies that
// rule and cross-checks it against the count the frame's header declares: a
// mismatch drops the frame with an *FDCountError and closes the
// descriptors. So do descriptors the FDReader lost (it returned an error
// with the bytes they came with: MSG_CTRUNC when the receiver has run out
// of descriptors, for instance): only the frame that owned them is
// dropped, and the next frame is read normally. Descriptors a peer attaches to a byte that starts no frame
// are detected on a best-effort basis only: when the recvmsg that returns
// them also returns the first byte of a later frame (which depends on
// timing), the rule charges them to that later frame, which is then dropped
// for a count mismatch, or, if its header happens to declare that many,
// delivered with them. Either way a peer can only misplace its own
// descriptors among its own frames on its own connection. More than 253
// descriptors for one frame are refused (ErrTooManyFDs); there are no
// continuation frames. On SOCK_SEQPACKET (ReaderOptions.Packet) every
// message is one frame and its descriptors.
//
// # Ownership
//
// Descriptors passed to WriteFrameFDs stay the caller's. Descriptors
// returned by ReadFrameFDs belong to the caller, who must close them; they
// were received with MSG_CMSG_CLOEXEC by the FDReader. Every descriptor the
// Reader does not hand out is closed by it: those of rejected frames, those
// held when the stream fails, and those held when the Reader is closed.
// Payloads are appended to the caller's slice; nothing returned aliases
// internal buffers.
//
// # Who should not use it
//
// Code that needs request/response matching, multiplexed streams or a
// schema: ipcframe only delimits frames. Code that passes a few descriptors
// per message over a SOCK_SEQPACKET or datagram socket with no framing need
// can use package scmrights directly.
//
// # Platforms
//
// Frames without descriptors work on every platform Go supports. Frames with
// descriptors need Linux: elsewhere the Writer refuses descriptors with an
// error wrapping ErrNotSupported, and the Reader uses plain reads. A frame
// declaring descriptors that a transport does not deliver (a pipe, TCP) is
// then dropped with ErrNoFDTransport. A unix socket peer that does attach
// descriptors makes the plain read itself fail (*scmrights.Conn's Read
// closes them and returns scmrights.ErrTruncated), and that error is final:
// without the Linux attribution rule the Reader cannot tell which frame
// they belonged to.
package ipcframe
