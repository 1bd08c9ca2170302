//go:build linux

package sshtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/proccensus"
)

const (
	startTimeout = 10 * time.Second
	stopTimeout  = 5 * time.Second
	portAttempts = 5
)

// Start starts sshd on 127.0.0.1 and returns once it accepts connections.
// It skips the test when not running as root or when sshd or ssh-keygen is
// missing, and fails it if sshd does not come up. At t.Cleanup it stops
// sshd, reaps it, and fails the test if any sshd child or session process is
// still alive after a few seconds (then kills them).
//
// Call fdcensus.Verify and proccensus.New before Start, so that their checks
// run after the server is gone.
//
// StrictModes is off: sshd's check walks every directory from
// authorized_keys up to / when the file is not under the user's home, and
// t.TempDir() lives under the world-writable /tmp, which that check always
// rejects. The files themselves are still written 0600 in 0700 directories.
func Start(t testing.TB) *Server {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("sshtest: sshd needs root to switch users; run the test as root")
	}
	sshd := lookSSHD()
	if sshd == "" {
		t.Skip("sshtest: sshd not installed (run .ci/install-deps)")
	}
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("sshtest: ssh-keygen not installed (run .ci/install-deps)")
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	// sshd refuses to start without its privilege-separation directory,
	// which Debian creates only from the service unit.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatalf("sshtest: %v", err)
	}

	dir := t.TempDir()
	if strings.ContainsAny(dir, "\"\n") {
		t.Fatalf("sshtest: temp dir %q cannot be quoted in sshd_config", dir)
	}
	hostKey := filepath.Join(dir, "host_ed25519")
	hostPub := genKey(t, hostKey)
	clientKey := filepath.Join(dir, "client_ed25519")
	clientPub := genKey(t, clientKey)
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, []byte(clientPub+"\n"), 0o600); err != nil {
		t.Fatalf("sshtest: %v", err)
	}

	// Cleanups run last-registered first: sshd is stopped, then the census
	// looks for survivors, then survivors are killed.
	var census *proccensus.Census
	t.Cleanup(func() { killMarked(census) })
	census = proccensus.New(t)

	s := &Server{User: u.Username, ClientKey: clientKey, Dir: dir, hostKey: hostPub}
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		cfg := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(cfg, []byte(config(dir, port, u.Username, census.Env())), 0o600); err != nil {
			t.Fatalf("sshtest: %v", err)
		}
		log := newLogBuffer()
		cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
		cmd.Env = append(os.Environ(), census.Env())
		cmd.Stderr = log
		if err := cmd.Start(); err != nil {
			t.Fatalf("sshtest: start sshd: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-log.listening:
			s.Port, s.log = port, log
			t.Cleanup(func() { stop(t, cmd, done, log) })
			return s
		case err := <-done:
			// Another process may have taken the port between freePort
			// closing it and sshd binding it.
			if strings.Contains(log.String(), "Address already in use") && attempt < portAttempts {
				continue
			}
			t.Fatalf("sshtest: sshd exited: %v\n%s", err, log.String())
		case <-time.After(startTimeout):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("sshtest: sshd not listening after %v\n%s", startTimeout, log.String())
		}
	}
}

// NewKey generates an ed25519 key pair in a new temporary directory and
// returns the private key's path and the public key ("ssh-ed25519 AAAA…").
// The key is authorized nowhere: use it to test authentication failures.
func NewKey(t testing.TB) (priv, pub string) {
	t.Helper()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("sshtest: ssh-keygen not installed (run .ci/install-deps)")
	}
	priv = filepath.Join(t.TempDir(), "id_ed25519")
	return priv, genKey(t, priv)
}

func lookSSHD() string {
	if p, err := exec.LookPath("sshd"); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs // sshd re-executes itself and insists on an absolute path
		}
	}
	// Debian installs sshd in /usr/sbin, which is not on a non-root PATH.
	if err := unix.Access("/usr/sbin/sshd", unix.X_OK); err == nil {
		return "/usr/sbin/sshd"
	}
	return ""
}

func genKey(t testing.TB, path string) string {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sshtest", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("sshtest: ssh-keygen: %v\n%s", err, out)
	}
	b, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	line, err := keyLine(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return line
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", Host+":0")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func config(dir string, port int, username, marker string) string {
	q := func(name string) string { return `"` + filepath.Join(dir, name) + `"` }
	lines := []string{
		fmt.Sprintf("ListenAddress %s:%d", Host, port),
		"HostKey " + q("host_ed25519"),
		"PidFile " + q("sshd.pid"),
		"AuthorizedKeysFile " + q("authorized_keys"),
		"StrictModes no", // see Start
		"UsePAM no",
		"PubkeyAuthentication yes",
		"AuthenticationMethods publickey",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"AllowUsers " + username,
		"UseDNS no",
		"LoginGraceTime 10",
		"AllowTcpForwarding no",
		"AllowAgentForwarding no",
		"X11Forwarding no",
		"PermitTunnel no",
		"PrintMotd no",
		"LogLevel VERBOSE",
		// Sessions start with a fresh environment; this marks them for
		// the process census.
		"SetEnv " + marker,
	}
	return strings.Join(lines, "\n") + "\n"
}

func stop(t testing.TB, cmd *exec.Cmd, done chan error, log *logBuffer) {
	_ = cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-done
		t.Errorf("sshtest: sshd ignored SIGTERM for %v", stopTimeout)
	}
	if t.Failed() {
		t.Logf("sshd log:\n%s", log.String())
	}
}

// killMarked kills the server's processes that the census found left
// behind (it has already failed the test), so they cannot disturb later
// tests.
func killMarked(c *proccensus.Census) {
	if c == nil {
		return
	}
	for _, p := range c.Marked() {
		if proc, err := os.FindProcess(p.PID); err == nil {
			_ = proc.Kill()
			_ = proc.Release()
		}
	}
}
