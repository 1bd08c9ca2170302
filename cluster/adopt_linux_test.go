//go:build linux

package cluster

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

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

// TestUpgradeStartBinary: the binary an upgrade executes is argv[0] as given at
// start, made absolute or looked up in PATH, symlinks kept (a deploy that
// swaps one is followed), as long as it names the running image; else the
// running image's resolved path.
func TestUpgradeStartBinary(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	link := filepath.Join(dir, "current")
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	t.Setenv("PATH", dir)
	for _, tc := range []struct {
		name              string
		argv              []string
		wantExe           string
		wantArgv0, reason string
	}{
		{"symlink kept", []string{link, "-x"}, link, link, ""},
		{"relative made absolute", []string{"./current", "-x"}, link, link, ""},
		{"looked up in PATH", []string{"current", "-x"}, link, "current", ""},
		{"not the running image", []string{"/bin/sh", "-x"}, self, "/bin/sh", ""},
		{"not found", []string{"no-such-binary", "-x"}, self, "no-such-binary", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exe, argv := startBinary(tc.argv)
			if diff := cmp.Diff([]string{tc.wantExe, tc.wantArgv0, "-x"}, []string{exe, argv[0], argv[1]}); diff != "" {
				t.Errorf("startBinary(%q): (-want +got):\n%s", tc.argv, diff)
			}
		})
	}
	if exe, _ := startBinary(nil); exe != self {
		t.Errorf("startBinary(nil) = %q, want %q", exe, self)
	}
}

// TestUpgradeParseStatChild: parent, process group and start time are read past
// a command name holding spaces and parentheses.
func TestUpgradeParseStatChild(t *testing.T) {
	line := "4242 (a) b (c) S 17 4242 17 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10 18446744073709551615\n"
	ppid, pgid, start, ok := parseStatChild([]byte(line))
	if diff := cmp.Diff([]any{17, 4242, uint64(123456), true}, []any{ppid, pgid, start, ok}); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, _, _, ok := parseStatChild([]byte("4242 (a) S 17")); ok {
		t.Errorf("a short line parsed")
	}
	if _, _, _, ok := parseStatChild([]byte("4242 (a) S -17 4242 17 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 123456 1000\n")); ok {
		t.Errorf("a negative parent parsed")
	}
}

// TestUpgradeKillChildrenSparesNewer: the leftovers an exec by an older image
// left are the children started before this image; one this image started
// (after its package initialisation) is never taken for one.
func TestUpgradeKillChildrenSparesNewer(t *testing.T) {
	// Past the clock tick this image started in.
	time.Sleep(30 * time.Millisecond)
	c := exec.Command("sleep", "30")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.Process.Kill()
		c.Wait()
	}()
	killed, stuck := killChildren(nil)
	if len(killed) != 0 || len(stuck) != 0 {
		t.Errorf("killChildren killed %v (not reaped %v), want none", killed, stuck)
	}
	if err := c.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the child is gone: %v", err)
	}
}
