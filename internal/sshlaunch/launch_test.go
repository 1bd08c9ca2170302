//go:build linux

package sshlaunch_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshlaunch"
	"github.com/handoff-go/handoff/internal/sshtest"
)

// sessionTimeout bounds every ssh session of these tests.
const sessionTimeout = 30 * time.Second

func target(s *sshtest.Server, knownHosts string) sshlaunch.Target {
	return sshlaunch.Target{
		User: s.User, Host: sshtest.Host, Port: s.Port,
		Identity: s.ClientKey, KnownHosts: knownHosts, ConnectTimeout: 5 * time.Second,
	}
}

// run runs argv on tg with stdin and returns its stdout and the classified
// result.
func run(t *testing.T, c *proccensus.Census, tg sshlaunch.Target, stdin io.Reader, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
	defer cancel()
	cmd, err := tg.Command(ctx, argv)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), c.Env())
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	err = tg.Classify(cmd.Run(), stderr.Bytes())
	if err != nil {
		t.Logf("ssh stderr:\n%s", stderr.String())
	}
	return stdout.String(), err
}

func TestRemoteArgvExact(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	s := sshtest.Start(t)
	tg := target(s, s.WriteKnownHosts(t))
	for _, argv := range tricky {
		out, err := run(t, c, tg, nil, append([]string{"printf", `%s\0`}, argv...)...)
		if err != nil {
			t.Fatalf("%q: %v", argv, err)
		}
		got := strings.Split(out, "\x00")
		if diff := cmp.Diff(argv, got[:len(got)-1]); diff != "" {
			t.Errorf("remote argv (-want +got):\n%s", diff)
		}
	}
}

func TestRemoteEcho(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	s := sshtest.Start(t)
	tg := target(s, s.WriteKnownHosts(t))
	// /bin/echo, not a shell builtin: dash's echo would expand backslashes.
	argv := []string{"/bin/echo", "a  b", "it's", `"q"`, "$HOME", "`id`", `back\slash\n`, "two\nlines", "*", ""}
	out, err := run(t, c, tg, nil, argv...)
	if err != nil {
		t.Fatal(err)
	}
	want := "a  b it's \"q\" $HOME `id` back\\slash\\n two\nlines * \n"
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("remote echo output (-want +got):\n%s", diff)
	}
}

// TestStdioRoundTrip streams bytes of every value through a remote cat, as
// the agent's ipcframe stream will.
func TestStdioRoundTrip(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	s := sshtest.Start(t)
	tg := target(s, s.WriteKnownHosts(t))
	data := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	out, err := run(t, c, tg, bytes.NewReader(data), "cat")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, []byte(out)) {
		t.Errorf("cat returned %d bytes differing from the %d sent", len(out), len(data))
	}
}

func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", sshtest.Host+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func TestSessionFailures(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	s := sshtest.Start(t)
	good := target(s, s.WriteKnownHosts(t))
	wrongKey, _ := sshtest.NewKey(t)
	empty := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		modify func(*sshlaunch.Target)
		want   error // nil: the command runs
	}{
		{"trusted", func(*sshlaunch.Target) {}, nil},
		{"wrong host key", func(tg *sshlaunch.Target) { tg.KnownHosts = s.WriteWrongKnownHosts(t) }, sshlaunch.ErrHostKey},
		{"unknown host", func(tg *sshlaunch.Target) { tg.KnownHosts = empty }, sshlaunch.ErrHostKey},
		{"wrong identity", func(tg *sshlaunch.Target) { tg.Identity = wrongKey }, sshlaunch.ErrAuth},
		{"closed port", func(tg *sshlaunch.Target) { tg.Port = closedPort(t) }, sshlaunch.ErrUnreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := good
			tt.modify(&tg)
			// The marker proves whether anything ran remotely.
			marker := filepath.Join(t.TempDir(), "ran")
			_, err := run(t, c, tg, nil, "touch", marker)
			_, statErr := os.Stat(marker)
			if ran := statErr == nil; ran != (tt.want == nil) {
				t.Errorf("remote command ran = %v, want %v", ran, tt.want == nil)
			}
			if tt.want == nil {
				if err != nil {
					t.Errorf("err = %v, want nil", err)
				}
				return
			}
			var se *sshlaunch.SessionError
			if !errors.Is(err, tt.want) || !errors.As(err, &se) || se.Reason == "" {
				t.Errorf("err = %v, want a *SessionError with a reason wrapping %v", err, tt.want)
			}
		})
	}
}

func TestRemoteExitStatus(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	s := sshtest.Start(t)
	_, err := run(t, c, target(s, s.WriteKnownHosts(t)), nil, "sh", "-c", "exit 7")
	var se *sshlaunch.SessionError
	if err == nil || errors.As(err, &se) {
		t.Fatalf("err = %v, want the remote exit status, not a session error", err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("err = %v, want exit status 7", err)
	}
}

// TestCancelKillsClient cancels a live session: ssh must exit and be
// reaped, and the remote cat must end (the census checks both sides).
func TestCancelKillsClient(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	s := sshtest.Start(t)
	tg := target(s, s.WriteKnownHosts(t))
	ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
	defer cancel()
	cmd, err := tg.Command(ctx, []string{"cat"})
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), c.Env())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	defer func() {
		if cmd.ProcessState == nil { // a t.Fatal below: still reap ssh
			cancel()
			<-waited
		}
	}()
	go func() { waited <- cmd.Wait() }()
	if _, err := io.WriteString(stdin, "ping\n"); err != nil {
		t.Fatal(err)
	}
	// Read fails with EOF if the session dies; sessionTimeout bounds it.
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("echoed %q, %v; stderr:\n%s", line, err, stderr.String())
	}
	cancel()
	select {
	case err := <-waited:
		if err == nil || cmd.ProcessState == nil || cmd.ProcessState.Success() {
			t.Errorf("Wait after cancel = %v, state %v; want a failed, reaped ssh", err, cmd.ProcessState)
		}
	case <-time.After(sshlaunch.KillDelay + 10*time.Second):
		t.Fatal("ssh not reaped after cancel")
	}
}
