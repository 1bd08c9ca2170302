package cluster

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ErrListen reports a -listen address that cannot be parsed or bound.
var ErrListen = errors.New("cluster: bad listen address")

// maxUnixPath is the longest path a sockaddr_un holds (108 bytes with the
// terminating NUL).
const maxUnixPath = 107

// Addr is one parsed -listen address.
type Addr struct {
	// Network is "tcp", "udp" or "unix" (a SOCK_STREAM socket file).
	Network string
	// Address is host:port for tcp and udp, the path for unix.
	Address string
}

// String returns the address in -listen form (scheme://address).
func (a Addr) String() string { return a.Network + "://" + a.Address }

// ParseAddr parses one -listen value: tcp://host:port, udp://host:port,
// unix:///absolute/path, or a bare host:port meaning tcp. The host must be
// present ("" would bind every interface by accident); use 0.0.0.0 or [::]
// to mean that. Port 0 asks the kernel for a free port. A control
// character (a byte below 0x20, or 0x7f) is refused anywhere: the kernel
// would take it in a unix path, but the master writes addresses into the
// line-based upgrade state, logs and status output, where a newline in a
// path a worker asked for would forge records (see upgradeState.encode).
func ParseAddr(s string) (Addr, error) {
	if i := ctlByte(s); i >= 0 {
		return Addr{}, fmt.Errorf("%w %q: control character %#x at byte %d (an address is printable)", ErrListen, s, s[i], i)
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		scheme, rest = "tcp", s
	}
	switch scheme {
	case "tcp", "udp":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return Addr{}, fmt.Errorf("%w %q: %v", ErrListen, s, err)
		}
		if host == "" {
			return Addr{}, fmt.Errorf("%w %q: no host (write 0.0.0.0 or [::] for every interface)", ErrListen, s)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(p, 10) != port {
			return Addr{}, fmt.Errorf("%w %q: port %q is not a number from 0 to 65535", ErrListen, s, port)
		}
		return Addr{Network: scheme, Address: net.JoinHostPort(host, port)}, nil
	case "unix":
		if !strings.HasPrefix(rest, "/") {
			return Addr{}, fmt.Errorf("%w %q: unix:// needs an absolute path (unix:///run/app.sock)", ErrListen, s)
		}
		if len(rest) > maxUnixPath {
			return Addr{}, fmt.Errorf("%w %q: path longer than %d bytes", ErrListen, s, maxUnixPath)
		}
		return Addr{Network: "unix", Address: rest}, nil
	}
	return Addr{}, fmt.Errorf("%w %q: scheme %q (want tcp, udp or unix)", ErrListen, s, scheme)
}

// ctlByte returns the index of the first control character in s (a byte
// below 0x20, or DEL), or -1.
func ctlByte(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return i
		}
	}
	return -1
}

// fdName derives a LISTEN_FDNAMES entry from a bound address: systemd's
// names are printable ASCII without ':', so separators become '-'.
func fdName(network, address string) string {
	b := []byte(network + "-" + address)
	for i, c := range b {
		if c == ':' || c < 0x21 || c > 0x7e {
			b[i] = '-'
		}
	}
	if len(b) > 255 {
		b = b[:255]
	}
	return string(b)
}
