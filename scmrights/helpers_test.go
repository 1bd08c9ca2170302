//go:build linux

package scmrights_test

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{
		"rlimit-recv":   roleRlimitRecv,
		"nobody-sender": roleNobodySender,
		"echo":          roleEcho,
		"soak-recv":     roleSoakRecv,
	})
}

var sotypes = []struct {
	name string
	typ  int
}{
	{"stream", unix.SOCK_STREAM},
	{"seqpacket", unix.SOCK_SEQPACKET},
}

// unixPair returns both ends of a connected socketpair as *net.UnixConn,
// closed when the test ends.
func unixPair(t testing.TB, sotype int) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, sotype|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		c, err := scmrights.UnixConn(fd)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return conv(fds[0]), conv(fds[1])
}

// connPair wraps unixPair in *scmrights.Conn.
func connPair(t testing.TB, sotype int) (*scmrights.Conn, *scmrights.Conn) {
	t.Helper()
	a, b := unixPair(t, sotype)
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

type ident struct{ Dev, Ino uint64 }

func identOf(t testing.TB, fd int) ident {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("fstat %d: %v", fd, err)
	}
	return ident{uint64(st.Dev), st.Ino}
}

// distinctFDs opens n descriptors that each refer to a different object
// (memfds), closed when the test ends.
func distinctFDs(t testing.TB, n int) []int {
	t.Helper()
	fds := make([]int, n)
	for i := range fds {
		fd, err := unix.MemfdCreate("scmrights-test", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		fds[i] = fd
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	return fds
}

func idents(t testing.TB, fds []int) []ident {
	t.Helper()
	out := make([]ident, len(fds))
	for i, fd := range fds {
		out[i] = identOf(t, fd)
	}
	return out
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func isCloexec(t testing.TB, fd int) bool {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fl&unix.FD_CLOEXEC != 0
}

// childConn returns the socket a helper role inherited as descriptor 3.
func childConn() (*scmrights.Conn, error) {
	uc, err := scmrights.UnixConn(3)
	if err != nil {
		return nil, err
	}
	return scmrights.NewConn(uc)
}

func fatalf(format string, args ...any) int {
	fmt.Fprint(os.Stderr, "helper: ")
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	return 1
}
