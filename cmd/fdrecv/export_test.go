package main

import "time"

// Run and ExitCode expose the command's internals to the external test
// package.
var (
	Run      = run
	ExitCode = exitCode
)

// SetConnReadTimeout shortens the per-connection read deadline for a test;
// the returned function restores it.
func SetConnReadTimeout(d time.Duration) (restore func()) {
	old := connReadTimeout
	connReadTimeout = d
	return func() { connReadTimeout = old }
}
