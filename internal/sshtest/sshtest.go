package sshtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Host is the only address the server listens on.
const Host = "127.0.0.1"

// Server is a running sshd started by Start. Its fields are fixed once Start
// returns; its methods may be called from any goroutine.
type Server struct {
	// Port is the TCP port at Host. The test process listens on it until
	// cleanup and hands each connection to its own sshd.
	Port int
	// User is the account sessions log in as (the user running the test).
	User string
	// ClientKey is the path of the private key whose public half is the only
	// entry of the server's authorized_keys (mode 0600, no passphrase).
	ClientKey string
	// Dir holds the server's configuration and keys.
	Dir string

	hostKey string // "ssh-ed25519 AAAA…" without a comment
	log     *logBuffer
}

// KnownHostsLine is the known_hosts entry that makes ssh trust this server:
// "[127.0.0.1]:PORT ssh-ed25519 AAAA…". ssh looks non-22 ports up in the
// bracketed form only.
func (s *Server) KnownHostsLine() string {
	return fmt.Sprintf("[%s]:%d %s", Host, s.Port, s.hostKey)
}

// WriteKnownHosts writes a known_hosts file holding KnownHostsLine into a new
// temporary directory and returns its path.
func (s *Server) WriteKnownHosts(t testing.TB) string {
	t.Helper()
	return writeFile(t, "known_hosts", s.KnownHostsLine()+"\n")
}

// WriteWrongKnownHosts writes a known_hosts file that names this server's
// address with a freshly generated ed25519 key that is not its host key, as
// after a man-in-the-middle or a reinstalled host, and returns its path.
// ssh with strict host-key checking must refuse to connect with it.
func (s *Server) WriteWrongKnownHosts(t testing.TB) string {
	t.Helper()
	_, pub := NewKey(t)
	return writeFile(t, "known_hosts", fmt.Sprintf("[%s]:%d %s\n", Host, s.Port, pub))
}

// Log returns what the server's sshd processes have written to stderr so
// far (-e, LogLevel VERBOSE), one per connection, and any error of the
// harness in accepting or handing over a connection: useful in failure
// messages.
func (s *Server) Log() string { return s.log.String() }

func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	return p
}

// keyLine returns the "TYPE BASE64" part of an OpenSSH public key line,
// dropping the comment.
func keyLine(pub string) (string, error) {
	f := strings.Fields(pub)
	if len(f) < 2 {
		return "", fmt.Errorf("sshtest: malformed public key %q", pub)
	}
	return f[0] + " " + f[1], nil
}

// logBuffer collects the stderr of every per-connection sshd and the
// harness's own errors.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func newLogBuffer() *logBuffer { return &logBuffer{} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 1<<20 { // bound memory if a test hammers the server
		l.b.Write(p)
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
