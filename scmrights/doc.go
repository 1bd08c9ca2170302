// Package scmrights sends and receives file descriptors, with a payload,
// over unix domain sockets (SCM_RIGHTS ancillary data).
//
// # Who should use it
//
// Programs that hand sockets or files to another process: a master passing
// accepted connections or listeners to workers, a tool passing a socket to an
// unrelated program. Send and Recv work on any *net.UnixConn; Conn is the
// hot-path form (reused buffers, no allocations, batched I/O). For a framed
// protocol over a stream socket use package ipcframe on top of Conn: a
// stream has no message boundaries, and only a framing layer can say which
// bytes a descriptor belongs to.
//
// # Ownership
//
// Descriptors passed to Send stay the caller's: the kernel installs copies in
// the receiver, and the caller may close its own as soon as Send returns.
// Received descriptors belong to the caller of Recv, who must close them; they
// are close-on-exec (received with MSG_CMSG_CLOEXEC on Linux), so they never
// leak into a child unless handed over explicitly (exec.Cmd.ExtraFiles).
// Whenever a Recv fails after descriptors arrived (truncation, a payload that
// did not fit), every descriptor that arrived has been closed: a message is
// delivered whole or not at all, never with fewer descriptors than were sent.
// The conversions (Listener, NetConn, PacketConn) take ownership of the
// descriptor they are given, on success and on failure alike.
//
// # Message boundaries
//
// On SOCK_SEQPACKET and SOCK_DGRAM sockets one Send is one Recv: the payload
// and its descriptors arrive together, and a payload larger than the receive
// buffer is an error (ErrPayloadTruncated), never a silent cut.
//
// On SOCK_STREAM sockets the kernel attaches descriptors to the first byte of
// the send that carried them. One Recv may return bytes of several earlier
// descriptor-less sends followed by the first bytes of one descriptor-carrying
// send, and the kernel never returns descriptors of two sends in one Recv.
// The descriptors therefore belong to the last send whose first byte lies in
// the returned bytes. The kernel stops a read right after the first part
// (skb) of such a send, not after the whole send: a large send is queued in
// parts of up to a few tens of KiB, and the rest follows in later reads,
// without descriptors. A framing layer resolves which send the descriptors
// belong to.
//
// Send writes the whole payload: a short write is continued, with the
// descriptors on the first part only, and concurrent Sends on one
// connection never interleave their bytes. A send that fails part-way
// leaves a fragment in the stream; Conn then refuses further sends
// (ErrBroken).
//
// A stream socket cannot carry descriptors without payload bytes (Linux drops
// them; Go's WriteMsgUnix inserts a hidden zero byte the receiver never asked
// for), so Send refuses descriptors with an empty payload on every socket
// type, with ErrEmptyPayload. An empty SOCK_SEQPACKET message reads as end
// of stream (recvmsg returns 0 for both), so Send refuses that too; a
// receiver that must tell them apart sets SO_PASSCRED (Conn.SetPassCred):
// RecvMsg then reports credentials (HasCred) for an empty message, none at
// the end of stream. At most MaxFDs (253, the kernel's SCM_MAX_FD)
// descriptors travel in one message; more is ErrTooManyFDs.
//
// # Credentials
//
// PeerCred reports who connected (SO_PEERCRED). With Conn.SetPassCred the
// kernel also attaches the sender's pid, uid and gid to every message
// (SCM_CREDENTIALS), which RecvMsg and RecvBatch report: on a datagram
// socket shared by many senders, such as a NOTIFY_SOCKET, that is how a
// message is attributed. Recv tolerates the credentials and ignores them.
//
// # Blocking and errors
//
// All I/O runs on the Go runtime's network poller: deadlines set on the
// connection apply, and closing it unblocks a pending Recv or Send with an
// error matching net.ErrClosed. This holds even when another holder of the
// socket made its shared open file description blocking ((*os.File).Fd,
// exec.Cmd.ExtraFiles): every call passes MSG_DONTWAIT.
//
// On a hot path, size the fds buffer of Recv and RecvMsg to what you
// expect: a receive with room for at most 8 descriptors skips the
// scheduler's system-call bookkeeping (it cannot wait in the kernel), a
// larger one goes through it, since installing many descriptors may wait
// for the process's descriptor table to grow.
//
// Errors are *net.OpError values wrapping either an *os.SyscallError or one
// of this package's sentinels, so errors.Is works with ErrTruncated,
// os.ErrDeadlineExceeded, net.ErrClosed and errno values such as
// syscall.ETOOMANYREFS (the sender's in-flight descriptor limit, which
// leaves the connection usable).
//
// # Platforms
//
// Linux is fully supported, including batched I/O (sendmmsg/recvmmsg) and
// peer credentials. Other unix systems build and work with single messages;
// batches there loop over single messages, received descriptors are marked
// close-on-exec under syscall.ForkLock, and PeerCred returns an error
// wrapping ErrNotSupported. On other systems (and AIX) every function that
// touches a socket returns an error wrapping ErrNotSupported; File, a plain
// os.NewFile, works everywhere.
package scmrights
