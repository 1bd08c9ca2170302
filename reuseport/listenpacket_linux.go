package reuseport

import (
	"context"
	"net"
	"syscall"
)

// listenPacketOS binds a UDP socket. For port 0 it binds without
// SO_REUSEPORT and sets the option afterwards: Linux's UDP port search
// (udp_lib_get_port) skips a port held by sockets that all have
// SO_REUSEPORT and the caller's uid, treating it as shareable, so a socket
// asking for port 0 with the option already set could be given the port of
// another program's group and silently join it. TCP's search
// (inet_csk_find_open_port) does not share ports this way. Without the
// option at bind time every port in use is skipped.
func (c *Config) listenPacketOS(ctx context.Context, network, address string) (net.PacketConn, error) {
	if !portZero(address) {
		return listenPacket(ctx, network, address, c.Control)
	}
	pc, err := listenPacket(ctx, network, address, func(network, _ string, rc syscall.RawConn) error {
		return controlOptions(c, network, rc, false)
	})
	if err != nil {
		return nil, err
	}
	if err := setReusePortAfterBind(pc); err != nil {
		pc.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: pc.LocalAddr(), Err: err}
	}
	// The option set after bind(2) lets others join, but the kernel only
	// creates the reuseport group (struct sock_reuseport) when a socket
	// binds with it, and until then SO_ATTACH_REUSEPORT_CBPF on this
	// socket fails with EINVAL. A second socket that binds the port and
	// closes again creates the group with this socket as member 0, as a
	// bind with the option would have.
	tmp, err := listenPacket(ctx, network, pc.LocalAddr().String(), c.Control)
	if err != nil {
		pc.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		pc.Close()
		return nil, err
	}
	return pc, nil
}

func setReusePortAfterBind(pc net.PacketConn) error {
	rc, err := pc.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = setReusePort(int(fd)) }); err != nil {
		return err
	}
	return serr
}
