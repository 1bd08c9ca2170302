//go:build linux

package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// listener is one socket the master holds for the cluster's lifetime.
type listener struct {
	addr net.Addr
	name string   // LISTEN_FDNAMES entry
	file *os.File // the copy every worker gets; blocking, close-on-exec
	// owner keeps what must outlive the copy: the unix socket file and its
	// lock (sockfile), nil for inet sockets and adopted ones.
	owner io.Closer
}

func (l *listener) close() {
	l.file.Close()
	if l.owner != nil {
		l.owner.Close()
	}
}

func closeAll(ls []*listener) {
	for _, l := range ls {
		l.close()
	}
}

// bind binds every address once. Workers get the very same sockets: closing
// one of several SO_REUSEPORT sockets would reset its queued connections,
// one shared socket loses none (TESTPLAN invariant 1).
func bind(specs []string) ([]*listener, error) {
	var out []*listener
	for _, s := range specs {
		a, err := ParseAddr(s)
		if err != nil {
			closeAll(out)
			return nil, err
		}
		l, err := bindOne(a)
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("%w: %s: %w", ErrListen, s, err)
		}
		out = append(out, l)
	}
	return out, nil
}

func bindOne(a Addr) (*listener, error) {
	var lc net.ListenConfig
	// Workers in any language expect plain TCP; Go would otherwise pick
	// MPTCP where the kernel has it.
	lc.SetMultipathTCP(false)
	ctx := context.Background()
	var (
		sc    syscall.Conn
		addr  net.Addr
		owner io.Closer
		c     io.Closer
	)
	switch a.Network {
	case "tcp":
		ln, err := lc.Listen(ctx, "tcp", a.Address)
		if err != nil {
			return nil, err
		}
		sc, addr, c = ln.(*net.TCPListener), ln.Addr(), ln
	case "udp":
		pc, err := lc.ListenPacket(ctx, "udp", a.Address)
		if err != nil {
			return nil, err
		}
		sc, addr, c = pc.(*net.UDPConn), pc.LocalAddr(), pc
	case "unix":
		// 0666 like systemd's SocketMode default: this is a service
		// socket for clients, not the control socket.
		ln, err := sockfile.Listen(a.Address, &sockfile.Options{Mode: 0o666})
		if err != nil {
			return nil, err
		}
		sc, addr, owner = ln.UnixListener(), ln.Addr(), ln
	default:
		return nil, fmt.Errorf("network %q", a.Network)
	}
	fd, err := scmrights.Dup(sc)
	if c != nil {
		// The master never accepts; the duplicate keeps the socket.
		c.Close()
	}
	if err != nil {
		if owner != nil {
			owner.Close()
		}
		return nil, err
	}
	// Hand the socket over in blocking mode, as systemd does
	// (NonBlocking=no): workers that never set it themselves expect that,
	// and Go workers switch it to non-blocking anyway.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		if owner != nil {
			owner.Close()
		}
		return nil, os.NewSyscallError("fcntl", err)
	}
	name := fdName(a.Network, addr.String())
	return &listener{addr: addr, name: name, file: os.NewFile(uintptr(fd), name), owner: owner}, nil
}

// adopt takes over descriptors passed by socket activation, checking that
// each is a listening stream socket or a datagram socket before trusting it
// (sd_is_socket): garbage fails, never becomes a listener (TESTPLAN A20).
func adopt(fds []Activated) ([]*listener, error) {
	var out []*listener
	fail := func(err error) ([]*listener, error) {
		closeAll(out)
		return nil, err
	}
	for _, a := range fds {
		// Activated descriptors arrive without close-on-exec; workers get
		// their own copies as 3.. through ExtraFiles.
		if _, err := unix.FcntlInt(uintptr(a.FD), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return fail(fmt.Errorf("%w: descriptor %d (%s): %w", ErrActivation, a.FD, a.Name, os.NewSyscallError("fcntl", err)))
		}
		typ, err := unix.GetsockoptInt(a.FD, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			unix.Close(a.FD)
			return fail(fmt.Errorf("%w: descriptor %d (%s) is not a socket: %w", ErrActivation, a.FD, a.Name, os.NewSyscallError("getsockopt", err)))
		}
		dup, err := unix.FcntlInt(uintptr(a.FD), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			unix.Close(a.FD)
			return fail(os.NewSyscallError("fcntl", err))
		}
		var addr net.Addr
		if typ == unix.SOCK_DGRAM {
			pc, err := scmrights.PacketConn(dup)
			if err == nil {
				addr = pc.LocalAddr()
				pc.Close()
			}
			if err != nil {
				unix.Close(a.FD)
				return fail(fmt.Errorf("%w: descriptor %d (%s): %w", ErrActivation, a.FD, a.Name, err))
			}
		} else {
			ln, err := scmrights.Listener(dup)
			if err == nil {
				addr = ln.Addr()
				ln.Close()
			}
			if err != nil {
				unix.Close(a.FD)
				return fail(fmt.Errorf("%w: descriptor %d (%s): %w", ErrActivation, a.FD, a.Name, err))
			}
		}
		if err := unix.SetNonblock(a.FD, false); err != nil {
			unix.Close(a.FD)
			return fail(os.NewSyscallError("fcntl", err))
		}
		out = append(out, &listener{addr: addr, name: a.Name, file: os.NewFile(uintptr(a.FD), a.Name)})
	}
	return out, nil
}

var errNoListeners = errors.New("cluster: no -listen address and no socket-activated descriptors")
