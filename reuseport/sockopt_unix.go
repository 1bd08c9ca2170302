//go:build linux || freebsd || darwin || dragonfly || netbsd || openbsd

package reuseport

import (
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func control(c *Config, network string, rc syscall.RawConn) error {
	return controlOptions(c, network, rc, true)
}

// controlOptions sets c's options, and SO_REUSEPORT if reuse is true.
func controlOptions(c *Config, network string, rc syscall.RawConn, reuse bool) error {
	var optErr error
	if err := rc.Control(func(fd uintptr) { optErr = setOptions(int(fd), c, network, reuse) }); err != nil {
		return err
	}
	return optErr
}

func setOptions(fd int, c *Config, network string, reuse bool) error {
	if reuse {
		if err := setReusePort(fd); err != nil {
			return err
		}
	}
	if c == nil {
		return nil
	}
	if c.V6Only && strings.HasSuffix(network, "6") {
		if err := setsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY", 1); err != nil {
			return err
		}
	}
	if !strings.HasPrefix(network, "tcp") {
		return nil
	}
	if s := c.deferAcceptSeconds(); s > 0 {
		if err := setDeferAccept(fd, s); err != nil {
			return err
		}
	}
	if c.FastOpen > 0 {
		if err := setFastOpen(fd, c.FastOpen); err != nil {
			return err
		}
	}
	return nil
}

// deferAcceptSeconds rounds DeferAccept up to whole seconds, the unit of
// TCP_DEFER_ACCEPT, so that 500ms does not silently become "off".
func (c *Config) deferAcceptSeconds() int {
	if c == nil || c.DeferAccept <= 0 {
		return 0
	}
	s := (c.DeferAccept + time.Second - 1) / time.Second
	if s > 1<<30 {
		s = 1 << 30
	}
	return int(s)
}

// reuseSockopt is the SOL_SOCKET option that lets sockets share a port.
type reuseSockopt struct {
	opt  int
	name string
}

func reuseOption() string { return reuseOpt.name }

// setReusePort sets reuseOpt on fd. ENOPROTOOPT means the kernel does not
// know the option (FreeBSD before 12.0 has no SO_REUSEPORT_LB): the port
// cannot be shared as promised, which is ErrNotSupported, and Probe then
// reports "not supported" rather than failing.
func setReusePort(fd int) error {
	err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, reuseOpt.opt, 1)
	if err == unix.ENOPROTOOPT {
		return fmt.Errorf("reuseport: %s: %w: %w", reuseOpt.name, ErrNotSupported, os.NewSyscallError("setsockopt", err))
	}
	if err != nil {
		return fmt.Errorf("reuseport: %s: %w", reuseOpt.name, os.NewSyscallError("setsockopt", err))
	}
	return nil
}

func setsockoptInt(fd, level, opt int, name string, v int) error {
	if err := unix.SetsockoptInt(fd, level, opt, v); err != nil {
		return fmt.Errorf("reuseport: %s: %w", name, os.NewSyscallError("setsockopt", err))
	}
	return nil
}

// setBacklog calls listen(2) again on a listening socket: Linux and the BSDs
// then only replace the accept-queue limit, keeping queued connections.
func setBacklog(l *net.TCPListener, n int) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = unix.Listen(int(fd), n) }); err != nil {
		return err
	}
	if lerr != nil {
		return os.NewSyscallError("listen", lerr)
	}
	return nil
}
