package supervise_test

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestCapturedOutputBlocking: a worker's stdin and captured stdout and
// stderr are blocking descriptors, as a program not written in Go expects,
// and a burst far beyond the pipe's capacity written by one (dd, a single
// 4 MiB write(2)) arrives complete. O_NONBLOCK belongs to the open file
// description the worker shares with the supervisor's pipe end: set there,
// dd gets EAGAIN once the pipe is full and loses output (Python's print
// raises BlockingIOError).
func TestCapturedOutputBlocking(t *testing.T) {
	for _, tool := range []string{"sh", "dd", "grep"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: %v", tool, err)
		}
	}
	fdcensus.Verify(t)
	c := proccensus.New(t)
	const burst = 4 << 20
	// $$ in a command substitution is still the shell's pid, so the
	// flags are those of the worker's own descriptors 0, 1 and 2.
	script := `printf 'FLAGS %s %s %s\n' "$(grep '^flags:' /proc/$$/fdinfo/0)" "$(grep '^flags:' /proc/$$/fdinfo/1)" "$(grep '^flags:' /proc/$$/fdinfo/2)"
dd if=/dev/zero bs=` + strconv.Itoa(burst) + ` count=1 2>/dev/null
echo "DD $?" >&2`
	spec := supervise.Spec{Path: "/bin/sh", Args: []string{"-c", script}, Env: append(os.Environ(), c.Env())}
	r := start(t, spec, testOptions(supervise.Options{ReadyOnStart: true, Restart: supervise.RestartNever, OutputBuffer: 1 << 14}))
	var flags []string
	var dd string
	got := 0
	deadline := time.After(30 * time.Second)
	// Once dd failed, the rest of the burst never comes.
	for flags == nil || dd == "" || dd == "DD 0" && got < burst {
		select {
		case l := <-r.lines:
			switch {
			case l.Stream == supervise.Stderr && strings.HasPrefix(l.Text, "DD "):
				dd = l.Text
			case l.Stream == supervise.Stdout && strings.HasPrefix(l.Text, "FLAGS "):
				flags = strings.Fields(l.Text)[1:]
			case l.Stream == supervise.Stdout:
				got += len(l.Text)
			default:
				t.Logf("%v: %q", l.Stream, l.Text)
			}
		case <-deadline:
			t.Fatalf("after 30 s: flags %q, %q, %d of %d bytes; events:\n%s", flags, dd, got, burst, r.dump())
		}
	}
	// flags: "flags:" and an octal value, for each descriptor.
	var nonblock []bool
	for i := 1; i < len(flags); i += 2 {
		fl, err := strconv.ParseUint(flags[i], 8, 64)
		if err != nil {
			t.Fatalf("flags %q: %v", flags, err)
		}
		nonblock = append(nonblock, fl&unix.O_NONBLOCK != 0)
	}
	if diff := cmp.Diff([]bool{false, false, false}, nonblock); diff != "" {
		t.Errorf("O_NONBLOCK on the worker's stdin, stdout, stderr (-want +got):\n%s", diff)
	}
	if dd != "DD 0" || got != burst {
		t.Errorf("dd: %q, %d of %d bytes arrived", dd, got, burst)
	}
	r.waitKind(supervise.Exited, 10*time.Second)
	if err := c.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}
