//go:build unix && !linux && !aix

package scmrights

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Outside Linux the x/sys wrappers are used; they allocate, which is
// acceptable where the hot path is not measured. Not every system has
// MSG_CMSG_CLOEXEC (macOS lacks it), so received descriptors are marked
// close-on-exec while holding syscall.ForkLock, as the net package does for
// accept on such systems.

// MSG_DONTWAIT: O_NONBLOCK belongs to the shared open file description,
// which another holder may clear ((*os.File).Fd, exec.Cmd.ExtraFiles); the
// calls must still return EAGAIN to the poller, or deadlines and Close would
// no longer reach a call blocked in the kernel.
const (
	sendFlags = unix.MSG_DONTWAIT
	recvFlags = unix.MSG_DONTWAIT
)

var credSpace = 0

// pidfdSpace is 0: no kernel here attaches a pidfd on its own.
var pidfdSpace = 0

const (
	// scmCredentials and scmPidfd match no control message type here.
	scmCredentials = -1
	scmPidfd       = -2
	// zeroLengthRecv is false: the x/sys wrapper reads into a hidden
	// one-byte buffer when the caller's is empty, which would consume a
	// message the caller cannot see.
	zeroLengthRecv = false
)

func parseCred([]byte) (Ucred, bool) { return Ucred{}, false }

func setPassCred(int, bool) error {
	return fmt.Errorf("SO_PASSCRED: %w", ErrNotSupported)
}

// msgBuf is unused here: the x/sys wrappers build their own msghdr.
type msgBuf struct{}

func sendmsg(fd int, _ *msgBuf, p, oob []byte) (int, error) {
	return unix.SendmsgN(fd, p, oob, nil, sendFlags)
}

func recvmsg(fd int, _ *msgBuf, p, oob []byte) (n, oobn, flags int, err error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	n, oobn, flags, _, err = unix.Recvmsg(fd, p, oob, recvFlags)
	if err != nil {
		// The wrapper can fail decoding the sender's address after the
		// kernel installed descriptors; they must not leak.
		if oobn > 0 {
			_ = walkRights(oob[:oobn], func(fd int) { unix.Close(fd) })
		}
		return 0, 0, 0, err
	}
	_ = walkRights(oob[:oobn], unix.CloseOnExec)
	return n, oobn, flags, nil
}

func peerCred(int) (Ucred, error) {
	return Ucred{}, fmt.Errorf("peer credentials: %w", ErrNotSupported)
}

// socketpair marks both ends close-on-exec under ForkLock: SOCK_CLOEXEC is
// not available everywhere (macOS).
func socketpair(sotype int) ([2]int, error) {
	syscall.ForkLock.RLock()
	fds, err := unix.Socketpair(unix.AF_UNIX, sotype, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return fds, err
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return fds, err
	}
	return fds, nil
}

// peerFamily returns the address family of the socket fd's peer, or the
// error of getpeername(2) if it has none.
func peerFamily(fd int) (int, error) {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return 0, err
	}
	switch sa.(type) {
	case *unix.SockaddrInet4:
		return unix.AF_INET, nil
	case *unix.SockaddrInet6:
		return unix.AF_INET6, nil
	case *unix.SockaddrUnix:
		return unix.AF_UNIX, nil
	}
	return unix.AF_UNSPEC, nil
}
