//go:build linux

package main_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	fdsend "github.com/handoff-go/handoff/cmd/fdsend"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/fdwire"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{
		"receiver": roleReceiver,
		"inflight": roleInflight,
	})
}

// roleReceiver listens on unixpacket at its argument, prints "ready",
// accepts one connection and prints "message" and replies ok if one
// arrives, or "nothing" at EOF.
func roleReceiver() int {
	path := helperproc.Args()[0]
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer ln.Close()
	fmt.Println("ready")
	_ = ln.SetDeadline(time.Now().Add(20 * time.Second))
	c, err := ln.AcceptUnix()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 1<<18)
	fds := make([]int, 253)
	_, nfds, err := scmrights.Recv(c, buf, fds)
	if err == io.EOF {
		fmt.Println("nothing")
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, fd := range fds[:nfds] {
		unix.Close(fd)
	}
	fmt.Println("message")
	_, _ = c.Write(fdwire.EncodeReply(0, ""))
	return 0
}

// roleInflight, run as nobody, keeps 50 descriptors of its user in flight
// (sent on a socketpair nobody reads), lowers its RLIMIT_NOFILE to 40, so
// that the kernel refuses any further SCM_RIGHTS from it with ETOOMANYREFS
// (unix_inflight above RLIMIT_NOFILE), then runs fdsend against the
// socket at its argument with -timeout 10s and prints its exit status and
// output, quoted, on one line.
func roleInflight() int {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	null, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer unix.Close(null)
	fds := make([]int, 50)
	for i := range fds {
		fds[i] = null
	}
	if err := unix.Sendmsg(pair[0], []byte{0}, unix.UnixRights(fds...), nil, 0); err != nil {
		fmt.Println("sendmsg:", err)
		return 1
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Println(err)
		return 1
	}
	rl.Cur = 40
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Println(err)
		return 1
	}
	code, out := runFdsend("-socket", helperproc.Args()[0], "-allow-uid", "0", "-file", os.DevNull, "-timeout", "10s")
	fmt.Println(code, strconv.Quote(out))
	return 0
}

// runFdsend runs the command in this process and returns its exit status
// and output.
func runFdsend(args ...string) (int, string) {
	var stdout, stderr bytes.Buffer
	code := fdsend.ExitCode(fdsend.Run(context.Background(), args, strings.NewReader(""), &stdout, &stderr), &stderr)
	return code, stdout.String() + stderr.String()
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func childEnv(pc *proccensus.Census) []string {
	return []string{pc.Env(), "GORACE=" + strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0")}
}

func TestUsage(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name string
		args []string
		want int
		out  string
	}{
		{"help", []string{"-h"}, 0, "Exit codes:"},
		{"no socket", []string{"-fd", "0"}, 2, "-socket is required"},
		{"bad fd", []string{"-socket", "s", "-fd", "x"}, 2, "not a descriptor number"},
		{"negative fd", []string{"-socket", "s", "-fd", "-1"}, 2, "not a descriptor number"},
		{"names do not match", []string{"-socket", "s", "-fd", "0", "-fd", "1", "-name", "a"}, 2, "1 names for 2 descriptors"},
		{"colon in a name", []string{"-socket", "s", "-fd", "0", "-name", "a:b"}, 2, "not allowed"},
		{"payload too large", []string{"-socket", "s", "-payload", strings.Repeat("x", 64<<10+1)}, 2, "at most 65536"},
		{"stray argument", []string{"-socket", "s", "extra"}, 2, "unexpected arguments"},
		{"zero timeout", []string{"-socket", "s", "-timeout", "0s"}, 2, "-timeout 0s"},
		// Rejected before anything is opened: exit 2, not 9 (source).
		{"unknown scheme", []string{"-socket", "s", "-listen", "sctp://127.0.0.1:0"}, 2, "unknown scheme"},
		{"empty unix path", []string{"-socket", "s", "-listen", "unix://"}, 2, "bad path"},
		// Before: bound every interface on a random port (tcp://,
		// udp://), or failed to bind as source (9).
		{"empty tcp address", []string{"-socket", "s", "-listen", "tcp://"}, 2, "want HOST:PORT"},
		{"empty udp address", []string{"-socket", "s", "-listen", "udp://"}, 2, "want HOST:PORT"},
		{"tcp without a port", []string{"-socket", "s", "-listen", "tcp://127.0.0.1"}, 2, "want HOST:PORT"},
		{"tcp with an empty port", []string{"-socket", "s", "-listen", "tcp://127.0.0.1:"}, 2, "want HOST:PORT"},
		{"plain host without a port", []string{"-socket", "s", "-listen", "localhost"}, 2, "want HOST:PORT"},
		{"scheme with one slash", []string{"-socket", "s", "-listen", "unix:/x"}, 2, "want SCHEME://ADDRESS"},
		// Before: taken as the host "udp" (a DNS lookup, exit 9) or
		// the host "unix" with the port "rel.sock" (exit 9).
		{"scheme without slashes", []string{"-socket", "s", "-listen", "udp:0"}, 2, "want SCHEME://ADDRESS"},
		{"scheme without slashes, capitals", []string{"-socket", "s", "-listen", "TCP4:0"}, 2, "want SCHEME://ADDRESS"},
		{"unix scheme without slashes", []string{"-socket", "s", "-listen", "unix:rel.sock"}, 2, "want SCHEME://ADDRESS"},
		// Before: the ports "0/" and "0/x" were looked up as service
		// names (exit 9).
		{"trailing slash", []string{"-socket", "s", "-listen", "tcp://127.0.0.1:0/"}, 2, "want HOST:PORT"},
		{"trailing path", []string{"-socket", "s", "-listen", "127.0.0.1:0/x"}, 2, "want HOST:PORT"},
		{"port out of range", []string{"-socket", "s", "-listen", "udp://127.0.0.1:65536"}, 2, "want HOST:PORT"},
		{"port with an underscore", []string{"-socket", "s", "-listen", "tcp://127.0.0.1:a_b"}, 2, "want HOST:PORT"},
		// Abstract names: sockfile rules them out; before, -socket
		// dialled the abstract name and unix://@x bound ./@x.
		{"abstract -socket", []string{"-socket", "@abs"}, 2, "abstract socket names are not supported"},
		{"abstract unix listener", []string{"-socket", "s", "-listen", "unix://@abs"}, 2, "abstract socket names are not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runFdsend(tt.args...)
			if code != tt.want || !strings.Contains(out, tt.out) {
				t.Errorf("exit %d, output:\n%s\nwant exit %d and %q", code, out, tt.want, tt.out)
			}
		})
	}
}

// Well-formed -listen values pass the usage checks (they are bound only
// later), service names and IPv6 zones included.
func TestListenValuesAccepted(t *testing.T) {
	for _, v := range []string{
		"127.0.0.1:0", "localhost:0", "[::1]:0", "localhost:http", "[fe80::1%lo]:0", ":0",
		"tcp://:0", "tcp4://127.0.0.1:65535", "tcp6://[::1]:0", "udp://localhost:domain", "udp6://[::1]:0",
		"tcp://127.0.0.1:x-y2", "unix:///tmp/s", "unix://rel.sock",
	} {
		if err := fdsend.Parse([]string{"-socket", "s", "-listen", v}); err != nil {
			t.Errorf("-listen %s: %v", v, err)
		}
	}
}

// Sources and socket paths that cannot be used: distinct exit codes, and
// everything fdsend opened is closed again, unix:// paths included.
func TestSendErrors(t *testing.T) {
	fdcensus.Verify(t)
	dir := shortDir(t)
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale")
	ul, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	stream := filepath.Join(dir, "stream")
	sl, err := net.Listen("unix", stream)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	missing := filepath.Join(dir, "missing")
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cloexecFD := int(f.Fd()) // os.Open is close-on-exec, like fdsend's own descriptors
	// How long fdsend waits for a receiver that never comes: long enough
	// that a first dial finishes within it on a loaded machine (under the
	// race detector a 300 ms one timed out before its first connect, and
	// fdsend could only report "i/o timeout", not why it was waiting).
	const wait = "1s"
	tests := []struct {
		name string
		args []string
		want int
		out  string
	}{
		{"no socket at the path", []string{"-socket", missing, "-timeout", wait}, 7, "no such file"},
		// connect(2) says ECONNREFUSED for these too: fdsend must not
		// wait for them to become sockets (-timeout 20s would show).
		{"regular file at the path", []string{"-socket", file, "-timeout", "20s"}, 7, "not a socket (regular file)"},
		{"FIFO at the path", []string{"-socket", fifo, "-timeout", "20s"}, 7, "not a socket (FIFO)"},
		{"directory at the path", []string{"-socket", dir, "-timeout", "20s"}, 7, "not a socket (directory)"},
		{"stale socket", []string{"-socket", stale, "-timeout", wait}, 7, "connection refused"},
		{"stream socket, not seqpacket", []string{"-socket", stream}, 7, "protocol wrong type"},
		{"fd not open", []string{"-socket", missing, "-fd", "999"}, 9, "-fd 999"},
		{"fd not inherited", []string{"-socket", missing, "-fd", strconv.Itoa(cloexecFD)}, 9, "not inherited"},
		{"file missing", []string{"-socket", missing, "-file", filepath.Join(dir, "nope")}, 9, "no such file"},
		{"port in use", []string{"-socket", missing, "-listen", busy.Addr().String()}, 9, "address already in use"},
		{"unix listener, then no receiver", []string{"-socket", missing, "-timeout", wait, "-listen", "unix://" + filepath.Join(dir, "u")}, 7, "no such file"},
		// Well-formed -listen values are bound, not refused as usage
		// errors (2).
		{"plain HOST:PORT, then no receiver", []string{"-socket", missing, "-timeout", wait, "-listen", "127.0.0.1:0", "-listen", "localhost:0"}, 7, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runFdsend(tt.args...)
			if code != tt.want || !strings.Contains(out, tt.out) {
				t.Errorf("exit %d, output:\n%s\nwant exit %d and %q", code, out, tt.want, tt.out)
			}
		})
	}
	if _, err := os.Lstat(filepath.Join(dir, "u")); err == nil {
		t.Error("a unix:// listener that was never sent kept its path")
	}
}

// fakeReceiver listens like fdrecv and lets the test script its answer.
func fakeReceiver(t *testing.T, answer func(c *net.UnixConn)) string {
	t.Helper()
	path := filepath.Join(shortDir(t), "s")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		answer(c)
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return path
}

// recvMessage reads fdsend's message, checks it, and closes its fds.
func recvMessage(t *testing.T, c *net.UnixConn) (names []string, payload string, nfds int) {
	buf := make([]byte, 1<<18)
	fds := make([]int, 253)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, nfds, err := scmrights.Recv(c, buf, fds)
	if err != nil {
		t.Errorf("receiver: %v", err)
		return nil, "", 0
	}
	for _, fd := range fds[:nfds] {
		unix.Close(fd)
	}
	b := buf[:n]
	if len(b) < 6 || string(b[:4]) != "HFDS" || b[4] != fdwire.Version {
		t.Errorf("receiver: not a version %d message: %q", fdwire.Version, b)
		return nil, "", nfds
	}
	k := int(b[5])
	b = b[6:]
	for range k {
		names = append(names, string(b[1:1+int(b[0])]))
		b = b[1+int(b[0]):]
	}
	return names, string(b[4 : 4+binary.BigEndian.Uint32(b)]), nfds
}

// The receiver's behaviour decides fdsend's exit: its reply status, a
// timeout, a malformed or descriptor-carrying reply. Descriptors sent along
// with a reply are closed (fd census).
func TestReplies(t *testing.T) {
	fdcensus.Verify(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	tests := []struct {
		name   string
		answer func(c *net.UnixConn)
		want   int
		out    string
	}{
		{"placed, then end of file", func(c *net.UnixConn) {
			names, payload, nfds := recvMessage(t, c)
			if diff := cmp.Diff([]string{"a", "b"}, names); diff != "" || payload != "hello" || nfds != 2 {
				t.Errorf("receiver got %q %q %d fds", names, payload, nfds)
			}
			c.Write(fdwire.EncodeReply(0, ""))
		}, 0, ""},
		// fdrecv's last stage: execve of PROGRAM failed after placing.
		{"placed, then exec failed", func(c *net.UnixConn) {
			recvMessage(t, c)
			c.Write(fdwire.EncodeReply(0, ""))
			c.Write(fdwire.EncodeReply(10, "exec: no such file"))
		}, 10, "exec: no such file"},
		{"placed, then nothing", func(c *net.UnixConn) {
			recvMessage(t, c)
			c.Write(fdwire.EncodeReply(0, ""))
			time.Sleep(time.Second)
		}, 3, "within 300ms"},
		{"placed twice", func(c *net.UnixConn) {
			recvMessage(t, c)
			c.Write(fdwire.EncodeReply(0, ""))
			c.Write(fdwire.EncodeReply(0, ""))
		}, 8, "second success reply"},
		{"version 1 reply", func(c *net.UnixConn) {
			recvMessage(t, c)
			c.Write([]byte("HFDR\x01\x00\x00\x00"))
		}, 8, "unknown version"},
		{"refused: count", func(c *net.UnixConn) {
			recvMessage(t, c)
			c.Write(fdwire.EncodeReply(4, "want 3"))
		}, 4, "fdrecv refused the descriptors: want 3"},
		{"refused: exec", func(c *net.UnixConn) {
			recvMessage(t, c)
			c.Write(fdwire.EncodeReply(10, "no"))
		}, 10, "refused the descriptors: no"},
		{"refused: unknown status", func(c *net.UnixConn) {
			recvMessage(t, c)
			c.Write(fdwire.EncodeReply(77, "?"))
		}, 1, "refused"},
		{"no reply", func(c *net.UnixConn) {
			recvMessage(t, c)
			time.Sleep(time.Second)
		}, 3, "no reply from fdrecv within 300ms"},
		{"garbage reply", func(c *net.UnixConn) {
			recvMessage(t, c)
			c.Write([]byte("OK"))
		}, 8, "not an fdrecv reply"},
		{"reply carrying a descriptor", func(c *net.UnixConn) {
			recvMessage(t, c)
			fd, err := scmrights.Dup(w)
			if err != nil {
				t.Error(err)
				return
			}
			defer unix.Close(fd)
			scmrights.Send(c, fdwire.EncodeReply(0, ""), fd)
		}, 8, "truncated"},
		{"closed without reply", func(c *net.UnixConn) {
			recvMessage(t, c)
		}, 8, "without replying"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fakeReceiver(t, tt.answer)
			timeout := "20s"
			if tt.want == fdwire.StatusTimeout {
				timeout = "300ms"
			}
			code, out := runFdsend("-socket", path, "-timeout", timeout, "-fd", inherited(t, r), "-file", os.Args[0], "-name", "a", "-name", "b", "-payload", "hello")
			if code != tt.want || !strings.Contains(out, tt.out) {
				t.Errorf("exit %d, output:\n%s\nwant exit %d and %q", code, out, tt.want, tt.out)
			}
		})
	}
}

// A receiver running as another user never gets the descriptors: fdsend
// checks SO_PEERCRED before sending, unless -allow-uid names that user.
func TestReceiverUID(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	// The refusal names everyone allowed: told only its own uid, an
	// operator would add an -allow-uid that is already set.
	tests := []struct {
		name  string
		flags []string
		want  int
		said  string
		out   string
	}{
		{"other uid refused", nil, 6, "nothing", "runs as uid 65534; allowed: own uid 0 only"},
		{"other uid refused, another allowed", []string{"-allow-uid", "1234", "-allow-uid", "33"}, 6, "nothing", "allowed: own uid 0 and -allow-uid 1234, 33"},
		{"other uid allowed", []string{"-allow-uid", "65534"}, 0, "message", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "s")
			cmd := helperproc.Command(t, "receiver", &helperproc.Options{AsNobody: true, Args: []string{path}, Env: childEnv(pc)})
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			helperproc.Start(t, cmd)
			rd := newLineReader(out)
			if line := rd.line(t); line != "ready" {
				t.Fatalf("receiver said %q", line)
			}
			code, msg := runFdsend(append([]string{"-socket", path, "-file", os.Args[0], "-timeout", "10s"}, tt.flags...)...)
			if code != tt.want || !strings.Contains(msg, tt.out) {
				t.Errorf("exit %d, want %d and %q; output:\n%s", code, tt.want, tt.out, msg)
			}
			if line := rd.line(t); line != tt.said {
				t.Errorf("receiver said %q, want %q", line, tt.said)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// With the real fdrecv: every kind of source arrives, in order and named;
// fdsend closes all its own copies (A18: the census of this process, where
// fdsend ran, is flat); a unix:// listener's path stays for the receiver.
func TestWithFdrecv(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	fdrecvBin := buildFdrecv(t)
	dir := shortDir(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	t.Run("all sources", func(t *testing.T) {
		path := filepath.Join(dir, "s")
		var out bytes.Buffer
		cmd := exec.Command(fdrecvBin, "-socket", path, "-json", "-n", "5", "-timeout", "20s")
		cmd.Env = append(os.Environ(), childEnv(pc)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		helperproc.Start(t, cmd)
		waitFor(t, path)
		unixPath := filepath.Join(dir, "u")
		code, msg := runFdsend("-socket", path,
			"-fd", inherited(t, r), "-file", os.Args[0],
			"-listen", "tcp://127.0.0.1:0", "-listen", "udp://127.0.0.1:0", "-listen", "unix://"+unixPath,
			"-name", "in", "-name", "bin", "-name", "web", "-name", "dns", "-name", "ctl", "-payload", "p")
		if code != 0 {
			t.Fatalf("fdsend exit %d: %s", code, msg)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("fdrecv: %v\n%s", err, out.String())
		}
		var got struct {
			FDs     []struct{ Name, Kind, Network, Role, Path string }
			Payload string
		}
		if err := json.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("%v in %q", err, out.String())
		}
		var summary []string
		for _, fd := range got.FDs {
			summary = append(summary, strings.TrimSpace(fd.Name+" "+fd.Kind+" "+fd.Network+" "+fd.Role))
		}
		want := []string{"in pipe", "bin file", "web socket tcp listener", "dns socket udp unconnected", "ctl socket unix listener"}
		if diff := cmp.Diff(want, summary); diff != "" || got.Payload != "p" {
			t.Errorf("fdrecv saw (-want +got):\n%s\npayload %q", diff, got.Payload)
		}
		if fi, err := os.Lstat(unixPath); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Errorf("unix:// path after the hand-off: %v, %v; want the socket kept", fi, err)
		}
	})
	t.Run("receiver expects another count", func(t *testing.T) {
		path := filepath.Join(dir, "s")
		cmd := exec.Command(fdrecvBin, "-socket", path, "-n", "2", "-timeout", "20s")
		cmd.Env = append(os.Environ(), childEnv(pc)...)
		helperproc.Start(t, cmd)
		waitFor(t, path)
		code, msg := runFdsend("-socket", path, "-fd", inherited(t, r))
		if code != 4 || !strings.Contains(msg, "want 2") {
			t.Errorf("exit %d, output %q; want 4", code, msg)
		}
		var ee *exec.ExitError
		if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 4 {
			t.Errorf("fdrecv: %v, want exit status 4", err)
		}
	})
}

// inherited returns the number of an inheritable (not close-on-exec) copy
// of f, as fdsend finds descriptors its parent passed it; closed at the end
// of the test.
func inherited(t *testing.T, f *os.File) string {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.Dup(int(s)) }); err != nil {
		t.Fatal(err)
	}
	if derr != nil {
		t.Fatal(derr)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return strconv.Itoa(fd)
}

// waitFor waits until a socket listens at path.
func waitFor(t *testing.T, path string) {
	t.Helper()
	for i := 0; ; i++ {
		if listening(path) {
			return
		}
		if i > 2000 {
			t.Fatalf("nothing listens at %s", path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// listening reports whether a unix socket bound at path is in listening
// state (flag __SO_ACCEPTCON in /proc/net/unix). Probing with connect would
// use up fdrecv's single accept.
func listening(path string) bool {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 8 && f[7] == path {
			flags, err := strconv.ParseUint(f[3], 16, 32)
			if err == nil && flags&0x10000 != 0 {
				return true
			}
		}
	}
	return false
}

// buildFdrecv builds the fdrecv command into a temporary directory.
func buildFdrecv(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building fdrecv needs the go command: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "fdrecv")
	cmd := exec.Command(gobin, "build", "-o", bin, "github.com/handoff-go/handoff/cmd/fdrecv")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build fdrecv: %v\n%s", err, out)
	}
	return bin
}

type lineReader struct{ ch chan string }

func newLineReader(r io.Reader) *lineReader {
	lr := &lineReader{ch: make(chan string, 16)}
	go func() {
		defer close(lr.ch)
		var b []byte
		buf := make([]byte, 1)
		for {
			n, err := r.Read(buf)
			if n == 1 {
				if buf[0] == '\n' {
					lr.ch <- string(b)
					b = b[:0]
				} else {
					b = append(b, buf[0])
				}
			}
			if err != nil {
				return
			}
		}
	}()
	return lr
}

func (lr *lineReader) line(t *testing.T) string {
	t.Helper()
	select {
	case s, ok := <-lr.ch:
		if !ok {
			return "(EOF)"
		}
		return s
	case <-time.After(20 * time.Second):
		t.Fatal("timed out waiting for a line")
		return ""
	}
}

// fdFacts is what a receiver can see of one descriptor.
type fdFacts struct {
	Nonblocking bool
	Local       string
	Protocol    int // SO_PROTOCOL
}

// recvFacts reads fdsend's message and returns what each descriptor is
// like, closing them, then replies "placed" and hangs up (success).
func recvFacts(t *testing.T, c *net.UnixConn, got *[]fdFacts) {
	buf := make([]byte, 1<<18)
	fds := make([]int, 253)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, nfds, err := scmrights.Recv(c, buf, fds)
	if err != nil {
		t.Errorf("receiver: %v", err)
		return
	}
	for _, fd := range fds[:nfds] {
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			t.Error(err)
		}
		f := fdFacts{Nonblocking: fl&unix.O_NONBLOCK != 0}
		if f.Protocol, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil {
			t.Error(err)
		}
		if sa, err := unix.Getsockname(fd); err == nil {
			if u, ok := sa.(*unix.SockaddrUnix); ok {
				f.Local = u.Name
			}
		}
		*got = append(*got, f)
		unix.Close(fd)
	}
	c.Write(fdwire.EncodeReply(0, ""))
}

// -listen sockets arrive in blocking mode, as systemd hands them out by
// default: a receiver's blocking accept(2) must wait, not fail with
// EAGAIN. A tcp:// listener is plain TCP, as systemd's are: Go's default
// since 1.24 is MPTCP (IPPROTO_MPTCP, 262) where net.mptcp.enabled=1,
// which refuses some TCP options. A relative unix:// path is sent bound to
// its absolute path.
func TestListenSocketsBlocking(t *testing.T) {
	fdcensus.Verify(t)
	dir := shortDir(t)
	facts := make(chan []fdFacts, 1)
	path := fakeReceiver(t, func(c *net.UnixConn) {
		var got []fdFacts
		defer func() { facts <- got }()
		recvFacts(t, c, &got)
	})
	t.Chdir(dir)
	code, out := runFdsend("-socket", path, "-timeout", "20s",
		"-listen", "tcp://127.0.0.1:0", "-listen", "udp://127.0.0.1:0", "-listen", "unix://rel.sock")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	want := []fdFacts{{Protocol: unix.IPPROTO_TCP}, {Protocol: unix.IPPROTO_UDP}, {Local: filepath.Join(dir, "rel.sock")}}
	if diff := cmp.Diff(want, <-facts); diff != "" {
		t.Errorf("what the receiver got (-want +got):\n%s", diff)
	}
}

// fdsend waits for PATH to appear (until -timeout), so the documented
// "fdrecv ... & fdsend ..." does not race.
func TestWaitsForSocket(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	t.Run("path appears later", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "s")
		done := make(chan int, 1)
		go func() {
			code, _ := runFdsend("-socket", path, "-timeout", "20s", "-payload", "x")
			done <- code
		}()
		// Only ordering: fdsend has most likely found no PATH yet.
		time.Sleep(200 * time.Millisecond)
		ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_ = ln.SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.AcceptUnix()
		if err != nil {
			t.Fatal(err)
		}
		recvMessage(t, c)
		c.Write(fdwire.EncodeReply(0, ""))
		c.Close()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("exit %d, want 0", code)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("fdsend did not return")
		}
	})
	t.Run("docs example, fdrecv in the background", func(t *testing.T) {
		fdrecvBin := buildFdrecv(t)
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		for i := range 3 {
			path := filepath.Join(shortDir(t), "s")
			cmd := exec.Command(fdrecvBin, "-socket", path, "-n", "1", "-timeout", "20s")
			cmd.Env = append(os.Environ(), childEnv(pc)...)
			helperproc.Start(t, cmd)
			code, msg := runFdsend("-socket", path, "-fd", inherited(t, r), "-name", "web")
			if code != 0 {
				t.Errorf("run %d: fdsend exit %d: %s", i, code, msg)
			}
			if err := cmd.Wait(); err != nil {
				t.Errorf("run %d: fdrecv: %v", i, err)
			}
		}
	})
}

// Once sendmsg succeeded, a unix:// listener's path is never unlinked: the
// receiver may serve it already, whatever became of the reply.
func TestUnixPathKeptAfterSend(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name   string
		answer func(c *net.UnixConn)
		want   int
	}{
		{"hung up without a reply", func(c *net.UnixConn) { recvMessage(t, c) }, fdwire.StatusProtocol},
		{"no reply before -timeout", func(c *net.UnixConn) {
			recvMessage(t, c)
			time.Sleep(time.Second)
		}, fdwire.StatusTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fakeReceiver(t, tt.answer)
			u := filepath.Join(shortDir(t), "u")
			code, out := runFdsend("-socket", path, "-timeout", "300ms", "-listen", "unix://"+u)
			if code != tt.want {
				t.Errorf("exit %d, want %d: %s", code, tt.want, out)
			}
			if fi, err := os.Lstat(u); err != nil || fi.Mode()&os.ModeSocket == 0 {
				t.Errorf("unix:// path after the send: %v, %v; want the socket kept", fi, err)
			}
		})
	}
}

// A send that fails (here ETOOMANYREFS) leaves the receiver waiting for a
// message that never comes, so no reply follows: fdsend reports the send
// error at once (exit 1), instead of waiting out -timeout and blaming
// fdrecv for a timeout (exit 3). The receiver sees the connection close
// without a message.
func TestSendFailureReportedAtOnce(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		_ = ln.SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.AcceptUnix()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, nfds, err := scmrights.Recv(c, make([]byte, 1<<18), make([]int, 253))
		switch {
		case err == io.EOF:
			got <- "nothing"
		case err != nil:
			got <- err.Error()
		default:
			got <- fmt.Sprintf("a message with %d descriptors", nfds)
		}
	}()
	cmd := helperproc.Command(t, "inflight", &helperproc.Options{AsNobody: true, Args: []string{path}, Env: childEnv(pc)})
	var out bytes.Buffer
	cmd.Stdout = &out
	helperproc.Start(t, cmd)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out.String())
	}
	code, msg, _ := strings.Cut(strings.TrimSpace(out.String()), " ")
	if code != "1" || !strings.Contains(msg, "too many references") || !strings.Contains(msg, "RLIMIT_NOFILE") {
		t.Errorf("fdsend said %s; want exit 1 and the send error (too many references)", out.String())
	}
	if r := <-got; r != "nothing" {
		t.Errorf("receiver got %s, want nothing", r)
	}
}
