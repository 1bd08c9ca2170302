package reuseport_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testCtx bounds address resolution in tests.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// serveIndex accepts on l until l is closed, answers each connection with
// the byte idx, closes it and counts it. The cleanup closes l and waits for
// the loop, so the fd census sees every accepted socket closed.
func serveIndex(t testing.TB, l net.Listener, idx byte, count *atomic.Int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			count.Add(1)
			_, _ = c.Write([]byte{idx})
			c.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
}

// closeAbort closes with SO_LINGER 0, sending RST instead of FIN, so neither
// side keeps the 4-tuple in TIME_WAIT: thousands of connections per test
// must not use up the ~28k loopback ephemeral ports for 60 s.
func closeAbort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

// dialIndex connects to addr and returns the byte the server answered with.
func dialIndex(network, addr string) (byte, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.Dial(network, addr)
	if err != nil {
		return 0, err
	}
	defer closeAbort(c)
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return b[0], nil
}

// runBounded runs fn(0..n-1) on at most workers goroutines and stops
// starting new calls at the deadline. It returns how many calls ran and the
// first error.
func runBounded(n, workers int, deadline time.Time, fn func(i int) error) (int, error) {
	var (
		next    atomic.Int64
		ran     atomic.Int64
		errOnce sync.Once
		first   error
		wg      sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || time.Now().After(deadline) {
					return
				}
				ran.Add(1)
				if err := fn(i); err != nil {
					errOnce.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return int(ran.Load()), first
}

// withFD runs fn on the descriptor behind a net socket without Fd(), which
// would switch it to blocking mode.
func withFD(t testing.TB, v any, fn func(fd int)) {
	t.Helper()
	sc, ok := v.(syscall.Conn)
	if !ok {
		t.Fatalf("%T is not a syscall.Conn", v)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) { fn(int(fd)) }); err != nil {
		t.Fatal(err)
	}
}

func getsockoptInt(t testing.TB, v any, level, opt int) int {
	t.Helper()
	var (
		n   int
		err error
	)
	withFD(t, v, func(fd int) { n, err = unix.GetsockoptInt(fd, level, opt) })
	if err != nil {
		t.Fatalf("getsockopt(%d, %d): %v", level, opt, err)
	}
	return n
}

// acceptQueue returns the listener's accept-queue length and limit: for a
// socket in LISTEN, TCP_INFO reports sk_ack_backlog in tcpi_unacked and
// sk_max_ack_backlog in tcpi_sacked. It takes no testing.TB because the
// netns helper process uses it too.
func acceptQueue(v any) (queued, limit int, err error) {
	sc, ok := v.(syscall.Conn)
	if !ok {
		return 0, 0, fmt.Errorf("%T is not a syscall.Conn", v)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var info *unix.TCPInfo
	cerr := rc.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if cerr != nil {
		return 0, 0, cerr
	}
	if err != nil {
		return 0, 0, fmt.Errorf("TCP_INFO: %w", err)
	}
	return int(info.Unacked), int(info.Sacked), nil
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// haveIPv6Loopback reports whether ::1 can be bound here.
func haveIPv6Loopback() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}
