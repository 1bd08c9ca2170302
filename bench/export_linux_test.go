//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"
)

// RunnerRole is the bench-runner helper role (main_linux_test.go): it
// stops on the runner's signals as main does, and runs the command in
// os.Args' place of a benchmark binary as the runner runs one, in a
// temporary directory it removes on the way out; it prints that
// directory's path first. With progress, it also writes a progress line
// to standard error every 20 ms while the command runs, as the runner
// does after each case.
func RunnerRole(progress bool, name string, args ...string) int {
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals...)
	defer stop()
	tmp, err := os.MkdirTemp("", "handoff-bench")
	if err != nil {
		return 1
	}
	defer os.RemoveAll(tmp)
	os.Stdout.WriteString(tmp + "\n")
	if progress {
		go func() {
			// Bounded by the command's own 60 s.
			for range 3000 {
				if ctx.Err() != nil {
					return
				}
				fmt.Fprintln(os.Stderr, "bench: [1/1] round 1/1 x")
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	r := &runner{dir: tmp, tmp: tmp, log: io.Discard, env: os.Environ()}
	// Only a signal ends the command, which is then killed: no success.
	if _, err := r.exec(ctx, tmp, nil, name, args...); err == nil || ctx.Err() == nil {
		return 1
	}
	return 0
}
