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
	// Port is the TCP port sshd listens on at Host.
	Port int
	// User is the account sessions log in as (the user running the test).
	User string
	// ClientKey is the path of the private key whose public half is the only
	// entry of the server's authorized_keys (mode 0600, no passphrase).
	ClientKey string
	// Dir holds the server's configuration, keys and PidFile.
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

// Log returns what sshd has written to its stderr so far (-e, LogLevel
// VERBOSE): useful in failure messages.
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

// logBuffer collects sshd's stderr and signals once sshd says it listens.
type logBuffer struct {
	mu        sync.Mutex
	b         strings.Builder
	listening chan struct{}
	once      sync.Once
}

func newLogBuffer() *logBuffer { return &logBuffer{listening: make(chan struct{})} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 1<<20 { // bound memory if a test hammers the server
		l.b.Write(p)
	}
	// sshd logs this line after listen(2), so a connection made afterwards
	// is accepted.
	if strings.Contains(l.b.String(), "Server listening on ") {
		l.once.Do(func() { close(l.listening) })
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
