package cluster

import (
	"io"
	"log/slog"
	"time"

	"github.com/handoff-go/handoff/ipcframe"
)

// SetAgentFlushTimeout sets how long an agent lets its last frames out at
// exit, for tests of a stuck wire; the returned function restores it. Call
// it before the agent starts and restore after it returned.
func SetAgentFlushTimeout(d time.Duration) (restore func()) {
	prev := agentFlushTimeout
	agentFlushTimeout = d
	return func() { agentFlushTimeout = prev }
}

// AgentWire is an agent's writer side (its queues and writeLoop) on w,
// for tests of what reaches the wire.
type AgentWire struct{ a *agent }

// NewAgentWire starts an agent's writeLoop on w; Close stops it.
func NewAgentWire(w io.Writer) *AgentWire {
	a := &agent{w: ipcframe.NewWriter(w, &ipcframe.WriterOptions{MaxFrame: maxAgentFrame}),
		wake: make(chan struct{}, 1), wrote: make(chan struct{})}
	go a.writeLoop()
	return &AgentWire{a: a}
}

// Enqueue queues a raw frame, as a log record's or another's.
func (w *AgentWire) Enqueue(frame []byte, isLog bool) { w.a.enqueue(frame, isLog) }

// Ack queues an ack of seq.
func (w *AgentWire) Ack(seq int64) { w.a.send(&agentMsg{Type: "ack", Seq: seq}) }

// Logger logs through the agent's log handler, as its Master does.
func (w *AgentWire) Logger() *slog.Logger { return slog.New(&agentLogHandler{a: w.a}) }

// Dropped is the count of log records the agent dropped.
func (w *AgentWire) Dropped() int64 { return w.a.dropped.Load() }

// Close lets writeLoop write what is queued and waits for it to return.
func (w *AgentWire) Close() {
	w.a.closeQueue()
	<-w.a.wrote
}

// Settle waits (10 s at most) until writeLoop has taken every queued
// frame.
func (w *AgentWire) Settle() bool {
	for range 1000 {
		w.a.mu.Lock()
		n := len(w.a.queue)
		w.a.mu.Unlock()
		if n == 0 {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}
