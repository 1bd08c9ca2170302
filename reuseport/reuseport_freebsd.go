package reuseport

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func reuseOption() string { return "SO_REUSEPORT_LB" }

// maxGroupOS is INPCBLBGROUP_SIZMAX (sys/netinet/in_pcb.c): a load-balancing
// group holds at most 256 sockets. Further sockets still bind, but are left
// out of the group and receive nothing, so ListenGroup refuses larger groups.
const maxGroupOS = 256

// setReusePort uses SO_REUSEPORT_LB (FreeBSD 12+): plain SO_REUSEPORT on
// FreeBSD lets sockets share a port but delivers to one of them only.
func setReusePort(fd int) error {
	return setsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT_LB, "SO_REUSEPORT_LB", 1)
}

func setDeferAccept(fd, seconds int) error {
	return fmt.Errorf("reuseport: TCP_DEFER_ACCEPT (use accf_data(9) instead): %w", ErrNotSupported)
}

func setFastOpen(fd, qlen int) error {
	return fmt.Errorf("reuseport: TCP_FASTOPEN queue length: %w", ErrNotSupported)
}
