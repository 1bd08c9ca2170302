//go:build linux

package sshtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/proccensus"
)

const (
	checkTimeout = 10 * time.Second
	// reapTimeout bounds the wait for per-connection sshd processes at
	// cleanup, after the census has had its grace period and killed what
	// it found left.
	reapTimeout = 5 * time.Second
)

// Start starts an ssh server on 127.0.0.1 and returns once it accepts
// connections. It skips the test when not running as root or when sshd or
// ssh-keygen is missing, and fails it if sshd rejects its configuration or
// keys. At t.Cleanup it closes the listening socket, fails the test if any
// sshd or session process is still alive after a few seconds (then kills
// them), and reaps every sshd it started.
//
// The test process binds the port and keeps the listening socket until
// cleanup; each accepted connection is handed to its own sshd in inetd mode
// (-i), as systemd's ssh.socket (Accept=yes) does. Picking a free port and
// letting sshd bind it later left the port free for a moment, and a
// listener in sshd left it free again if that sshd died: either way
// another test's server (another package's tests run at the same time)
// could take the address and answer with its own host key.
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

	// Cleanups run last-registered first: the listener is closed, then the
	// census looks for survivors, then survivors are killed, then every
	// sshd is reaped.
	d := &daemon{sshd: sshd, log: newLogBuffer(), served: make(chan struct{})}
	t.Cleanup(func() { d.reap(t) })
	var census *proccensus.Census
	t.Cleanup(func() { killMarked(census) })
	census = proccensus.New(t)
	d.env = append(os.Environ(), census.Env())

	d.cfg = filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(d.cfg, []byte(config(dir, u.Username, census.Env())), 0o600); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	// A connection would only show sshd's complaint in the log: check the
	// configuration and the host key up front (sshd -t loads both).
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	check := exec.CommandContext(ctx, sshd, "-t", "-f", d.cfg)
	check.Env = d.env
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sshtest: sshd -t: %v\n%s", err, out)
	}

	l, err := net.Listen("tcp", Host+":0")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	d.l = l
	go d.serve()
	t.Cleanup(d.stop)
	return &Server{
		Port: l.Addr().(*net.TCPAddr).Port, User: u.Username, ClientKey: clientKey, Dir: dir,
		hostKey: hostPub, log: d.log,
	}
}

// daemon accepts connections on the server's address and runs one
// "sshd -i" per connection. serve is its only goroutine that starts
// processes; stop ends it, after which reap may wait for them.
type daemon struct {
	sshd, cfg string
	env       []string
	log       *logBuffer
	l         net.Listener
	served    chan struct{} // closed when serve returns
	running   sync.WaitGroup
}

func (d *daemon) serve() {
	defer close(d.served)
	for {
		c, err := d.l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				// The socket stays open, so the address stays ours;
				// clients time out and the log says why.
				fmt.Fprintf(d.log, "sshtest: accept: %v; no more connections are served\n", err)
			}
			return
		}
		d.spawn(c.(*net.TCPConn))
	}
}

// spawn hands c to a new "sshd -i" as its stdin and stdout.
func (d *daemon) spawn(c *net.TCPConn) {
	// File duplicates the descriptor; exec makes the shared file
	// description blocking (Fd), which sshd expects of its stdin, so the
	// netpoller's copy must be closed first.
	f, err := c.File()
	c.Close()
	if err != nil {
		fmt.Fprintf(d.log, "sshtest: %v\n", err)
		return
	}
	defer f.Close()
	cmd := exec.Command(d.sshd, "-i", "-e", "-f", d.cfg)
	cmd.Env = d.env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = f, f, d.log
	// Like the sessions sshd forks in daemon mode: a signal to the test's
	// process group does not reach them.
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	// A session process that kept sshd's stderr open must not hang reap.
	cmd.WaitDelay = reapTimeout
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(d.log, "sshtest: start sshd: %v\n", err)
		return
	}
	d.running.Add(1)
	go func() {
		defer d.running.Done()
		// An exit status is sshd's verdict on one connection (a refused
		// key exits 255): the test judges the client's side.
		_ = cmd.Wait()
	}()
}

// stop closes the listening socket, which refuses new connections, and
// waits for serve to return. Sessions already running go on: the census
// then checks that the code under test ended them.
func (d *daemon) stop() {
	d.l.Close()
	<-d.served
}

// reap waits for every sshd that spawn started; the census has killed
// those still alive after its grace period. stop, if registered, has run:
// serve starts no more.
func (d *daemon) reap(t testing.TB) {
	done := make(chan struct{})
	go func() { d.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(reapTimeout):
		t.Errorf("sshtest: sshd processes not reaped %v after the census", reapTimeout)
	}
	if t.Failed() {
		t.Logf("sshd log:\n%s", d.log.String())
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
			return abs // sshd insists on an absolute path when it re-executes itself
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

func config(dir, username, marker string) string {
	q := func(name string) string { return `"` + filepath.Join(dir, name) + `"` }
	lines := []string{
		"HostKey " + q("host_ed25519"),
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
