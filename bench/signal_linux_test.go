//go:build linux

package main_test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestRunnerSignals signals a runner (the bench-runner role) while it runs
// a benchmark binary (sleep): on SIGHUP, as on SIGTERM and SIGINT, it must
// stop cleanly, its child killed and its temporary directory removed; on
// SIGKILL, which it cannot handle, its child must die with it
// (Pdeathsig) instead of running on.
func TestRunnerSignals(t *testing.T) {
	tests := []struct {
		sig     syscall.Signal
		handled bool
	}{
		{syscall.SIGHUP, true},
		{syscall.SIGTERM, true},
		{syscall.SIGINT, true},
		{syscall.SIGKILL, false},
	}
	for _, tt := range tests {
		t.Run(tt.sig.String(), func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			cmd := helperproc.Command(t, "bench-runner", &helperproc.Options{Env: []string{pc.Env()}})
			var stdout strings.Builder
			cmd.Stdout = &stdout
			helperproc.Start(t, cmd)
			if err := waitFor(pc, "sleep", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Process.Signal(tt.sig); err != nil {
				t.Fatal(err)
			}
			err := cmd.Wait()
			tmp := strings.TrimSpace(stdout.String())
			if !strings.HasPrefix(tmp, os.TempDir()) {
				t.Fatalf("runner printed %q, want its temporary directory", tmp)
			}
			var exit *exec.ExitError
			if tt.handled {
				if err != nil {
					t.Errorf("runner: %v, want a clean stop", err)
				}
				if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("temporary directory %s left behind: %v", tmp, err)
				}
			} else if !errors.As(err, &exit) {
				t.Errorf("runner: %v, want it killed", err)
			}
			os.RemoveAll(tmp)
			// Gone now, not only once the census's cleanup killed it.
			if err := pc.WaitGone(5 * time.Second); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestRunnerStderrClosed closes the pipe a runner (the
// bench-runner-progress role) writes its progress to while it runs a
// benchmark binary (sleep), as ssh without a terminal or "2>&1 | head"
// do: the next progress line must stop it as SIGINT does, its child
// killed and its temporary directory removed, not kill it with SIGPIPE.
func TestRunnerStderrClosed(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	cmd := helperproc.Command(t, "bench-runner-progress", &helperproc.Options{Env: []string{pc.Env()}})
	var stdout strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = nil
	progress, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	helperproc.Start(t, cmd)
	if err := waitFor(pc, "sleep", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// One progress line has come, or will: the pipe holds 64 KiB.
	line := make([]byte, 1)
	if _, err := progress.Read(line); err != nil {
		t.Fatalf("no progress: %v", err)
	}
	if err := progress.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		err = <-done
		t.Errorf("runner still running 20 s after its stderr closed")
	}
	if err != nil {
		t.Errorf("runner: %v, want a clean stop", err)
	}
	tmp := strings.TrimSpace(stdout.String())
	if !strings.HasPrefix(tmp, os.TempDir()) {
		t.Fatalf("runner printed %q, want its temporary directory", tmp)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary directory %s left behind: %v", tmp, err)
	}
	os.RemoveAll(tmp)
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}

// waitFor waits until a process of pc's whose command line starts with
// prefix runs.
func waitFor(pc *proccensus.Census, prefix string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, p := range pc.Marked() {
			if strings.HasPrefix(p.Cmdline, prefix) {
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New(prefix + " did not start")
}
