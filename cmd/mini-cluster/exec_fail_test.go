//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// writeScript writes an executable script into a new directory.
func writeScript(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "worker.sh")
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestExecFailsAtStartup: a program that passes the start-up check (it
// exists and is executable) but cannot be executed is a start-up error:
// exit 1 at once, naming the missing #! interpreter, rather than ~15 s of
// respawns and then a master holding the ports with no worker.
func TestExecFailsAtStartup(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"missing interpreter", "#!/nonexistent/interp\necho hi\n", "its interpreter /nonexistent/interp is missing: execve: no such file or directory"},
		{"no format", "\x00\x01\x02\x03 not a program\n", "execve: exec format error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			prog := writeScript(t, tc.body)
			m := startMaster(t, pc, nil, "-n", "2", "-listen", "127.0.0.1:0", "-log-format", "json", prog)
			if code := m.wait(10 * time.Second); code != exitFailure {
				t.Errorf("exit code %d, want %d", code, exitFailure)
			}
			log := m.log.String()
			if !strings.Contains(log, "mini-cluster: cluster: exec "+prog+": "+tc.want) {
				t.Errorf("log lacks the exec error %q:\n%s", tc.want, log)
			}
			if n := strings.Count(log, `"msg":"worker started"`); n > 2 {
				t.Errorf("%d workers started, want at most 2 (no respawn)", n)
			}
		})
	}
}

// TestExecFailsLater: once the cluster runs, a program that can no longer
// be executed (deleted, or its execute bit cleared, before a respawn)
// fails its slot with the errno logged: no respawn loop, and the exit
// code of the shim is not passed off as the program's.
func TestExecFailsLater(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(path string) error
		errno  syscall.Errno
	}{
		{"deleted", os.Remove, syscall.ENOENT},
		{"not executable", func(p string) error { return os.Chmod(p, 0o644) }, syscall.EACCES},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			prog := writeScript(t, "#!/bin/sh\nexec sleep 1003\n")
			m := startMaster(t, pc, nil, "-n", "1", "-ready", "started", "-listen", "127.0.0.1:0", "-log-format", "json", prog)
			m.waitReady()
			pids := m.workers()
			if len(pids) != 1 {
				t.Fatalf("workers %v, want 1", pids)
			}
			if err := tc.break_(prog); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			const failed = "worker program cannot be executed; slot failed until the next restart"
			if !waitFor(10*time.Second, func() bool { return count(m.records(), failed) > 0 }) {
				t.Fatalf("no %q record", failed)
			}
			if log := m.log.String(); !strings.Contains(log, `"errno":`+strconv.Itoa(int(tc.errno))) {
				t.Errorf("errno %d not logged:\n%s", tc.errno, log)
			}
			// The 1 s backoff would have respawned it by now.
			time.Sleep(1500 * time.Millisecond)
			if n := count(m.records(), "worker started"); n != 2 {
				t.Errorf("%d workers started, want 2 (no respawn after the exec failure)", n)
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(10 * time.Second); code != exitOK {
				t.Errorf("exit code %d after SIGTERM, want 0", code)
			}
		})
	}
}
