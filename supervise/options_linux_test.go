package supervise_test

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestRunDoneContextStartsNothing: Run with a context that is already done
// starts no worker (none forked only to be stopped): it emits Stopped alone
// and returns nil, as it does for a TERM that HandleSignals caught before
// Run.
func TestRunDoneContextStartsNothing(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	sup, err := supervise.New(workerSpec(t, c), testOptions(supervise.Options{Workers: 3, ReadyOnStart: true}))
	if err != nil {
		t.Fatal(err)
	}
	kinds := make(chan []string, 1)
	go func() {
		var ks []string
		for ev := range sup.Events() {
			ks = append(ks, ev.Kind.String())
		}
		kinds <- ks
	}()
	go func() {
		for range sup.Lines() {
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		_ = sup.Kill()
		<-done
		t.Fatal("Run with a done context did not return")
	}
	if d := cmp.Diff([]string{supervise.Stopped.String()}, <-kinds); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
	if err := c.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestStopSignalChecked: New refuses a StopSignal that would make every stop
// a silent wait for the SIGKILL at the end of StopTimeout (0 probes, the
// kernel refuses numbers past SIGRTMAX, SIGCONT undoes SIGSTOP), with
// ErrInvalid; and ExtendStartPID's bad duration wraps ErrInvalid too.
func TestStopSignalChecked(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{0, -1, 200, syscall.SIGSTOP} {
		_, err := supervise.New(supervise.Spec{Path: "/bin/true"}, &supervise.Options{Logger: quiet, StopSignal: sig})
		if !errors.Is(err, supervise.ErrInvalid) {
			t.Errorf("New(StopSignal %d): %v, want ErrInvalid", int(sig), err)
		}
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGKILL, syscall.SIGQUIT, 34, 64} {
		if _, err := supervise.New(supervise.Spec{Path: "/bin/true"}, &supervise.Options{Logger: quiet, StopSignal: sig}); err != nil {
			t.Errorf("New(StopSignal %v): %v", sig, err)
		}
	}
	sup, err := supervise.New(supervise.Spec{Path: "/bin/true"}, &supervise.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []time.Duration{0, -time.Second} {
		if err := sup.ExtendStartPID(1, d); !errors.Is(err, supervise.ErrInvalid) {
			t.Errorf("ExtendStartPID(1, %v): %v, want ErrInvalid", d, err)
		}
	}
}

// TestStopSignalKill: SIGKILL as StopSignal means no grace: a worker that
// ignores SIGTERM dies of the stop signal itself, long before StopTimeout.
func TestStopSignalKill(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	r := start(t, workerSpec(t, c, "HANG_ON_TERM=1"), testOptions(supervise.Options{StopSignal: syscall.SIGKILL, StopTimeout: time.Hour}))
	r.waitKind(supervise.Ready, 10*time.Second)
	if err := r.sup.Stop(); err != nil {
		t.Fatal(err)
	}
	ex := r.waitKind(supervise.Exited, 15*time.Second)
	if ex.Signal != syscall.SIGKILL || !ex.Requested {
		t.Errorf("Exited %+v, want a requested death by SIGKILL", ex)
	}
	if !r.waitRun(15 * time.Second) {
		t.Fatalf("Run did not return; events:\n%s", r.dump())
	}
	if err := c.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}
