package reuseport_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/reuseport"
)

// foreignControl sets SO_REUSEPORT the way another program would, without
// this package.
func foreignControl(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
		return err
	}
	return serr
}

// TestPortZeroAvoidsForeignGroups: Linux's UDP port search treats a port
// held only by SO_REUSEPORT sockets of the same uid as free, so a UDP socket
// that asks for port 0 with the option already set may be given such a port
// and join that group. The test holds 300 such "foreign" sockets on
// 127.0.0.1, then opens 4000 port-0 sockets through the package (groups of
// 2 and single sockets, alternately) and requires that none got a foreign
// port. With the option set before bind each has a chance of about
// 300/28232 (the default ephemeral range) of joining, about 42 expected
// joins, so the old code passes with probability about e^-42.
func TestPortZeroAvoidsForeignGroups(t *testing.T) {
	fdcensus.Verify(t)
	const foreignN, opens = 300, 4000
	ctx := testCtx(t)
	lc := net.ListenConfig{Control: foreignControl}
	foreign := make(map[int]bool, foreignN)
	for range foreignN {
		pc, err := lc.ListenPacket(ctx, "udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		foreign[pc.LocalAddr().(*net.UDPAddr).Port] = true
	}
	deadline := time.Now().Add(30 * time.Second)
	var made, joined int
	for i := range opens {
		if time.Now().After(deadline) {
			break
		}
		var (
			port  int
			close func() error
		)
		if i%2 == 0 {
			g, err := reuseport.ListenPacketGroup(ctx, "udp4", "127.0.0.1:0", 2)
			if err != nil {
				t.Fatalf("group %d: %v", i, err)
			}
			port, close = g.Addr().(*net.UDPAddr).Port, g.Close
		} else {
			pc, err := reuseport.ListenPacket(ctx, "udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatalf("socket %d: %v", i, err)
			}
			if !socketState(t, pc).ReusePort {
				t.Fatalf("socket %d: SO_REUSEPORT not set after bind", i)
			}
			port, close = pc.LocalAddr().(*net.UDPAddr).Port, pc.Close
		}
		made++
		if foreign[port] {
			joined++
		}
		if err := close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d port-0 sockets and groups beside %d foreign reuseport sockets", made, foreignN)
	if made < opens {
		t.Logf("deadline reached after %d of %d", made, opens)
	}
	if joined != 0 {
		t.Errorf("%d of %d port-0 sockets or groups were given a port held by a foreign reuseport socket", joined, made)
	}
}

// portZeroResult is one scenario of portZeroNetnsHelper.
type portZeroResult struct {
	Case      string
	Err       string // the error text, for the log only
	AddrInUse bool   // errors.Is(err, syscall.EADDRINUSE)
	Outside   bool   // errors.Is(err, reuseport.ErrAddrInUse)
	Shared    bool   // Probe's Capability.Shared
	Bound     int    // sockets or groups that bound
	Joined    int    // of those, how many got a port a foreign socket held
}

func newResult(name string, err error) portZeroResult {
	r := portZeroResult{Case: name, AddrInUse: errors.Is(err, syscall.EADDRINUSE), Outside: errors.Is(err, reuseport.ErrAddrInUse)}
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

// The two ports of the helper's ephemeral range.
const rangeLow, rangeHigh = 40000, 40001

// holdPorts binds the ephemeral range's ports on 127.0.0.1 as another
// program would (kind "udp", "udp-reuseport" or "tcp") and returns a
// function that closes them.
func holdPorts(ctx context.Context, kind string, ports ...int) (func(), error) {
	var closers []func() error
	release := func() {
		for _, c := range closers {
			_ = c()
		}
	}
	for _, p := range ports {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		var err error
		switch kind {
		case "udp", "udp-reuseport":
			var lc net.ListenConfig
			if kind == "udp-reuseport" {
				lc.Control = foreignControl
			}
			var pc net.PacketConn
			if pc, err = lc.ListenPacket(ctx, "udp4", addr); err == nil {
				closers = append(closers, pc.Close)
			}
		case "tcp":
			var l net.Listener
			if l, err = net.Listen("tcp4", addr); err == nil {
				closers = append(closers, l.Close)
			}
		}
		if err != nil {
			release()
			return nil, fmt.Errorf("holding %s port %d: %w", kind, p, err)
		}
	}
	return release, nil
}

// portZeroNetnsHelper runs in a fresh network namespace whose ephemeral
// range is the two ports rangeLow..rangeHigh, so the kernel's choice for
// port 0 is forced: with both ports held there is none, with one held only
// the other. It prints one portZeroResult per scenario as a JSON array.
func portZeroNetnsHelper() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "portzerons:", err)
		return 2
	}
	if err := loopbackUp(); err != nil {
		return fail(err)
	}
	r := fmt.Sprintf("%d %d\n", rangeLow, rangeHigh)
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(r), 0o644); err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var results []portZeroResult
	both := []int{rangeLow, rangeHigh}
	scenarios := []struct {
		name  string
		kind  string
		ports []int
		run   func(name string) portZeroResult
	}{
		{"udp group, range held by plain sockets", "udp", both, func(name string) portZeroResult {
			g, err := reuseport.ListenPacketGroup(ctx, "udp4", "127.0.0.1:0", 2)
			return groupResult(name, g, err, both)
		}},
		{"probe, range held by plain sockets", "udp", both, probeResult},
		{"udp group, range held by foreign reuseport sockets", "udp-reuseport", both, func(name string) portZeroResult {
			g, err := reuseport.ListenPacketGroup(ctx, "udp4", "127.0.0.1:0", 2)
			return groupResult(name, g, err, both)
		}},
		{"udp socket, range held by foreign reuseport sockets", "udp-reuseport", both, func(name string) portZeroResult {
			pc, err := reuseport.ListenPacket(ctx, "udp4", "127.0.0.1:0")
			res := newResult(name, err)
			if err == nil {
				res.Bound = 1
				res.Joined = 1 // every port of the range is held
				pc.Close()
			}
			return res
		}},
		{"probe, range held by foreign reuseport sockets", "udp-reuseport", both, probeResult},
		{"tcp listener, range held by plain listeners", "tcp", both, func(name string) portZeroResult {
			l, err := reuseport.Listen(ctx, "tcp4", "127.0.0.1:0")
			res := newResult(name, err)
			if err == nil {
				res.Bound = 1
				res.Joined = 1
				l.Close()
			}
			return res
		}},
		// 20 groups, one after another: each must get the free port. A
		// socket with SO_REUSEPORT set before bind gets the foreign port
		// about half the time.
		{"20 udp groups, one port held by a foreign reuseport socket", "udp-reuseport", []int{rangeLow}, func(name string) portZeroResult {
			res := portZeroResult{Case: name}
			for range 20 {
				g, err := reuseport.ListenPacketGroup(ctx, "udp4", "127.0.0.1:0", 2)
				r := groupResult(name, g, err, []int{rangeLow})
				if err != nil {
					return r
				}
				res.Bound += r.Bound
				res.Joined += r.Joined
			}
			return res
		}},
	}
	for _, sc := range scenarios {
		release, err := holdPorts(ctx, sc.kind, sc.ports...)
		if err != nil {
			return fail(err)
		}
		results = append(results, sc.run(sc.name))
		release()
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		return 1
	}
	return 0
}

// groupResult records the outcome of one ListenPacketGroup and closes the
// group; held are the ports foreign sockets hold.
func groupResult(name string, g *reuseport.PacketGroup, err error, held []int) portZeroResult {
	res := newResult(name, err)
	if err != nil {
		return res
	}
	defer g.Close()
	res.Bound = 1
	port := g.Addr().(*net.UDPAddr).Port
	for _, h := range held {
		if port == h {
			res.Joined = 1
		}
	}
	return res
}

func probeResult(name string) portZeroResult {
	c, err := reuseport.Probe()
	res := newResult(name, err)
	res.Shared = c.Shared
	return res
}

// TestPortZeroRangeExhausted runs portZeroNetnsHelper (root only; skipped
// where a network namespace cannot be created). When no ephemeral port is
// free, binding port 0 fails with EADDRINUSE: that is neither ErrAddrInUse
// (no socket outside a group holds a requested port) nor, for Probe, a
// kernel that refuses to share a port (Shared false with a nil error). And
// a port-0 UDP socket never joins the foreign reuseport sockets that hold
// the other ports of the range.
func TestPortZeroRangeExhausted(t *testing.T) {
	fdcensus.Verify(t)
	out := runInNetns(t, "portzerons")
	var got []portZeroResult
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	noPort := func(name string) portZeroResult { return portZeroResult{Case: name, AddrInUse: true} }
	want := []portZeroResult{
		noPort("udp group, range held by plain sockets"),
		noPort("probe, range held by plain sockets"),
		noPort("udp group, range held by foreign reuseport sockets"),
		noPort("udp socket, range held by foreign reuseport sockets"),
		noPort("probe, range held by foreign reuseport sockets"),
		noPort("tcp listener, range held by plain listeners"),
		{Case: "20 udp groups, one port held by a foreign reuseport socket", Bound: 20},
	}
	for _, r := range got {
		t.Logf("%s: err %q", r.Case, r.Err)
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(portZeroResult{}, "Err")); diff != "" {
		t.Errorf("port-0 scenarios (-want +got):\n%s", diff)
	}
}
