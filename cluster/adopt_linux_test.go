//go:build linux

package cluster

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// TestCheckActivated: activation descriptors are validated without being
// touched; one this process opened itself (close-on-exec), a closed number,
// a file or a socket that is not listening is refused and left open.
func TestCheckActivated(t *testing.T) {
	fdcensus.Verify(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	own, err := scmrights.Dup(ln.(*net.TCPListener)) // close-on-exec
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(own)
	inherited, err := unix.Dup(own) // dup(2) clears close-on-exec, as an inherited fd
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(inherited)
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cfd, err := scmrights.Dup(conn.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cfd)
	connFD, err := unix.Dup(cfd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(connFD)
	file, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	fileFD, err := unix.Dup(int(file.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fileFD)
	closed, err := unix.Dup(fileFD)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(closed)

	for _, tc := range []struct {
		name string
		fd   int
		ok   bool
	}{
		{"inherited listener", inherited, true},
		{"own close-on-exec listener", own, false},
		{"connected socket", connFD, false},
		{"regular file", fileFD, false},
		{"closed number", closed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkActivated([]Activated{{FD: tc.fd, Name: "x"}})
			if tc.ok {
				if err != nil {
					t.Fatalf("checkActivated: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrActivation) {
				t.Fatalf("checkActivated: %v, want ErrActivation", err)
			}
			if tc.fd == closed {
				return
			}
			if _, err := unix.FcntlInt(uintptr(tc.fd), unix.F_GETFD, 0); err != nil {
				t.Errorf("refused descriptor %d was touched: %v", tc.fd, err)
			}
		})
	}
}
