//go:build linux

package cluster

import "log/slog"

// HeartbeatEvery is the heartbeat period a worker takes from WATCHDOG_USEC
// v, 0 for none.
var HeartbeatEvery = heartbeatEvery

// LogQueue is a worker's log forwarding into a queue of its own size,
// without a channel behind it.
type LogQueue struct{ w *wstate }

// NewLogQueue returns a LogQueue that holds up to n frames.
func NewLogQueue(n int) *LogQueue {
	return &LogQueue{w: &wstate{ch: &wchannel{out: make(chan []byte, n), gone: make(chan struct{})}}}
}

// Handler returns a LogHandler (level DEBUG) forwarding into q.
func (q *LogQueue) Handler() slog.Handler { return &fwdHandler{w: q.w, level: slog.LevelDebug} }

// Drain takes every frame queued, as the channel's writer does.
func (q *LogQueue) Drain() [][]byte {
	var out [][]byte
	for len(q.w.ch.out) > 0 {
		b, _ := q.w.ch.dequeue()
		out = append(out, b)
	}
	return out
}
