//go:build linux

package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// TestExecReport: the shim's exec-status report round-trips, and anything
// else from the pipe is refused.
func TestExecReport(t *testing.T) {
	type res struct {
		Errno  unix.Errno
		Interp string
		Err    bool
	}
	for _, tc := range []struct {
		in   []byte
		want res
	}{
		{appendExecReport(nil, unix.ENOENT, "/nonexistent/interp"), res{Errno: unix.ENOENT, Interp: "/nonexistent/interp"}},
		{appendExecReport(nil, unix.E2BIG, ""), res{Errno: unix.E2BIG}},
		{appendExecReport(nil, unix.ENOENT, strings.Repeat("x", maxExecReport)), res{Errno: unix.ENOENT}},
		{[]byte("2"), res{Err: true}},
		{[]byte("0\n"), res{Err: true}},
		{[]byte("4096\n"), res{Err: true}},
		{[]byte("-1\n"), res{Err: true}},
		{[]byte("\n/bin/sh"), res{Err: true}},
		{[]byte("2\n\x1b[31m"), res{Err: true}},
		{append([]byte("2\n"), strings.Repeat("x", maxExecReport)...), res{Err: true}},
	} {
		e, interp, err := parseExecReport(tc.in)
		got := res{Errno: e, Interp: interp, Err: err != nil}
		if err != nil && !errors.Is(err, errExecReport) {
			t.Errorf("parseExecReport(%q) error %v does not wrap errExecReport", tc.in, err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("parseExecReport(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func FuzzParseExecReport(f *testing.F) {
	for _, s := range []string{"2\n/nonexistent/interp", "7\n", "8\n", "2", "\n", "99999\nx"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, interp, err := parseExecReport(b)
		if err != nil {
			if e != 0 || interp != "" {
				t.Fatalf("refused report yielded %d %q", e, interp)
			}
			return
		}
		if e == 0 || e >= 4096 || !utf8Printable([]byte(interp)) || len(b) > maxExecReport {
			t.Fatalf("out-of-domain result %d %q from %q", e, interp, b)
		}
		if len(interp) <= maxExecReport-16 {
			got := appendExecReport(nil, e, interp)
			if e2, i2, err := parseExecReport(got); err != nil || e2 != e || i2 != interp {
				t.Fatalf("re-encoded %q does not round-trip: %d %q %v", got, e2, i2, err)
			}
		}
	})
}

// TestShimExitCode: a permanent exec failure exits 125 (supervise fails
// the slot), anything else 127 (respawned with backoff).
func TestShimExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{&ExecError{Path: "/p", Err: os.NewSyscallError("execve", unix.ENOENT)}, ExitExecFailed},
		{fmt.Errorf("wrapped: %w", &ExecError{Path: "/p", Err: os.NewSyscallError("execve", unix.EACCES)}), ExitExecFailed},
		{&ExecError{Path: "/p", Err: os.NewSyscallError("execve", unix.ETXTBSY), Transient: true}, ExitShimFailed},
		{ErrMasterGone, ExitShimFailed},
		{errors.New("cluster: exec shim: missing program"), ExitShimFailed},
	} {
		if got := ShimExitCode(tc.err); got != tc.want {
			t.Errorf("ShimExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if !transientExec(unix.ETXTBSY) || transientExec(unix.ENOENT) || transientExec(unix.E2BIG) || transientExec(unix.ENOEXEC) {
		t.Error("transientExec: ETXTBSY must be transient, ENOENT, E2BIG and ENOEXEC permanent")
	}
}

// TestMissingInterpreter: an ENOENT for a file that exists is blamed on
// the #! interpreter when that one is missing, and on nothing otherwise.
func TestMissingInterpreter(t *testing.T) {
	fdcensus.Verify(t)
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, body, want string
	}{
		{"missing", "#!/nonexistent/interp -x\necho\n", "/nonexistent/interp"},
		{"spaces", "#!  /nonexistent/other\n", "/nonexistent/other"},
		{"present", "#!/bin/sh\n", ""},
		{"no line", "echo\n", ""},
		{"empty", "", ""},
		{"control", "#!/nonexistent/\x1b[31m\n", ""},
	} {
		path := filepath.Join(dir, tc.name)
		if err := os.WriteFile(path, []byte(tc.body), 0o755); err != nil {
			t.Fatal(err)
		}
		if got := missingInterpreter(path); got != tc.want {
			t.Errorf("%s: missingInterpreter = %q, want %q", tc.name, got, tc.want)
		}
	}
	// An ELF program whose loader exists (this test binary, static or
	// not), and a file that is not there.
	if got := missingInterpreter(exe); got != "" {
		t.Errorf("test binary: missingInterpreter = %q, want \"\"", got)
	}
	if got := missingInterpreter(filepath.Join(dir, "gone")); got != "" {
		t.Errorf("missing file: missingInterpreter = %q, want \"\"", got)
	}
}

// TestStatusRateLimit: a flood of STATUS= updates from one worker logs one
// line at once and the last one when the interval ends; an unchanged
// STATUS logs nothing; other workers are not held back; forget returns a
// STATUS that was never logged.
func TestStatusRateLimit(t *testing.T) {
	var buf syncBuf
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var s notifyState
	defer s.close()
	id10, id20 := supervise.ID{Slot: 0, Generation: 1}, supervise.ID{Slot: 1, Generation: 1}
	for i := range 500 {
		s.status(log, 10, id10, fmt.Sprintf("step %d", i), "pid", 10)
	}
	s.status(log, 20, id20, "other", "pid", 20)
	s.status(log, 20, id20, "other", "pid", 20)
	got := buf.String()
	if n := strings.Count(got, "worker status"); n != 2 {
		t.Fatalf("%d lines for 500 updates of one worker and 2 equal ones of another, want 2:\n%s", n, got)
	}
	if !strings.Contains(got, `status="step 0"`) || !strings.Contains(got, "status=other") {
		t.Fatalf("first updates not logged at once:\n%s", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), `status="step 499"`) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := buf.String(); strings.Count(got, "worker status") != 3 || !strings.Contains(got, `status="step 499"`) {
		t.Fatalf("the last update was not logged once the interval ended:\n%s", got)
	}
	if got := s.lastStatus(10, id10); got != "step 499" {
		t.Errorf("lastStatus = %q, want %q", got, "step 499")
	}
	s.status(log, 10, id10, "final", "pid", 10)
	s.setErrno(10, id10, int(unix.EADDRINUSE))
	errno, unlogged, pending := s.forget(10, id10)
	if errno != int(unix.EADDRINUSE) || unlogged != "final" || !pending {
		t.Errorf("forget = %d, %q, %v; want %d, %q, true", errno, unlogged, pending, unix.EADDRINUSE, "final")
	}
	time.Sleep(1200 * time.Millisecond)
	if strings.Contains(buf.String(), "status=final") {
		t.Error("a forgotten worker's status was logged by its timer")
	}
}

// TestSweepNotifyDirs: a dead master's notify directory (0700, or 0710 for
// workers of another user) is removed; a live one, one of another mode, a
// symlink and an unrelated directory are not.
func TestSweepNotifyDirs(t *testing.T) {
	fdcensus.Verify(t)
	tmp := t.TempDir()
	mk := func(name string, mode os.FileMode, live bool) string {
		t.Helper()
		d := filepath.Join(tmp, name)
		if err := os.Mkdir(d, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(d, mode)
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(d, "notify")}); err != nil {
			t.Fatal(err)
		}
		if live {
			t.Cleanup(func() { unix.Close(fd) })
		} else {
			unix.Close(fd) // the file stays: a SIGKILLed master's
		}
		return d
	}
	dead := mk("handoff-dead", 0o700, false)
	// Workers of another user (Config.Credential) may search it.
	deadUser := mk("handoff-user", 0o710, false)
	live := mk("handoff-live", 0o700, true)
	open := mk("handoff-open", 0o755, false)
	other := mk("other-dead", 0o700, false)
	extra := mk("handoff-extra", 0o700, false)
	if err := os.WriteFile(filepath.Join(extra, "keep"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dead, filepath.Join(tmp, "handoff-link")); err != nil {
		t.Fatal(err)
	}
	got := sweepNotifyDirs(tmp)
	if diff := cmp.Diff([]string{dead, deadUser}, got); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	for _, d := range []string{live, open, other, extra} {
		if _, err := os.Lstat(d); err != nil {
			t.Errorf("%s: %v, want it kept", d, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(tmp, "handoff-link")); err != nil {
		t.Errorf("symlink removed: %v", err)
	}
}

type syncBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
