//go:build darwin || dragonfly || netbsd || openbsd

package reuseport

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func reuseOption() string { return "SO_REUSEPORT" }

// setReusePort sets SO_REUSEPORT, which these kernels accept to let sockets
// share a port; Probe measures whether they also balance.
func setReusePort(fd int) error {
	return setsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT", 1)
}

func setDeferAccept(fd, seconds int) error {
	return fmt.Errorf("reuseport: TCP_DEFER_ACCEPT: %w", ErrNotSupported)
}

func setFastOpen(fd, qlen int) error {
	return fmt.Errorf("reuseport: TCP_FASTOPEN queue length: %w", ErrNotSupported)
}
