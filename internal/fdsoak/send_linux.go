//go:build linux

package fdsoak

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"golang.org/x/sys/unix"
)

// caseTimeout bounds one case, sending and the helper's wait together.
const caseTimeout = 2 * time.Minute

// Soak is the sending side of one case. Its methods must be called from
// the test's goroutine, but for Message, which the sending goroutine
// calls.
type Soak struct {
	// Spec is the transport-independent part of what the helper needs.
	Spec Spec
	// Context ends at Spec.Deadline; the sender checks it between messages.
	Context context.Context

	pool       []int // descriptors, by pool index
	idx        []int // Message's scratch
	near       []*net.UnixConn
	far        []*os.File
	out        strings.Builder
	goroutines int
}

// Start begins a case of the given number of messages (normally
// Messages()). It verifies the test's descriptor census (fdcensus.Verify),
// so it must come first, before anything opens a descriptor, and the test
// must not be parallel. It opens the pool, closed when the test ends.
func Start(t testing.TB, messages int) *Soak {
	t.Helper()
	fdcensus.Verify(t)
	s := &Soak{goroutines: runtime.NumGoroutine()}
	ctx, cancel := context.WithTimeout(t.Context(), caseTimeout)
	t.Cleanup(cancel)
	deadline, _ := ctx.Deadline()
	s.Context = ctx
	s.pool = make([]int, 0, PoolSize)
	t.Cleanup(func() {
		for _, fd := range s.pool {
			unix.Close(fd)
		}
	})
	ids := make([]ID, PoolSize)
	for i := range ids {
		fd, err := unix.MemfdCreate("fdsoak", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		s.pool = append(s.pool, fd)
		if ids[i], err = Identify(fd); err != nil {
			t.Fatalf("fstat %d: %v", fd, err)
		}
	}
	s.Spec = Spec{Messages: messages, Seed: Seed, Deadline: deadline, Pool: ids}
	return s
}

// Message returns message seq as the sender sends it: the pool descriptors
// it carries, in order, appended to fds[:0], and its payload, appended to
// payload[:0]. The descriptors stay the pool's. Message reuses scratch
// space: call it from one goroutine at a time (the sender's).
func (s *Soak) Message(seq int, fds []int, payload []byte) ([]int, []byte) {
	s.idx, payload = Plan(s.Spec.Seed, seq, s.idx, payload)
	fds = fds[:0]
	for _, j := range s.idx {
		fds = append(fds, s.pool[j])
	}
	return fds, payload
}

// Connect opens n connected socket pairs with pair (scmrights.Socketpair
// for the wanted socket type) and sets Spec.Sockets to n. It returns the
// near ends, with the case's write deadline set, for the transport to send
// on; the far ends are for the helper (Remotes). Run closes the far ends once the helper has its
// copies and the near ends once sending is done, so the receivers see end
// of stream; all are closed when the test ends in any case, so a transport
// wrapping a near end need not close it.
func (s *Soak) Connect(t testing.TB, n int, pair func() (*net.UnixConn, *os.File, error)) []*net.UnixConn {
	t.Helper()
	t.Cleanup(s.closeSockets)
	s.Spec.Sockets = n
	for range n {
		near, far, err := pair()
		if err != nil {
			t.Fatal(err)
		}
		s.near = append(s.near, near)
		s.far = append(s.far, far)
		if err := near.SetWriteDeadline(s.Spec.Deadline); err != nil {
			t.Fatal(err)
		}
	}
	return s.near
}

// Remotes returns the far ends of the sockets Connect opened, in order: the
// helper's ExtraFiles, so descriptors 3, 4, ... there.
func (s *Soak) Remotes() []*os.File { return s.far }

func (s *Soak) closeSockets() {
	for _, f := range s.far {
		f.Close()
	}
	for _, c := range s.near {
		c.Close()
	}
}

// Output is where the helper's standard output must go (set it as the
// command's Stdout before starting it): Run reads the Report from it.
func (s *Soak) Output() io.Writer { return &s.out }

// Run drives a case once the helper has started with Remotes as its
// ExtraFiles: it closes the far ends here, runs send, which sends messages
// 0..Spec.Messages-1 on the near ends honouring ctx, closes the near ends
// so every receiver sees end of stream, and waits for the helper (killed
// if the case's deadline passes). It fails the test if sending or the
// helper fails, if the sender's census changed while sending (the sender
// keeps no copies, TESTPLAN A18) or if goroutines are not back to their
// count at Start.
//
// It returns the helper's report and the report a pass needs; the caller
// compares them (with go-cmp, as a (-want +got) diff).
func (s *Soak) Run(t testing.TB, helper *exec.Cmd, send func(ctx context.Context) error) (got, want Report) {
	t.Helper()
	n := s.Spec.Messages
	for _, f := range s.far {
		f.Close()
	}
	// The census once everything is set up: sending must not change it.
	before, err := fdcensus.Take(0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sendErr := send(s.Context)
	sendTime := time.Since(start)
	if sendErr == nil {
		if err := fdcensus.Compare(0, before); err != nil {
			t.Errorf("sender census after %d messages: %v", n, err)
		}
	}
	for _, c := range s.near {
		c.Close()
	}
	waitErr := wait(s.Context, helper)
	if sendErr != nil || waitErr != nil {
		t.Fatalf("send: %v; helper: %v\nhelper said: %s", sendErr, waitErr, s.out.String())
	}
	if err := json.Unmarshal([]byte(s.out.String()), &got); err != nil {
		t.Fatalf("helper report %q: %v", s.out.String(), err)
	}
	want = Report{Messages: n, FDs: plannedFDs(s.Spec.Seed, n)}
	t.Logf("%d messages, %d descriptors sent in %v", n, want.FDs, sendTime.Round(time.Millisecond))
	goroutinesSettle(t, s.goroutines)
	return got, want
}

// plannedFDs is how many descriptors messages 0..n-1 carry in all, from the
// plan rather than from the sender, so a sender that skips some cannot
// lower what the receiver must see.
func plannedFDs(seed uint64, n int) int {
	var idx []int
	var payload []byte
	total := 0
	for seq := range n {
		idx, payload = Plan(seed, seq, idx, payload)
		total += len(idx)
	}
	return total
}

// wait waits for cmd, killing it if ctx ends first.
func wait(ctx context.Context, cmd *exec.Cmd) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}

// goroutinesSettle waits until the goroutine count is back to at most want:
// goroutines of exec's output copy and of the poller exit asynchronously.
func goroutinesSettle(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(fdcensus.Settle)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			t.Errorf("goroutines: %d, want at most %d", runtime.NumGoroutine(), want)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
