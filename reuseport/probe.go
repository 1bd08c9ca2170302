package reuseport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// Capability is what the running kernel does with SO_REUSEPORT, as measured
// by Probe.
type Capability struct {
	// Option is the socket option this package sets: "SO_REUSEPORT", or
	// "SO_REUSEPORT_LB" on FreeBSD when the kernel has it.
	Option string

	// Shared reports that two sockets of this user bound the same address
	// and port with Option set (measured: two UDP sockets on 127.0.0.1).
	Shared bool

	// Balancing reports that the kernel spread datagrams from 32 source
	// ports over both members of a two-socket group (measured). Linux
	// balances by a hash of the 4-tuple, FreeBSD does with SO_REUSEPORT_LB.
	// macOS, OpenBSD and NetBSD accept SO_REUSEPORT but deliver everything
	// to one member: "supported, not balancing".
	Balancing bool

	// Steering reports that a classic BPF program could be attached to a
	// group to pick the member (Linux SO_ATTACH_REUSEPORT_CBPF, measured by
	// attaching CPUProgram).
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

// Probe measures what this kernel does with SO_REUSEPORT: it binds a group of
// two UDP sockets on 127.0.0.1, sends one datagram from each of 32 source
// ports, and counts where they arrive; it then tries to attach a steering
// program. It opens and closes about 35 sockets and takes a few
// milliseconds. On platforms without SO_REUSEPORT it returns an error
// wrapping ErrNotSupported.
func Probe() (Capability, error) {
	c := Capability{Option: reuseOption()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	g, err := ListenPacketGroup(ctx, "udp4", "127.0.0.1:0", 2)
	if err != nil {
		if errors.Is(err, ErrNotSupported) {
			return c, err
		}
		if errors.Is(err, ErrAddrInUse) {
			// The kernel refused a second member: the option is accepted
			// but does not share the port.
			return c, nil
		}
		return c, fmt.Errorf("reuseport: probe: %w", err)
	}
	defer g.Close()
	c.Shared = true

	if c.Balancing, err = probeBalancing(g); err != nil {
		return c, err
	}
	c.Steering = probeSteering(g)
	c.MigrateReq = migrateReq()
	return c, nil
}

func probeBalancing(g *PacketGroup) (bool, error) {
	var (
		mu   sync.Mutex
		got  [2]int
		wg   sync.WaitGroup
		done = make(chan struct{})
	)
	deadline := time.Now().Add(time.Second)
	for i := range 2 {
		pc := g.PacketConn(i)
		if err := pc.SetReadDeadline(deadline); err != nil {
			return false, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf [1]byte
			for {
				if _, _, err := pc.ReadFrom(buf[:]); err != nil {
					return
				}
				mu.Lock()
				got[i]++
				total := got[0] + got[1]
				mu.Unlock()
				if total == probeSources {
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
	for range probeSources {
		c, err := net.DialUDP("udp4", nil, dst)
		if err != nil {
			stop()
			return false, fmt.Errorf("reuseport: probe: %w", err)
		}
		_, err = c.Write([]byte{1})
		c.Close()
		if err != nil {
			stop()
			return false, fmt.Errorf("reuseport: probe: %w", err)
		}
	}
	select {
	case <-done:
	case <-time.After(time.Until(deadline)):
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	return got[0] > 0 && got[1] > 0, nil
}

// parseSysctlInt parses the text of an integer sysctl file such as
// /proc/sys/net/ipv4/tcp_migrate_req: optional surrounding white space and
// one decimal integer.
func parseSysctlInt(b []byte) (int, error) {
	s := string(bytes.TrimSpace(b))
	if s == "" || len(s) > 20 {
		return 0, fmt.Errorf("reuseport: sysctl value %q is not an integer", b)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("reuseport: sysctl value %q is not an integer", b)
	}
	return n, nil
}
