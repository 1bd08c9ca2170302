//go:build !linux

package reuseport

import (
	"context"
	"net"
)

// listenPacketOS binds with SO_REUSEPORT from the start. Handing a port-0
// request the port of a same-user reuseport group is a Linux UDP behaviour
// (see listenpacket_linux.go); it is not known to happen elsewhere.
func (c *Config) listenPacketOS(ctx context.Context, network, address string) (net.PacketConn, error) {
	return listenPacket(ctx, network, address, c.Control)
}
