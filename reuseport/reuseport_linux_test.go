package reuseport_test

import (
	"errors"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/reuseport"
)

// Compile-time checks that Control fits the net hooks it is meant for.
var (
	_ = net.ListenConfig{Control: reuseport.Control}
	_ = net.ListenConfig{Control: (&reuseport.Config{}).Control}
)

type sockState struct {
	ReusePort bool
	CloseExec bool
	NonBlock  bool
}

func socketState(t *testing.T, v any) sockState {
	t.Helper()
	var (
		st  sockState
		err error
	)
	withFD(t, v, func(fd int) {
		var n, fdfl, fl int
		if n, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT); err != nil {
			return
		}
		if fdfl, err = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return
		}
		if fl, err = unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil {
			return
		}
		st = sockState{ReusePort: n == 1, CloseExec: fdfl&unix.FD_CLOEXEC != 0, NonBlock: fl&unix.O_NONBLOCK != 0}
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestListenNetworks(t *testing.T) {
	fdcensus.Verify(t)
	v6 := haveIPv6Loopback()
	tests := []struct {
		network, addr string
		needV6        bool
	}{
		{"tcp", "127.0.0.1:0", false},
		{"tcp4", "127.0.0.1:0", false},
		{"tcp6", "[::1]:0", true},
		{"udp", "127.0.0.1:0", false},
		{"udp4", "127.0.0.1:0", false},
		{"udp6", "[::1]:0", true},
	}
	want := sockState{ReusePort: true, CloseExec: true, NonBlock: true}
	for _, tt := range tests {
		t.Run(tt.network, func(t *testing.T) {
			if tt.needV6 && !v6 {
				t.Skip("::1 is not available on this machine")
			}
			ctx := testCtx(t)
			var socks [2]any
			for i := range socks {
				addr := tt.addr
				if i > 0 {
					addr = localAddr(socks[0]).String()
				}
				var (
					s   any
					err error
				)
				if strings.HasPrefix(tt.network, "tcp") {
					s, err = reuseport.Listen(ctx, tt.network, addr)
				} else {
					s, err = reuseport.ListenPacket(ctx, tt.network, addr)
				}
				if err != nil {
					t.Fatalf("socket %d on %s: %v", i, addr, err)
				}
				t.Cleanup(func() { s.(interface{ Close() error }).Close() })
				socks[i] = s
				if diff := cmp.Diff(want, socketState(t, s)); diff != "" {
					t.Errorf("socket %d state (-want +got):\n%s", i, diff)
				}
			}
		})
	}
}

func localAddr(v any) net.Addr {
	switch s := v.(type) {
	case net.Listener:
		return s.Addr()
	case net.PacketConn:
		return s.LocalAddr()
	}
	return nil
}

func TestConfigOptions(t *testing.T) {
	fdcensus.Verify(t)
	somaxconn := readSysctl(t, "/proc/sys/net/core/somaxconn")
	rawSomaxconn := somaxconn
	if somaxconn > 65535 {
		somaxconn = 65535 // net caps the backlog it passes at 65535
	}
	type opts struct {
		Backlog     int
		DeferAccept int
		FastOpen    int
		V6Only      int
	}
	tests := []struct {
		name          string
		cfg           *reuseport.Config
		network, addr string
		want          opts
	}{
		{"nil config", nil, "tcp4", "127.0.0.1:0", opts{Backlog: somaxconn}},
		{"zero config", &reuseport.Config{}, "tcp4", "127.0.0.1:0", opts{Backlog: somaxconn}},
		{"backlog", &reuseport.Config{Backlog: 7}, "tcp4", "127.0.0.1:0", opts{Backlog: 7}},
		// The largest valid value; the kernel caps it at somaxconn, which
		// net's own value (capped at 65535) may be below.
		{"backlog MaxInt32", &reuseport.Config{Backlog: math.MaxInt32}, "tcp4", "127.0.0.1:0", opts{Backlog: rawSomaxconn}},
		{"defer accept", &reuseport.Config{DeferAccept: time.Second}, "tcp4", "127.0.0.1:0", opts{Backlog: somaxconn, DeferAccept: 1}},
		{"defer accept rounds up", &reuseport.Config{DeferAccept: 500 * time.Millisecond}, "tcp4", "127.0.0.1:0", opts{Backlog: somaxconn, DeferAccept: 1}},
		{"fast open", &reuseport.Config{FastOpen: 16}, "tcp4", "127.0.0.1:0", opts{Backlog: somaxconn, FastOpen: 16}},
		{"all", &reuseport.Config{Backlog: 64, DeferAccept: time.Second, FastOpen: 8}, "tcp", "127.0.0.1:0", opts{Backlog: 64, DeferAccept: 1, FastOpen: 8}},
		{"dual-stack by default", nil, "tcp", "[::]:0", opts{Backlog: somaxconn}},
		{"v6only on tcp", &reuseport.Config{V6Only: true}, "tcp", "[::]:0", opts{Backlog: somaxconn, V6Only: 1}},
		{"v6only set by net on tcp6", nil, "tcp6", "[::]:0", opts{Backlog: somaxconn, V6Only: 1}},
	}
	v6 := haveIPv6Loopback()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v6sock := strings.HasPrefix(tt.addr, "[")
			if v6sock && !v6 {
				t.Skip("IPv6 is not available on this machine")
			}
			l, err := tt.cfg.Listen(testCtx(t), tt.network, tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var got opts
			var qerr error
			_, got.Backlog, qerr = acceptQueue(l)
			if qerr != nil {
				t.Fatal(qerr)
			}
			got.DeferAccept = getsockoptInt(t, l, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
			got.FastOpen = getsockoptInt(t, l, unix.IPPROTO_TCP, unix.TCP_FASTOPEN)
			if v6sock {
				got.V6Only = getsockoptInt(t, l, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("socket options (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("udp ignores tcp options", func(t *testing.T) {
		cfg := &reuseport.Config{Backlog: 7, DeferAccept: time.Second, FastOpen: 16}
		pc, err := cfg.ListenPacket(testCtx(t), "udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		if diff := cmp.Diff(sockState{ReusePort: true, CloseExec: true, NonBlock: true}, socketState(t, pc)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
}

func readSysctl(t testing.TB, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := reuseport.ParseSysctlInt(b)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestControlInListenConfig(t *testing.T) {
	fdcensus.Verify(t)
	cfg := &reuseport.Config{V6Only: true}
	tests := []struct {
		name    string
		control func(string, string, syscall.RawConn) error
	}{
		{"package Control", reuseport.Control},
		{"Config.Control", cfg.Control},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lc := net.ListenConfig{Control: tt.control}
			ctx := testCtx(t)
			l1, err := lc.Listen(ctx, "tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l1.Close()
			// A second socket on the same port proves SO_REUSEPORT was set
			// on both through the hook.
			l2, err := lc.Listen(ctx, "tcp4", l1.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer l2.Close()
			pc, err := lc.ListenPacket(ctx, "udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			if !socketState(t, pc).ReusePort {
				t.Error("SO_REUSEPORT not set on the UDP socket")
			}
		})
	}
}

func TestGroupResolvesPortZeroOnce(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		network, addr string
		n             int
	}{
		{"tcp4", "127.0.0.1:0", 1},
		{"tcp4", "127.0.0.1:0", 4},
		{"tcp", "localhost:0", 3},
		{"udp4", "127.0.0.1:0", 4},
	}
	for _, tt := range tests {
		t.Run(tt.network+"/"+strconv.Itoa(tt.n), func(t *testing.T) {
			ctx := testCtx(t)
			var (
				addrs []string
				inos  = map[uint64]bool{}
				g     interface {
					Close() error
					Len() int
				}
			)
			fdsBefore, err := fdcensus.Take(0)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(tt.network, "tcp") {
				tg, err := reuseport.ListenGroup(ctx, tt.network, tt.addr, tt.n)
				if err != nil {
					t.Fatal(err)
				}
				for i := range tg.Len() {
					addrs = append(addrs, tg.Listener(i).Addr().String())
				}
				addrs = append(addrs, tg.Addr().String())
				g = tg
			} else {
				pg, err := reuseport.ListenPacketGroup(ctx, tt.network, tt.addr, tt.n)
				if err != nil {
					t.Fatal(err)
				}
				for i := range pg.Len() {
					addrs = append(addrs, pg.PacketConn(i).LocalAddr().String())
				}
				addrs = append(addrs, pg.Addr().String())
				g = pg
			}
			fdsAfter, err := fdcensus.Take(0)
			if err != nil {
				t.Fatal(err)
			}
			for _, ino := range fdsAfter.Inodes("socket:") {
				inos[ino] = true
			}
			for _, ino := range fdsBefore.Inodes("socket:") {
				delete(inos, ino)
			}
			if len(inos) != tt.n {
				t.Errorf("group opened %d new sockets, want %d", len(inos), tt.n)
			}
			want := make([]string, tt.n+1)
			for i := range want {
				want[i] = addrs[len(addrs)-1]
			}
			if strings.HasSuffix(want[0], ":0") {
				t.Errorf("group address %s still has port 0", want[0])
			}
			if diff := cmp.Diff(want, addrs); diff != "" {
				t.Errorf("member addresses (-want +got):\n%s", diff)
			}
			if err := g.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := g.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	fdcensus.Verify(t)
	ctx := testCtx(t)
	var unknown net.UnknownNetworkError
	tests := []struct {
		name  string
		run   func() error
		is    error
		asNet bool
	}{
		{"Listen udp", func() error { _, err := reuseport.Listen(ctx, "udp", "127.0.0.1:0"); return err }, nil, true},
		{"Listen unix", func() error { _, err := reuseport.Listen(ctx, "unix", "/tmp/x"); return err }, nil, true},
		{"ListenPacket tcp", func() error { _, err := reuseport.ListenPacket(ctx, "tcp", "127.0.0.1:0"); return err }, nil, true},
		{"ListenPacket ip4", func() error { _, err := reuseport.ListenPacket(ctx, "ip4:icmp", "127.0.0.1"); return err }, nil, true},
		{"negative backlog", func() error {
			_, err := (&reuseport.Config{Backlog: -1}).Listen(ctx, "tcp", "127.0.0.1:0")
			return err
		}, reuseport.ErrInvalidConfig, false},
		{"negative defer", func() error {
			_, err := (&reuseport.Config{DeferAccept: -time.Second}).Listen(ctx, "tcp", "127.0.0.1:0")
			return err
		}, reuseport.ErrInvalidConfig, false},
		// listen(2) and setsockopt(2) take a C int; 1<<32 used to reach
		// the kernel as 0.
		{"backlog above MaxInt32", func() error {
			_, err := (&reuseport.Config{Backlog: asInt(math.MaxInt32 + 1)}).Listen(ctx, "tcp", "127.0.0.1:0")
			return err
		}, reuseport.ErrInvalidConfig, false},
		{"backlog 1<<32", func() error {
			_, err := (&reuseport.Config{Backlog: asInt(1 << 32)}).ListenGroup(ctx, "tcp", "127.0.0.1:0", 2)
			return err
		}, reuseport.ErrInvalidConfig, false},
		{"fast open above MaxInt32", func() error {
			_, err := (&reuseport.Config{FastOpen: asInt(math.MaxInt32 + 1)}).Listen(ctx, "tcp", "127.0.0.1:0")
			return err
		}, reuseport.ErrInvalidConfig, false},
		{"fast open above MaxInt32 in Control", func() error {
			lc := net.ListenConfig{Control: (&reuseport.Config{FastOpen: asInt(math.MaxInt32 + 1)}).Control}
			l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
			if err == nil {
				l.Close()
			}
			return err
		}, reuseport.ErrInvalidConfig, false},
		{"negative fast open in Control", func() error {
			lc := net.ListenConfig{Control: (&reuseport.Config{FastOpen: -1}).Control}
			l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
			if err == nil {
				l.Close()
			}
			return err
		}, reuseport.ErrInvalidConfig, false},
		{"group of 0", func() error { _, err := reuseport.ListenGroup(ctx, "tcp", "127.0.0.1:0", 0); return err }, reuseport.ErrInvalidConfig, false},
		{"group too large", func() error {
			_, err := reuseport.ListenPacketGroup(ctx, "udp", "127.0.0.1:0", reuseport.MaxGroup+1)
			return err
		}, reuseport.ErrInvalidConfig, false},
		{"group bad address", func() error { _, err := reuseport.ListenGroup(ctx, "tcp", "127.0.0.1:x", 2); return err }, nil, false},
		{"CPUProgram(0)", func() error { _, err := reuseport.CPUProgram(0); return err }, reuseport.ErrInvalidConfig, false},
		{"empty program", func() error { return attachTo(ctx, nil) }, reuseport.ErrInvalidConfig, false},
		{"program too long", func() error {
			return attachTo(ctx, make([]reuseport.Instruction, reuseport.MaxInstructions+1))
		}, reuseport.ErrInvalidConfig, false},
		// The kernel's checker refuses a program that does not end in a
		// return (sk_chk_filter): EINVAL, never a silent no-op.
		{"program without ret", func() error {
			return attachTo(ctx, []reuseport.Instruction{{Op: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}})
		}, syscall.EINVAL, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if err == nil {
				t.Fatal("no error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q does not match %v", err, tt.is)
			}
			if tt.asNet && !errors.As(err, &unknown) {
				t.Errorf("error %q is not a net.UnknownNetworkError", err)
			}
			if errors.Is(err, reuseport.ErrNotSupported) {
				t.Errorf("error %q claims ErrNotSupported on Linux", err)
			}
		})
	}
}

// asInt converts v for a Config field. Where int has 32 bits and cannot
// hold v, it returns -1, which Config refuses as well.
func asInt(v int64) int {
	if int64(int(v)) != v {
		return -1
	}
	return int(v)
}

func attachTo(ctx interface {
	Deadline() (time.Time, bool)
	Done() <-chan struct{}
	Err() error
	Value(any) any
}, prog []reuseport.Instruction) error {
	g, err := reuseport.ListenPacketGroup(ctx, "udp4", "127.0.0.1:0", 1)
	if err != nil {
		return err
	}
	defer g.Close()
	return g.Steer(prog)
}

// TestProbe checks what Probe measures on Linux. MigrateReq is checked by
// TestProbeMigrateReq, which sets the sysctl both ways in a private network
// namespace instead of comparing Probe with the file it reads.
func TestProbe(t *testing.T) {
	fdcensus.Verify(t)
	want := reuseport.Capability{
		Option:    "SO_REUSEPORT",
		Shared:    true,
		Balancing: true,
		Steering:  true,
	}
	got, err := reuseport.Probe()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(reuseport.Capability{}, "MigrateReq")); diff != "" {
		t.Errorf("Probe (-want +got):\n%s", diff)
	}
	if s := got.String(); !strings.Contains(s, "balancing") || strings.Contains(s, "not balancing") {
		t.Errorf("String() = %q", s)
	}
}

// TestProbeUnknownOption plays a kernel that does not know the reuse option
// (FreeBSD before 12.0 has no SO_REUSEPORT_LB; setsockopt fails with
// ENOPROTOOPT) with an option number Linux does not know: Probe reports it
// as not supported, not as a failure, and Listen fails the same way.
func TestProbeUnknownOption(t *testing.T) {
	fdcensus.Verify(t)
	defer reuseport.SetReuseOption(0x7ffe, "SO_UNKNOWN")()
	got, err := reuseport.Probe()
	if !errors.Is(err, reuseport.ErrNotSupported) || !errors.Is(err, syscall.ENOPROTOOPT) {
		t.Errorf("Probe error = %v, want one matching ErrNotSupported and ENOPROTOOPT", err)
	}
	if diff := cmp.Diff(reuseport.Capability{Option: "SO_UNKNOWN"}, got); diff != "" {
		t.Errorf("Probe (-want +got):\n%s", diff)
	}
	if s := got.String(); s != "SO_REUSEPORT: not supported" {
		t.Errorf("String() = %q", s)
	}
	for _, network := range []string{"tcp4", "udp4"} {
		var c io.Closer
		if network == "tcp4" {
			c, err = reuseport.Listen(testCtx(t), network, "127.0.0.1:0")
		} else {
			c, err = reuseport.ListenPacket(testCtx(t), network, "127.0.0.1:0")
		}
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, reuseport.ErrNotSupported) {
			t.Errorf("%s: listen error = %v, want ErrNotSupported", network, err)
		}
	}
}

// TestProbeSteeringObserved pins that Steering is measured, not inferred
// from a successful attach: each program below is accepted by the kernel's
// checker, but only the one that really delivers to the requested member
// makes Probe report Steering. The probe steers to member 1 and then to
// member 0, 8 source ports each, so a program the kernel ignores (an index
// >= the group size falls back to the hash) passes only with probability
// 2^-16.
func TestProbeSteeringObserved(t *testing.T) {
	fdcensus.Verify(t)
	const retK = unix.BPF_RET | unix.BPF_K
	ret := func(k uint32) []reuseport.Instruction { return []reuseport.Instruction{{Op: retK, K: k}} }
	tests := []struct {
		name       string
		prog       func(member uint32) []reuseport.Instruction
		wantAttach bool
		want       bool
	}{
		{"returns the member", func(m uint32) []reuseport.Instruction { return ret(m) }, true, true},
		{"index out of range, hash decides", func(m uint32) []reuseport.Instruction { return ret(m + 2) }, true, false},
		{"always member 0", func(uint32) []reuseport.Instruction { return ret(0) }, true, false},
		{"always member 1", func(uint32) []reuseport.Instruction { return ret(1) }, true, false},
		{"rejected by the checker", func(uint32) []reuseport.Instruction {
			return []reuseport.Instruction{{Op: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}}
		}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := attachTo(testCtx(t), tt.prog(1)); (err == nil) != tt.wantAttach {
				t.Fatalf("attach: %v, want success %v", err, tt.wantAttach)
			}
			got, err := reuseport.ProbeWith(tt.prog)
			if err != nil {
				t.Fatal(err)
			}
			if got.Steering != tt.want {
				t.Errorf("Steering = %v, want %v (%v)", got.Steering, tt.want, got)
			}
			if !got.Shared || !got.Balancing {
				t.Errorf("probe lost Shared or Balancing: %v", got)
			}
		})
	}
}

func TestCapabilityString(t *testing.T) {
	tests := []struct {
		c    reuseport.Capability
		want string
	}{
		{reuseport.Capability{}, "SO_REUSEPORT: not supported"},
		{reuseport.Capability{Option: "SO_REUSEPORT", Shared: true}, "SO_REUSEPORT: shared, not balancing (one member receives everything)"},
		{reuseport.Capability{Option: "SO_REUSEPORT_LB", Shared: true, Balancing: true}, "SO_REUSEPORT_LB: shared, balancing"},
		{reuseport.Capability{Option: "SO_REUSEPORT", Shared: true, Balancing: true, Steering: true, MigrateReq: true}, "SO_REUSEPORT: shared, balancing, BPF steering, tcp_migrate_req=1"},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, tt.c.String()); diff != "" {
			t.Errorf("%+v (-want +got):\n%s", tt.c, diff)
		}
	}
}

// TestPortHeldOutsideGroup is B8: a socket without SO_REUSEPORT holds the
// port, so the group cannot form and the error says why.
func TestPortHeldOutsideGroup(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct{ network string }{{"tcp4"}, {"udp4"}}
	for _, tt := range tests {
		t.Run(tt.network, func(t *testing.T) {
			ctx := testCtx(t)
			var (
				addr string
				err  error
			)
			if tt.network == "tcp4" {
				l, lerr := net.Listen(tt.network, "127.0.0.1:0")
				if lerr != nil {
					t.Fatal(lerr)
				}
				defer l.Close()
				addr = l.Addr().String()
				_, err = reuseport.Listen(ctx, tt.network, addr)
			} else {
				pc, lerr := net.ListenPacket(tt.network, "127.0.0.1:0")
				if lerr != nil {
					t.Fatal(lerr)
				}
				defer pc.Close()
				addr = pc.LocalAddr().String()
				_, err = reuseport.ListenPacket(ctx, tt.network, addr)
			}
			checkAddrInUse(t, err)

			before, terr := fdcensus.Take(0)
			if terr != nil {
				t.Fatal(terr)
			}
			if tt.network == "tcp4" {
				_, err = reuseport.ListenGroup(ctx, tt.network, addr, 4)
			} else {
				_, err = reuseport.ListenPacketGroup(ctx, tt.network, addr, 4)
			}
			checkAddrInUse(t, err)
			if err := fdcensus.Compare(0, before); err != nil {
				t.Errorf("failed group left sockets open: %v", err)
			}
		})
	}

	t.Run("plain socket cannot take a group's port", func(t *testing.T) {
		g, err := reuseport.ListenGroup(testCtx(t), "tcp4", "127.0.0.1:0", 2)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		l, err := net.Listen("tcp4", g.Addr().String())
		if err == nil {
			l.Close()
			t.Fatal("a socket without SO_REUSEPORT joined the group's port")
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("error %v, want EADDRINUSE", err)
		}
	})
}

func checkAddrInUse(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("bound a port held by a socket without SO_REUSEPORT")
	}
	var opErr *net.OpError
	switch {
	case !errors.Is(err, reuseport.ErrAddrInUse):
		t.Errorf("error %q does not match ErrAddrInUse", err)
	case !errors.Is(err, syscall.EADDRINUSE):
		t.Errorf("error %q does not match EADDRINUSE", err)
	case !errors.As(err, &opErr):
		t.Errorf("error %q carries no *net.OpError", err)
	case !strings.Contains(err.Error(), "without SO_REUSEPORT"):
		t.Errorf("error %q does not explain the cause", err)
	}
}

// TestTCPDistribution: Linux picks the member by a keyed hash of the
// 4-tuple, so with N members and C connections each member's count is
// Binomial(C, 1/N). For C=2000 and N=2 the mean is 1000 with a standard
// deviation of 22, and the bounds 30%..70% (600..1400) are 18 deviations
// out; for N=4 the mean is 500 with a deviation of 19, and 10%..50%
// (200..1000) is 15 deviations out. A failure means the kernel did not
// balance, never bad luck.
func TestTCPDistribution(t *testing.T) {
	fdcensus.Verify(t)
	const conns = 2000
	tests := []struct {
		n        int
		min, max int
	}{
		{2, conns * 30 / 100, conns * 70 / 100},
		{4, conns * 10 / 100, conns * 50 / 100},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.n), func(t *testing.T) {
			g, err := reuseport.ListenGroup(testCtx(t), "tcp4", "127.0.0.1:0", tt.n)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Close() })
			served := make([]atomic.Int64, tt.n)
			for i := range tt.n {
				serveIndex(t, g.Listener(i), byte(i), &served[i])
			}
			seen := make([]atomic.Int64, tt.n)
			addr := g.Addr().String()
			ran, err := runBounded(conns, 32, time.Now().Add(60*time.Second), func(int) error {
				idx, err := dialIndex("tcp4", addr)
				if err != nil {
					return err
				}
				if int(idx) >= tt.n {
					return errors.New("answer from an unknown listener")
				}
				seen[idx].Add(1)
				return nil
			})
			if err != nil || ran != conns {
				t.Fatalf("made %d of %d connections: %v", ran, conns, err)
			}
			var gotSeen, gotServed []int64
			for i := range tt.n {
				gotSeen = append(gotSeen, seen[i].Load())
				gotServed = append(gotServed, served[i].Load())
			}
			if diff := cmp.Diff(gotSeen, gotServed); diff != "" {
				t.Errorf("client and server accounting differ (-client +server):\n%s", diff)
			}
			t.Logf("%d connections over %d listeners: %v", conns, tt.n, gotSeen)
			for i, c := range gotSeen {
				if c < int64(tt.min) || c > int64(tt.max) {
					t.Errorf("listener %d accepted %d of %d connections, want %d..%d", i, c, conns, tt.min, tt.max)
				}
			}
		})
	}
}

// TestMultipathTCP pins why Listen turns off net's default MPTCP: an MPTCP
// socket rejects SO_ATTACH_REUSEPORT_CBPF, so steering would be impossible.
func TestMultipathTCP(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name      string
		cfg       *reuseport.Config
		wantProto int
	}{
		{"default is plain TCP", nil, unix.IPPROTO_TCP},
		{"opt in", &reuseport.Config{MultipathTCP: true}, unix.IPPROTO_MPTCP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := tt.cfg.ListenGroup(testCtx(t), "tcp4", "127.0.0.1:0", 2)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			proto := getsockoptInt(t, g.Listener(0), unix.SOL_SOCKET, unix.SO_PROTOCOL)
			if proto != tt.wantProto {
				if tt.wantProto == unix.IPPROTO_MPTCP {
					// net falls back to TCP when the kernel has MPTCP off.
					t.Skipf("kernel gave protocol %d for MPTCP (net.mptcp.enabled=0?)", proto)
				}
				t.Fatalf("SO_PROTOCOL = %d, want %d", proto, tt.wantProto)
			}
			err = g.SteerByCPU()
			if tt.wantProto == unix.IPPROTO_MPTCP {
				if !errors.Is(err, syscall.EOPNOTSUPP) {
					t.Errorf("SteerByCPU on MPTCP: %v, want EOPNOTSUPP", err)
				}
			} else if err != nil {
				t.Errorf("SteerByCPU: %v", err)
			}
		})
	}
}
