//go:build linux

package main_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	fdrecv "github.com/handoff-go/handoff/cmd/fdrecv"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/fdwire"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// A message too large is that sender's failure alone: it gets status 8
// and end of file, its descriptors are closed (fd census of this process,
// where fdrecv runs), and fdrecv goes on accepting, so the next sender is
// served. (The truncated control data case is TestTruncatedControlData.)
func TestOversizedMessageIsDropped(t *testing.T) {
	fdcensus.Verify(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	path := filepath.Join(shortDir(t), "s")
	wait := runInProcess(t, "-socket", path, "-timeout", "20s")
	bad := dial(t, path)
	defer bad.Close()
	if err := scmrights.Send(bad, make([]byte, fdwire.MaxMessage+100), dupFDs(t, r, 2)...); err != nil {
		t.Fatal(err)
	}
	if got := []int{readReply(t, bad), readReply(t, bad)}; !cmp.Equal(got, []int{8, -1}) {
		t.Errorf("replies to the oversized sender %v, want [8 -1] (status 8, end of file)", got)
	}
	sendPlaced(t, path, r)
	code, out := wait()
	if code != 0 || !strings.Contains(out, "dropped a connection: pid") || !strings.Contains(out, "larger than") || !strings.Contains(out, "0 p: pipe") {
		t.Errorf("exit %d, output:\n%s\nwant 0, the oversized message dropped, the pipe", code, out)
	}
}

// A zero-length record is malformed input, not a hang-up, though both
// read as 0 bytes: its sender gets reply 8 and end of file, and fdrecv
// goes on accepting. A peer that shut down its sending side without
// sending (end of file) is dropped without a reply, as before. Then the
// next sender is served.
func TestEmptyRecordGetsProtocolError(t *testing.T) {
	fdcensus.Verify(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	path := filepath.Join(shortDir(t), "s")
	wait := runInProcess(t, "-socket", path, "-timeout", "20s")
	empty := dial(t, path)
	defer empty.Close()
	rc, err := empty.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Sendmsg(int(fd), nil, nil, nil, unix.MSG_NOSIGNAL) }); err != nil || serr != nil {
		t.Fatalf("sending an empty record: %v, %v", err, serr)
	}
	if got := []int{readReply(t, empty), readReply(t, empty)}; !cmp.Equal(got, []int{8, -1}) {
		t.Errorf("replies to the empty record %v, want [8 -1] (status 8, end of file)", got)
	}
	shut := dial(t, path)
	defer shut.Close()
	if err := shut.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := readReply(t, shut); got != -1 {
		t.Errorf("reply to a peer that shut down sending: %d, want end of file", got)
	}
	sendPlaced(t, path, r)
	code, out := wait()
	if code != 0 || !strings.Contains(out, "an empty record") || !strings.Contains(out, "closed the connection without sending") || !strings.Contains(out, "0 p: pipe") {
		t.Errorf("exit %d, output:\n%s\nwant 0, the empty record and the hang-up dropped, the pipe", code, out)
	}
}

// Refusals never wait. Two refused peers from uid 65534 (one only
// connects, one sends a descriptor) must read their verdict (6), then end
// of file, never ECONNRESET or a timeout, and their descriptors are
// dropped unopened (the pipe has no reader left; this process's fd census
// is unchanged):
//   - behind more silent allowed connections than there are reading slots
//     (the per-connection deadline is a minute, the helper waits 10 s);
//   - when the sender's message follows a zero-length record, which reads
//     as 0 bytes just as the end of the queue does.
//
// Then the silent connections hang up and an allowed sender is served.
func TestRefusalsNeverWait(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	defer fdrecv.SetConnReadTimeout(time.Minute)()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	tests := []struct {
		name   string
		silent int
		mode   string
	}{
		{"behind silent connections in every slot", fdrecv.MaxPending + 1, "plain"},
		{"zero-length record before the message", 0, "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "s")
			wait := runInProcess(t, "-socket", path, "-timeout", "60s", "-allow-uid", "1234")
			silent := dialSilent(t, path, tt.silent)
			waitFor(t, path)
			cmd := helperproc.Command(t, "refused", &helperproc.Options{AsNobody: true, Args: []string{path, "2", tt.mode}, Env: childEnv(pc)})
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
			if _, err := io.WriteString(stdin, "read\n"); err != nil {
				t.Fatal(err)
			}
			var got []string
			for range 2 {
				line, err := readLine(out)
				if err != nil {
					t.Fatalf("helper: %v", err)
				}
				got = append(got, line)
			}
			if diff := cmp.Diff([]string{"status 6, eof", "status 6, eof, epipe"}, got); diff != "" {
				t.Errorf("what the refused peers read (-want +got):\n%s", diff)
			}
			if err := cmd.Wait(); err != nil {
				t.Errorf("helper: %v", err)
			}
			for _, s := range silent {
				s.Close()
			}
			c := dial(t, path)
			defer c.Close()
			if err := scmrights.Send(c, mustEncode(t, []string{"p"}, nil), dupFDs(t, r, 1)...); err != nil {
				t.Fatal(err)
			}
			if st := readReply(t, c); st != 0 {
				t.Errorf("reply status %d, want 0", st)
			}
			code, text := wait()
			if code != 0 || strings.Count(text, "dropped a connection") != tt.silent+2 || !strings.Contains(text, "0 p: pipe") {
				t.Errorf("exit %d, output:\n%s\nwant 0, %d dropped connections, the pipe", code, text, tt.silent+2)
			}
		})
	}
}

// Stage 2 retries "placed" while the sender is connected but its queue is
// full (EAGAIN on the non-blocking channel stage 1 shares): once the
// sender reads, "placed" arrives, then end of file, and PROGRAM runs with
// the descriptor at 3. Only a sender that is gone means "not placed".
func TestStage2PlacedWhenQueueFull(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	c, theirs := replyPair(t)
	rc, err := theirs.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	// Stage 1's channel is non-blocking; fill the sender's queue from
	// stage 2's end until the kernel says EAGAIN.
	filled := 0
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if serr = unix.SetNonblock(int(fd), true); serr != nil {
			return
		}
		for range 1 << 20 {
			if serr = unix.Sendto(int(fd), []byte("x"), unix.MSG_NOSIGNAL, nil); serr != nil {
				return
			}
			filled++
		}
	}); err != nil || !errors.Is(serr, unix.EAGAIN) {
		t.Fatalf("filling the reply channel: %v, %v after %d records", err, serr, filled)
	}
	cmd, stdout, stderr := startStage2(t, pc, []*os.File{r, theirs},
		fdrecv.ShimEnv+"=3", fdrecv.ShimReplyEnv+"=4", fdrecv.ShimStdioEnv+"=")
	theirs.Close()
	// Read only once stage 2 waits in poll (or has exited, as it did
	// when EAGAIN counted as "sender gone").
	wchan := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/wchan"
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(wchan)
		if err != nil || strings.Contains(string(b), "poll") || string(b) == "" {
			break
		}
	}
	buf := make([]byte, 64)
	for i := range filled {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, _, err := scmrights.Recv(c, buf, nil); err != nil || n != 1 {
			t.Fatalf("filler record %d: %d bytes, %v", i, n, err)
		}
	}
	if got := []int{readReply(t, c), readReply(t, c)}; !cmp.Equal(got, []int{0, -1}) {
		t.Errorf("replies %v, want [0 -1] (placed, end of file); stderr:\n%s", got, stderr.String())
	}
	if code := exitStatus(t, cmd.Wait()); code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, stderr.String())
	}
	var rep execReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("%v in %q", err, stdout.String())
	}
	// Stage 2 started directly: descriptors the test process inherited
	// reach PROGRAM too, and LISTEN_* is stage 1's to set.
	if diff := cmp.Diff(fdState{Ino: inodeOf(t, r)}, rep.FDs[3]); diff != "" {
		t.Errorf("what PROGRAM saw at 3 (-want +got):\n%s", diff)
	}
}

// Silent allowed connections cost a bounded amount: beyond MaxAccepted
// held at once (reading or waiting for a slot), the next one gets reply 1
// and end of file at once, not ECONNRESET, and its descriptor is dropped
// (fd census). Once the silent ones hang up, a sender is served.
func TestTooManyWaitingRefused(t *testing.T) {
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
	silent := dialSilent(t, path, fdrecv.MaxAccepted)
	extra := dial(t, path)
	defer extra.Close()
	// EPIPE if fdrecv has refused it already: the reply says why.
	_ = scmrights.Send(extra, mustEncode(t, []string{"x"}, nil), dupFDs(t, r, 1)...)
	if got := []int{readReply(t, extra), readReply(t, extra)}; !cmp.Equal(got, []int{1, -1}) {
		t.Errorf("replies to the connection beyond the bound %v, want [1 -1]", got)
	}
	for _, s := range silent {
		s.Close()
	}
	// fdrecv notices the hang-ups on its own time: until it has, a new
	// connection may still be beyond the bound (reply 1), so retry.
	st := -2
	for try := 0; try < 200 && st != 0; try++ {
		c := dial(t, path)
		if err := scmrights.Send(c, mustEncode(t, []string{"p"}, nil), dupFDs(t, r, 1)...); err != nil && !errors.Is(err, unix.EPIPE) {
			c.Close()
			t.Fatal(err)
		}
		if st = readReply(t, c); st == 1 {
			time.Sleep(10 * time.Millisecond)
		}
		c.Close()
	}
	if st != 0 {
		t.Errorf("reply status %d, want 0", st)
	}
	code, out := wait()
	if code != 0 || !strings.Contains(out, "connections already wait to be read") || !strings.Contains(out, "0 p: pipe") {
		t.Errorf("exit %d, output:\n%s\nwant 0, the connection beyond the bound refused, the pipe", code, out)
	}
}

// sendPlaced sends fdrecv at path a copy of f named "p", as the next sender
// after a dropped one, and checks that it was placed: status 0, then end
// of file.
func sendPlaced(t *testing.T, path string, f *os.File) {
	t.Helper()
	good := dial(t, path)
	defer good.Close()
	if err := scmrights.Send(good, mustEncode(t, []string{"p"}, nil), dupFDs(t, f, 1)...); err != nil {
		t.Fatal(err)
	}
	if got := []int{readReply(t, good), readReply(t, good)}; !cmp.Equal(got, []int{0, -1}) {
		t.Errorf("replies to the next sender %v, want [0 -1] (placed, end of file)", got)
	}
}
