//go:build !unix || aix

package scmrights

import (
	"net"
	"os"
	"syscall"
	"time"
)

// Conn is a unix socket connection for passing descriptors. This platform
// cannot pass descriptors; NewConn fails with ErrNotSupported.
type Conn struct{}

func notSupported(op string) error {
	return &net.OpError{Op: op, Net: "unix", Err: ErrNotSupported}
}

// NewConn fails with ErrNotSupported on this platform.
func NewConn(*net.UnixConn) (*Conn, error) { return nil, notSupported("dial") }

// UnixConn returns nil on this platform.
func (c *Conn) UnixConn() *net.UnixConn { return nil }

// SyscallConn fails with ErrNotSupported on this platform.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return nil, notSupported("raw-control") }

// Close fails with ErrNotSupported on this platform.
func (c *Conn) Close() error { return notSupported("close") }

// LocalAddr returns nil on this platform.
func (c *Conn) LocalAddr() net.Addr { return nil }

// RemoteAddr returns nil on this platform.
func (c *Conn) RemoteAddr() net.Addr { return nil }

// SetDeadline fails with ErrNotSupported on this platform.
func (c *Conn) SetDeadline(time.Time) error { return notSupported("set") }

// SetReadDeadline fails with ErrNotSupported on this platform.
func (c *Conn) SetReadDeadline(time.Time) error { return notSupported("set") }

// SetWriteDeadline fails with ErrNotSupported on this platform.
func (c *Conn) SetWriteDeadline(time.Time) error { return notSupported("set") }

// PeerCred fails with ErrNotSupported on this platform.
func (c *Conn) PeerCred() (Ucred, error) { return Ucred{}, notSupported("getsockopt") }

// Send fails with ErrNotSupported on this platform.
func (c *Conn) Send([]byte, ...int) error { return notSupported("write") }

// Recv fails with ErrNotSupported on this platform.
func (c *Conn) Recv([]byte, []int) (int, int, error) { return 0, 0, notSupported("read") }

// RecvMsg fails with ErrNotSupported on this platform.
func (c *Conn) RecvMsg(*Message) error { return notSupported("read") }

// SetPassCred fails with ErrNotSupported on this platform.
func (c *Conn) SetPassCred(bool) error { return notSupported("setsockopt") }

// Read fails with ErrNotSupported on this platform.
func (c *Conn) Read([]byte) (int, error) { return 0, notSupported("read") }

// Write fails with ErrNotSupported on this platform.
func (c *Conn) Write([]byte) (int, error) { return 0, notSupported("write") }

// SendBatch fails with ErrNotSupported on this platform.
func (c *Conn) SendBatch([]Message) (int, error) { return 0, notSupported("write") }

// RecvBatch fails with ErrNotSupported on this platform.
func (c *Conn) RecvBatch([]Message) (int, error) { return 0, notSupported("read") }

// Send fails with ErrNotSupported on this platform.
func Send(*net.UnixConn, []byte, ...int) error { return notSupported("write") }

// Recv fails with ErrNotSupported on this platform.
func Recv(*net.UnixConn, []byte, []int) (int, int, error) { return 0, 0, notSupported("read") }

// PeerCred fails with ErrNotSupported on this platform.
func PeerCred(*net.UnixConn) (Ucred, error) { return Ucred{}, notSupported("getsockopt") }

// Dup fails with ErrNotSupported on this platform.
func Dup(syscall.Conn) (int, error) { return -1, notSupported("dup") }

// Listener fails with ErrNotSupported on this platform.
func Listener(int) (net.Listener, error) { return nil, notSupported("listen") }

// NetConn fails with ErrNotSupported on this platform.
func NetConn(int) (net.Conn, error) { return nil, notSupported("dial") }

// PacketConn fails with ErrNotSupported on this platform.
func PacketConn(int) (net.PacketConn, error) { return nil, notSupported("listen") }

// UnixConn fails with ErrNotSupported on this platform.
func UnixConn(int) (*net.UnixConn, error) { return nil, notSupported("dial") }

// Socketpair fails with ErrNotSupported on this platform.
func Socketpair(int) (*net.UnixConn, *os.File, error) {
	return nil, nil, notSupported("socketpair")
}
