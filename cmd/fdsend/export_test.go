package main

// Run and ExitCode expose the command's internals to the external test
// package.
var (
	Run      = run
	ExitCode = exitCode
)
