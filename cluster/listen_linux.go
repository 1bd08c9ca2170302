//go:build linux

package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"

	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// listener is one socket the master holds for the cluster's lifetime.
type listener struct {
	addr net.Addr
	name string   // LISTEN_FDNAMES entry
	file *os.File // the copy every worker gets; close-on-exec
	// owner keeps what must outlive the copy: the unix socket file and its
	// lock (sockfile), nil for inet sockets and socket-activated ones.
	owner io.Closer
	// sock is owner's sockfile.Listener (the same, or wrapped to close as
	// the workers' user), whose socket file an in-place upgrade hands to
	// the new image (sockfile.Adopt); nil when owner is.
	sock *sockfile.Listener
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

// bindOne binds a as the master: -listen addresses, which the operator
// chose.
func bindOne(a Addr) (*listener, error) { return bindFor(a, false, nil) }

// bindFor binds a, as the master, or, for a worker's request (forWorker),
// with that worker's rights for a unix path (listenUnixAs): as cred when
// workers run as another user, else without the master's effective
// capabilities unless it is root (then so are its workers, who could
// create the file themselves).
func bindFor(a Addr, forWorker bool, cred *supervise.Credential) (*listener, error) {
	var lc net.ListenConfig
	// Workers in any language expect plain TCP; Go would otherwise pick
	// MPTCP where the kernel has it.
	lc.SetMultipathTCP(false)
	ctx := context.Background()
	var (
		sc    syscall.Conn
		addr  net.Addr
		owner io.Closer
		sock  *sockfile.Listener
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
		opts := &sockfile.Options{Mode: 0o666}
		var ln *sockfile.Listener
		var err error
		switch {
		case withWorkerRights(forWorker, cred):
			ln, owner, err = listenUnixAs(cred, a.Address, opts)
		default:
			ln, err = sockfile.Listen(a.Address, opts)
			owner = ln
		}
		if err != nil {
			return nil, err
		}
		sc, addr, sock = ln.UnixListener(), ln.Addr(), ln
	default:
		return nil, fmt.Errorf("network %q", a.Network)
	}
	fd, err := scmrights.Dup(sc)
	if c != nil {
		// The master never accepts; the duplicate keeps the socket.
		c.Close()
	}
	if sock != nil {
		// Likewise for a unix listener (stopPolling).
		stopPolling(sock.UnixListener())
	}
	if err != nil {
		if owner != nil {
			owner.Close()
		}
		return nil, err
	}
	// Start in blocking mode, as systemd does (NonBlocking=no). This holds
	// only until a worker changes it: O_NONBLOCK is a flag of the open file
	// description every worker shares, and Go workers set it.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		if owner != nil {
			owner.Close()
		}
		return nil, os.NewSyscallError("fcntl", err)
	}
	name := boundName(a.Network, addr)
	return &listener{addr: addr, name: name, file: os.NewFile(uintptr(fd), name), owner: owner, sock: sock}, nil
}

// boundName is the descriptor name of a listener bound for network at
// addr, its local address (getsockname): for a request of port 0, the
// port the kernel chose. An image that adopts the socket after an
// in-place upgrade names it the same way (adoptBinds), so the carried
// subscriptions of old workers and the connections they give back match
// it.
func boundName(network string, addr net.Addr) string { return fdName(network, addr.String()) }

// withWorkerRights says whether the master creates (and removes) a unix
// socket file for a worker's request (forWorker) with that worker's
// rights (asUser): as cred when workers run as another user, else
// without the master's effective capabilities unless it is root (then so
// are its workers, who could create the file themselves).
func withWorkerRights(forWorker bool, cred *supervise.Credential) bool {
	return forWorker && (cred != nil || os.Geteuid() != 0)
}

// stopPolling closes ul, the Go listener of a unix socket the master holds
// as a listener's file and owner: otherwise the runtime poller wakes the
// master for every connection (edge-triggered epoll reports each one),
// and the master never accepts. The owner keeps the lock and the inode
// identity, and unlinks the path on exit; its own close of ul then fails
// harmlessly.
func stopPolling(ul *net.UnixListener) {
	ul.SetUnlinkOnClose(false)
	ul.Close()
}

// checkActivated validates the descriptors named by socket activation
// before the process opens anything else, so a number in the list cannot be
// one of its own: each must be open, lack close-on-exec (the runtime and
// this package open everything close-on-exec; an inherited descriptor
// arrives without it), and be a listening stream socket or a datagram
// socket (sd_is_socket). It changes nothing: on error no descriptor was
// touched.
func checkActivated(fds []Activated) error {
	for _, a := range fds {
		if _, what, err := inheritedSocket(a.FD); what != "" {
			if err != nil {
				return fmt.Errorf("%w: descriptor %d (%s) %s: %w", ErrActivation, a.FD, a.Name, what, err)
			}
			return fmt.Errorf("%w: descriptor %d (%s) %s", ErrActivation, a.FD, a.Name, what)
		}
	}
	return nil
}

// inheritedSocket checks that fd is an inherited listening stream socket
// or datagram socket (sd_is_socket): open, without close-on-exec (the
// runtime and this package open everything close-on-exec), a socket, and
// listening unless it is a datagram socket. It returns fd's stat, or what
// is wrong with it and the system call's error, if one failed. It changes
// nothing.
func inheritedSocket(fd int) (st unix.Stat_t, what string, err error) {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		return st, "is not open", os.NewSyscallError("fcntl", err)
	}
	if flags&unix.FD_CLOEXEC != 0 {
		return st, "was opened by this process, not inherited", nil
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return st, "cannot be inspected", os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return st, "is not a socket", nil
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return st, "is not a socket", os.NewSyscallError("getsockopt", err)
	}
	switch typ {
	case unix.SOCK_DGRAM:
	case unix.SOCK_STREAM, unix.SOCK_SEQPACKET:
		acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return st, "is not a socket", os.NewSyscallError("getsockopt", err)
		}
		if acc == 0 {
			return st, "is not listening", nil
		}
	default:
		return st, fmt.Sprintf("has socket type %d", typ), nil
	}
	return st, "", nil
}

// cloexecInherited marks every descriptor from 3 up close-on-exec, so
// whatever the master inherited from its own parent (a leaked pipe, a
// terminal's descriptor) never reaches workers. Workers get the listeners
// through ExtraFiles, which clears the flag on their copies only. The
// runtime's own descriptors are close-on-exec already.
func cloexecInherited() error {
	err := unix.CloseRange(listenFDsStart, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return os.NewSyscallError("close_range", err)
	}
	// Before Linux 5.11: walk /proc/self/fd. The directory's own descriptor
	// is close-on-exec and is in the list; setting the flag again is
	// harmless.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < listenFDsStart {
			continue
		}
		// EBADF: the directory's descriptor, closed by now.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return os.NewSyscallError("fcntl", err)
		}
	}
	return nil
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
