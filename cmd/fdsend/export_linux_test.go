//go:build linux

package main

// SetBeforeSend installs f as the hook between the receiver's uid check
// and the send, for the external tests, and returns a function that
// removes it. Tests using it must not run fdsend concurrently.
func SetBeforeSend(f func()) (restore func()) {
	beforeSend = f
	return func() { beforeSend = nil }
}
