//go:build linux

package cluster

import "time"

// SetHandoffBeforeUnsub makes the last Close of a name call fn right before
// it sends UNSUB, the name already out of the worker's subscriptions.
func SetHandoffBeforeUnsub(fn func(name string)) (restore func()) {
	hoBeforeUnsub = fn
	return func() { hoBeforeUnsub = nil }
}

// SetHandoffCloseWait sets how long Close waits for the master's DONE.
func SetHandoffCloseWait(d time.Duration) (restore func()) {
	prev := hoCloseWait
	hoCloseWait = d
	return func() { hoCloseWait = prev }
}
