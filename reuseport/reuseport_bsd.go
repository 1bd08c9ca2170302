//go:build darwin || netbsd || openbsd

package reuseport

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func reuseOption() string { return "SO_REUSEPORT" }

// maxGroupOS is MaxGroup: these kernels keep no separate balancing group
// with a size limit of its own.
const maxGroupOS = MaxGroup

// setReusePort sets SO_REUSEPORT, which macOS, NetBSD and OpenBSD accept to
// let sockets share a port while one of them receives the traffic; Probe
// measures it rather than trusting this.
func setReusePort(fd int) error {
	return setsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT", 1)
}

func setDeferAccept(fd, seconds int) error {
	return fmt.Errorf("reuseport: TCP_DEFER_ACCEPT: %w", ErrNotSupported)
}

func setFastOpen(fd, qlen int) error {
	return fmt.Errorf("reuseport: TCP_FASTOPEN queue length: %w", ErrNotSupported)
}
