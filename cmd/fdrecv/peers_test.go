//go:build linux

package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// roleRefused opens N connections (argument 1) to the fdrecv socket at
// argument 0; every second one sends a message carrying the read end of a
// pipe of its own right away, as fdsend does. It prints "connected", waits
// for a line on stdin, then prints, per connection, what it read: the
// reply statuses and "eof" (or the error), and for a sender whether the
// pipe still has a reader ("epipe": every copy of the read end it sent was
// closed, none kept by fdrecv). With "empty" as argument 2, each sender
// sends a zero-length record before its message.
func roleRefused() int {
	args := helperproc.Args()
	n, _ := strconv.Atoi(args[1])
	empty := len(args) > 2 && args[2] == "empty"
	conns := make([]*net.UnixConn, n)
	pipes := make([]*os.File, n)
	msg, _ := fdwire.EncodeMessage([]string{"x"}, []byte("x"))
	for i := range conns {
		c, err := net.Dial("unixpacket", args[0])
		if err != nil {
			fmt.Println("dial:", err)
			return 1
		}
		defer c.Close()
		conns[i] = c.(*net.UnixConn)
		if i%2 == 0 {
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer w.Close()
		pipes[i] = w
		if empty {
			if rc, err := conns[i].SyscallConn(); err == nil {
				_ = rc.Control(func(fd uintptr) {
					_ = unix.Sendmsg(int(fd), nil, nil, nil, unix.MSG_NOSIGNAL)
				})
			}
		}
		fd, err := scmrights.Dup(r)
		if err == nil {
			// EPIPE if fdrecv has refused us already: the reply says why.
			_ = scmrights.Send(conns[i], msg, fd)
			unix.Close(fd)
		}
		r.Close()
	}
	fmt.Println("connected")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return 1
	}
	buf := make([]byte, 2048)
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var got []string
		for range 3 {
			n, _, err := scmrights.Recv(c, buf, nil)
			if err == io.EOF {
				got = append(got, "eof")
				break
			}
			if err != nil {
				got = append(got, "read: "+err.Error())
				break
			}
			st, _, err := fdwire.DecodeReply(buf[:n])
			if err != nil {
				got = append(got, "reply: "+err.Error())
				break
			}
			got = append(got, "status "+strconv.Itoa(st))
		}
		if w := pipes[i]; w != nil {
			if _, err := w.Write([]byte("x")); errors.Is(err, syscall.EPIPE) {
				got = append(got, "epipe")
			} else {
				got = append(got, fmt.Sprintf("pipe write: %v", err))
			}
		}
		fmt.Println(strings.Join(got, ", "))
	}
	return 0
}

// A16 without a cost to others: with -allow-uid the socket is 0666, so
// anyone can connect. 30 connections from uid 65534, refused, held open
// and never reading, half of them having sent a descriptor, must not
// delay the owner's sender queued behind them: it is served within its own
// read deadline (10 s, against 1 s per refusal before). Each refused peer
// reads its verdict (6) and end of file, never ECONNRESET; the descriptors
// they sent were dropped unopened (their pipes have no reader left, and
// this process's fd census is unchanged).
func TestRefusedPeersDoNotDelay(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s")
	const refused = 30
	wait := runInProcess(t, "-socket", path, "-timeout", "60s", "-allow-uid", "1234")
	waitFor(t, path)
	cmd := helperproc.Command(t, "refused", &helperproc.Options{AsNobody: true, Args: []string{path, strconv.Itoa(refused)}, Env: childEnv(pc)})
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdoutPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helperproc.Start(t, cmd)
	out := bufio.NewReader(stdoutPipe)
	if line, err := readLine(out); err != nil || line != "connected" {
		t.Fatalf("helper said %q, %v", line, err)
	}
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
	code, text := wait()
	if code != 0 || strings.Count(text, "dropped a connection") != refused || !strings.Contains(text, "0 p: pipe") {
		t.Errorf("exit %d, output:\n%s\nwant 0, %d dropped connections, the pipe", code, text, refused)
	}
	if _, err := io.WriteString(stdin, "read\n"); err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for i := range refused {
		want = append(want, map[bool]string{false: "status 6, eof", true: "status 6, eof, epipe"}[i%2 == 1])
		line, err := readLine(out)
		if err != nil {
			t.Fatalf("helper: %v", err)
		}
		got = append(got, line)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("what the refused peers read (-want +got):\n%s", diff)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("helper: %v", err)
	}
}

// A silent allowed connection costs the sender queued behind it nothing:
// allowed connections are read side by side, and the first message wins.
// The per-connection deadline is a minute here, so the sender is served
// only if it is not queued behind the silent ones. Each silent one is then
// dropped and sees end of file.
func TestSilentPeersDoNotDelay(t *testing.T) {
	fdcensus.Verify(t)
	defer fdrecv.SetConnReadTimeout(time.Minute)()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	path := filepath.Join(shortDir(t), "s")
	wait := runInProcess(t, "-socket", path, "-timeout", "60s")
	silent := dialSilent(t, path, fdrecv.MaxPending-1)
	c := dial(t, path)
	defer c.Close()
	if err := scmrights.Send(c, mustEncode(t, []string{"p"}, nil), dupFDs(t, r, 1)...); err != nil {
		t.Fatal(err)
	}
	if st := readReply(t, c); st != 0 {
		t.Errorf("reply status %d, want 0", st)
	}
	code, out := wait()
	if code != 0 || strings.Count(out, "had sent nothing when fdrecv stopped reading") != len(silent) || !strings.Contains(out, "0 p: pipe") {
		t.Errorf("exit %d, output:\n%s\nwant 0, %d silent connections dropped, the pipe", code, out, len(silent))
	}
	for i, s := range silent {
		if st := readReply(t, s); st != -1 {
			t.Errorf("silent connection %d: status %d, want end of file", i, st)
		}
	}
}

// A sender that gave up (fdsend's -timeout, a kill) while its message
// waited in fdrecv's queue reports a failure, and its old server keeps
// serving: its descriptors must never be used. Every reading slot is held
// by a silent connection, so the sender's message waits unread while it
// hangs up; then the slots free up. fdrecv drops that message (it says
// so before the next sender connects), and the next sender's descriptors are the ones printed (fd census of fdrecv: the
// dropped ones were closed) or handed to PROGRAM (at 3, alone).
func TestSenderGoneBeforeTaken(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		program bool
	}{
		{"print", false},
		{"program", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			goneR, goneW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer goneR.Close()
			defer goneW.Close()
			takenR, takenW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer takenR.Close()
			defer takenW.Close()
			path := filepath.Join(shortDir(t), "s")
			args := []string{"-socket", path, "-n", "1", "-timeout", "20s"}
			env := childEnv(pc)
			if tt.program {
				args = append(args, "--", bin, "-test.run=^$")
				env = append(env, execRoleVar+"=listenfds")
			} else {
				args = append(args, "-json")
				env = append(env, censusVar+"=1")
			}
			cmd := helperproc.Command(t, "fdrecv", &helperproc.Options{Args: args, Env: env})
			var stdout bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, nil
			stderrPipe, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			helperproc.Start(t, cmd)
			stderr := bufio.NewReader(stderrPipe)
			silent := dialSilent(t, path, fdrecv.MaxPending)
			gone := dial(t, path)
			if err := scmrights.Send(gone, mustEncode(t, []string{"gone"}, nil), dupFDs(t, goneR, 1)...); err != nil {
				t.Fatal(err)
			}
			gone.Close()
			for _, s := range silent {
				s.Close()
			}
			// The next sender connects once the message was dropped, so
			// that it cannot have been dropped for losing to it.
			var said []string
			for len(said) < fdrecv.MaxPending+1 {
				line, err := readLine(stderr)
				if err != nil {
					t.Fatalf("fdrecv said %q, then %v", said, err)
				}
				said = append(said, line)
				if strings.Contains(line, "hung up after sending") {
					break
				}
			}
			c := dial(t, path)
			defer c.Close()
			if err := scmrights.Send(c, mustEncode(t, []string{"taken"}, nil), dupFDs(t, takenR, 1)...); err != nil {
				t.Fatal(err)
			}
			got := []int{readReply(t, c), readReply(t, c)}
			if diff := cmp.Diff([]int{0, -1}, got); diff != "" {
				t.Errorf("replies to the live sender (-want +got):\n%s", diff)
			}
			rest, _ := io.ReadAll(stderr)
			if code := exitStatus(t, cmd.Wait()); code != 0 {
				t.Fatalf("exit %d, want 0; stderr:\n%s\n%s", code, strings.Join(said, "\n"), rest)
			}
			if tt.program {
				var rep execReport
				if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
					t.Fatalf("%v in %q", err, stdout.String())
				}
				want := execReport{ListenFDs: "1", ListenFDNames: "taken", FDs: map[int]fdState{3: {Ino: inodeOf(t, takenR)}}}
				if diff := cmp.Diff(want, rep, cmpopts.IgnoreFields(execReport{}, "PID", "ListenPID", "Stdio")); diff != "" {
					t.Errorf("what PROGRAM saw (-want +got):\n%s", diff)
				}
				return
			}
			report, census, _ := strings.Cut(stdout.String(), "\n")
			var rep struct{ FDs []map[string]any }
			if err := json.Unmarshal([]byte(report), &rep); err != nil {
				t.Fatalf("%v in %q", err, stdout.String())
			}
			want := []map[string]any{{"index": 0.0, "name": "taken", "kind": "pipe", "path": "pipe:[" + strconv.FormatUint(inodeOf(t, takenR), 10) + "]"}}
			if diff := cmp.Diff(want, rep.FDs); diff != "" {
				t.Errorf("descriptors printed (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff("census ok\n", census); diff != "" {
				t.Errorf("fdrecv's own census (-want +got):\n%s", diff)
			}
		})
	}
}

// The commit point of the hand-off: stage 2 execs PROGRAM only if the
// "placed" reply was delivered. Here the sender hung up before stage 2
// started: PROGRAM (this binary as listenfds) never runs, stage 2 exits 1
// and says why.
func TestStage2SenderGone(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	c, theirs := replyPair(t)
	c.Close()
	cmd, stdout, stderr := startStage2(t, pc, []*os.File{r, theirs},
		fdrecv.ShimEnv+"=3", fdrecv.ShimReplyEnv+"=4", fdrecv.ShimStdioEnv+"=")
	theirs.Close()
	code := exitStatus(t, cmd.Wait())
	if code != fdwire.StatusFailure || stdout.Len() != 0 || !strings.Contains(stderr.String(), "could not tell the sender the descriptors were placed: sendto: broken pipe") {
		t.Errorf("exit %d, stdout %q, stderr %q; want %d, nothing, could not tell the sender", code, stdout.String(), stderr.String(), fdwire.StatusFailure)
	}
}

// Paths and unix socket addresses come from the sender: the text report
// prints each Go-quoted when it holds anything not printable (a newline
// that would forge a report line, a terminal escape, a NUL in an abstract
// name); other names, spaces and quotes included, as they are.
func TestDescribeQuotesOddNames(t *testing.T) {
	fdcensus.Verify(t)
	dir := shortDir(t)
	files := []struct {
		name   string
		quoted bool
	}{
		{"a\nsender: pid 1 uid 0 gid 0", true},
		{"b\x1b[2K", true},
		{`"c`, false}, // the path starts with "/"
		{"d e", false},
	}
	var fds []int
	var names, want []string
	for i, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		fh, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		fds = append(fds, dupFDs(t, fh, 1)...)
		name := "f" + strconv.Itoa(i)
		names = append(names, name)
		if f.quoted {
			p = strconv.Quote(p)
		}
		want = append(want, strconv.Itoa(i)+" "+name+": file "+p)
	}
	unixPath := filepath.Join(dir, "u\n9 x: pipe")
	ln, err := net.Listen("unix", unixPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	abstract := "@fdr\x00" + strconv.Itoa(os.Getpid())
	aln, err := net.Listen("unix", abstract)
	if err != nil {
		t.Fatal(err)
	}
	defer aln.Close()
	fds = append(fds, dupFDs(t, ln.(syscall.Conn), 1)...)
	fds = append(fds, dupFDs(t, aln.(syscall.Conn), 1)...)
	names = append(names, "u", "abs")
	want = append(want,
		"4 u: unix listener "+strconv.Quote(unixPath),
		"5 abs: unix listener "+strconv.Quote(abstract),
		`payload: "p"`, "")

	path := filepath.Join(dir, "s")
	wait := runInProcess(t, "-socket", path, "-timeout", "20s")
	c := dial(t, path)
	defer c.Close()
	if err := scmrights.Send(c, mustEncode(t, names, []byte("p")), fds...); err != nil {
		t.Fatal(err)
	}
	readReply(t, c)
	code, out := wait()
	got := strings.Split(out, "\n")
	if code != 0 || len(got) == 0 || !strings.HasPrefix(got[0], "sender: ") {
		t.Fatalf("exit %d, output %q", code, out)
	}
	if diff := cmp.Diff(want, got[1:]); diff != "" {
		t.Errorf("report lines (-want +got):\n%s", diff)
	}
}

// dialSilent makes n connections to the fdrecv at path that send nothing;
// each is closed when the test ends, if not before.
func dialSilent(t *testing.T, path string, n int) []*net.UnixConn {
	t.Helper()
	silent := make([]*net.UnixConn, n)
	for i := range silent {
		silent[i] = dial(t, path)
		t.Cleanup(func() { silent[i].Close() })
	}
	return silent
}
