package reuseport

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// reuseOpt is SO_REUSEPORT, which on DragonFly both shares the port and
// balances over the sockets of its "local group" (FreeBSD's SO_REUSEPORT_LB
// was ported from this code). Probe measures it.
var reuseOpt = reuseSockopt{unix.SO_REUSEPORT, "SO_REUSEPORT"}

// maxGroupOS is INP_LOCALGROUP_SIZMAX (sys/netinet/in_pcb.c): DragonFly
// balances over at most 256 sockets per address, the limit FreeBSD kept for
// SO_REUSEPORT_LB; further sockets bind but are left out of the group.
const maxGroupOS = 256

func setDeferAccept(fd, seconds int) error {
	return fmt.Errorf("reuseport: TCP_DEFER_ACCEPT: %w", ErrNotSupported)
}

func setFastOpen(fd, qlen int) error {
	return fmt.Errorf("reuseport: TCP_FASTOPEN queue length: %w", ErrNotSupported)
}
