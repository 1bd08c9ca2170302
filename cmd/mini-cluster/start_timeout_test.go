//go:build linux

package main

import (
	"bytes"
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestStartTimeoutFlag: -start-timeout is bounded (exit 2 outside 100ms to
// 24h) and cannot be combined with -config, which sets it per group.
func TestStartTimeoutFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-start-timeout", "99ms", "-listen", "127.0.0.1:0", "true"}, "-start-timeout 99ms"},
		{[]string{"-start-timeout", "25h", "-listen", "127.0.0.1:0", "true"}, "-start-timeout 25h0m0s"},
		{[]string{"-start-timeout", "-1s", "-listen", "127.0.0.1:0", "true"}, "-start-timeout -1s"},
		{[]string{"-start-timeout", "5s", "-config", "/nonexistent.json"}, "-start-timeout cannot be combined"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), tc.args, nil, &stderr, &stderr)
		if code := exitCode(err, &stderr); code != exitUsage {
			t.Errorf("%q: exit code %d (err %v), want %d", tc.args, code, err, exitUsage)
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: stderr %q lacks %q", tc.args, stderr.String(), tc.want)
		}
	}
}

// TestStartTimeoutKills: a worker that never sends READY=1 is killed at
// -start-timeout, not at the 30 s default.
func TestStartTimeoutKills(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	prog := writeScript(t, "#!/bin/sh\nexec sleep 1021\n")
	m := startMaster(t, pc, nil, "-n", "1", "-start-timeout", "500ms", "-listen", "127.0.0.1:0", "-log-format", "json", prog)
	if !waitFor(10*time.Second, func() bool {
		for _, r := range m.records() {
			if r.Msg == "worker exited unexpectedly" || r.Msg == "worker exited" {
				return true
			}
		}
		return false
	}) {
		t.Fatal("the never-ready worker was not killed within 10 s")
	}
	for _, r := range m.records() {
		if strings.HasPrefix(r.Msg, "worker exited") && r.Signal != "killed" {
			t.Errorf("worker exit %+v, want killed by the start timeout", r)
		}
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != exitOK {
		t.Errorf("exit code %d, want 0", code)
	}
}
