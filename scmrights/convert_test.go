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
		{"unbound TCP", socket(unix.AF_INET, unix.SOCK_STREAM), "", "unconnected SOCK_STREAM inet socket"},
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
		{"TCP reset by its peer", func() int { return resetTCP(t) }, "", "unconnected SOCK_STREAM inet socket"},
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
