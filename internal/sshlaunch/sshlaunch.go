package sshlaunch

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Defaults for the zero fields of Target, and the grace given to ssh after
// a context is cancelled.
const (
	DefaultPort                = 22
	DefaultConnectTimeout      = 10 * time.Second
	DefaultServerAliveInterval = 15 * time.Second
	// ServerAliveCountMax unanswered keepalives end the session: a host
	// that vanished is noticed after about three intervals.
	ServerAliveCountMax = 3
	KillDelay           = 5 * time.Second
)

var (
	// ErrNotSupported is wrapped by Command on platforms other than Linux.
	ErrNotSupported = errors.New("sshlaunch: not supported on this platform")
	// ErrInvalidTarget is wrapped by every error about a malformed Target
	// or remote command.
	ErrInvalidTarget = errors.New("sshlaunch: invalid target")
	// ErrHostKey: the host key is unknown or differs from known_hosts.
	ErrHostKey = errors.New("sshlaunch: host key not trusted")
	// ErrAuth: the server refused every offered key.
	ErrAuth = errors.New("sshlaunch: authentication refused")
	// ErrUnreachable: no ssh connection (refused, timed out, no route,
	// unknown name, or dropped before or during the session).
	ErrUnreachable = errors.New("sshlaunch: host unreachable")
	// ErrSession: ssh failed for a reason not recognised above.
	ErrSession = errors.New("sshlaunch: ssh session failed")
)

// Target says where and how to log in. The zero value is not usable:
// Host, Identity and KnownHosts are required. A Target is a value; it may be
// copied and used from several goroutines.
type Target struct {
	// User to log in as; empty means ssh's default (the local user name).
	User string
	// Host name or IP address (IPv6 without brackets).
	Host string
	// Port; 0 means DefaultPort.
	Port int
	// Identity is the private key file to offer, the only one.
	Identity string
	// KnownHosts is the known_hosts file that must list Host's key; it is
	// the only one consulted and it is never written.
	KnownHosts string
	// ConnectTimeout bounds the TCP connect and ssh handshake; 0 means
	// DefaultConnectTimeout. ssh counts in whole seconds (rounded up).
	ConnectTimeout time.Duration
	// ServerAliveInterval is how often ssh probes an idle server; 0 means
	// DefaultServerAliveInterval.
	ServerAliveInterval time.Duration
}

// ParseTarget parses "user@host", "host", or either with the host in
// brackets ("user@[::1]"). Port, Identity and KnownHosts are left for the
// caller to set. The user and host must pass the checks described in the
// package documentation; otherwise the error wraps ErrInvalidTarget.
func ParseTarget(s string) (Target, error) {
	var t Target
	host := s
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		t.User, host = s[:i], s[i+1:]
		if err := checkUser(t.User); err != nil {
			return Target{}, err
		}
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if err := checkHost(host); err != nil {
		return Target{}, err
	}
	t.Host = host
	return t, nil
}

// String is the destination as ssh is given it: "user@host" or "host",
// with ":port" when the port is not 22. It is meant for logs.
func (t Target) String() string {
	d := t.Host
	if t.User != "" {
		d = t.User + "@" + t.Host
	}
	if p := t.port(); p != DefaultPort {
		d += ":" + strconv.Itoa(p)
	}
	return d
}

func (t Target) port() int {
	if t.Port == 0 {
		return DefaultPort
	}
	return t.Port
}

// Args returns the arguments (without argv[0]) that Command gives the ssh
// client to run remoteArgv on t. remoteArgv must not be empty (ssh would
// open a login shell) and its elements must not contain NUL bytes.
func (t Target) Args(remoteArgv []string) ([]string, error) {
	if t.User != "" {
		if err := checkUser(t.User); err != nil {
			return nil, err
		}
	}
	if err := checkHost(t.Host); err != nil {
		return nil, err
	}
	if p := t.port(); p < 1 || p > 65535 {
		return nil, fmt.Errorf("%w: port %d out of range", ErrInvalidTarget, t.Port)
	}
	if err := checkPath("identity", t.Identity); err != nil {
		return nil, err
	}
	// An empty known_hosts setting would make ssh fall back to
	// ~/.ssh/known_hosts; strict checking is only meaningful against a
	// file the operator chose.
	if err := checkPath("known_hosts", t.KnownHosts); err != nil {
		return nil, err
	}
	if t.ConnectTimeout < 0 || t.ServerAliveInterval < 0 {
		return nil, fmt.Errorf("%w: negative timeout", ErrInvalidTarget)
	}
	remote, err := QuoteArgs(remoteArgv)
	if err != nil {
		return nil, err
	}
	dest := t.Host
	if t.User != "" {
		dest = t.User + "@" + t.Host
	}
	return []string{
		"-F", "none",
		"-T",
		"-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + t.KnownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "UpdateHostKeys=no",
		"-o", "IdentitiesOnly=yes",
		"-i", t.Identity,
		"-p", strconv.Itoa(t.port()),
		"-o", "ConnectTimeout=" + seconds(t.ConnectTimeout, DefaultConnectTimeout),
		"-o", "ServerAliveInterval=" + seconds(t.ServerAliveInterval, DefaultServerAliveInterval),
		"-o", "ServerAliveCountMax=" + strconv.Itoa(ServerAliveCountMax),
		"--", dest, remote,
	}, nil
}

func seconds(d, def time.Duration) string {
	if d == 0 {
		d = def
	}
	s := math.Ceil(d.Seconds())
	if s > math.MaxInt32 {
		s = math.MaxInt32
	}
	return strconv.Itoa(int(s))
}

// Quote returns s quoted for a POSIX shell: in single quotes, inside which
// nothing is special, with each ' written as '\”. The empty string becomes
// ”.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// QuoteArgs quotes each element of argv with Quote and joins them with
// spaces: the command line a POSIX shell splits back into argv exactly.
// The error wraps ErrInvalidTarget if argv is empty or an element holds a
// NUL byte, which no argv can carry.
func QuoteArgs(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", fmt.Errorf("%w: empty remote command", ErrInvalidTarget)
	}
	n := 0
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("%w: remote argument %d contains a NUL byte", ErrInvalidTarget, i)
		}
		n += len(a) + 3 + 3*strings.Count(a, "'")
	}
	var b strings.Builder
	b.Grow(n)
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte('\'')
		for {
			j := strings.IndexByte(a, '\'')
			if j < 0 {
				break
			}
			b.WriteString(a[:j])
			b.WriteString(`'\''`)
			a = a[j+1:]
		}
		b.WriteString(a)
		b.WriteByte('\'')
	}
	return b.String(), nil
}

func checkUser(u string) error {
	if u == "" {
		return fmt.Errorf("%w: empty user", ErrInvalidTarget)
	}
	// POSIX portable user names; anything else could be an option, a
	// ssh_config token (%) or a second destination.
	if u[0] == '-' || !allowed(u, "._-") {
		return fmt.Errorf("%w: user %q", ErrInvalidTarget, u)
	}
	return nil
}

func checkHost(h string) error {
	if h == "" {
		return fmt.Errorf("%w: empty host", ErrInvalidTarget)
	}
	// DNS names, IPv4 and IPv6 literals only.
	if h[0] == '-' || len(h) > 253 || !allowed(h, ".-_:") {
		return fmt.Errorf("%w: host %q", ErrInvalidTarget, h)
	}
	return nil
}

func allowed(s, extra string) bool {
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(extra, r)
		if !ok {
			return false
		}
	}
	return true
}

func checkPath(what, p string) error {
	if p == "" {
		return fmt.Errorf("%w: no %s file", ErrInvalidTarget, what)
	}
	// ssh splits UserKnownHostsFile on whitespace (honouring quotes and
	// backslash escapes), and expands % tokens, ${VAR} and a leading ~ in
	// both options (ssh_config(5), TOKENS and ENVIRONMENT VARIABLES), so
	// such a path would not name the file given; '$' is refused whole.
	if p[0] == '~' {
		return fmt.Errorf("%w: %s path %q", ErrInvalidTarget, what, p)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f || r == ' ' || r == '%' || r == '"' || r == '\'' || r == '$' || r == '\\' {
			return fmt.Errorf("%w: %s path %q", ErrInvalidTarget, what, p)
		}
	}
	return nil
}

// SessionError is a failure of ssh itself (exit status 255), as opposed to
// a remote command that ran and failed.
type SessionError struct {
	Target string // Target.String()
	Kind   error  // ErrHostKey, ErrAuth, ErrUnreachable or ErrSession
	// Reason is the line of ssh's stderr that names the cause (the last
	// line if none matched), cut to 200 bytes, control characters removed.
	Reason string
	Err    error // the error from (*exec.Cmd).Wait
}

func (e *SessionError) Error() string {
	return fmt.Sprintf("%v: %s: %s", e.Kind, e.Target, e.Reason)
}

// Unwrap lets errors.Is match both Kind and the *exec.ExitError.
func (e *SessionError) Unwrap() []error { return []error{e.Kind, e.Err} }

// stderr markers of OpenSSH 8–9. Classes and markers are tried in order, so
// the most telling line becomes the Reason.
var classes = []struct {
	kind    error
	markers []string
}{
	{ErrHostKey, []string{
		"Host key for",          // "… has changed and you have requested strict checking."
		"host key is known for", // "No ED25519 host key is known for …"
		"REMOTE HOST IDENTIFICATION HAS CHANGED",
		"Host key verification failed",
	}},
	{ErrAuth, []string{
		"Permission denied",
		"Too many authentication failures",
	}},
	{ErrUnreachable, []string{
		"Connection refused",
		"Connection timed out",
		"Operation timed out",
		"No route to host",
		"Network is unreachable",
		"Could not resolve hostname",
		"Connection closed by",
		"Connection reset by",
		"kex_exchange_identification",
		"Timeout, server",
	}},
}

// Classify interprets the result of Wait on a Command for t, given what ssh
// wrote to stderr (only the last 8 KiB are examined). It returns nil for
// nil; a *SessionError if ssh exited with status 255; and waitErr unchanged
// otherwise (the remote command's own exit status, or ssh killed by a
// signal). stderr comes from another host and is only matched, never
// trusted.
func (t Target) Classify(waitErr error, stderr []byte) error {
	if waitErr == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) || ee.ExitCode() != 255 {
		return waitErr
	}
	if len(stderr) > 8<<10 {
		stderr = stderr[len(stderr)-8<<10:]
	}
	lines := bytes.Split(stderr, []byte("\n"))
	e := &SessionError{Target: t.String(), Kind: ErrSession, Err: waitErr}
	for i := len(lines) - 1; i >= 0 && e.Reason == ""; i-- {
		if l := bytes.TrimSpace(lines[i]); len(l) > 0 {
			e.Reason = clean(l)
		}
	}
	for _, c := range classes {
		for _, m := range c.markers {
			for _, l := range lines {
				if bytes.Contains(l, []byte(m)) {
					e.Kind, e.Reason = c.kind, clean(bytes.TrimSpace(l))
					return e
				}
			}
		}
	}
	if e.Reason == "" {
		e.Reason = "ssh exited with status 255"
	}
	return e
}

func clean(l []byte) string {
	var b strings.Builder
	for _, r := range string(l) {
		if b.Len()+utf8.RuneLen(r) > 200 {
			break
		}
		if r < 0x20 || r == 0x7f || r == '\uFFFD' || (r >= 0x80 && r < 0xa0) {
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
