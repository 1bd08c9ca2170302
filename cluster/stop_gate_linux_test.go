package cluster

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a log writer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStopWaitingForExecIsLogged: a stop that finds an upgrade between
// its last check and its execve (upgrade.gate held) says so before it
// waits: if the exec succeeds, the stop is lost with the old image, and
// it left no record at all (stop signals are acted on before logged).
func TestStopWaitingForExecIsLogged(t *testing.T) {
	var log lockedBuffer
	m := &master{log: slog.New(slog.NewTextHandler(&log, nil)), up: &upgrade{}, stopReq: stopLatch{ch: make(chan struct{})}}
	m.up.gate.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.stop()
	}()
	const want = `msg="stop: waiting for the in-place upgrade's execve; lost if it succeeds (stop again)"`
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), want) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(log.String(), want) {
		t.Errorf("no record of the stop waiting for the exec: %q", log.String())
	}
	if m.stopRequested() {
		t.Error("the stop was recorded while the gate was held")
	}
	m.up.gate.Unlock()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return once the gate was released")
	}
	if !m.stopRequested() {
		t.Error("the stop was not recorded once the gate was released")
	}
	// Without an upgrade at its exec, nothing is said.
	before := log.String()
	m.stop()
	if log.String() != before {
		t.Errorf("a stop outside the exec window logged %q", strings.TrimPrefix(log.String(), before))
	}
}
