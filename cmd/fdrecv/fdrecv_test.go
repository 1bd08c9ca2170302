//go:build linux

package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	fdrecv "github.com/handoff-go/handoff/cmd/fdrecv"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/fdwire"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// runInProcess starts fdrecv's run in a goroutine and returns a function
// that waits for its exit status.
func runInProcess(t *testing.T, args ...string) (wait func() (int, string)) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- fdrecv.ExitCode(fdrecv.Run(context.Background(), args, strings.NewReader(""), &stdout, &stderr), &stderr)
	}()
	return func() (int, string) {
		select {
		case code := <-done:
			return code, stdout.String() + stderr.String()
		case <-time.After(20 * time.Second):
			t.Fatal("fdrecv did not return")
			return 0, ""
		}
	}
}

func TestUsage(t *testing.T) {
	fdcensus.Verify(t)
	dir := shortDir(t)
	tests := []struct {
		name string
		args []string
		want int
		out  string
	}{
		{"help", []string{"-h"}, 0, "Exit codes:"},
		{"no socket", nil, 2, "-socket is required"},
		{"unknown flag", []string{"-socket", "x", "-bogus"}, 2, "flag provided but not defined"},
		{"negative n", []string{"-socket", "x", "-n", "-1"}, 2, "-n -1"},
		{"n above 253", []string{"-socket", "x", "-n", "254"}, 2, "-n 254"},
		{"bad uid", []string{"-socket", "x", "-allow-uid", "root"}, 2, "not a uid"},
		{"json with program", []string{"-socket", "x", "-json", "--", "true"}, 2, "-json applies only without PROGRAM"},
		{"program not found", []string{"-socket", filepath.Join(dir, "s"), "--", "/nonexistent/prog"}, 10, "no such file"},
		{"socket directory missing", []string{"-socket", filepath.Join(dir, "no", "s")}, 7, "no such file"},
		{"socket path is a file", []string{"-socket", filepath.Join(dir, "file")}, 7, "not a socket"},
		// x/sys reads a leading '@' as an abstract name, which sockfile
		// rules out; before, fdrecv created ./@abs.lock, bound the
		// abstract name and failed with exit 7.
		{"abstract socket name", []string{"-socket", "@abs"}, 2, "abstract socket names are not supported"},
	}
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runInProcess(t, tt.args...)()
			if code != tt.want || !strings.Contains(out, tt.out) {
				t.Errorf("exit %d, output:\n%s\nwant exit %d and %q", code, out, tt.want, tt.out)
			}
		})
	}
	if _, err := os.Lstat(filepath.Join(dir, "s")); err == nil {
		t.Error("a missing PROGRAM still created the socket")
	}
}

// A7, A8, A10's contract through the command: every malformed or
// mismatched message fails with its exit code and reply status, and every
// received descriptor is closed (fd census of this process, where fdrecv
// runs).
func TestBadInput(t *testing.T) {
	fdcensus.Verify(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	tests := []struct {
		name  string
		flags []string
		msg   []byte
		nfds  int
		want  int
		// replyVersion is the reply's version byte: a sender of another
		// version is refused in its own version's layout.
		replyVersion byte
	}{
		{"valid, for contrast", nil, mustEncode(t, []string{"a"}, []byte("p")), 1, 0, fdwire.Version},
		{"garbage payload", nil, []byte("hello there"), 1, 8, fdwire.Version},
		{"unknown version", nil, append([]byte("HFDS\x07"), mustEncode(t, []string{"a"}, nil)[5:]...), 1, 8, 7},
		{"version 1 sender", nil, append([]byte("HFDS\x01"), mustEncode(t, []string{"a"}, nil)[5:]...), 1, 8, 1},
		{"trailing bytes", nil, append(mustEncode(t, []string{"a"}, []byte("p")), 0), 1, 8, fdwire.Version},
		{"colon in a name", nil, []byte("HFDS\x02\x01\x03a:b\x00\x00\x00\x00"), 1, 8, fdwire.Version},
		{"more names than descriptors", nil, mustEncode(t, []string{"a", "b"}, nil), 1, 4, fdwire.Version},
		{"fewer names than descriptors", nil, mustEncode(t, []string{"a"}, nil), 3, 4, fdwire.Version},
		{"fewer descriptors than -n", []string{"-n", "2"}, mustEncode(t, []string{"a"}, nil), 1, 4, fdwire.Version},
		{"more descriptors than -n", []string{"-n", "1"}, mustEncode(t, []string{"a", "b", "c"}, nil), 3, 4, fdwire.Version},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(shortDir(t), "s")
			wait := runInProcess(t, append([]string{"-socket", path, "-timeout", "20s"}, tt.flags...)...)
			c := dial(t, path)
			defer c.Close()
			if err := scmrights.Send(c, tt.msg, dupFDs(t, r, tt.nfds)...); err != nil {
				t.Fatal(err)
			}
			status := readReplyVersion(t, c, tt.replyVersion)
			code, out := wait()
			if code != tt.want {
				t.Errorf("exit %d, want %d; output:\n%s", code, tt.want, out)
			}
			if status != tt.want {
				t.Errorf("reply status %d, want %d", status, tt.want)
			}
			if _, err := os.Lstat(path); err == nil {
				t.Errorf("socket %s left behind", path)
			}
		})
	}
}

// Nothing received before -timeout: exit 3; interrupted: exit 1; the
// socket is removed either way.
func TestTimeout(t *testing.T) {
	fdcensus.Verify(t)
	path := filepath.Join(shortDir(t), "s")
	t.Run("nobody connects", func(t *testing.T) {
		code, out := runInProcess(t, "-socket", path, "-timeout", "100ms")()
		if code != 3 || !strings.Contains(out, "nothing received within 100ms") {
			t.Errorf("exit %d, output %q; want 3", code, out)
		}
	})
	t.Run("sender connects but never sends", func(t *testing.T) {
		wait := runInProcess(t, "-socket", path, "-timeout", "300ms")
		waitFor(t, path)
		// On a loaded machine fdrecv may time out first; exit 3 either way.
		if c, err := net.Dial("unixpacket", path); err == nil {
			defer c.Close()
		}
		if code, out := wait(); code != 3 {
			t.Errorf("exit %d, output %q; want 3", code, out)
		}
	})
	t.Run("interrupted", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var stderr bytes.Buffer
		done := make(chan int, 1)
		go func() {
			done <- fdrecv.ExitCode(fdrecv.Run(ctx, []string{"-socket", path}, strings.NewReader(""), io.Discard, &stderr), &stderr)
		}()
		waitFor(t, path)
		cancel()
		select {
		case code := <-done:
			if code != 1 || !strings.Contains(stderr.String(), "interrupted") {
				t.Errorf("exit %d, stderr %q; want 1, interrupted", code, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("cancelling the context did not stop fdrecv")
		}
	})
	if _, err := os.Lstat(path); err == nil {
		t.Errorf("socket %s left behind", path)
	}
}

// Printing: every kind of descriptor is described, in order, with its
// name; the payload and the sender's credentials are reported; the
// descriptors are closed afterwards (fd census).
func TestDescribe(t *testing.T) {
	fdcensus.Verify(t)
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	tcpConn, err := net.Dial("tcp", tcpLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tcpConn.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	dir := shortDir(t)
	file := filepath.Join(dir, "data")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unixLn, err := net.Listen("unix", filepath.Join(dir, "u"))
	if err != nil {
		t.Fatal(err)
	}
	defer unixLn.Close()

	conns := []syscall.Conn{tcpLn.(syscall.Conn), tcpConn.(syscall.Conn), udp.(syscall.Conn), r, f, unixLn.(syscall.Conn)}
	names := []string{"web", "conn", "dns", "pipe", "data", "ctl"}
	var fds []int
	for _, c := range conns {
		fds = append(fds, dupFDs(t, c, 1)...)
	}
	want := []map[string]any{
		{"index": 0.0, "name": "web", "kind": "socket", "network": "tcp", "role": "listener", "local": tcpLn.Addr().String()},
		{"index": 1.0, "name": "conn", "kind": "socket", "network": "tcp", "role": "connection", "local": tcpConn.LocalAddr().String(), "remote": tcpConn.RemoteAddr().String()},
		{"index": 2.0, "name": "dns", "kind": "socket", "network": "udp", "role": "unconnected", "local": udp.LocalAddr().String()},
		{"index": 3.0, "name": "pipe", "kind": "pipe", "path": "pipe:[" + strconv.FormatUint(inodeOf(t, r), 10) + "]"},
		{"index": 4.0, "name": "data", "kind": "file", "path": file},
		{"index": 5.0, "name": "ctl", "kind": "socket", "network": "unix", "role": "listener", "local": filepath.Join(dir, "u")},
	}

	t.Run("json", func(t *testing.T) {
		path := filepath.Join(dir, "s")
		wait := runInProcess(t, "-socket", path, "-json", "-n", "6", "-timeout", "20s")
		c := dial(t, path)
		defer c.Close()
		if err := scmrights.Send(c, mustEncode(t, names, []byte("hello\x00world")), fds...); err != nil {
			t.Fatal(err)
		}
		if st := readReply(t, c); st != 0 {
			t.Fatalf("reply status %d", st)
		}
		code, out := wait()
		if code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		var got struct {
			Version int
			Sender  struct{ PID, UID, GID int }
			FDs     []map[string]any
			Payload string
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%v in %q", err, out)
		}
		if diff := cmp.Diff(want, got.FDs); diff != "" {
			t.Errorf("fds (-want +got):\n%s", diff)
		}
		if got.Version != 1 || got.Payload != "hello\x00world" || got.Sender.PID != os.Getpid() || got.Sender.UID != os.Getuid() {
			t.Errorf("report %+v", got)
		}
	})
	t.Run("text", func(t *testing.T) {
		path := filepath.Join(dir, "s")
		wait := runInProcess(t, "-socket", path, "-timeout", "20s")
		c := dial(t, path)
		defer c.Close()
		if err := scmrights.Send(c, mustEncode(t, names[:2], []byte("hi")), fds[:2]...); err != nil {
			t.Fatal(err)
		}
		readReply(t, c)
		code, out := wait()
		wantOut := "sender: pid " + strconv.Itoa(os.Getpid()) + " uid " + strconv.Itoa(os.Getuid()) + " gid " + strconv.Itoa(os.Getgid()) + "\n" +
			"0 web: tcp listener " + tcpLn.Addr().String() + "\n" +
			"1 conn: tcp connection " + tcpConn.LocalAddr().String() + " -> " + tcpConn.RemoteAddr().String() + "\n" +
			"payload: \"hi\"\n"
		if diff := cmp.Diff(wantOut, out); code != 0 || diff != "" {
			t.Errorf("exit %d, output (-want +got):\n%s", code, diff)
		}
	})
}

// A10/A11 through the command: fdrecv's fd limit leaves room for a few of
// the 100 descriptors sent; the kernel truncates the control data. fdrecv
// replies 5 to that sender, drops the connection and goes on accepting:
// the next sender is served (exit 0), and fdrecv's own census shows every
// descriptor that arrived was closed.
func TestTruncatedControlData(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	path := filepath.Join(shortDir(t), "s")
	cmd := helperproc.Command(t, "fdrecv", &helperproc.Options{
		Args: []string{"-socket", path, "-timeout", "20s"},
		Env:  childEnv(pc, rlimitVar+"=40", censusVar+"=1"),
	})
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	helperproc.Start(t, cmd)
	c := dial(t, path)
	defer c.Close()
	names := make([]string, 100)
	for i := range names {
		names[i] = "n" + strconv.Itoa(i)
	}
	if err := scmrights.Send(c, mustEncode(t, names, nil), dupFDs(t, r, 100)...); err != nil {
		t.Fatal(err)
	}
	if st := readReply(t, c); st != 5 {
		t.Errorf("reply status %d, want 5", st)
	}
	good := dial(t, path)
	defer good.Close()
	if err := scmrights.Send(good, mustEncode(t, []string{"p"}, nil), dupFDs(t, r, 1)...); err != nil {
		t.Fatal(err)
	}
	if st := readReply(t, good); st != 0 {
		t.Errorf("next sender: reply status %d, want 0", st)
	}
	if code := exitStatus(t, cmd.Wait()); code != 0 || !strings.Contains(errOut.String(), "dropped a connection: pid") {
		t.Errorf("exit %d, want 0 and a dropped connection; stderr:\n%s", code, errOut.String())
	}
	got := out.String()
	if i := strings.Index(got, "census "); i >= 0 {
		got = got[i:]
	}
	if diff := cmp.Diff("census ok\n", got); diff != "" {
		t.Errorf("fdrecv's own census (-want +got):\n%s", diff)
	}
}

// A16: a sender whose uid is not allowed is refused from its credentials
// alone, before it sends anything; -allow-uid admits it. fdrecv runs as
// nobody, the sender (this test) as root. A refused sender does not end
// fdrecv's wait: it times out (3) unless an allowed sender comes.
func TestPeerUID(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	tests := []struct {
		name  string
		flags []string
		want  int
	}{
		{"other uid refused", []string{"-timeout", "1s"}, 6},
		{"other uid allowed", []string{"-timeout", "20s", "-allow-uid", "0"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "s")
			cmd := helperproc.Command(t, "fdrecv", &helperproc.Options{
				AsNobody: true,
				Args:     append([]string{"-socket", path}, tt.flags...),
				Env:      childEnv(pc),
			})
			var out bytes.Buffer
			cmd.Stdout = &out
			cmd.Stderr = &out
			helperproc.Start(t, cmd)
			c := dial(t, path)
			defer c.Close()
			if tt.want == 0 {
				if err := scmrights.Send(c, mustEncode(t, nil, []byte("x"))); err != nil {
					t.Fatal(err)
				}
			}
			// In the refused case nothing was sent: the reply can only
			// come from the credentials check.
			if st := readReply(t, c); st != tt.want {
				t.Errorf("reply status %d, want %d", st, tt.want)
			}
			wantExit := tt.want
			if tt.want == fdwire.StatusPermission {
				wantExit = fdwire.StatusTimeout
			}
			if code := exitStatus(t, cmd.Wait()); code != wantExit {
				t.Errorf("exit %d, want %d; output:\n%s", code, wantExit, out.String())
			}
		})
	}
}

// -allow-uid works when the sender is not root: the socket file is 0666
// (connect(2) needs write permission, which root alone does without), and
// SO_PEERCRED decides. A refused sender gets reply 6 and fdrecv goes on to
// the next connection. fdrecv runs as root, the sender as nobody.
func TestAllowUIDNonRoot(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	tests := []struct {
		name  string
		allow string
		said  string // what the nobody sender read
		note  string // in fdrecv's output: the refusal names everyone allowed
	}{
		{"nobody allowed", "65534", "status 0\neof\n", ""},
		{"nobody refused, then the owner sends", "1234", "status 6\n", "runs as uid 65534; allowed: own uid 0 and -allow-uid 1234"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			// The directory decides who may replace PATH; nobody only
			// needs to reach it.
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "s")
			wait := runInProcess(t, "-socket", path, "-timeout", "20s", "-allow-uid", tt.allow)
			waitFor(t, path)
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o666 {
				t.Errorf("socket file: %v, %v; want mode 0666", fi, err)
			}
			cmd := helperproc.Command(t, "sendmsg", &helperproc.Options{AsNobody: true, Args: []string{path}, Env: childEnv(pc)})
			var out bytes.Buffer
			cmd.Stdout = &out
			helperproc.Start(t, cmd)
			cmd.Wait()
			if out.String() != tt.said {
				t.Errorf("sender read %q, want %q", out.String(), tt.said)
			}
			if tt.allow != "65534" {
				c := dial(t, path)
				defer c.Close()
				if err := scmrights.Send(c, mustEncode(t, nil, []byte("x"))); err != nil {
					t.Fatal(err)
				}
				if st := readReply(t, c); st != 0 {
					t.Errorf("owner's reply status %d, want 0", st)
				}
			}
			if code, out := wait(); code != 0 || !strings.Contains(out, tt.note) {
				t.Errorf("fdrecv exit %d, want 0 and %q; output:\n%s", code, tt.note, out)
			}
		})
	}
}

// A stray connection does not abort the hand-off: one that hangs up
// without sending and one that sends nothing within the per-connection
// deadline are dropped, and the next sender's descriptors are received.
func TestStrayConnections(t *testing.T) {
	fdcensus.Verify(t)
	defer fdrecv.SetConnReadTimeout(300 * time.Millisecond)()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	path := filepath.Join(shortDir(t), "s")
	wait := runInProcess(t, "-socket", path, "-timeout", "20s")
	hangUp := dial(t, path)
	hangUp.Close()
	silent := dial(t, path)
	defer silent.Close()
	c := dial(t, path)
	defer c.Close()
	if err := scmrights.Send(c, mustEncode(t, []string{"p"}, nil), dupFDs(t, r, 1)...); err != nil {
		t.Fatal(err)
	}
	if st := readReply(t, c); st != 0 {
		t.Errorf("reply status %d, want 0", st)
	}
	if st := readReply(t, c); st != -1 {
		t.Errorf("after the reply: status %d, want end of file", st)
	}
	code, out := wait()
	if code != 0 || strings.Count(out, "dropped a connection") != 2 || !strings.Contains(out, "0 p: pipe") {
		t.Errorf("exit %d, output:\n%s\nwant 0, two dropped connections, the pipe", code, out)
	}
	if st := readReply(t, silent); st != -1 {
		t.Errorf("silent connection: status %d, want end of file", st)
	}
}

// x/sys names an unnamed unix socket "@", like an abstract one: fdrecv
// tells them apart by the address length.
func TestDescribeUnixNames(t *testing.T) {
	fdcensus.Verify(t)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	abstract := "@fdr-test-" + strconv.Itoa(os.Getpid())
	ln, err := net.Listen("unix", abstract)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fds := []int{pair[0]}
	fds = append(fds, dupFDs(t, ln.(syscall.Conn), 1)...)
	path := filepath.Join(shortDir(t), "s")
	wait := runInProcess(t, "-socket", path, "-timeout", "20s")
	c := dial(t, path)
	defer c.Close()
	if err := scmrights.Send(c, mustEncode(t, []string{"pair", "abs"}, nil), fds...); err != nil {
		t.Fatal(err)
	}
	readReply(t, c)
	code, out := wait()
	got := strings.Split(out, "\n")
	if len(got) < 3 {
		t.Fatalf("exit %d, output %q", code, out)
	}
	want := []string{"0 pair: unix connection (unnamed) -> (unnamed)", "1 abs: unix listener " + abstract}
	if diff := cmp.Diff(want, got[1:3]); code != 0 || diff != "" {
		t.Errorf("exit %d, output (-want +got):\n%s", code, diff)
	}
}

// With PROGRAM: fdrecv execs it in place (LISTEN_PID is the pid the test
// started), with the descriptors at 3, 4, 5 in order, inheritable, and no
// other descriptor above 2: not the four fdrecv itself inherited, not its
// own. Stale LISTEN_* variables are replaced.
func TestExecProgram(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	f, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var leaked []*os.File
	for range 4 {
		lf, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer lf.Close()
		leaked = append(leaked, lf)
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(shortDir(t), "s")
	cmd := helperproc.Command(t, "fdrecv", &helperproc.Options{
		Args:       []string{"-socket", path, "-n", "3", "-timeout", "20s", "--", bin, "-test.run=^$"},
		Env:        childEnv(pc, execRoleVar+"=listenfds", "LISTEN_FDS=9", "LISTEN_PID=1", "LISTEN_FDNAMES=stale"),
		ExtraFiles: leaked,
	})
	var out bytes.Buffer
	cmd.Stdout = &out
	helperproc.Start(t, cmd)
	c := dial(t, path)
	defer c.Close()
	fds := append(append(dupFDs(t, ln.(syscall.Conn), 1), dupFDs(t, r, 1)...), dupFDs(t, f, 1)...)
	if err := scmrights.Send(c, mustEncode(t, []string{"web", "pipe", "bin"}, []byte("p")), fds...); err != nil {
		t.Fatal(err)
	}
	if st := readReply(t, c); st != 0 {
		t.Fatalf("reply status %d", st)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v; output:\n%s", err, out.String())
	}
	var got execReport
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v in %q", err, out.String())
	}
	want := execReport{
		PID:           cmd.Process.Pid,
		ListenPID:     strconv.Itoa(cmd.Process.Pid),
		ListenFDs:     "3",
		ListenFDNames: "web:pipe:bin",
		FDs: map[int]fdState{
			3: {Ino: inodeOf(t, ln.(syscall.Conn))},
			4: {Ino: inodeOf(t, r)},
			5: {Ino: inodeOf(t, f)},
		},
	}
	// Stdio: this test's own, not the subject here.
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(execReport{}, "Stdio")); diff != "" {
		t.Errorf("what PROGRAM saw (-want +got):\n%s", diff)
	}
	if _, err := os.Lstat(path); err == nil {
		t.Errorf("socket %s left behind", path)
	}
}

// execve of PROGRAM fails after the descriptors were placed (here its #!
// interpreter does not exist, which LookPath cannot see): fdsend must not
// report success. It exits 10 (the reply after "placed"), fdrecv exits 10,
// and the old server's listener, which fdsend sent with -fd, still
// accepts in the old server.
func TestExecFailsAfterPlacing(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	fdsendBin := buildFdsend(t)
	dir := shortDir(t)
	prog := filepath.Join(dir, "prog")
	if err := os.WriteFile(prog, []byte("#!/nonexistent/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	path := filepath.Join(dir, "s")
	cmd := helperproc.Command(t, "fdrecv", &helperproc.Options{
		Args: []string{"-socket", path, "-n", "1", "-timeout", "20s", "--", prog},
		Env:  childEnv(pc),
	})
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	helperproc.Start(t, cmd)
	waitFor(t, path)
	code, err := runFdsend(ln, fdsendBin, path)
	if err != nil {
		t.Fatal(err)
	}
	if code != fdwire.StatusExec {
		t.Errorf("fdsend exit %d, want %d", code, fdwire.StatusExec)
	}
	if code := exitStatus(t, cmd.Wait()); code != fdwire.StatusExec || !strings.Contains(out.String(), "no such file") {
		t.Errorf("fdrecv exit %d, want %d; output:\n%s", code, fdwire.StatusExec, out.String())
	}
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatalf("the old server's listener after the failed hand-off: %v", err)
	}
	defer c.Close()
	ac, err := ln.Accept()
	if err != nil {
		t.Fatalf("the old server cannot accept after the failed hand-off: %v", err)
	}
	ac.Close()
}

// A caller that leaves standard descriptors non-blocking (Node.js, some
// terminals) gets the hand-off anyway: stage 1 parks those descriptors
// above 2 so stage 2's runtime starts without a netpoller at 3 and 4, and
// PROGRAM gets the received descriptors at 3, 4 and exactly the caller's
// standard descriptors: the same pipes (inode), still non-blocking where
// the caller made them so, blocking elsewhere. The sender's success is
// "placed", then end of file.
func TestExecNonblockingStdio(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		nonblock string // nonblockVar
		// shared: stdout and stderr are one description (2>&1), so
		// both are non-blocking, and both are parked.
		shared bool
	}{
		{"stdin", "0", false},
		{"stdout", "1", false},
		{"stderr", "2", false},
		{"all three", "0,1,2", false},
		{"stdout and stderr one pipe", "1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(shortDir(t), "s")
			cmd := helperproc.Command(t, "fdrecv", &helperproc.Options{
				Args: []string{"-socket", path, "-n", "2", "-timeout", "20s", "--", bin, "-test.run=^$"},
				Env:  childEnv(pc, execRoleVar+"=listenfds", nonblockVar+"="+tt.nonblock),
			})
			// *os.File, so the child's 0, 1, 2 are these very pipes and
			// the test knows their inodes.
			var stdio [3]*os.File
			var ours [3]*os.File // the test's ends
			for i := range stdio {
				pr, pw, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				defer pr.Close()
				defer pw.Close()
				if i == 0 {
					stdio[i], ours[i] = pr, pw
				} else {
					stdio[i], ours[i] = pw, pr
				}
			}
			if tt.shared {
				// The stderr pipe goes unused: its reader sees end of
				// file at once.
				stdio[2].Close()
				stdio[2] = stdio[1]
			}
			cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio[0], stdio[1], stdio[2]
			helperproc.Start(t, cmd)
			want := execReport{
				PID:           cmd.Process.Pid,
				ListenPID:     strconv.Itoa(cmd.Process.Pid),
				ListenFDs:     "2",
				ListenFDNames: "web:pipe",
				FDs: map[int]fdState{
					3: {Ino: inodeOf(t, ln.(syscall.Conn))},
					4: {Ino: inodeOf(t, r)},
				},
			}
			for i, f := range stdio {
				nb := strings.Contains(tt.nonblock, strconv.Itoa(i)) || tt.shared && i == 2
				want.Stdio[i] = stdioState{Ino: inodeOf(t, f), Nonblock: nb}
			}
			for _, f := range stdio {
				f.Close()
			}
			stdout, stderr := readAllAsync(t, ours[1]), readAllAsync(t, ours[2])
			c := dial(t, path)
			defer c.Close()
			fds := append(dupFDs(t, ln.(syscall.Conn), 1), dupFDs(t, r, 1)...)
			if err := scmrights.Send(c, mustEncode(t, []string{"web", "pipe"}, []byte("p")), fds...); err != nil {
				t.Fatal(err)
			}
			if st := readReply(t, c); st != 0 {
				t.Errorf("reply status %d, want 0 (placed)", st)
			}
			if st := readReply(t, c); st != -1 {
				t.Errorf("after placed: status %d, want end of file", st)
			}
			werr := cmd.Wait()
			out, errOut := stdout(), stderr()
			if werr != nil {
				t.Fatalf("%v; stdout:\n%s\nstderr:\n%s", werr, out, errOut)
			}
			var got execReport
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("%v in %q; stderr:\n%s", err, out, errOut)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("what PROGRAM saw (-want +got):\n%s", diff)
			}
			if errOut != "" {
				t.Errorf("stderr: %q, want nothing", errOut)
			}
		})
	}
}

// readAllAsync reads f to end of file in the background, for at most
// 20 s; the returned function waits for the text.
func readAllAsync(t *testing.T, f *os.File) func() string {
	t.Helper()
	if err := f.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 1)
	go func() {
		b, err := io.ReadAll(f)
		if err != nil {
			b = append(b, "\nread: "+err.Error()...)
		}
		ch <- string(b)
	}()
	return func() string { return <-ch }
}

// Stage 2 fails after the descriptors were placed and stdio restored
// (PROGRAM removed since fdrecv looked it up): its message must reach the
// caller's non-blocking stderr, not the placeholder that stood in for it
// while stage 2 started. The sender reads "placed", then status 10.
func TestExecFailureReachesNonblockingStderr(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	dir := shortDir(t)
	prog := filepath.Join(dir, "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s")
	cmd := helperproc.Command(t, "fdrecv", &helperproc.Options{
		Args: []string{"-socket", path, "-n", "1", "-timeout", "20s", "--", prog},
		Env:  childEnv(pc, nonblockVar+"=2"),
	})
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	helperproc.Start(t, cmd)
	waitFor(t, path)
	if err := os.Remove(prog); err != nil {
		t.Fatal(err)
	}
	c := dial(t, path)
	defer c.Close()
	if err := scmrights.Send(c, mustEncode(t, []string{"pipe"}, nil), dupFDs(t, r, 1)...); err != nil {
		t.Fatal(err)
	}
	got := []int{readReply(t, c), readReply(t, c)}
	if diff := cmp.Diff([]int{0, fdwire.StatusExec}, got); diff != "" {
		t.Errorf("replies (-want +got):\n%s", diff)
	}
	code := exitStatus(t, cmd.Wait())
	wantErr := "fdrecv: exec " + prog + ": no such file or directory\n"
	if code != fdwire.StatusExec || stderr.String() != wantErr {
		t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr.String(), fdwire.StatusExec, wantErr)
	}
}

// Stage 1's own re-exec fails (E2BIG: the role's RLIMIT_STACK of 256 KiB
// caps execve's strings at the kernel's floor of 128 KiB, which a 120 KiB
// variable plus 15 KiB of LISTEN_FDNAMES exceed): stage 1 puts its parked non-blocking standard descriptors back
// before printing, so the message reaches the real stderr, and its fd
// census afterwards (0, 1, 2 by inode included) equals the one taken
// before receiving. The sender gets 10.
func TestReexecFailureRestoresStdio(t *testing.T) {
	var stack unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_STACK, &stack); err != nil {
		t.Fatal(err)
	}
	if stack.Cur < 2<<20 {
		// The role's own execve, with its 120 KiB variable, needs room.
		t.Skipf("RLIMIT_STACK %d is too small to start the helper", stack.Cur)
	}
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	path := filepath.Join(shortDir(t), "s")
	cmd := helperproc.Command(t, "fdrecv", &helperproc.Options{
		Args: []string{"-socket", path, "-timeout", "20s", "--", "true"},
		Env: childEnv(pc, nonblockVar+"=0,1,2", censusVar+"=1", stackVar+"=262144",
			"FDRECV_TEST_PAD="+strings.Repeat("x", 120<<10)),
	})
	// The role's own stdin, a pipe, made non-blocking there.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	helperproc.Start(t, cmd)
	c := dial(t, path)
	defer c.Close()
	names := make([]string, 60)
	for i := range names {
		names[i] = strconv.Itoa(i) + strings.Repeat("n", 250)
	}
	if err := scmrights.Send(c, mustEncode(t, names, nil), dupFDs(t, r, len(names))...); err != nil {
		t.Fatal(err)
	}
	if st := readReply(t, c); st != fdwire.StatusExec {
		t.Errorf("reply status %d, want %d", st, fdwire.StatusExec)
	}
	code := exitStatus(t, cmd.Wait())
	wantErr := "fdrecv: re-exec /proc/self/exe: execve: argument list too long\n"
	if code != fdwire.StatusExec || stderr.String() != wantErr {
		t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr.String(), fdwire.StatusExec, wantErr)
	}
	if diff := cmp.Diff("census ok\n", stdout.String()); diff != "" {
		t.Errorf("fdrecv's own census (-want +got):\n%s", diff)
	}
}

// Stage 2 started directly, as stage 1 would, with the hidden interface.
// files become 3, 4, ...; the reply channel is a socketpair whose other
// end is returned. PROGRAM is this binary as listenfds.
func startStage2(t *testing.T, pc *proccensus.Census, files []*os.File, env ...string) (cmd *exec.Cmd, stdout, stderr *bytes.Buffer) {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin)
	cmd.Args = []string{fdrecv.ShimArg0, bin, "-test.run=^$"}
	cmd.Env = append(append(os.Environ(), childEnv(pc, helperproc.RoleVar+"=listenfds")...), env...)
	cmd.ExtraFiles = files
	stdout, stderr = new(bytes.Buffer), new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	helperproc.Start(t, cmd)
	return cmd, stdout, stderr
}

// replyPair returns a SOCK_SEQPACKET pair: the test's end as a conn, the
// other as a file to hand to stage 2.
func replyPair(t *testing.T) (*net.UnixConn, *os.File) {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(p[0]), "reply")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		unix.Close(p[1])
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	theirs := os.NewFile(uintptr(p[1]), "reply")
	t.Cleanup(func() { theirs.Close() })
	return c.(*net.UnixConn), theirs
}

// The refusal still exists: a target slot held by anything stage 1 did
// not pass (here an inherited /dev/null at 3, standing in for a runtime
// descriptor, which stage 1 no longer lets stage 2 create) is never
// overwritten. Stage 2 exits 10, tells the sender, and PROGRAM never runs.
// With a standard descriptor parked (stderr, at 6), the refusal is
// printed after it was put back: on the parked pipe, not on the
// placeholder stage 2 started with.
func TestStage2RefusesBusySlot(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	tests := []struct {
		name   string
		parked string // ShimStdioEnv
	}{
		{"nothing parked", ""},
		{"stderr parked", "2=6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer w.Close()
			null, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer null.Close()
			realR, realW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer realR.Close()
			defer realW.Close()
			c, theirs := replyPair(t)
			cmd, stdout, placeholder := startStage2(t, pc, []*os.File{null, r, theirs, realW},
				fdrecv.ShimEnv+"=4", fdrecv.ShimReplyEnv+"=5", fdrecv.ShimStdioEnv+"="+tt.parked)
			theirs.Close()
			realW.Close()
			parkedOut := readAllAsync(t, realR)
			if st := readReply(t, c); st != fdwire.StatusExec {
				t.Errorf("reply status %d, want %d", st, fdwire.StatusExec)
			}
			code := exitStatus(t, cmd.Wait())
			stderr, other := placeholder.String(), parkedOut()
			if tt.parked != "" {
				stderr, other = other, stderr
			}
			if code != fdwire.StatusExec || !strings.Contains(stderr, "descriptor 3 (/dev/null) is in use") || other != "" || stdout.Len() != 0 {
				t.Errorf("exit %d, stdout %q, stderr %q, other %q; want %d, nothing, in use, nothing", code, stdout.String(), stderr, other, fdwire.StatusExec)
			}
		})
	}
}

// A20 for the parked standard descriptors: a malformed or inconsistent
// HANDOFF_FDRECV_STDIO is refused (exit 10, the sender told) and nothing
// is dup3'ed onto 0, 1 or 2: the message reaches the real stderr, not a
// decoy (a pipe at 5 that a wrong "2=5"-style restore would make stderr)
// nor a received descriptor.
func TestStage2RefusesBadStdioSpec(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	tests := []struct {
		name string
		spec string // "unset": not in the environment
		want string
	}{
		{"unset", "unset", "HANDOFF_FDRECV_STDIO not set"},
		{"standard descriptor", "2=1", "bad HANDOFF_FDRECV_STDIO"},
		{"slot out of range", "3=5", "bad HANDOFF_FDRECV_STDIO"},
		{"negative slot", "-1=5", "bad HANDOFF_FDRECV_STDIO"},
		{"leading zero", "2=05", "bad HANDOFF_FDRECV_STDIO"},
		{"plus sign", "2=+5", "bad HANDOFF_FDRECV_STDIO"},
		{"trailing garbage", "2=5x", "bad HANDOFF_FDRECV_STDIO"},
		{"trailing comma", "2=5,", "bad HANDOFF_FDRECV_STDIO"},
		{"overflow", "2=99999999999999999999", "bad HANDOFF_FDRECV_STDIO"},
		{"same slot twice", "2=5,2=5", "bad HANDOFF_FDRECV_STDIO"},
		{"descending slots", "2=5,1=6", "bad HANDOFF_FDRECV_STDIO"},
		{"same descriptor twice", "1=5,2=5", "bad HANDOFF_FDRECV_STDIO"},
		{"a received descriptor", "2=3", "is also received or the reply channel"},
		{"the reply channel", "2=4", "is also received or the reply channel"},
		{"not open", "2=9", "was not inherited"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			received, rw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer received.Close()
			defer rw.Close()
			decoyR, decoyW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer decoyR.Close()
			defer decoyW.Close()
			c, theirs := replyPair(t)
			env := []string{fdrecv.ShimEnv + "=3", fdrecv.ShimReplyEnv + "=4"}
			if tt.spec != "unset" {
				env = append(env, fdrecv.ShimStdioEnv+"="+tt.spec)
			}
			cmd, stdout, stderr := startStage2(t, pc, []*os.File{rw, theirs, decoyW}, env...)
			theirs.Close()
			decoyW.Close()
			rw.Close()
			decoy := readAllAsync(t, decoyR)
			leaked := readAllAsync(t, received)
			if st := readReply(t, c); st != fdwire.StatusExec {
				t.Errorf("reply status %d, want %d", st, fdwire.StatusExec)
			}
			code := exitStatus(t, cmd.Wait())
			if code != fdwire.StatusExec || !strings.Contains(stderr.String(), tt.want) || stdout.Len() != 0 {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, nothing, %q", code, stdout.String(), stderr.String(), fdwire.StatusExec, tt.want)
			}
			if d, l := decoy(), leaked(); d != "" || l != "" {
				t.Errorf("written to the decoy: %q, to the received pipe: %q; want nothing", d, l)
			}
		})
	}
}

// One encoding per value: whatever parses formats back to the same text,
// and only slots 0 to 2 with distinct descriptors above 2 parse. Seeds
// in testdata/fuzz/FuzzParseParkedStdio.
func FuzzParseParkedStdio(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		p, err := fdrecv.ParseParkedStdio(s)
		if err != nil {
			if p != [3]int{-1, -1, -1} {
				t.Fatalf("%q: error %v with %v", s, err, p)
			}
			return
		}
		seen := map[int]bool{}
		for _, fd := range p {
			if fd == -1 {
				continue
			}
			if fd < 3 || seen[fd] {
				t.Fatalf("%q parsed to %v", s, p)
			}
			seen[fd] = true
		}
		if back := fdrecv.FormatParkedStdio(p); back != s {
			t.Fatalf("%q parsed to %v, which formats as %q", s, p, back)
		}
	})
}

// The real use, as in docs/fdcli.md: server1 serves a TCP listener; fdsend,
// run by server1, hands it to fdrecv, which execs server2 with it. A client
// keeps connecting throughout (at most 2000 connections or 20 s, ending once
// server2 answered 200). No connection may be refused or reset, every
// answer names its server, and both servers answer.
func TestMoveListenerBetweenServers(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	fdsendBin := buildFdsend(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(shortDir(t), "s")

	s1 := helperproc.Command(t, "server1", &helperproc.Options{Args: []string{fdsendBin, sock}, Env: childEnv(pc)})
	s1in, err := s1.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer s1in.Close()
	s1outPipe, err := s1.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helperproc.Start(t, s1)
	s1out := bufio.NewReader(s1outPipe)
	line, err := readLine(s1out)
	addr, ok := strings.CutPrefix(line, "addr ")
	if err != nil || !ok {
		t.Fatalf("server1 said %q, %v", line, err)
	}

	rc := helperproc.Command(t, "fdrecv", &helperproc.Options{
		Args: []string{"-socket", sock, "-n", "1", "-timeout", "30s", "--", bin, "-test.run=^$"},
		Env:  childEnv(pc, execRoleVar+"=server2"),
	})
	s2in, err := rc.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer s2in.Close()
	s2outPipe, err := rc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helperproc.Start(t, rc)
	s2out := bufio.NewReader(s2outPipe)
	waitFor(t, sock)

	var (
		mu       sync.Mutex
		answered = map[string]int{} // "server1 <pid>" -> count
		failures = map[string]int{} // class -> count
		sent     int
		server1  atomic.Int64
		server2  atomic.Int64
	)
	stop := make(chan struct{})
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		deadline := time.Now().Add(20 * time.Second)
		for i := 0; i < 2000 && time.Now().Before(deadline) && server2.Load() < 200; i++ {
			select {
			case <-stop:
				return
			default:
			}
			who, class := request(addr)
			mu.Lock()
			sent++
			if class != "" {
				failures[class]++
			} else {
				answered[who]++
			}
			mu.Unlock()
			switch {
			case strings.HasPrefix(who, "server1 "):
				server1.Add(1)
			case strings.HasPrefix(who, "server2 "):
				server2.Add(1)
			}
		}
	}()
	defer func() {
		close(stop)
		<-clientDone
	}()

	// Hand off once server1 has visibly served.
	for i := 0; server1.Load() < 50; i++ {
		if i > 1000 {
			t.Fatal("server1 did not answer 50 requests within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := io.WriteString(s1in, "handoff\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := readLine(s1out); err != nil || line != "handed" {
		t.Fatalf("server1 said %q, %v", line, err)
	}
	if line, err := readLine(s2out); err != nil || line != "serving "+strconv.Itoa(rc.Process.Pid) {
		t.Fatalf("server2 said %q, %v; want it serving as fdrecv's pid %d", line, err, rc.Process.Pid)
	}
	<-clientDone
	s1in.Close()
	s2in.Close()
	if err := s1.Wait(); err != nil {
		t.Errorf("server1: %v", err)
	}
	if err := rc.Wait(); err != nil {
		t.Errorf("fdrecv/server2: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	ok1 := answered["server1 "+strconv.Itoa(s1.Process.Pid)]
	ok2 := answered["server2 "+strconv.Itoa(rc.Process.Pid)]
	t.Logf("sent %d: server1 %d, server2 %d, failures %v", sent, ok1, ok2, failures)
	if len(failures) != 0 {
		t.Errorf("failed connections: %v", failures)
	}
	if ok1+ok2 != sent {
		t.Errorf("answers %v do not account for all %d requests", answered, sent)
	}
	if ok1 == 0 || ok2 == 0 {
		t.Errorf("want answers from both servers, got server1 %d, server2 %d", ok1, ok2)
	}
}

// request makes one connection and returns who answered, or the failure
// class: refused, reset, timeout or other.
func request(addr string) (who, class string) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", classify(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", classify(err)
	}
	return strings.TrimSpace(line), ""
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), err == io.EOF:
		return "reset"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other: " + err.Error()
}

// readLine reads one line within 20 s.
func readLine(r *bufio.Reader) (string, error) {
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := r.ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case x := <-ch:
		return x.s, x.err
	case <-time.After(20 * time.Second):
		return "", os.ErrDeadlineExceeded
	}
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

func mustEncode(t testing.TB, names []string, payload []byte) []byte {
	t.Helper()
	b, err := fdwire.EncodeMessage(names, payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
