package scmrights

import (
	"encoding/binary"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// MSG_NOSIGNAL: a peer that closed turns into EPIPE, not a SIGPIPE.
	// MSG_DONTWAIT: O_NONBLOCK belongs to the open file description, which
	// other holders of the socket share and may clear ((*os.File).Fd on a
	// File() copy, exec.Cmd.ExtraFiles); without the flag a call would then
	// block in the kernel, holding its P through RawSyscall and stalling
	// every stop-the-world until a message came.
	sendFlags = unix.MSG_NOSIGNAL | unix.MSG_DONTWAIT
	// MSG_CMSG_CLOEXEC: received descriptors are close-on-exec atomically,
	// so a concurrent fork+exec never inherits them.
	recvFlags = unix.MSG_CMSG_CLOEXEC | unix.MSG_DONTWAIT
)

var credSpace = unix.CmsgSpace(unix.SizeofUcred)

// pidfdSpace is the room an SCM_PIDFD message takes (one int). With
// SO_PASSPIDFD set the kernel (scm_pidfd_recv, Linux 6.5) adds one to every
// message besides the credentials and the rights, and sets MSG_CTRUNC when
// it does not fit.
var pidfdSpace = unix.CmsgSpace(4)

const (
	scmCredentials = unix.SCM_CREDENTIALS
	// scmPidfd is SCM_PIDFD (Linux 6.5): with SO_PASSPIDFD set, every
	// message carries a pidfd of its sender.
	scmPidfd = 0x04
	// zeroLengthRecv: an empty buffer receives an empty message as is.
	zeroLengthRecv = true
)

// parseCred decodes the data of an SCM_CREDENTIALS message (struct ucred).
func parseCred(data []byte) (Ucred, bool) {
	if len(data) < unix.SizeofUcred {
		return Ucred{}, false
	}
	return Ucred{
		PID: int(int32(binary.NativeEndian.Uint32(data))),
		UID: int(binary.NativeEndian.Uint32(data[4:])),
		GID: int(binary.NativeEndian.Uint32(data[8:])),
	}, true
}

func setPassCred(fd int, on bool) error {
	v := 0
	if on {
		v = 1
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, v); err != nil {
		return os.NewSyscallError("setsockopt", err)
	}
	return nil
}

// The syscalls are made directly with a msghdr the caller owns: the x/sys
// wrappers either allocate (the peer address on receive) or insert a hidden
// byte when the payload is empty.

func fillMsg(msg *unix.Msghdr, iov *unix.Iovec, p, oob []byte) {
	*msg = unix.Msghdr{}
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
		msg.Iov = iov
		msg.SetIovlen(1)
	}
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
}

// msgBuf is a msghdr and its iovec, kept in the connection's state: on the
// stack they would escape (the kernel gets their address), costing an
// allocation per call.
type msgBuf struct {
	msg unix.Msghdr
	iov unix.Iovec
}

// rawMax is the most payload bytes a call may move through RawSyscall.
// With MSG_DONTWAIT sendmsg and recvmsg never wait for the peer; skipping
// the scheduler's entersyscall/exitsyscall bookkeeping then saves more than
// its own cost: measured with syscall tracepoints, it cut the runtime's
// sysmon wake-ups per 300k messages from about 8000 to 1000 and futex calls
// from about 2000 to 300. Larger copies use Syscall, so a long memcpy in the
// kernel never delays a stop-the-world.
const rawMax = 64 << 10

// rawMaxFDs is the most descriptors a receive may make room for and still
// use RawSyscall. Installing received descriptors can grow the descriptor
// table, and when other threads share it (every Go process) expand_fdtable
// waits for an RCU grace period: tens of milliseconds, measured at 100 ms
// for 70 messages of 253 descriptors, during which a RawSyscall holds its P
// and a stop-the-world waits. The table only grows, doubling each time, so a
// receive of a few descriptors meets this only when it is the one that
// crosses the next power of two, a handful of times in a process's life;
// larger receives, which cross it far more often, go through Syscall. So
// does every recvmmsg.
const rawMaxFDs = 8

var rawMaxOOB = rightsSpace(rawMaxFDs)

// sendmsg and recvmsg call unix.RawSyscall6 (a jump straight to the
// syscall package's) rather than unix.RawSyscall (two more frames) through
// a function value: on this path a CPU profile (perf cpu-clock, K=1)
// charged 10-40 ns per message to each small wrapper.

func sendmsg(fd int, b *msgBuf, p, oob []byte) (int, error) {
	fillMsg(&b.msg, &b.iov, p, oob)
	var n uintptr
	var e unix.Errno
	if len(p) <= rawMax {
		n, _, e = unix.RawSyscall6(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msg)), sendFlags, 0, 0, 0)
	} else {
		n, _, e = unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msg)), sendFlags)
	}
	b.iov.Base, b.msg.Control = nil, nil
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func recvmsg(fd int, b *msgBuf, p, oob []byte) (n, oobn, flags int, err error) {
	fillMsg(&b.msg, &b.iov, p, oob)
	var r uintptr
	var e unix.Errno
	if len(p) <= rawMax && len(oob) <= rawMaxOOB {
		r, _, e = unix.RawSyscall6(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msg)), recvFlags, 0, 0, 0)
	} else {
		r, _, e = unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msg)), recvFlags)
	}
	b.iov.Base, b.msg.Control = nil, nil
	if e != 0 {
		return 0, 0, 0, e
	}
	return int(r), int(b.msg.Controllen), int(b.msg.Flags), nil
}

func peerCred(fd int) (Ucred, error) {
	u, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Ucred{}, os.NewSyscallError("getsockopt", err)
	}
	return Ucred{PID: int(u.Pid), UID: int(u.Uid), GID: int(u.Gid)}, nil
}

func socketpair(sotype int) ([2]int, error) {
	return unix.Socketpair(unix.AF_UNIX, sotype|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
}

// peerFamily returns the address family of the socket fd's peer, or the
// errno of getpeername(2) if it has none. The raw call, because x/sys's
// Getpeername adds a getsockopt(SO_PROTOCOL) for every inet address, to
// tell L2TP apart.
func peerFamily(fd int) (int, error) {
	var sa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	_, _, e := unix.RawSyscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return 0, e
	}
	return int(sa.Addr.Family), nil
}
