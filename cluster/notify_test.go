//go:build linux

package cluster

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

func TestParseNotify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Notification
		err  error
	}{
		{"READY=1", Notification{Ready: true}, nil},
		{"READY=1\nSTATUS=serving 4 requests\n", Notification{Ready: true, Status: "serving 4 requests"}, nil},
		{"STOPPING=1\nRELOADING=1\nWATCHDOG=1", Notification{Stopping: true, Reloading: true, Watchdog: true}, nil},
		{"MAINPID=77\nERRNO=2", Notification{MainPID: 77, Errno: 2}, nil},
		{"X_CUSTOM=1\nBARRIER=1\n\n", Notification{}, nil},
		{"WATCHDOG=trigger", Notification{}, nil},
		{"", Notification{}, nil},
		{"READY", Notification{}, ErrNotify},
		{"=1", Notification{}, ErrNotify},
		{"READY=yes", Notification{}, ErrNotify},
		{"MAINPID=0", Notification{}, ErrNotify},
		{"MAINPID=-5", Notification{}, ErrNotify},
		{"ERRNO=x", Notification{}, ErrNotify},
		{"STATUS=\x1b[31mred", Notification{}, ErrNotify},
		{"STATUS=\xff\xfe", Notification{}, ErrNotify},
		{strings.Repeat("X", maxNotify+1), Notification{}, ErrNotify},
	} {
		got, err := parseNotify([]byte(tc.in))
		if !errors.Is(err, tc.err) {
			t.Errorf("parseNotify(%q) error = %v, want %v", tc.in, err, tc.err)
			continue
		}
		if err == nil {
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parseNotify(%q) (-want +got):\n%s", tc.in, diff)
			}
		}
	}
}

func FuzzParseNotify(f *testing.F) {
	for _, s := range []string{"READY=1", "READY=1\nSTATUS=ok\n", "MAINPID=12", "ERRNO=5\nSTOPPING=1", "STATUS=\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseNotify(b)
		if err != nil {
			return
		}
		if len(b) > maxNotify {
			t.Fatal("oversize message accepted")
		}
		if n.MainPID < 0 || n.Errno < 0 || !utf8Printable([]byte(n.Status)) {
			t.Fatalf("out-of-domain result %+v", n)
		}
	})
}

// Notifications arrive with the sender's credentials; malformed ones,
// oversize ones and ones carrying descriptors fail alone, the descriptors
// closed, and the socket keeps working.
func TestNotifySocket(t *testing.T) {
	fdcensus.Verify(t)
	path := filepath.Join(t.TempDir(), "notify")
	s, err := listenNotify(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	send := func(b []byte, fds ...int) {
		t.Helper()
		c, err := scmrights.UnixConn(dialGram(t, path))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := scmrights.Send(c, b, fds...); err != nil {
			t.Fatal(err)
		}
	}
	devnull, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(devnull)

	if err := sdNotify(path, "READY=1\nSTATUS=up"); err != nil {
		t.Fatal(err)
	}
	send([]byte("READY=maybe"))
	send([]byte("FDSTORE=1"), devnull, devnull)
	send([]byte(strings.Repeat("STATUS=x\n", 1000)))
	if err := sdNotify(path, "STOPPING=1"); err != nil {
		t.Fatal(err)
	}
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	type result struct {
		N   Notification
		PID int
		Err string
	}
	var got []result
	for i := 0; i < 5; i++ {
		n, cred, err := s.recv()
		r := result{N: n, PID: cred.PID}
		switch {
		case err == nil:
		case errors.Is(err, ErrNotify):
			r.Err = "malformed"
		case errors.Is(err, scmrights.ErrTruncated):
			r.Err = "descriptors"
		case errors.Is(err, scmrights.ErrPayloadTruncated):
			r.Err = "oversize"
		default:
			t.Fatalf("recv %d: %v", i, err)
		}
		if r.Err != "" {
			r.N = Notification{}
		}
		got = append(got, r)
	}
	me := os.Getpid()
	want := []result{
		{N: Notification{Ready: true, Status: "up"}, PID: me},
		{PID: me, Err: "malformed"},
		{PID: me, Err: "descriptors"},
		{PID: me, Err: "oversize"},
		{N: Notification{Stopping: true}, PID: me},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}
}

func TestSdNotifyAddress(t *testing.T) {
	if err := sdNotify("", "READY=1"); err != nil {
		t.Errorf("empty NOTIFY_SOCKET: %v, want no-op", err)
	}
	if err := sdNotify("relative/path", "READY=1"); err == nil {
		t.Error("relative NOTIFY_SOCKET accepted")
	}
}

func dialGram(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	return fd
}
