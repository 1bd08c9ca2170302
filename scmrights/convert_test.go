//go:build linux

package scmrights_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// A15: what is not a listening socket is refused as a listener, closed, and
// never blocks in accept.
func TestListenerRejectsWrongDescriptors(t *testing.T) {
	fdcensus.Verify(t)
	dir := t.TempDir()
	_, client, udp := inetSockets(t)

	cases := map[string]func() int{
		"FIFO": func() int { return fifoFD(t, dir) },
		"directory": func() int {
			fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		},
		"memfd":                func() int { return memfdFD(t) },
		"UDP socket":           func() int { return dup(t, udp.(*net.UDPConn)) },
		"connected TCP socket": func() int { return dup(t, client.(*net.TCPConn)) },
		"unix socket holding in-flight descriptors": func() int {
			a, b := unixPair(t, unix.SOCK_STREAM)
			if err := scmrights.Send(a, []byte("x"), distinctFDs(t, 3)...); err != nil {
				t.Fatal(err)
			}
			return dup(t, b)
		},
		"unbound TCP socket": func() int {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		},
	}
	for name, open := range cases {
		fd := open()
		done := make(chan error, 1)
		go func() {
			l, err := scmrights.Listener(fd)
			if l != nil {
				l.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			var se *scmrights.SocketError
			if !errors.Is(err, scmrights.ErrWrongSocket) || !errors.As(err, &se) {
				t.Errorf("%s: Listener = %v, want ErrWrongSocket", name, err)
			} else {
				t.Logf("%s: %v", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: Listener blocked", name)
		}
	}
}

// inetSockets opens a TCP listener, a client connected to it and a UDP
// socket on loopback, closed when the test ends.
func inetSockets(t *testing.T) (tcp net.Listener, client net.Conn, udp net.PacketConn) {
	t.Helper()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcp.Close() })
	client, err = net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	udp, err = net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	return tcp, client, udp
}

// fifoFD opens a new FIFO in dir.
func fifoFD(t *testing.T, dir string) int {
	t.Helper()
	p := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func memfdFD(t *testing.T) int {
	t.Helper()
	fd, err := unix.MemfdCreate("x", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func dup(t *testing.T, c syscall.Conn) int {
	t.Helper()
	fd, err := scmrights.Dup(c)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func TestConversions(t *testing.T) {
	fdcensus.Verify(t)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	fd, err := scmrights.Dup(tcp.(*net.TCPListener))
	if err != nil {
		t.Fatal(err)
	}
	if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
		t.Error("Dup switched the listener to blocking mode")
	}
	l, err := scmrights.Listener(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	acc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()

	// The accepted connection converts to a net.Conn, not a listener.
	cfd, err := scmrights.Dup(acc.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := scmrights.NetConn(cfd)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read through converted conn: %q, %v", buf, err)
	}
	lfd, _ := scmrights.Dup(tcp.(*net.TCPListener))
	if _, err := scmrights.NetConn(lfd); !errors.Is(err, scmrights.ErrWrongSocket) {
		t.Errorf("NetConn(listener) = %v, want ErrWrongSocket", err)
	}
	lfd, _ = scmrights.Dup(tcp.(*net.TCPListener))
	if _, err := scmrights.PacketConn(lfd); !errors.Is(err, scmrights.ErrWrongSocket) {
		t.Errorf("PacketConn(listener) = %v, want ErrWrongSocket", err)
	}
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	ufd, _ := scmrights.Dup(udp.(*net.UDPConn))
	pc, err := scmrights.PacketConn(ufd)
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
	f := scmrights.File(mustOpen(t, os.DevNull), "devnull")
	if _, err := f.Write([]byte("x")); err != nil {
		t.Error(err)
	}
	f.Close()
}

func mustOpen(t *testing.T, path string) int {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// NetConn checks a stream socket on net.FileConn's own result; every kind
// of descriptor must still get the answer the full inspection gave, and a
// refused one must be closed without touching the socket's options.
func TestNetConnDescriptors(t *testing.T) {
	fdcensus.Verify(t)
	dir := t.TempDir()
	tcp, client, udp := inetSockets(t)
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	socket := func(domain, typ int) func() int {
		return func() int {
			fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}
	}
	pairEnd := func(typ int) func() int {
		return func() int {
			fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fds[1]) })
			return fds[0]
		}
	}
	for _, tc := range []struct {
		name string
		open func() int
		// want is the network of the accepted net.Conn, or "" for a
		// refusal, whose SocketError.Got must contain got.
		want, got string
	}{
		{"connected TCP", func() int { return dup(t, client.(*net.TCPConn)) }, "tcp", ""},
		{"unix stream pair", pairEnd(unix.SOCK_STREAM), "unix", ""},
		{"unix seqpacket pair", pairEnd(unix.SOCK_SEQPACKET), "unixpacket", ""},
		{"listening TCP", func() int { return dup(t, tcp.(*net.TCPListener)) }, "", "listening SOCK_STREAM inet socket"},
		{"listening unix", func() int { return dup(t, ul) }, "", "listening SOCK_STREAM unix socket"},
		{"unconnected unix stream", socket(unix.AF_UNIX, unix.SOCK_STREAM), "", "unconnected SOCK_STREAM unix socket"},
		{"unconnected unix seqpacket", socket(unix.AF_UNIX, unix.SOCK_SEQPACKET), "", "unconnected SOCK_SEQPACKET unix socket"},
		{"UDP", func() int { return dup(t, udp.(*net.UDPConn)) }, "", "SOCK_DGRAM inet socket"},
		{"unix datagram pair", pairEnd(unix.SOCK_DGRAM), "", "SOCK_DGRAM unix socket"},
		{"FIFO", func() int { return fifoFD(t, dir) }, "", "FIFO"},
		{"memfd", func() int { return memfdFD(t) }, "", "regular file"},
		// The peer's end is gone, the socket still has its peer's address.
		{"unix stream, peer closed", func() int {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(fds[1])
			return fds[0]
		}, "unix", ""},
		{"netlink", socket(unix.AF_NETLINK, unix.SOCK_RAW), "", "SOCK_RAW other-family socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd := tc.open()
			c, err := scmrights.NetConn(fd)
			if tc.want != "" {
				if err != nil {
					t.Fatalf("NetConn = %v, want a %s conn", err, tc.want)
				}
				defer c.Close()
				if got := c.LocalAddr().Network(); got != tc.want || c.RemoteAddr() == nil {
					t.Errorf("NetConn gave a %s conn with peer %v, want a connected %s one", got, c.RemoteAddr(), tc.want)
				}
				return
			}
			var se *scmrights.SocketError
			if !errors.As(err, &se) || !errors.Is(err, scmrights.ErrWrongSocket) {
				t.Fatalf("NetConn = %v, %v; want a *SocketError", c, err)
			}
			if !strings.Contains(se.Got, tc.got) || se.FD != fd {
				t.Errorf("SocketError{FD: %d, Got: %q}, want FD %d, Got containing %q", se.FD, se.Got, fd, tc.got)
			}
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
				t.Errorf("refused descriptor %d still open (F_GETFD: %v)", fd, err)
			}
		})
	}
	// A refused listener was not touched: net.FileConn would have set
	// TCP_NODELAY on it, which accepted connections inherit.
	rc, err := tcp.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var nodelay int
	rc.Control(func(fd uintptr) { nodelay, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY) })
	if nodelay != 0 {
		t.Error("NetConn set TCP_NODELAY on the listening socket it refused")
	}
}

// resetTCP returns a connected TCP socket whose peer then reset the
// connection (SO_LINGER 0): getpeername fails on it from then on.
func resetTCP(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s.(*net.TCPConn).SetLinger(0)
	s.Close()
	fd := dup(t, c.(*net.TCPConn))
	return awaitReset(t, fd)
}

// Socketpair's end for the child is an honestly blocking *os.File: it was
// made blocking before os.NewFile, so it is not on the poller. A File put
// on the poller and then made blocking underneath would accept a deadline
// it cannot keep, and its Close would wait forever for a blocked Read.
func TestSocketpairRemoteIsBlocking(t *testing.T) {
	fdcensus.Verify(t)
	for _, st := range sotypes {
		t.Run(st.name, func(t *testing.T) {
			local, remote, err := scmrights.Socketpair(st.typ)
			if err != nil {
				t.Fatal(err)
			}
			defer local.Close()
			defer remote.Close()
			rc, err := remote.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var fl int
			var ferr error
			rc.Control(func(fd uintptr) { fl, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) })
			if ferr != nil || fl&unix.O_NONBLOCK != 0 {
				t.Errorf("child end: F_GETFL = %#x, %v; want O_NONBLOCK clear", fl, ferr)
			}
			if err := remote.SetReadDeadline(time.Now().Add(time.Second)); !errors.Is(err, os.ErrNoDeadline) {
				t.Errorf("SetReadDeadline on the child end = %v, want os.ErrNoDeadline", err)
			}
			read := make(chan error, 1)
			go func() { _, err := remote.Read(make([]byte, 8)); read <- err }()
			time.Sleep(20 * time.Millisecond) // let Read block, if it is going to
			closed := make(chan error, 1)
			go func() { closed <- remote.Close() }()
			select {
			case err := <-closed:
				if err != nil {
					t.Errorf("Close with a Read pending = %v", err)
				}
			case <-time.After(5 * time.Second):
				// Let the Read, and so the Close, finish.
				local.Write([]byte("x"))
				<-closed
				t.Errorf("Close waited for a Read blocked in the kernel")
			}
			// The Read ends when the peer closes; the descriptor is closed
			// once it returns.
			local.Close()
			select {
			case <-read:
			case <-time.After(5 * time.Second):
				t.Fatal("Read on the child end did not end when the peer closed")
			}
		})
	}
}

// A15: a TCP socket with no peer is refused with ENOTCONN, not
// ErrWrongSocket: usually the client reset the connection while it waited
// in the accept queue, an everyday event. The kernel cannot tell a socket
// that never connected from it, so that fails the same way.
func TestNetConnUnconnectedTCP(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []struct {
		name string
		open func(t *testing.T) int
	}{
		{"accepted, reset by the client in the accept queue", acceptedReset},
		{"connected, reset by its peer", resetTCP},
		{"never connected", func(t *testing.T) int {
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd := tc.open(t)
			c, err := scmrights.NetConn(fd)
			if c != nil {
				c.Close()
			}
			if !errors.Is(err, syscall.ENOTCONN) || errors.Is(err, scmrights.ErrWrongSocket) {
				t.Errorf("NetConn = %v; want an error matching ENOTCONN and not ErrWrongSocket", err)
			}
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
				t.Errorf("refused descriptor %d still open (F_GETFD: %v)", fd, err)
			}
		})
	}
}

// awaitReset returns fd once getpeername fails on it with ENOTCONN (the
// reset traveled over loopback), closing it and failing after 5 s.
func awaitReset(t *testing.T, fd int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := unix.Getpeername(fd); err == unix.ENOTCONN {
			return fd
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			t.Fatal("the reset did not arrive within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// acceptedReset returns a connection accepted after its client reset it
// (SO_LINGER 0) while it waited in the accept queue: accept succeeds, and
// getpeername fails with ENOTCONN.
func acceptedReset(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	// The RST travels over loopback; accept takes the connection either
	// way, so wait until the accepted socket shows the reset.
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fd := dup(t, s.(*net.TCPConn))
	return awaitReset(t, fd)
}

// A15: a listening stream socket of a family package net cannot wrap
// (vsock) is refused before net.FileListener sets O_NONBLOCK on the
// sender's shared description.
func TestListenerRefusesOtherFamily(t *testing.T) {
	fdcensus.Verify(t)
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == unix.EAFNOSUPPORT {
		t.Skip("no vsock in this kernel")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: unix.VMADDR_PORT_ANY}); err != nil {
		t.Skipf("vsock bind: %v", err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		t.Skipf("vsock listen: %v", err)
	}
	sent, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := scmrights.Listener(sent)
	if l != nil {
		l.Close()
	}
	var se *scmrights.SocketError
	if !errors.As(err, &se) || !strings.Contains(se.Got, "listening SOCK_STREAM other-family") {
		t.Errorf("Listener(vsock listener) = %v, want a *SocketError for a listening other-family socket", err)
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Errorf("sender's description: F_GETFL = %#x, %v; want O_NONBLOCK still clear", fl, err)
	}
	if _, err := unix.FcntlInt(uintptr(sent), unix.F_GETFD, 0); err != unix.EBADF {
		t.Errorf("refused descriptor %d still open (F_GETFD: %v)", sent, err)
	}
}
