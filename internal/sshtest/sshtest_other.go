//go:build !linux

package sshtest

import "testing"

// Start skips the test: the harness relies on Linux (/proc, /run/sshd).
func Start(t testing.TB) *Server {
	t.Helper()
	t.Skip("sshtest: a real sshd harness is supported on Linux only")
	return nil
}

// NewKey skips the test: see Start.
func NewKey(t testing.TB) (priv, pub string) {
	t.Helper()
	t.Skip("sshtest: supported on Linux only")
	return "", ""
}
