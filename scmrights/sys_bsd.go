//go:build unix && !linux

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

const (
	sendFlags = 0
	recvFlags = 0
)

var credSpace = 0

// scmCredentials matches no control message type: credentials are not
// received here.
const scmCredentials = -1

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
	if err == nil {
		_ = walkRights(oob[:oobn], unix.CloseOnExec)
	}
	return n, oobn, flags, err
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
