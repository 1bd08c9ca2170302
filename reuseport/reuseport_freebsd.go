package reuseport

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// reuseOpt is SO_REUSEPORT_LB (FreeBSD 12+): plain SO_REUSEPORT on FreeBSD
// lets sockets share a port but delivers to one of them only. A kernel
// without it (before 12.0) is reported as not supported.
var reuseOpt = reuseSockopt{unix.SO_REUSEPORT_LB, "SO_REUSEPORT_LB"}

// maxGroupOS is INPCBLBGROUP_SIZMAX (sys/netinet/in_pcb.c): a load-balancing
// group holds at most 256 sockets. Further sockets still bind, but are left
// out of the group and receive nothing, so ListenGroup refuses larger groups.
const maxGroupOS = 256

func setDeferAccept(fd, seconds int) error {
	return fmt.Errorf("reuseport: TCP_DEFER_ACCEPT (use accf_data(9) instead): %w", ErrNotSupported)
}

func setFastOpen(fd, qlen int) error {
	return fmt.Errorf("reuseport: TCP_FASTOPEN queue length: %w", ErrNotSupported)
}
