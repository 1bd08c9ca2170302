package main

import "io"

// Run and ExitCode expose the command's internals to the external test
// package.
var (
	Run      = run
	ExitCode = exitCode
)

// Parse runs the command-line checks alone: nothing is opened.
func Parse(args []string) error {
	_, err := parse(args, io.Discard)
	return err
}
