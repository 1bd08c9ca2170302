package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/fdwire"
)

// Exit codes, one per failure class; docs/fdcli.md lists the same table,
// and fdrecv uses the same numbers. When fdrecv refuses a message, fdsend
// exits with the status fdrecv reported.

const usageText = `usage: fdsend -socket PATH [-fd N]... [-file PATH]... [-listen ADDR]... [-name NAME]... [-payload TEXT] [-timeout D] [-allow-uid UID]...

Sends descriptors, in command-line order and in one message, to the fdrecv
listening at PATH: inherited descriptors (-fd, in the mode they have), files
opened read-only (-file), and sockets bound fresh, in blocking mode, TCP
never MPTCP (-listen tcp://HOST:PORT, udp://HOST:PORT, unix:///PATH; a plain
HOST:PORT is tcp; PORT 0 picks a free port).
-name names them in the same order (none: every name is "unknown"). Waits
up to -timeout for PATH to appear and for fdrecv's reply.

Flags:
%s
Exit codes:
  0   success: fdrecv has the descriptors
  1   other failure (I/O error, interrupted)
  2   usage: bad flags or arguments
  3   timeout: no reply from fdrecv before -timeout
  4   count: fdrecv expected another number of descriptors (-n)
  5   truncated: fdrecv's control data was truncated (e.g. its fd limit)
  6   permission: the receiver's uid is not allowed, or it refused ours
  7   socket: PATH did not appear before -timeout, is not a socket, or nobody listens on it
  8   protocol: malformed reply, fdrecv hung up without replying, or it found the message malformed
  9   source: an -fd is not open, a -file cannot be opened, a -listen cannot bind
  10  exec: fdrecv could not hand the descriptors to its PROGRAM
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// source is one descriptor to send, in command-line order.
type source struct {
	kind  string // "fd", "file" or "listen"
	value string
}

// sourceFlag appends to one shared list, so -fd, -file and -listen keep
// their relative order.
type sourceFlag struct {
	kind string
	list *[]source
}

func (s sourceFlag) String() string { return "" }
func (s sourceFlag) Set(v string) error {
	if s.kind == "fd" {
		if n, err := strconv.Atoi(v); err != nil || n < 0 {
			return fmt.Errorf("not a descriptor number: %q", v)
		}
	}
	*s.list = append(*s.list, source{s.kind, v})
	return nil
}

type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

type config struct {
	socket    string
	sources   []source
	names     []string
	payload   string
	timeout   time.Duration
	allowUIDs fdwire.UIDs
}

func parse(args []string, stderr io.Writer) (*config, error) {
	var cfg config
	fs := flag.NewFlagSet("fdsend", flag.ContinueOnError)
	fs.StringVar(&cfg.socket, "socket", "", "`PATH` of fdrecv's unix socket (required)")
	fs.Var(sourceFlag{"fd", &cfg.sources}, "fd", "send inherited descriptor `N` (repeatable)")
	fs.Var(sourceFlag{"file", &cfg.sources}, "file", "open `PATH` read-only and send it (repeatable)")
	fs.Var(sourceFlag{"listen", &cfg.sources}, "listen", "bind `ADDR` (tcp://, udp://, unix://) and send the socket (repeatable)")
	fs.Var((*stringList)(&cfg.names), "name", "`NAME` of the next descriptor, in order (repeatable)")
	fs.StringVar(&cfg.payload, "payload", "", "`TEXT` sent along (at most 65536 bytes)")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "give up after `D` in all: waiting for PATH to appear, then for fdrecv's reply")
	fs.Var(&cfg.allowUIDs, "allow-uid", "also send to a receiver running as `UID` (repeatable)")
	if err := fdwire.ParseFlags(fs, args, usageText, stderr); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fail(fdwire.StatusUsage, "unexpected arguments %q", fs.Args())
	case cfg.socket == "":
		return nil, fail(fdwire.StatusUsage, "-socket is required")
	case fdwire.CheckSocketPath(cfg.socket) != nil:
		return nil, fail(fdwire.StatusUsage, "-socket %v", fdwire.CheckSocketPath(cfg.socket))
	case len(cfg.sources) > fdwire.MaxNames:
		return nil, fail(fdwire.StatusUsage, "%d descriptors, at most %d in one message", len(cfg.sources), fdwire.MaxNames)
	case len(cfg.names) > 0 && len(cfg.names) != len(cfg.sources):
		return nil, fail(fdwire.StatusUsage, "%d names for %d descriptors: give one -name per descriptor, or none", len(cfg.names), len(cfg.sources))
	case len(cfg.payload) > fdwire.MaxPayload:
		return nil, fail(fdwire.StatusUsage, "payload of %d bytes, at most %d", len(cfg.payload), fdwire.MaxPayload)
	case cfg.timeout <= 0:
		return nil, fail(fdwire.StatusUsage, "-timeout %v: want a positive duration", cfg.timeout)
	}
	if len(cfg.names) == 0 {
		for range cfg.sources {
			cfg.names = append(cfg.names, "unknown")
		}
	}
	for _, n := range cfg.names {
		if err := fdwire.ValidName(n); err != nil {
			return nil, fail(fdwire.StatusUsage, "-name: %v", err)
		}
	}
	// Checked before anything is opened, so a typo is a usage error.
	for i, s := range cfg.sources {
		if s.kind != "listen" {
			continue
		}
		scheme, rest := splitListen(s.value)
		if !strings.Contains(s.value, "://") && strings.Contains(s.value, ":/") {
			// "unix:/x" is a scheme missing a slash, not the tcp
			// address "unix:/x".
			return nil, fail(fdwire.StatusUsage, "-listen %s: want SCHEME://ADDRESS (tcp://, udp://, unix://)", s.value)
		}
		switch scheme {
		case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
			// Without a port, net would bind every interface on a
			// random port ("tcp://" is the empty address); a port of 0
			// or an empty host must be written out. A port that is not
			// a number or a service name, or a "/" ("tcp://h:0/"), is a
			// typo that net would only find after a lookup.
			host, port, err := net.SplitHostPort(rest)
			if err == nil && !strings.Contains(s.value, "://") && isScheme(host) {
				// "udp:0", "unix:rel.sock": a scheme without its
				// slashes, not a host of that name, which would be
				// looked up in the DNS.
				return nil, fail(fdwire.StatusUsage, "-listen %s: want SCHEME://ADDRESS (tcp://, udp://, unix://)", s.value)
			}
			if err != nil || !validPort(port) || strings.Contains(rest, "/") {
				return nil, fail(fdwire.StatusUsage, "-listen %s: want HOST:PORT (PORT a number up to 65535 or a service name; 0 picks a free one, an empty HOST means every interface)", s.value)
			}
		case "unix":
			if err := fdwire.CheckSocketPath(rest); err != nil {
				return nil, fail(fdwire.StatusUsage, "-listen %s: %v", s.value, err)
			}
			// The receiver sees the path the socket was bound to; a
			// relative one would mean nothing in its working directory.
			abs, err := filepath.Abs(rest)
			if err != nil || rest == "" {
				return nil, fail(fdwire.StatusUsage, "-listen %s: bad path", s.value)
			}
			cfg.sources[i].value = "unix://" + abs
		default:
			return nil, fail(fdwire.StatusUsage, "-listen %s: unknown scheme %q (want tcp, udp or unix)", s.value, scheme)
		}
	}
	return &cfg, nil
}

// isScheme reports whether host is one of the -listen schemes.
func isScheme(host string) bool {
	switch strings.ToLower(host) {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6", "unix":
		return true
	}
	return false
}

// validPort reports whether port is a port number (0 to 65535) or a
// service name (letters, digits and '-'), as
// /etc/services spells them.
func validPort(port string) bool {
	if port == "" {
		return false
	}
	digits := true
	for _, r := range port {
		switch {
		case r >= '0' && r <= '9':
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '-':
			digits = false
		default:
			return false
		}
	}
	if digits {
		n, err := strconv.Atoi(port)
		return err == nil && n <= 65535
	}
	return true
}

// splitListen splits a -listen value into scheme and address; a plain
// HOST:PORT is tcp.
func splitListen(addr string) (scheme, rest string) {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok {
		return "tcp", addr
	}
	return scheme, rest
}

// run is the whole command: parse args, open the sources, send, wait for
// the reply.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cfg, err := parse(args, stderr)
	if err != nil {
		return err
	}
	return send(ctx, cfg)
}

func fail(code int, format string, args ...any) error { return fdwire.Fail(code, format, args...) }

// exitCode prints err once to stderr and returns the process exit status.
func exitCode(err error, stderr io.Writer) int { return fdwire.ExitCode("fdsend", err, stderr) }
