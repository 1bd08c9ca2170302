//go:build linux

package sshtest_test

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshtest"
)

// sshArgs is a minimal strict ssh invocation; internal/sshlaunch builds the
// real one.
func sshArgs(s *sshtest.Server, knownHosts, key string, remote string) []string {
	return []string{
		"-F", "none", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes", "-i", key, "-p", strconv.Itoa(s.Port),
		"--", s.User + "@" + sshtest.Host, remote,
	}
}

func TestServer(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	s := sshtest.Start(t)
	wrongKey, _ := sshtest.NewKey(t)
	tests := []struct {
		name       string
		knownHosts string
		key        string
		wantOut    string
		wantExit   int
		wantStderr string
	}{
		{"trusted", s.WriteKnownHosts(t), s.ClientKey, "ok\n", 0, ""},
		{"wrong host key", s.WriteWrongKnownHosts(t), s.ClientKey, "", 255, "REMOTE HOST IDENTIFICATION HAS CHANGED"},
		{"unauthorized key", s.WriteKnownHosts(t), wrongKey, "", 255, "Permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("ssh", sshArgs(s, tt.knownHosts, tt.key, "echo ok")...)
			cmd.Env = append(os.Environ(), c.Env())
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, _ := cmd.Output()
			if diff := cmp.Diff(tt.wantOut, string(out)); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			if got := cmd.ProcessState.ExitCode(); got != tt.wantExit {
				t.Errorf("exit status %d, want %d; stderr:\n%s", got, tt.wantExit, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.wantStderr, stderr.String())
			}
		})
	}
}

func TestKnownHostsLine(t *testing.T) {
	fdcensus.Verify(t)
	s := sshtest.Start(t)
	f := strings.Fields(s.KnownHostsLine())
	want := []string{"[127.0.0.1]:" + strconv.Itoa(s.Port), "ssh-ed25519"}
	if len(f) != 3 || !cmp.Equal(want, f[:2]) {
		t.Errorf("KnownHostsLine() = %q, want %q and a key", s.KnownHostsLine(), want)
	}
	b, err := os.ReadFile(s.WriteWrongKnownHosts(t))
	if err != nil {
		t.Fatal(err)
	}
	if g := strings.Fields(string(b)); len(g) != 3 || g[0] != f[0] || g[2] == f[2] {
		t.Errorf("wrong known_hosts %q: want the same host with another key than %q", b, f[2])
	}
}

// TestSessionsAreMarked checks that remote commands carry the harness's
// process-census marker, so the census sees them.
func TestSessionsAreMarked(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	s := sshtest.Start(t)
	cmd := exec.Command("ssh", sshArgs(s, s.WriteKnownHosts(t), s.ClientKey, "printenv "+proccensus.MarkerVar)...)
	cmd.Env = append(os.Environ(), c.Env())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ssh: %v", err)
	}
	if id := strings.TrimSpace(string(out)); id == "" || proccensus.MarkerVar+"="+id == c.Env() {
		t.Errorf("remote %s = %q, want the server's own marker", proccensus.MarkerVar, id)
	}
}

// TestAddressOutlivesSSHD checks that the server's address belongs to the
// test, not to an sshd process: with every sshd of the server killed, no
// other server can bind the port, and the next connection still reaches
// this server's host key. A harness whose sshd listens itself frees the
// address when that sshd dies, and left it free between picking a port and
// sshd binding it, for another package's server to take.
func TestAddressOutlivesSSHD(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	s := sshtest.Start(t)
	knownHosts := s.WriteKnownHosts(t)
	run := func() {
		t.Helper()
		cmd := exec.Command("ssh", sshArgs(s, knownHosts, s.ClientKey, "echo ok")...)
		cmd.Env = append(os.Environ(), c.Env())
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if out, err := cmd.Output(); err != nil || string(out) != "ok\n" {
			t.Fatalf("ssh: %v, %q; stderr:\n%s", err, out, stderr.String())
		}
	}
	run()
	// Every sshd of this server names its sshd_config on its command line.
	cfg := filepath.Join(s.Dir, "sshd_config")
	sshds := func() []int {
		var pids []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.Contains(string(b), cfg) {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	deadline := time.Now().Add(10 * time.Second)
	for pids := sshds(); len(pids) > 0; pids = sshds() {
		if time.Now().After(deadline) {
			t.Fatalf("sshd processes %v still alive after SIGKILL", pids)
		}
		for _, pid := range pids {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill() // a pid reused meanwhile is not ours to kill: pidfd-backed
				_ = p.Release()
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(sshtest.Host, strconv.Itoa(s.Port)))
	if err == nil {
		l.Close()
		t.Fatalf("another server could bind %s:%d with no sshd alive", sshtest.Host, s.Port)
	}
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("bind %s:%d: %v, want EADDRINUSE", sshtest.Host, s.Port, err)
	}
	run()
}
