//go:build linux

package ipcframe_test

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// TestMain adds a process-wide descriptor census after all tests, and
// runs the helper roles of the cross-process tests.
func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{"sender": senderRole, "soak-recv": soakRecvRole})
}

// scmrights.Conn is the FD transport ipcframe is built for.
var (
	_ ipcframe.FDReader = (*scmrights.Conn)(nil)
	_ ipcframe.FDWriter = (*scmrights.Conn)(nil)
)

// socketpair returns a connected pair of unix sockets of type sotype,
// closed when the test ends.
func socketpair(t testing.TB, sotype int) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, sotype|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c.(*net.UnixConn)
		t.Cleanup(func() { cs[i].Close() })
	}
	return cs[0], cs[1]
}

// connPair returns a connected pair of *scmrights.Conn.
func connPair(t testing.TB, sotype int) (*scmrights.Conn, *scmrights.Conn) {
	t.Helper()
	a, b := socketpair(t, sotype)
	ca, err := scmrights.NewConn(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := scmrights.NewConn(b)
	if err != nil {
		t.Fatal(err)
	}
	return ca, cb
}

// fdID identifies the object behind a descriptor.
type fdID struct{ Dev, Ino uint64 }

// memfds opens n descriptors on distinct objects (memfds), closed when the
// test ends, and returns them with their identities.
func memfds(t testing.TB, n int) ([]int, []fdID) {
	t.Helper()
	fds := make([]int, n)
	for i := range fds {
		fd, err := unix.MemfdCreate("ipcframe-test", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		fds[i] = fd
		t.Cleanup(func() { unix.Close(fd) })
	}
	return fds, ids(t, fds)
}

func ids(t testing.TB, fds []int) []fdID {
	t.Helper()
	if len(fds) == 0 {
		return nil
	}
	out := make([]fdID, len(fds))
	for i, fd := range fds {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatalf("fstat %d: %v", fd, err)
		}
		out[i] = fdID{uint64(st.Dev), uint64(st.Ino)} // uint32 on mips
	}
	return out
}

// takeIDs identifies received descriptors and closes them.
func takeIDs(t testing.TB, fds []int) []fdID {
	t.Helper()
	out := ids(t, fds)
	for _, fd := range fds {
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("received descriptor %d: flags %#x, %v; want close-on-exec", fd, flags, err)
		}
		unix.Close(fd)
	}
	return out
}

// hdr builds a frame header by hand, for frames a Writer refuses to make.
func hdr(nfds, n int) []byte { return hdr32(nfds, uint32(n)) }

// hdr32 is hdr for lengths beyond int on 32-bit platforms (2^32-1).
func hdr32(nfds int, n uint32) []byte {
	return []byte{ipcframe.Magic, ipcframe.Version, byte(nfds), 0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}

// countingConn is the receiving end as a Reader sees it, counting the bytes
// its receive calls returned, so that a test can send the next part of a
// frame only once the reader's call that took the previous part is over.
// An empty receive queue proves less: a recvmsg still running when the
// queue empties goes on to take what arrives next (unix_stream_read_generic
// looks at the queue again after each message it used up), descriptors
// and all.
type countingConn struct {
	c    *scmrights.Conn
	seen atomic.Int64
}

func (cc *countingConn) Read(p []byte) (int, error) {
	n, err := cc.c.Read(p)
	cc.seen.Add(int64(n))
	return n, err
}

func (cc *countingConn) Recv(buf []byte, fds []int) (int, int, error) {
	n, nfds, err := cc.c.Recv(buf, fds)
	cc.seen.Add(int64(n))
	return n, nfds, err
}

// waitReceived waits until the reader's receive calls returned n bytes in
// all.
func (cc *countingConn) waitReceived(t testing.TB, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for cc.seen.Load() < n {
		if time.Now().After(deadline) {
			t.Errorf("the reader took %d of the %d bytes sent in 5 s", cc.seen.Load(), n)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// goroutinesSettle waits until the goroutine count is back to at most want.
func goroutinesSettle(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			t.Errorf("goroutines: %d, want at most %d", runtime.NumGoroutine(), want)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run starts fn in a goroutine and returns a function waiting for its
// error, bounded by the test's patience.
func run(fn func() error) func(testing.TB) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	return func(t testing.TB) error {
		t.Helper()
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			t.Fatal("goroutine did not finish")
			return errors.New("unreachable")
		}
	}
}
