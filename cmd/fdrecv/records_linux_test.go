//go:build linux

package main_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	fdrecv "github.com/handoff-go/handoff/cmd/fdrecv"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/fdwire"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// record is one SOCK_SEQPACKET record a test peer sends: any payload,
// empty included, with any descriptors (Send refuses an empty one).
type record struct {
	payload []byte
	fds     []int
}

// sendRecord sends r as one record with a raw sendmsg: x/sys's Sendmsg
// would add a byte to descriptors sent without payload.
func sendRecord(t *testing.T, c *net.UnixConn, r record) {
	t.Helper()
	var msg unix.Msghdr
	var iov unix.Iovec
	if len(r.payload) > 0 {
		iov.Base = &r.payload[0]
		iov.SetLen(len(r.payload))
		msg.Iov = &iov
		msg.SetIovlen(1)
	}
	if len(r.fds) > 0 {
		oob := unix.UnixRights(r.fds...)
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
	}); err != nil || errno != 0 {
		t.Fatalf("sendmsg of %d bytes and %d descriptors: %v, %v", len(r.payload), len(r.fds), err, errno)
	}
}

// replies reads what fdrecv sent on c, up to end of file or an error, at
// most 3 items: "status N", "eof", or the error.
func replies(t *testing.T, c *net.UnixConn) []string {
	t.Helper()
	var got []string
	buf := make([]byte, 2048)
	for range 3 {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := scmrights.Recv(c, buf, nil)
		switch {
		case err == io.EOF:
			return append(got, "eof")
		case err != nil:
			var errno syscall.Errno
			if errors.As(err, &errno) {
				return append(got, errno.Error())
			}
			return append(got, err.Error())
		case n < 8 || string(buf[:4]) != "HFDR":
			got = append(got, "not a reply")
		default:
			got = append(got, "status "+strconv.Itoa(int(buf[5])))
		}
	}
	return got
}

// A record fdrecv drops gets its reply (then end of file) whatever the
// peer does next, and fdrecv goes on accepting:
//   - more records sent after it (the reply used to be lost: closing a
//     connection with records unread makes the kernel report ECONNRESET
//     to the peer before anything queued for it);
//   - a zero-length record that carries a descriptor (it used to reach
//     the message decoder and end fdrecv with exit 8), its descriptor
//     closed (fd census);
//   - a zero-length record followed by shutdown(SHUT_WR) (it used to read
//     as the hang-up, though such a peer still reads replies).
//
// The same holds for a reply that ends fdrecv (a malformed message) and
// for "placed". Each peer's records are all queued before fdrecv reads
// them: it connects behind MaxPending silent connections, which hang up
// only once the records are sent.
func TestDroppedRecordsGetTheirReply(t *testing.T) {
	fdcensus.Verify(t)
	defer fdrecv.SetConnReadTimeout(time.Minute)()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	more := record{payload: []byte("more")}
	tests := []struct {
		name    string
		records func(t *testing.T) []record
		shutWr  bool
		want    []string
		final   bool // the peer's message ends fdrecv
		exit    int
		stderr  string
	}{
		{"empty record, then more", func(*testing.T) []record {
			return []record{{}, more}
		}, false, []string{"status 8", "eof"}, false, 0, "an empty record"},
		{"oversized record, then more", func(t *testing.T) []record {
			return []record{{make([]byte, fdwire.MaxMessage+100), dupFDs(t, r, 2)}, more}
		}, false, []string{"status 8", "eof"}, false, 0, "larger than"},
		{"empty record with a descriptor", func(t *testing.T) []record {
			return []record{{nil, dupFDs(t, r, 1)}}
		}, false, []string{"status 8", "eof"}, false, 0, "an empty record"},
		{"empty record, then shutdown(SHUT_WR)", func(*testing.T) []record {
			return []record{{}}
		}, true, []string{"status 8", "eof"}, false, 0, "an empty record"},
		{"shutdown(SHUT_WR) without sending", func(*testing.T) []record {
			return nil
		}, true, []string{"eof"}, false, 0, "closed the connection without sending"},
		{"malformed message, then more", func(t *testing.T) []record {
			return []record{{[]byte("junk"), dupFDs(t, r, 1)}, more}
		}, false, []string{"status 8", "eof"}, true, 8, "not an fdsend message"},
		{"message, then more", func(t *testing.T) []record {
			return []record{{mustEncode(t, []string{"p"}, nil), dupFDs(t, r, 1)}, more}
		}, false, []string{"status 0", "eof"}, true, 0, "0 p: pipe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(shortDir(t), "s")
			wait := runInProcess(t, "-socket", path, "-timeout", "60s")
			silent := dialSilent(t, path, fdrecv.MaxPending)
			c := dial(t, path)
			defer c.Close()
			for _, rec := range tt.records(t) {
				sendRecord(t, c, rec)
			}
			if tt.shutWr {
				if err := c.CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range silent {
				s.Close()
			}
			if diff := cmp.Diff(tt.want, replies(t, c)); diff != "" {
				t.Errorf("what the peer read (-want +got):\n%s", diff)
			}
			if !tt.final {
				good := dial(t, path)
				defer good.Close()
				if err := scmrights.Send(good, mustEncode(t, []string{"p"}, nil), dupFDs(t, r, 1)...); err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff([]string{"status 0", "eof"}, replies(t, good)); diff != "" {
					t.Errorf("what the next sender read (-want +got):\n%s", diff)
				}
			}
			code, out := wait()
			if code != tt.exit || !strings.Contains(out, tt.stderr) || (!tt.final && !strings.Contains(out, "0 p: pipe")) {
				t.Errorf("exit %d, output:\n%s\nwant %d and %q", code, out, tt.exit, tt.stderr)
			}
		})
	}
}

// With PROGRAM, records a peer sends after its message cost it none of the
// replies either: "placed", then end of file when PROGRAM runs, or
// "placed" and status 10 when its execve fails in stage 2. fdrecv stops
// reading the connection once the message is taken, discarding what
// followed it; before, stage 2's exit or PROGRAM's execve closed the
// channel with those records unread, and the peer read ECONNRESET instead.
func TestProgramRepliesSurviveLaterRecords(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := shortDir(t)
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("#!/nonexistent/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	tests := []struct {
		name    string
		program string
		want    []string
		exit    int
	}{
		{"PROGRAM runs", "true", []string{"status 0", "eof"}, 0},
		{"PROGRAM's execve fails", bad, []string{"status 0", "status 10", "eof"}, fdwire.StatusExec},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "s"+strconv.Itoa(i))
			cmd := helperproc.Command(t, "fdrecv", &helperproc.Options{
				Args: []string{"-socket", path, "-timeout", "20s", "--", tt.program},
				Env:  childEnv(pc),
			})
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			helperproc.Start(t, cmd)
			waitFor(t, path)
			// Behind MaxPending silent connections, so that the message
			// and what follows it are queued before fdrecv reads.
			silent := dialSilent(t, path, fdrecv.MaxPending)
			c := dial(t, path)
			defer c.Close()
			sendRecord(t, c, record{mustEncode(t, []string{"p"}, nil), dupFDs(t, r, 1)})
			sendRecord(t, c, record{payload: []byte("more")})
			for _, s := range silent {
				s.Close()
			}
			if diff := cmp.Diff(tt.want, replies(t, c)); diff != "" {
				t.Errorf("what the peer read (-want +got):\n%s", diff)
			}
			if code := exitStatus(t, cmd.Wait()); code != tt.exit {
				t.Errorf("fdrecv exit %d, want %d; output:\n%s", code, tt.exit, out.String())
			}
		})
	}
}
