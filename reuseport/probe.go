package reuseport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"
)

// Capability is what the running kernel does with SO_REUSEPORT, as measured
// by Probe.
type Capability struct {
	// Option is the socket option this package sets: "SO_REUSEPORT", or
	// "SO_REUSEPORT_LB" on FreeBSD. A kernel that does not know it
	// (ENOPROTOOPT: FreeBSD before 12.0) is not supported: Probe reports
	// Shared false and an error wrapping ErrNotSupported.
	Option string

	// Shared reports that two sockets of this user bound the same address
	// and port with Option set (measured: two UDP sockets on 127.0.0.1).
	Shared bool

	// Balancing reports that the kernel spread datagrams from 32 source
	// ports over both members of a two-socket group (measured). Linux
	// balances by a hash of the 4-tuple, FreeBSD does with SO_REUSEPORT_LB
	// and DragonFly with plain SO_REUSEPORT. macOS, OpenBSD and NetBSD
	// accept SO_REUSEPORT but deliver everything to one member: "supported,
	// not balancing".
	Balancing bool

	// Steering reports that a classic BPF program attached to a group
	// (Linux SO_ATTACH_REUSEPORT_CBPF) picks the member: measured by
	// attaching a program that returns member 1, then one that returns
	// member 0, and checking that 8 datagrams from 8 source ports all
	// arrived on that member each time. A successful attach alone does not
	// count.
	Steering bool

	// MigrateReq reports net.ipv4.tcp_migrate_req (Linux 5.14+) in this
	// network namespace: when set, the kernel moves connections queued on
	// a closing member to another member instead of resetting them.
	MigrateReq bool
}

// String summarises c in one line, e.g. "SO_REUSEPORT: shared, balancing".
func (c Capability) String() string {
	if !c.Shared {
		return "SO_REUSEPORT: not supported"
	}
	s := c.Option + ": shared"
	if c.Balancing {
		s += ", balancing"
	} else {
		s += ", not balancing (one member receives everything)"
	}
	if c.Steering {
		s += ", BPF steering"
	}
	if c.MigrateReq {
		s += ", tcp_migrate_req=1"
	}
	return s
}

// probeSources is how many source ports the balancing probe sends from. With
// two members and a uniform hash, the chance that all land on one member is
// 2^-31, so a balancing kernel is never reported as non-balancing.
const probeSources = 32

// steerProbes is how many datagrams, each from its own source port, the
// steering probe sends per round. It runs two rounds, steering everything to
// member 1 and then to member 0, so a kernel that accepts the program but
// ignores it passes only if its hash put 16 sources on the chosen members by
// chance (2^-16), and a last-binder-wins kernel never passes both.
const steerProbes = 8

// bpfRetK is the classic BPF opcode BPF_RET|BPF_K, "return the constant K",
// the same value on every system that has classic BPF.
const bpfRetK = 0x06

// Probe measures what this kernel does with SO_REUSEPORT: it binds a group of
// two UDP sockets on 127.0.0.1, sends one datagram from each of 32 source
// ports, and counts where they arrive; it then attaches programs that steer
// every datagram to one member and checks that 8 datagrams from 8 source
// ports all arrive there, once for each member. It opens and closes about 50
// sockets and takes a few milliseconds. On platforms without SO_REUSEPORT,
// and on kernels that do not know Option, it returns an error wrapping
// ErrNotSupported. Shared is false with a nil
// error only when the second socket is refused the first one's port; a
// first socket that cannot bind (no free ephemeral port, EADDRINUSE) is an
// error.
func Probe() (Capability, error) {
	return probe(steerTo)
}

// steerTo returns the program that delivers everything to member.
func steerTo(member uint32) []Instruction {
	return []Instruction{{Op: bpfRetK, K: member}}
}

// probe is Probe with the steering program chosen by prog, so a test can
// check that a program the kernel accepts but that does not steer is not
// reported as Steering.
func probe(prog func(member uint32) []Instruction) (Capability, error) {
	c := Capability{Option: reuseOption()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	g, err := ListenPacketGroup(ctx, "udp4", "127.0.0.1:0", 2)
	if err != nil {
		if errors.Is(err, ErrNotSupported) {
			return c, err
		}
		var me *memberError
		if isAddrInUse(err) && errors.As(err, &me) && me.index > 0 {
			// The kernel refused a second member: the option is accepted
			// but does not share the port. The first member's EADDRINUSE
			// says only that no ephemeral port was free.
			return c, nil
		}
		return c, fmt.Errorf("reuseport: probe: %w", err)
	}
	defer g.Close()
	c.Shared = true

	got, err := deliver(g, probeSources, 0)
	if err != nil {
		return c, err
	}
	c.Balancing = got[0] > 0 && got[1] > 0
	if c.Steering, err = probeSteering(g, prog); err != nil {
		return c, err
	}
	c.MigrateReq = migrateReq()
	return c, nil
}

// probeSteering reports Steering only when it is observed: an attach that
// succeeds proves only that the kernel verified the program, not that the
// socket lookup runs it (a program returning an index >= the group size, for
// one, is accepted and then ignored in favour of the hash).
func probeSteering(g *PacketGroup, prog func(member uint32) []Instruction) (bool, error) {
	for round, member := range []uint32{1, 0} {
		if err := g.Steer(prog(member)); err != nil {
			// ErrNotSupported off Linux; EINVAL or ENOPROTOOPT from a
			// kernel without SO_ATTACH_REUSEPORT_CBPF (Linux < 4.5).
			return false, nil
		}
		got, err := deliver(g, steerProbes, byte(round+1))
		if err != nil {
			return false, err
		}
		if got[member] != steerProbes {
			return false, nil
		}
	}
	return true, nil
}

// deliver sends one datagram carrying tag from each of n new UDP sockets to
// the two members of g and returns how many of them each member received
// within a second. Datagrams with another tag, late ones from an earlier
// round, are not counted.
func deliver(g *PacketGroup, n int, tag byte) ([2]int, error) {
	var (
		mu   sync.Mutex
		got  [2]int
		wg   sync.WaitGroup
		done = make(chan struct{})
	)
	deadline := time.Now().Add(time.Second)
	for i := range 2 {
		if err := g.PacketConn(i).SetReadDeadline(deadline); err != nil {
			return got, err
		}
	}
	for i := range 2 {
		pc := g.PacketConn(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf [1]byte
			for {
				k, _, err := pc.ReadFrom(buf[:])
				if err != nil {
					return
				}
				if k != 1 || buf[0] != tag {
					continue
				}
				mu.Lock()
				got[i]++
				total := got[0] + got[1]
				mu.Unlock()
				if total == n {
					close(done)
				}
			}
		}()
	}
	stop := func() {
		// An expired deadline wakes both readers at once.
		for i := range 2 {
			_ = g.PacketConn(i).SetReadDeadline(time.Unix(1, 0))
		}
		wg.Wait()
	}
	dst := g.Addr().(*net.UDPAddr)
	for range n {
		c, err := net.DialUDP("udp4", nil, dst)
		if err != nil {
			stop()
			return got, fmt.Errorf("reuseport: probe: %w", err)
		}
		_, err = c.Write([]byte{tag})
		c.Close()
		if err != nil {
			stop()
			return got, fmt.Errorf("reuseport: probe: %w", err)
		}
	}
	select {
	case <-done:
	case <-time.After(time.Until(deadline)):
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	return got, nil
}

// parseSysctlInt parses the text of an integer sysctl file such as
// /proc/sys/net/ipv4/tcp_migrate_req, which the kernel writes as "%d\n":
// optional spaces, tabs and newlines around one decimal integer with an
// optional leading '-', which must fit in an int. Anything else, a '+' or
// a second number included, is an error rather than a guess.
func parseSysctlInt(b []byte) (int, error) {
	s := bytes.Trim(b, " \t\n")
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	if len(s) == 0 {
		return 0, fmt.Errorf("reuseport: sysctl value %q is not an integer", b)
	}
	limit := uint64(math.MaxInt)
	if neg {
		limit++ // -MinInt
	}
	var n uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("reuseport: sysctl value %q is not an integer", b)
		}
		d := uint64(c - '0')
		if n > (limit-d)/10 {
			return 0, fmt.Errorf("reuseport: sysctl value %q is out of range", b)
		}
		n = n*10 + d
	}
	if neg {
		return int(-n), nil
	}
	return int(n), nil
}
