package scmrights

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// MSG_NOSIGNAL: a peer that closed turns into EPIPE, not a SIGPIPE.
	sendFlags = unix.MSG_NOSIGNAL
	// MSG_CMSG_CLOEXEC: received descriptors are close-on-exec atomically,
	// so a concurrent fork+exec never inherits them.
	recvFlags = unix.MSG_CMSG_CLOEXEC
)

var credSpace = unix.CmsgSpace(unix.SizeofUcred)

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

func sendmsg(fd int, b *msgBuf, p, oob []byte) (int, error) {
	fillMsg(&b.msg, &b.iov, p, oob)
	n, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msg)), sendFlags)
	b.iov.Base, b.msg.Control = nil, nil
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func recvmsg(fd int, b *msgBuf, p, oob []byte) (n, oobn, flags int, err error) {
	fillMsg(&b.msg, &b.iov, p, oob)
	r, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msg)), recvFlags)
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
