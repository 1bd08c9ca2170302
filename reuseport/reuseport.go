package reuseport

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"syscall"
	"time"
)

var (
	// ErrNotSupported reports an operation this platform cannot do. Every
	// function returns an error wrapping it on platforms without
	// SO_REUSEPORT, and the Linux-only features (TCP_DEFER_ACCEPT,
	// TCP_FASTOPEN, BPF steering) return it elsewhere.
	ErrNotSupported = errors.New("reuseport: not supported on this platform")

	// ErrAddrInUse reports that the address is held by a socket that is not
	// a member of the group: one bound without SO_REUSEPORT, or one owned
	// by another user (the kernel only groups sockets of the same effective
	// uid). The error also matches syscall.EADDRINUSE (on every platform
	// whose syscall package defines it, i.e. all but plan9) and carries the
	// *net.OpError of the failed bind. It is not used when the requested
	// port was 0: EADDRINUSE then means the kernel found no free port in its
	// ephemeral range, and the bind's error is returned unchanged.
	ErrAddrInUse = errors.New("reuseport: address in use by a socket outside the reuseport group (bound without SO_REUSEPORT, or owned by another user)")

	// ErrInvalidConfig reports a Config field or argument out of range.
	ErrInvalidConfig = errors.New("reuseport: invalid configuration")
)

// Config holds listener options. A nil *Config and the zero Config mean the
// defaults: SO_REUSEPORT on top of what package net already sets
// (SO_REUSEADDR on TCP listeners, close-on-exec, non-blocking), and plain
// TCP rather than net's default Multipath TCP (see MultipathTCP). A Config is
// read, never modified, so one value may be shared by concurrent calls.
type Config struct {
	// Backlog is the accept-queue length passed to listen(2), at most
	// math.MaxInt32 (listen takes a C int). Zero keeps package net's
	// choice, the system maximum (net.core.somaxconn on Linux). A positive
	// value is applied by calling listen(2) again on the bound socket,
	// which Linux and the BSDs accept as "change the backlog"; the kernel
	// still caps it at somaxconn. Only Config.Listen and Config.ListenGroup
	// can apply it: net calls listen(2) after Control returns, so
	// Config.Control alone ignores Backlog.
	Backlog int

	// V6Only sets IPV6_V6ONLY on IPv6 sockets, so "[::]:port" does not
	// also receive IPv4 traffic. Package net already sets it for the
	// "tcp6" and "udp6" networks; V6Only extends it to "tcp" and "udp" on
	// an IPv6 wildcard address or an empty host (":port"), which net makes
	// dual-stack.
	//
	// An IPv4 address stays IPv4: for "tcp" and "udp" package net binds
	// "0.0.0.0" as a dual-stack IPv6 socket on "[::]", which IPV6_V6ONLY
	// would turn into one that refuses IPv4. So with V6Only, Listen and
	// ListenPacket bind an IPv4 literal host on "tcp4" or "udp4" (Addr
	// then reports "0.0.0.0:port"). Control alone cannot do that: net
	// hands it "tcp6" and the address "0.0.0.0:port" for "0.0.0.0" and
	// "[::]" alike, so with your own ListenConfig ask for "tcp4"/"udp4".
	V6Only bool

	// DeferAccept sets TCP_DEFER_ACCEPT (Linux): accept returns a
	// connection only once its first data arrived, or after about this
	// long. The kernel rounds it up to its SYN-ACK retransmission steps
	// (1, 3, 7, 15 ... seconds). Zero leaves it off. TCP only.
	DeferAccept time.Duration

	// FastOpen sets TCP_FASTOPEN (Linux) with this many pending TFO
	// requests, at most math.MaxInt32; zero leaves it off. The server side
	// also needs bit 2 of net.ipv4.tcp_fastopen. TCP only.
	FastOpen int

	// MultipathTCP makes Listen accept Multipath TCP (IPPROTO_MPTCP)
	// alongside TCP. Package net does so by default since Go 1.24; this
	// package does not, because the kernel's MPTCP sockets pass only some
	// options to their TCP subflows and reject SO_ATTACH_REUSEPORT_CBPF
	// with EOPNOTSUPP, so steering would silently become impossible.
	MultipathTCP bool
}

func (c *Config) validate() error {
	if c == nil {
		return nil
	}
	switch {
	case c.Backlog < 0:
		return fmt.Errorf("%w: Backlog %d is negative", ErrInvalidConfig, c.Backlog)
	case c.Backlog > math.MaxInt32:
		// listen(2) takes a C int: the kernel would see the low 32 bits
		// (1<<32 becomes 0).
		return fmt.Errorf("%w: Backlog %d exceeds %d", ErrInvalidConfig, c.Backlog, math.MaxInt32)
	case c.DeferAccept < 0:
		return fmt.Errorf("%w: DeferAccept %v is negative", ErrInvalidConfig, c.DeferAccept)
	case c.FastOpen < 0:
		return fmt.Errorf("%w: FastOpen %d is negative", ErrInvalidConfig, c.FastOpen)
	case c.FastOpen > math.MaxInt32:
		// setsockopt(2) takes a C int, as for Backlog.
		return fmt.Errorf("%w: FastOpen %d exceeds %d", ErrInvalidConfig, c.FastOpen, math.MaxInt32)
	}
	return nil
}

func isStream(network string) bool {
	switch network {
	case "tcp", "tcp4", "tcp6":
		return true
	}
	return false
}

func isDatagram(network string) bool {
	switch network {
	case "udp", "udp4", "udp6":
		return true
	}
	return false
}

// Control sets SO_REUSEPORT and the options of c on the socket behind rc. It
// has the signature of net.ListenConfig.Control and net.Dialer.Control, and
// net calls it after creating the socket and before bind(2):
//
//	lc := net.ListenConfig{Control: cfg.Control}
//
// network is "tcp4", "tcp6", "udp4" or "udp6" there (net appends the address
// family); IPv6 options apply when it ends in "6". Backlog is not applied
// (see Config.Backlog). The option is set before bind(2), so a UDP socket
// bound this way to port 0 on Linux may be given the port of another
// program's group of the same user; ListenPacket avoids that. On
// unsupported platforms it returns an error wrapping ErrNotSupported.
func (c *Config) Control(network, address string, rc syscall.RawConn) error {
	if err := c.validate(); err != nil {
		return err
	}
	return control(c, network, rc)
}

// ipv4Host reports whether address ("host:port") has an IPv4 literal as its
// host, IPv4-mapped IPv6 ("::ffff:0.0.0.0") included, as net reads it.
func ipv4Host(address string) bool {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.To4() != nil
}

// family4 returns network with a "4" appended when c.V6Only is set, network
// names no family, and address's host is an IPv4 literal: an IPv4 address
// must not become an IPv6-only socket (see V6Only).
func (c *Config) family4(network, address string) string {
	if c != nil && c.V6Only && (network == "tcp" || network == "udp") && ipv4Host(address) {
		return network + "4"
	}
	return network
}

// Control is the default Config's Control: SO_REUSEPORT only. Use it as
// net.ListenConfig{Control: reuseport.Control}.
func Control(network, address string, c syscall.RawConn) error {
	return (*Config)(nil).Control(network, address, c)
}

// Listen announces a TCP listener on address ("tcp", "tcp4" or "tcp6") with
// SO_REUSEPORT set, so other sockets of the same user may bind the same
// address and share its connections. The listener is a *net.TCPListener;
// its socket is non-blocking, on the runtime netpoller, and close-on-exec.
// Closing it resets the connections still waiting in its own accept queue
// (see the package documentation). ctx bounds address resolution only.
func (c *Config) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	if !isStream(network) {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: c.Control}
	lc.SetMultipathTCP(c != nil && c.MultipathTCP)
	l, err := lc.Listen(ctx, c.family4(network, address), address)
	if err != nil {
		return nil, listenError(address, err)
	}
	if c != nil && c.Backlog > 0 {
		if err := setBacklog(l.(*net.TCPListener), c.Backlog); err != nil {
			l.Close()
			return nil, &net.OpError{Op: "listen", Net: network, Addr: l.Addr(), Err: err}
		}
	}
	return l, nil
}

// ListenPacket announces a UDP socket on address ("udp", "udp4" or "udp6")
// with SO_REUSEPORT set. The connection is a *net.UDPConn. Where the kernel
// balances (see Probe), datagrams are spread over the group by a hash of
// their source and destination, so one client's datagrams stay on one
// member while the group is unchanged. TCP-only Config fields are ignored.
//
// On Linux a port of 0 is bound without SO_REUSEPORT and the option is set
// once the port is chosen: the kernel's UDP port search counts a port held
// only by SO_REUSEPORT sockets of the same user as free, so a socket asking
// for port 0 with the option set could be given, and silently join, another
// program's group.
func (c *Config) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	if !isDatagram(network) {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	pc, err := c.listenPacketOS(ctx, c.family4(network, address), address)
	if err != nil {
		return nil, listenError(address, err)
	}
	return pc, nil
}

// listenPacket binds one UDP socket with control as net's Control hook.
func listenPacket(ctx context.Context, network, address string, control func(string, string, syscall.RawConn) error) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: control}
	return lc.ListenPacket(ctx, network, address)
}

// Listen is Listen with the default Config.
func Listen(ctx context.Context, network, address string) (net.Listener, error) {
	return (*Config)(nil).Listen(ctx, network, address)
}

// ListenPacket is ListenPacket with the default Config.
func ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	return (*Config)(nil).ListenPacket(ctx, network, address)
}

// listenError marks EADDRINUSE as ErrAddrInUse: with SO_REUSEPORT set and a
// port given, the only ways to get it are a holder outside the group or
// another uid, and the bare errno names neither. For port 0 it means the
// ephemeral range had no free port, which ErrAddrInUse would misname.
func listenError(address string, err error) error {
	if isAddrInUse(err) && !portZero(address) {
		return fmt.Errorf("%w: %w", ErrAddrInUse, err)
	}
	return err
}

// portZero reports whether address asks the kernel to choose the port, as
// package net reads it: an empty address or port, or a number equal to 0
// ("0", "00", "+0"). A service name is never 0.
func portZero(address string) bool {
	if address == "" {
		return true
	}
	_, port, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	if port == "" {
		return true
	}
	n, err := strconv.ParseInt(port, 10, 64)
	return err == nil && n == 0
}
