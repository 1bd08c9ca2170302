package reuseport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
)

// MaxGroup bounds the group size ListenGroup accepts, far above any useful
// count of listeners on one port and far below the descriptor limit.
// FreeBSD and DragonFly balance over at most 256 sockets per address (a
// 257th binds but receives nothing), so there the limit is 256; see
// MaxGroupSize.
const MaxGroup = 1024

// MaxGroupSize returns the largest group ListenGroup and ListenPacketGroup
// accept on this platform: 256 on FreeBSD and DragonFly, MaxGroup elsewhere.
// The limit is the kernel's per address, so sockets joined by other
// processes or by Listen count too, and this package cannot see those.
func MaxGroupSize() int { return maxGroupOS }

// Group is n TCP listeners bound to one address, members of one reuseport
// group. Listener i is the i-th socket to join, which is the index a
// steering program returns to pick it.
//
// The methods may be called concurrently. Close closes every member and is
// idempotent; closing members one by one through Listener(i) is allowed but
// renumbers the group (the kernel moves its last member into the freed slot),
// so steering indexes no longer match Listener(i) afterwards.
type Group struct {
	members []net.Listener
	addr    net.Addr
	once    sync.Once
	err     error
}

// PacketGroup is n UDP sockets bound to one address, members of one
// reuseport group, numbered like Group.
type PacketGroup struct {
	members []net.PacketConn
	addr    net.Addr
	once    sync.Once
	err     error
}

// ListenGroup opens n TCP listeners on address with c's options. A port of
// 0 is resolved once, by the first bind, and the others bind that port, so
// every member shares it. n must be in 1..MaxGroupSize(), else the error
// wraps ErrInvalidConfig. On error nothing stays open.
func (c *Config) ListenGroup(ctx context.Context, network, address string, n int) (*Group, error) {
	members, addr, err := listenN(ctx, n, address, func(ctx context.Context, a string) (net.Listener, net.Addr, error) {
		l, err := c.Listen(ctx, network, a)
		if err != nil {
			return nil, nil, err
		}
		return l, l.Addr(), nil
	})
	if err != nil {
		return nil, err
	}
	return &Group{members: members, addr: addr}, nil
}

// ListenPacketGroup opens n UDP sockets on address, like ListenGroup.
func (c *Config) ListenPacketGroup(ctx context.Context, network, address string, n int) (*PacketGroup, error) {
	members, addr, err := listenN(ctx, n, address, func(ctx context.Context, a string) (net.PacketConn, net.Addr, error) {
		pc, err := c.ListenPacket(ctx, network, a)
		if err != nil {
			return nil, nil, err
		}
		return pc, pc.LocalAddr(), nil
	})
	if err != nil {
		return nil, err
	}
	return &PacketGroup{members: members, addr: addr}, nil
}

// ListenGroup is ListenGroup with the default Config.
func ListenGroup(ctx context.Context, network, address string, n int) (*Group, error) {
	return (*Config)(nil).ListenGroup(ctx, network, address, n)
}

// ListenPacketGroup is ListenPacketGroup with the default Config.
func ListenPacketGroup(ctx context.Context, network, address string, n int) (*PacketGroup, error) {
	return (*Config)(nil).ListenPacketGroup(ctx, network, address, n)
}

type closer interface{ Close() error }

func listenN[T closer](ctx context.Context, n int, address string, open func(context.Context, string) (T, net.Addr, error)) ([]T, net.Addr, error) {
	if n < 1 || n > maxGroupOS {
		return nil, nil, fmt.Errorf("%w: group size %d not in 1..%d (the kernel's limit on this platform)", ErrInvalidConfig, n, maxGroupOS)
	}
	members := make([]T, 0, n)
	var addr net.Addr
	for i := range n {
		m, a, err := open(ctx, address)
		if err != nil {
			for _, m := range members {
				m.Close()
			}
			return nil, nil, &memberError{index: i, n: n, err: err}
		}
		if i == 0 {
			// The kernel's choice for port 0, in the resolved form, so the
			// later members join this socket instead of picking their own.
			addr = a
			address = a.String()
		}
		members = append(members, m)
	}
	return members, addr, nil
}

// memberError is the error of the group member that failed to open, so
// Probe can tell a refused second member from a first bind that failed.
type memberError struct {
	index, n int
	err      error
}

func (e *memberError) Error() string {
	return fmt.Sprintf("reuseport: group member %d of %d: %v", e.index, e.n, e.err)
}

func (e *memberError) Unwrap() error { return e.err }

// Addr returns the address every member is bound to.
func (g *Group) Addr() net.Addr { return g.addr }

// Len returns the number of members.
func (g *Group) Len() int { return len(g.members) }

// Listener returns member i, a *net.TCPListener owned by the group.
func (g *Group) Listener(i int) net.Listener { return g.members[i] }

// Close closes every member. It is idempotent and returns the first call's
// result each time.
func (g *Group) Close() error {
	g.once.Do(func() { g.err = closeAll(g.members) })
	return g.err
}

// SteerByCPU attaches a program that hands each new connection to member
// (receiving CPU mod Len()), so a worker pinned to CPU i that accepts on
// Listener(i) gets the connections the kernel processes on CPU i. Linux only.
func (g *Group) SteerByCPU() error {
	prog, err := CPUProgram(len(g.members))
	if err != nil {
		return err
	}
	return g.Steer(prog)
}

// Steer attaches prog to the group (SO_ATTACH_REUSEPORT_CBPF), replacing any
// program attached before. The program returns the index of the member to
// use; an index >= Len() falls back to the kernel's hash. Linux only.
func (g *Group) Steer(prog []Instruction) error {
	rc, err := g.members[0].(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	return AttachProgram(rc, prog)
}

// Addr returns the address every member is bound to.
func (g *PacketGroup) Addr() net.Addr { return g.addr }

// Len returns the number of members.
func (g *PacketGroup) Len() int { return len(g.members) }

// PacketConn returns member i, a *net.UDPConn owned by the group.
func (g *PacketGroup) PacketConn(i int) net.PacketConn { return g.members[i] }

// Close closes every member, like Group.Close.
func (g *PacketGroup) Close() error {
	g.once.Do(func() { g.err = closeAll(g.members) })
	return g.err
}

// SteerByCPU is Group.SteerByCPU for datagrams.
func (g *PacketGroup) SteerByCPU() error {
	prog, err := CPUProgram(len(g.members))
	if err != nil {
		return err
	}
	return g.Steer(prog)
}

// Steer is Group.Steer for datagrams.
func (g *PacketGroup) Steer(prog []Instruction) error {
	rc, err := g.members[0].(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	return AttachProgram(rc, prog)
}

func closeAll[T closer](members []T) error {
	var errs []error
	for _, m := range members {
		if err := m.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
