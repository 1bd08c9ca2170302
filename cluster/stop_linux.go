package cluster

import "sync"

// stopLatch remembers the first stop request, even one made before Run
// started anything, so that no stop is ever lost; later ones are no-ops.
// Create it with its channel: stopLatch{ch: make(chan struct{})}.
type stopLatch struct {
	once sync.Once
	ch   chan struct{}
}

// request records a stop request.
func (l *stopLatch) request() { l.once.Do(func() { close(l.ch) }) }

// done is closed by the first request.
func (l *stopLatch) done() <-chan struct{} { return l.ch }

// requested reports whether a stop was requested.
func (l *stopLatch) requested() bool {
	select {
	case <-l.ch:
		return true
	default:
		return false
	}
}
