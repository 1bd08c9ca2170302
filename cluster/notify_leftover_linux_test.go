//go:build linux

package cluster_test

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// TestStopLeftoversEmbedded: a master embedded in a program stops the
// descendants of its workers that escaped their process groups (setsid),
// and leaves the program's own children alone, even one started after the
// workers, running the same kind of process.
func TestStopLeftoversEmbedded(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(t.TempDir(), "worker.sh")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\nsetsid sleep 1012 &\nexec sleep 1011\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	m, err := cluster.New(&cluster.Config{
		Program:         prog,
		Workers:         1,
		Listen:          []string{"127.0.0.1:0"},
		Ready:           cluster.ReadyStarted,
		ShutdownTimeout: time.Second,
		Shim:            exe,
		Env:             append(os.Environ(), pc.Env()),
		Logger:          slog.New(slog.NewTextHandler(&out, nil)),
		Stdout:          io.Discard,
		Stderr:          io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := runMaster(t, m, 30*time.Second)
	<-m.Ready()
	var orphan int
	deadline := time.Now().Add(10 * time.Second)
	for orphan == 0 && time.Now().Before(deadline) {
		for _, p := range pc.Marked() {
			if strings.Contains(p.Cmdline, "sleep 1012") {
				orphan = p.PID
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if orphan == 0 {
		t.Fatal("the setsid descendant did not start")
	}
	// The program's own child, with the program's environment.
	own := exec.Command("sleep", "1012")
	own.Env = append(os.Environ(), pc.Env())
	if err := own.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		own.Process.Kill()
		own.Wait()
	}()
	ofd, err := unix.PidfdOpen(orphan, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ofd)
	stop()
	if !exited(ofd, 5*time.Second) {
		t.Errorf("the worker's setsid descendant %d survived the stop", orphan)
	}
	if err := own.Process.Signal(unix.Signal(0)); err != nil {
		t.Errorf("the program's own child was signalled: %v", err)
	}
	if !strings.Contains(out.String(), "stopping a leftover process of a worker") {
		t.Errorf("leftover not logged:\n%s", out.String())
	}
}

func exited(pidfd int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		p := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(p, 0); n == 1 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
