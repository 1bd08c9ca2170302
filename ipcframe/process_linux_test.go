//go:build linux

package ipcframe_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

const crossFrames = 20

// senderRole runs in a child process with a unix stream socket as fd 3.
// Mode "frames": crossFrames frames, frame i carrying a memfd whose content
// is its payload. Mode "toomanyrefs" (run as nobody, RLIMIT_NOFILE 64):
// frames with a descriptor until the kernel refuses one with ETOOMANYREFS,
// then a plain frame reporting how many went through.
func senderRole() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "sender:", err)
		return 1
	}
	f := os.NewFile(3, "socket")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fail(err)
	}
	sc, err := scmrights.NewConn(c.(*net.UnixConn))
	if err != nil {
		return fail(err)
	}
	defer sc.Close()
	w := ipcframe.NewWriter(sc, nil)
	switch helperproc.Args()[0] {
	case "frames":
		for i := range crossFrames {
			p := []byte(strconv.Itoa(i))
			fd, err := unix.MemfdCreate("frame", unix.MFD_CLOEXEC)
			if err != nil {
				return fail(err)
			}
			if _, err := unix.Write(fd, p); err != nil {
				return fail(err)
			}
			err = w.WriteFrameFDs(p, fd)
			unix.Close(fd) // the receiver has its own copy now
			if err != nil {
				return fail(err)
			}
		}
	case "toomanyrefs":
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 64, Max: 64}); err != nil {
			return fail(err)
		}
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(err)
		}
		sent := 0
		for ; sent < 1000; sent++ {
			if err = w.WriteFrameFDs([]byte("x"), fd); err != nil {
				break
			}
		}
		if !errors.Is(err, syscall.ETOOMANYREFS) {
			return fail(fmt.Errorf("after %d frames: %v, want ETOOMANYREFS", sent, err))
		}
		// The refused frame left nothing behind: the Writer goes on.
		if err := w.WriteFrame([]byte("sent " + strconv.Itoa(sent))); err != nil {
			return fail(err)
		}
	default:
		return fail(errors.New("unknown mode"))
	}
	return 0
}

// startSender starts senderRole in mode and returns the parent's end of
// its socket.
func startSender(t *testing.T, mode string, asNobody bool) (*scmrights.Conn, func() error) {
	t.Helper()
	pc := proccensus.New(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	child := os.NewFile(uintptr(fds[1]), "child")
	defer child.Close()
	lf := os.NewFile(uintptr(fds[0]), "parent")
	c, err := net.FileConn(lf)
	lf.Close()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := scmrights.NewConn(c.(*net.UnixConn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	cmd := helperproc.Command(t, "sender", &helperproc.Options{
		Env:        []string{pc.Env()},
		ExtraFiles: []*os.File{child},
		Args:       []string{mode},
		AsNobody:   asNobody,
	})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return sc, cmd.Wait
}

// TestCrossProcess: frames with descriptors from another process arrive
// with exactly their own descriptors (each memfd holds its frame's payload).
func TestCrossProcess(t *testing.T) {
	fdcensus.Verify(t)
	sc, wait := startSender(t, "frames", false)
	r := ipcframe.NewReader(sc, nil)
	fds := make([]int, 4)
	for i := range crossFrames {
		p, n, err := r.ReadFrameFDs(nil, fds)
		if err != nil || n != 1 {
			t.Fatalf("frame %d: %d descriptors, %v", i, n, err)
		}
		content := make([]byte, 16)
		m, err := unix.Pread(fds[0], content, 0)
		unix.Close(fds[0])
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(strconv.Itoa(i), string(p)); diff != "" {
			t.Errorf("frame %d payload (-want +got):\n%s", i, diff)
		}
		if diff := cmp.Diff(string(p), string(content[:m])); diff != "" {
			t.Errorf("frame %d: its descriptor's content (-want +got):\n%s", i, diff)
		}
	}
	if _, err := r.ReadFrame(nil); err != io.EOF {
		t.Errorf("after the sender exited: %v, want io.EOF", err)
	}
	if err := wait(); err != nil {
		t.Fatalf("sender: %v", err)
	}
}

// TestTooManyRefs: a sender over its in-flight descriptor limit (TESTPLAN
// A12, seen from the Writer) gets ETOOMANYREFS as backpressure; the frame is
// dropped whole and the stream stays intact for the frames after it.
func TestTooManyRefs(t *testing.T) {
	fdcensus.Verify(t)
	sc, wait := startSender(t, "toomanyrefs", true)
	if err := wait(); err != nil {
		t.Fatalf("sender: %v", err)
	}
	r := ipcframe.NewReader(sc, nil)
	fds := make([]int, 4)
	got := 0
	for ; got < 1000; got++ {
		p, n, err := r.ReadFrameFDs(nil, fds)
		if err != nil {
			t.Fatalf("frame %d: %v", got, err)
		}
		for _, fd := range fds[:n] {
			unix.Close(fd)
		}
		if n == 0 {
			if want := "sent " + strconv.Itoa(got); string(p) != want {
				t.Errorf("report %q, want %q", p, want)
			}
			break
		}
	}
	if _, err := r.ReadFrame(nil); err != io.EOF {
		t.Errorf("after the report: %v, want io.EOF", err)
	}
}
