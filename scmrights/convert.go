//go:build unix && !aix

package scmrights

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Dup returns a new close-on-exec descriptor for the socket or file behind c
// (a net.Listener, net.Conn, net.PacketConn or *os.File). It never switches
// the original to blocking mode, as (*os.File).Fd would. The caller owns the
// new descriptor and closes it once sent.
func Dup(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	return nfd, nil
}

// Listener returns a net.Listener for a received listening socket: a
// SOCK_STREAM socket (TCP or unix) or a unix SOCK_SEQPACKET socket on which
// listen(2) was called. Anything else (a FIFO, a directory, a memfd, a
// datagram socket, a connected socket, a listening socket of another family
// such as vsock) fails with a *SocketError matching ErrWrongSocket, without
// ever blocking in accept. Listener takes ownership of fd: it is closed on
// failure, and replaced by the listener's own copy on success.
func Listener(fd int) (net.Listener, error) {
	if err := checkSocket(fd, "listening stream socket", func(s sockInfo) bool {
		// Another family is refused before net.FileListener sees it: that
		// would set O_NONBLOCK on the sender's shared description and
		// only then fail.
		return s.listening && (s.sotype == unix.SOCK_STREAM && (s.family == unix.AF_INET || s.family == unix.AF_INET6 || s.family == unix.AF_UNIX) ||
			s.sotype == unix.SOCK_SEQPACKET && s.family == unix.AF_UNIX)
	}); err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	return net.FileListener(f)
}

// NetConn returns a net.Conn for a received connected stream socket (TCP or
// unix) or unix SOCK_SEQPACKET socket. A listening socket, a datagram
// socket or anything that is not a socket fails with a *SocketError. NetConn
// takes ownership of fd.
//
// A TCP socket that is neither listening nor connected fails with an error
// wrapping syscall.ENOTCONN instead, not ErrWrongSocket: it is the right
// kind of socket, and the usual reason is an everyday one, a client that
// reset the connection while it waited in the accept queue. Treat it as a
// failed accept. (The kernel cannot tell it from a TCP socket that was never
// connected, which therefore fails the same way.)
func NetConn(fd int) (net.Conn, error) {
	const want = "connected stream socket"
	sotype, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || (sotype != unix.SOCK_STREAM && sotype != unix.SOCK_SEQPACKET) {
		return nil, reject(fd, want)
	}
	switch family, perr := peerFamily(fd); {
	case perr != nil:
		err := unconnected(fd, want, perr)
		unix.Close(fd)
		return nil, err
	case family != unix.AF_INET && family != unix.AF_INET6 && family != unix.AF_UNIX,
		// net.FileConn panics on an inet SOCK_SEQPACKET (SCTP) socket.
		sotype == unix.SOCK_SEQPACKET && family != unix.AF_UNIX:
		// And for another family it would set O_NONBLOCK on the
		// sender's description too before failing (vsock, TIPC, ...).
		return nil, reject(fd, want)
	}
	// A connected TCP or unix stream socket, or unix seqpacket one. Two
	// system calls instead of inspect's five (fstat, SO_TYPE,
	// SO_ACCEPTCONN, getsockname, getpeername), as net.FileConn reads the
	// type and both addresses again anyway; this is the hot path of every
	// hand-off.
	f := os.NewFile(uintptr(fd), "conn")
	c, err := net.FileConn(f)
	if err == nil && c.RemoteAddr() != nil {
		f.Close()
		return c, nil
	}
	if err != nil {
		// Out of descriptors or memory: not the socket's fault.
		f.Close()
		return nil, err
	}
	c.Close() // disconnected meanwhile
	_, perr := peerFamily(fd)
	err = unconnected(fd, want, perr)
	f.Close()
	return nil, err
}

// unconnected says why fd, a socket on which getpeername(2) failed with
// perr, is refused as not a want: an error wrapping ENOTCONN for a TCP
// socket neither listening nor connected (see NetConn), a *SocketError for
// anything else. fd stays open.
func unconnected(fd int, want string, perr error) error {
	s, kind, err := inspect(fd)
	if err == nil && kind == "" && perr == unix.ENOTCONN && s.sotype == unix.SOCK_STREAM && !s.listening &&
		(s.family == unix.AF_INET || s.family == unix.AF_INET6) {
		return fmt.Errorf("scmrights: descriptor %d is a TCP socket with no peer (reset by the client, or never connected): %w",
			fd, os.NewSyscallError("getpeername", perr))
	}
	return describe(fd, s, kind, err, want)
}

// PacketConn returns a net.PacketConn for a received datagram socket (UDP or
// unixgram). Anything else fails with a *SocketError. PacketConn takes
// ownership of fd.
func PacketConn(fd int) (net.PacketConn, error) {
	if err := checkSocket(fd, "datagram socket", func(s sockInfo) bool {
		return s.sotype == unix.SOCK_DGRAM && (s.family == unix.AF_INET || s.family == unix.AF_INET6 || s.family == unix.AF_UNIX)
	}); err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "packetconn")
	defer f.Close()
	return net.FilePacketConn(f)
}

// UnixConn returns a *net.UnixConn for a received connected unix socket of
// any type. It takes ownership of fd.
func UnixConn(fd int) (*net.UnixConn, error) {
	if err := checkSocket(fd, "connected unix socket", func(s sockInfo) bool {
		return s.family == unix.AF_UNIX && !s.listening && (s.connected || s.sotype == unix.SOCK_DGRAM)
	}); err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "unixconn")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// Socketpair returns a connected pair of unix sockets of type sotype
// (unix.SOCK_STREAM or unix.SOCK_SEQPACKET; SOCK_DGRAM works too): a
// *net.UnixConn for this process and an *os.File to hand to a child through
// exec.Cmd.ExtraFiles. Both are close-on-exec here; ExtraFiles clears the
// flag on the child's copy only. Close the *os.File once the child started.
// It is in blocking mode, as a child expects, and so not on the runtime
// poller: deadlines on it fail with os.ErrNoDeadline.
func Socketpair(sotype int) (*net.UnixConn, *os.File, error) {
	fds, err := socketpair(sotype)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	// The child expects a blocking descriptor unless it says otherwise. It
	// is made blocking before os.NewFile, which then leaves it off the
	// poller: a File registered while non-blocking would accept deadlines
	// it cannot keep, and its Close would wait for a blocked Read forever.
	if err := unix.SetNonblock(fds[1], false); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, os.NewSyscallError("fcntl", err)
	}
	local := os.NewFile(uintptr(fds[0]), "socketpair")
	remote := os.NewFile(uintptr(fds[1]), "socketpair")
	c, err := net.FileConn(local)
	local.Close()
	if err != nil {
		remote.Close()
		return nil, nil, err
	}
	return c.(*net.UnixConn), remote, nil
}

type sockInfo struct {
	family, sotype int
	listening      bool
	connected      bool
}

func (s sockInfo) String() string {
	state := "unconnected"
	switch {
	case s.listening:
		state = "listening"
	case s.connected:
		state = "connected"
	}
	return fmt.Sprintf("%s %s %s socket", state, sotypeName(s.sotype), familyName(s.family))
}

// checkSocket validates fd as sd_is_socket does (fstat, SO_TYPE,
// SO_ACCEPTCONN, the address family), and closes it if ok rejects it.
func checkSocket(fd int, want string, ok func(sockInfo) bool) error {
	got, kind, err := inspect(fd)
	if err == nil && kind == "" && ok(got) {
		return nil
	}
	unix.Close(fd)
	return describe(fd, got, kind, err, want)
}

// reject closes fd, refused as not a want, and says what it was.
func reject(fd int, want string) error {
	err := rejection(fd, want)
	unix.Close(fd)
	return err
}

// rejection says what fd, refused as not a want, is: a *SocketError, or
// the error inspecting it. fd stays open.
func rejection(fd int, want string) error {
	got, kind, err := inspect(fd)
	return describe(fd, got, kind, err, want)
}

func describe(fd int, got sockInfo, kind string, err error, want string) error {
	if err != nil {
		return err
	}
	if kind == "" {
		kind = got.String()
	}
	return &SocketError{FD: fd, Got: kind, Want: want}
}

// inspect describes fd. For a descriptor that is not a socket, kind names
// what it is instead.
func inspect(fd int) (s sockInfo, kind string, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return s, "", os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return s, fileKind(uint32(st.Mode)), nil
	}
	if s.sotype, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return s, "", os.NewSyscallError("getsockopt", err)
	}
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return s, "", os.NewSyscallError("getsockopt", err)
	}
	s.listening = acc != 0
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return s, "", os.NewSyscallError("getsockname", err)
	}
	switch sa.(type) {
	case *unix.SockaddrInet4:
		s.family = unix.AF_INET
	case *unix.SockaddrInet6:
		s.family = unix.AF_INET6
	case *unix.SockaddrUnix:
		s.family = unix.AF_UNIX
	}
	if _, err := unix.Getpeername(fd); err == nil {
		s.connected = true
	}
	return s, "", nil
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFLNK:
		return "symlink"
	}
	return "non-socket file"
}

func sotypeName(t int) string {
	switch t {
	case unix.SOCK_STREAM:
		return "SOCK_STREAM"
	case unix.SOCK_DGRAM:
		return "SOCK_DGRAM"
	case unix.SOCK_SEQPACKET:
		return "SOCK_SEQPACKET"
	case unix.SOCK_RAW:
		return "SOCK_RAW"
	}
	return fmt.Sprintf("type-%d", t)
}

func familyName(f int) string {
	switch f {
	case unix.AF_INET:
		return "inet"
	case unix.AF_INET6:
		return "inet6"
	case unix.AF_UNIX:
		return "unix"
	}
	return "other-family"
}
