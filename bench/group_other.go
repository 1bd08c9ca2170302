//go:build !linux

package main

import (
	"errors"
	"os/exec"
)

// benchmarksSupported refuses a run up front: the benchmarks are Linux
// only, and each case would otherwise fail as matching no benchmark.
func benchmarksSupported() error {
	return errors.New("the benchmarks run on Linux only; on this system the runner only renders an earlier run's results (-from)")
}

// ownGroup does nothing here: the benchmarks, the only commands that start
// helpers, are Linux only.
func ownGroup(*exec.Cmd) {}

// becomeSubreaper is Linux only (prctl); nothing here starts helpers.
func becomeSubreaper() (undo func(), err error) {
	return nil, errors.New("no child subreaper on this system")
}

// waitExited returns at once: Wait does the waiting here.
func waitExited(*exec.Cmd) error { return nil }

// killLeftovers finds nothing: no benchmark runs here to leave helpers.
func killLeftovers(*exec.Cmd) []string { return nil }
