//go:build darwin || netbsd || openbsd

package reuseport

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// reuseOpt is SO_REUSEPORT, which macOS, NetBSD and OpenBSD accept to let
// sockets share a port while one of them receives the traffic; Probe
// measures it rather than trusting this.
var reuseOpt = reuseSockopt{unix.SO_REUSEPORT, "SO_REUSEPORT"}

// maxGroupOS is MaxGroup: these kernels keep no separate balancing group
// with a size limit of its own.
const maxGroupOS = MaxGroup

func setDeferAccept(fd, seconds int) error {
	return fmt.Errorf("reuseport: TCP_DEFER_ACCEPT: %w", ErrNotSupported)
}

func setFastOpen(fd, qlen int) error {
	return fmt.Errorf("reuseport: TCP_FASTOPEN queue length: %w", ErrNotSupported)
}
