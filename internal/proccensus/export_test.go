//go:build linux

package proccensus

import "time"

// SetGoneTimeout shortens how long a census's cleanup waits, for tests that
// make it fail on purpose; it returns a function restoring the old value.
func SetGoneTimeout(d time.Duration) (restore func()) {
	old := goneTimeout
	goneTimeout = d
	return func() { goneTimeout = old }
}
