package cluster_test

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestAgentSIGQUIT: SIGQUIT stops an agent's workers gracefully, as
// SIGTERM does and as a master's SIGQUIT does. Uncaught, it was the Go
// runtime's goroutine dump and exit 2 (this test binary's too), and the
// workers died by the parent-death signal without a drain.
func TestAgentSIGQUIT(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	a := startAgentPipe(t)
	a.send(startSpec(t, pc, 2))
	a.until("started", isType("started"))
	a.workersUp(2)
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGQUIT); err != nil {
		t.Fatal(err)
	}
	var types []string
	byes := 0
	for range 10000 {
		v, err := a.next(20 * time.Second)
		if err != nil {
			break
		}
		types = append(types, string(v.GetStringBytes("type")))
		if isType("log")(v) && string(v.GetStringBytes("msg")) == "agent-worker bye" {
			byes++
		}
	}
	if err := a.wait(); err != nil {
		t.Errorf("RunAgent after SIGQUIT: %v", err)
	}
	if len(types) == 0 || types[len(types)-1] != "exit" {
		t.Errorf("last frames %v, want ... exit", types)
	}
	if byes != 2 {
		t.Errorf("%d workers stopped gracefully (\"agent-worker bye\"), want 2\nframes:\n%s", byes, strings.Join(a.frames, "\n"))
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}
