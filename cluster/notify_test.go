//go:build linux

package cluster

import (
	"bytes"
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

// TestParseNotify: fields are validated one by one; a malformed field is
// counted and skipped, the valid ones are kept; only an oversize message is
// refused whole.
func TestParseNotify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Notification
		bad  int
		err  error
	}{
		{"READY=1", Notification{Ready: true}, 0, nil},
		{"READY=1\nSTATUS=serving 4 requests\n", Notification{Ready: true, Status: "serving 4 requests", StatusSet: true}, 0, nil},
		{"STOPPING=1\nRELOADING=1\nWATCHDOG=1", Notification{Stopping: true, Reloading: true, Watchdog: true}, 0, nil},
		{"MAINPID=77\nERRNO=2", Notification{MainPID: 77, Errno: 2}, 0, nil},
		{"X_CUSTOM=1\nBARRIER=1\n\n", Notification{}, 0, nil},
		{"WATCHDOG=trigger", Notification{WatchdogTrigger: true}, 0, nil},
		{"EXTEND_TIMEOUT_USEC=120000000", Notification{ExtendTimeout: 2 * time.Minute}, 0, nil},
		{"EXTEND_TIMEOUT_USEC=0", Notification{}, 1, nil},
		{"EXTEND_TIMEOUT_USEC=-1", Notification{}, 1, nil},
		{"EXTEND_TIMEOUT_USEC=86400000001", Notification{}, 1, nil},
		{"", Notification{}, 0, nil},
		{"READY", Notification{}, 1, nil},
		{"=1", Notification{}, 1, nil},
		{"READY=yes", Notification{}, 1, nil},
		{"MAINPID=0", Notification{}, 1, nil},
		{"MAINPID=-5", Notification{}, 1, nil},
		{"ERRNO=x", Notification{}, 1, nil},
		{"STATUS=", Notification{StatusSet: true}, 0, nil},
		{"STATUS=\x1b[31mred", Notification{}, 1, nil},
		{"STATUS=\xff\xfe", Notification{}, 1, nil},
		{"STATUS=\x1b[31mred\nREADY=1", Notification{Ready: true}, 1, nil},
		{"READY=1\nMAINPID=x\nSTOPPING=2\nSTATUS=ok", Notification{Ready: true, Status: "ok", StatusSet: true}, 2, nil},
		{"garbage\nREADY=1\nERRNO=5", Notification{Ready: true, Errno: 5}, 1, nil},
		{strings.Repeat("X", maxNotify+1), Notification{}, 0, ErrNotify},
		{"READY=1\n" + strings.Repeat("X", maxNotify), Notification{}, 0, ErrNotify},
	} {
		got, bad, err := parseNotify([]byte(tc.in))
		if !errors.Is(err, tc.err) {
			t.Errorf("parseNotify(%q) error = %v, want %v", tc.in, err, tc.err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("parseNotify(%q) (-want +got):\n%s", tc.in, diff)
		}
		if bad.Count != tc.bad || (bad.Count > 0) != errors.Is(bad.First, ErrNotify) {
			t.Errorf("parseNotify(%q) bad fields = %d (%v), want %d", tc.in, bad.Count, bad.First, tc.bad)
		}
	}
}

func FuzzParseNotify(f *testing.F) {
	for _, s := range []string{"READY=1", "READY=1\nSTATUS=ok\n", "MAINPID=12", "ERRNO=5\nSTOPPING=1", "STATUS=\xff", "STATUS=\x1b\nREADY=1", "STATUS=\nREADY=1"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, bad, err := parseNotify(b)
		if err != nil {
			if len(b) <= maxNotify {
				t.Fatalf("message of %d bytes refused whole: %v", len(b), err)
			}
			if n != (Notification{}) || bad.Count != 0 {
				t.Fatalf("refused message yielded %+v, %d bad fields", n, bad.Count)
			}
			return
		}
		if len(b) > maxNotify {
			t.Fatal("oversize message accepted")
		}
		if n.MainPID < 0 || n.Errno < 0 || !utf8Printable([]byte(n.Status)) || (n.Status != "" && !n.StatusSet) || n.ExtendTimeout < 0 || n.ExtendTimeout > maxExtend {
			t.Fatalf("out-of-domain result %+v", n)
		}
		if bad.Count < 0 || bad.Count > bytes.Count(b, []byte{'\n'})+1 || (bad.Count > 0) != (bad.First != nil) {
			t.Fatalf("bad field count %d (%v) for %d lines", bad.Count, bad.First, bytes.Count(b, []byte{'\n'})+1)
		}
		// Parsing is per field: a READY=1 line is never lost to a bad
		// field elsewhere in the message.
		for _, line := range bytes.Split(b, []byte{'\n'}) {
			if string(line) == "READY=1" && !n.Ready {
				t.Fatalf("READY=1 line lost in %q", b)
			}
		}
	})
}

// Notifications arrive with the sender's credentials; descriptors that
// come with one are closed and counted; oversize ones and ones carrying too
// many descriptors fail alone, and the socket keeps working.
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
	many := make([]int, maxNotifyFDs+1)
	for i := range many {
		many[i] = devnull
	}
	send([]byte("FDSTORE=1"), many...)
	send([]byte(strings.Repeat("STATUS=x\n", 1000)))
	if err := sdNotify(path, "STOPPING=1"); err != nil {
		t.Fatal(err)
	}
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	type result struct {
		N   Notification
		Bad int
		FDs int
		PID int
		Err string
	}
	var got []result
	for i := 0; i < 6; i++ {
		r, err := s.recv()
		res := result{N: r.N, Bad: r.Bad.Count, FDs: r.FDs, PID: r.Cred.PID}
		switch {
		case err == nil:
		case errors.Is(err, ErrNotify):
			res.Err = "malformed"
		case errors.Is(err, scmrights.ErrTruncated):
			res.Err = "descriptors"
		case errors.Is(err, scmrights.ErrPayloadTruncated):
			res.Err = "oversize"
		default:
			t.Fatalf("recv %d: %v", i, err)
		}
		got = append(got, res)
	}
	me := os.Getpid()
	want := []result{
		{N: Notification{Ready: true, Status: "up", StatusSet: true}, PID: me},
		{Bad: 1, PID: me},
		{FDs: 2, PID: me},
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
