package reuseport_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/reuseport"
)

// udpReceiver reads datagrams on every member of g until g is closed and
// hands each payload to record with the member index.
func udpReceiver(t *testing.T, g *reuseport.PacketGroup, record func(member int, payload []byte)) {
	var wg sync.WaitGroup
	for i := range g.Len() {
		pc := g.PacketConn(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				record(i, buf[:n])
			}
		}()
	}
	t.Cleanup(func() {
		g.Close()
		wg.Wait()
	})
}

// waitCount polls until count reaches want or the deadline passes.
func waitCount(count *atomic.Int64, want int64, deadline time.Time) bool {
	for count.Load() < want {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// TestUDPDistribution sends 3 datagrams from each of 800 source ports to a
// group of 4. Linux hashes the source address and port, so each source's
// datagrams stay on one member and the sources spread over all four. Each
// member's share of sources is Binomial(800, 1/4): mean 200, standard
// deviation 12; the bounds 10%..50% (80..400) are 9.8 deviations out, so
// they cannot fail by chance.
func TestUDPDistribution(t *testing.T) {
	fdcensus.Verify(t)
	const (
		members   = 4
		sources   = 800
		perSource = 3
		batch     = 50 // sockets open at once; keeps the receive queues far below rmem
	)
	g, err := reuseport.ListenPacketGroup(testCtx(t), "udp4", "127.0.0.1:0", members)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		owner    = map[uint16]int{}
		perSrc   = map[uint16]int{}
		switched int
		received atomic.Int64
	)
	udpReceiver(t, g, func(m int, p []byte) {
		if len(p) != 2 {
			return
		}
		src := binary.BigEndian.Uint16(p)
		mu.Lock()
		if o, ok := owner[src]; ok && o != m {
			switched++
		}
		owner[src] = m
		perSrc[src]++
		mu.Unlock()
		received.Add(1)
	})
	dst := g.Addr().(*net.UDPAddr)
	for start := 0; start < sources; start += batch {
		var conns []*net.UDPConn
		for i := start; i < start+batch; i++ {
			c, err := net.DialUDP("udp4", nil, dst)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			var p [2]byte
			binary.BigEndian.PutUint16(p[:], uint16(i))
			for range perSource {
				if _, err := c.Write(p[:]); err != nil {
					t.Fatal(err)
				}
			}
		}
		ok := waitCount(&received, int64((start+batch)*perSource), time.Now().Add(5*time.Second))
		for _, c := range conns {
			c.Close()
		}
		if !ok {
			t.Fatalf("received %d of %d datagrams", received.Load(), (start+batch)*perSource)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if switched != 0 {
		t.Errorf("%d datagrams reached a different member than their source's earlier ones", switched)
	}
	shares := make([]int, members)
	for src := range sources {
		if perSrc[uint16(src)] != perSource {
			t.Errorf("source %d: %d datagrams arrived, want %d", src, perSrc[uint16(src)], perSource)
		}
		shares[owner[uint16(src)]]++
	}
	t.Logf("%d sources over %d members: %v", sources, members, shares)
	for m, n := range shares {
		if n < sources*10/100 || n > sources*50/100 {
			t.Errorf("member %d got %d of %d sources, want %d..%d", m, n, sources, sources*10/100, sources*50/100)
		}
	}
}

// allowedCPUs returns the CPUs this process may run on.
func allowedCPUs(t *testing.T) []int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for i := range 1024 {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus
}

// onCPU runs fn on a fresh OS thread pinned to cpu. On loopback the kernel
// processes a sent packet, including the reuseport lookup and its BPF
// program, in softirq on the sending CPU (no RPS on lo), so the connection
// or datagram is "received" on cpu.
func onCPU(cpu int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: a goroutine that exits locked takes its thread
		// with it, so the narrowed affinity cannot leak to other goroutines.
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- fmt.Errorf("sched_setaffinity: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func TestSteerByCPU(t *testing.T) {
	fdcensus.Verify(t)
	cpus := allowedCPUs(t)
	if len(cpus) < 2 {
		t.Skipf("steering needs 2 CPUs, this process may use %v", cpus)
	}
	const perCPU = 25
	tests := []struct {
		network string
		n       int
	}{
		{"tcp4", 2},
		{"tcp4", 4},
		{"udp4", 2},
		{"udp4", 3},
	}
	for _, tt := range tests {
		t.Run(tt.network+"/"+strconv.Itoa(tt.n), func(t *testing.T) {
			want := map[int][]int{} // cpu -> member per connection
			got := map[int][]int{}
			var mu sync.Mutex
			if tt.network == "tcp4" {
				g, err := reuseport.ListenGroup(testCtx(t), tt.network, "127.0.0.1:0", tt.n)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { g.Close() })
				if err := g.SteerByCPU(); err != nil {
					t.Fatal(err)
				}
				served := make([]atomic.Int64, tt.n)
				for i := range tt.n {
					serveIndex(t, g.Listener(i), byte(i), &served[i])
				}
				for _, cpu := range cpus {
					err := onCPU(cpu, func() error {
						for range perCPU {
							idx, err := dialIndex("tcp4", g.Addr().String())
							if err != nil {
								return err
							}
							got[cpu] = append(got[cpu], int(idx))
							want[cpu] = append(want[cpu], cpu%tt.n)
						}
						return nil
					})
					if err != nil {
						t.Fatalf("CPU %d: %v", cpu, err)
					}
				}
			} else {
				g, err := reuseport.ListenPacketGroup(testCtx(t), tt.network, "127.0.0.1:0", tt.n)
				if err != nil {
					t.Fatal(err)
				}
				if err := g.SteerByCPU(); err != nil {
					g.Close()
					t.Fatal(err)
				}
				var received atomic.Int64
				udpReceiver(t, g, func(m int, p []byte) {
					if len(p) != 2 {
						return
					}
					cpu := int(binary.BigEndian.Uint16(p))
					mu.Lock()
					got[cpu] = append(got[cpu], m)
					mu.Unlock()
					received.Add(1)
				})
				for _, cpu := range cpus {
					err := onCPU(cpu, func() error {
						// A fresh socket per datagram: a new source port each
						// time, so without steering the hash would scatter them.
						for range perCPU {
							c, err := net.DialUDP("udp4", nil, g.Addr().(*net.UDPAddr))
							if err != nil {
								return err
							}
							var p [2]byte
							binary.BigEndian.PutUint16(p[:], uint16(cpu))
							_, err = c.Write(p[:])
							c.Close()
							if err != nil {
								return err
							}
							mu.Lock()
							want[cpu] = append(want[cpu], cpu%tt.n)
							mu.Unlock()
						}
						return nil
					})
					if err != nil {
						t.Fatalf("CPU %d: %v", cpu, err)
					}
				}
				if !waitCount(&received, int64(perCPU*len(cpus)), time.Now().Add(5*time.Second)) {
					t.Fatalf("received %d of %d datagrams", received.Load(), perCPU*len(cpus))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("member per connection, by client CPU (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSteerCustomProgram attaches a program that always returns member 1,
// and one returning an out-of-range index, which the kernel answers by
// falling back to its hash.
func TestSteerCustomProgram(t *testing.T) {
	fdcensus.Verify(t)
	const conns = 40
	tests := []struct {
		name     string
		ret      uint32
		wantOnly int // -1: spread by hash
	}{
		{"always member 1", 1, 1},
		{"out of range falls back to hash", 7, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := reuseport.ListenGroup(testCtx(t), "tcp4", "127.0.0.1:0", 2)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Close() })
			prog := []reuseport.Instruction{{Op: unix.BPF_RET | unix.BPF_K, K: tt.ret}}
			if err := g.Steer(prog); err != nil {
				t.Fatal(err)
			}
			served := make([]atomic.Int64, 2)
			for i := range 2 {
				serveIndex(t, g.Listener(i), byte(i), &served[i])
			}
			counts := make([]int, 2)
			for range conns {
				idx, err := dialIndex("tcp4", g.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				counts[idx]++
			}
			if tt.wantOnly >= 0 {
				want := make([]int, 2)
				want[tt.wantOnly] = conns
				if diff := cmp.Diff(want, counts); diff != "" {
					t.Errorf("connections per member (-want +got):\n%s", diff)
				}
			} else if counts[0] == 0 || counts[1] == 0 {
				// P(all 40 on one member by hash) = 2^-39.
				t.Errorf("connections per member %v: fallback did not hash", counts)
			}
		})
	}
}

func TestDualStackAndV6Only(t *testing.T) {
	if !haveIPv6Loopback() {
		t.Skip("::1 is not available on this machine; dual-stack tests need it")
	}
	fdcensus.Verify(t)
	tests := []struct {
		name          string
		cfg           *reuseport.Config
		network, addr string
		v4, v6        bool
	}{
		{"tcp on [::] is dual-stack", nil, "tcp", "[::]:0", true, true},
		{"V6Only tcp on [::]", &reuseport.Config{V6Only: true}, "tcp", "[::]:0", false, true},
		{"tcp6 on [::]", nil, "tcp6", "[::]:0", false, true},
		{"tcp6 on ::1", nil, "tcp6", "[::1]:0", false, true},
		{"tcp4 on 127.0.0.1", nil, "tcp4", "127.0.0.1:0", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := tt.cfg.ListenGroup(testCtx(t), tt.network, tt.addr, 2)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Close() })
			served := make([]atomic.Int64, 2)
			for i := range 2 {
				serveIndex(t, g.Listener(i), byte(i), &served[i])
			}
			port := strconv.Itoa(g.Addr().(*net.TCPAddr).Port)
			check := func(network, host string, want bool) {
				for range 10 {
					_, err := dialIndex(network, net.JoinHostPort(host, port))
					switch {
					case want && err != nil:
						t.Errorf("dial %s: %v", host, err)
					case !want && err == nil:
						t.Errorf("dial %s reached a listener that should not receive %s", host, network)
					case !want && !errors.Is(err, syscall.ECONNREFUSED):
						t.Errorf("dial %s: %v, want ECONNREFUSED", host, err)
					}
				}
			}
			check("tcp4", "127.0.0.1", tt.v4)
			check("tcp6", "::1", tt.v6)
		})
	}

	t.Run("v6-only and v4 groups share a port number", func(t *testing.T) {
		ctx := testCtx(t)
		g6, err := (&reuseport.Config{V6Only: true}).ListenGroup(ctx, "tcp", "[::]:0", 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g6.Close() })
		port := strconv.Itoa(g6.Addr().(*net.TCPAddr).Port)
		g4, err := reuseport.ListenGroup(ctx, "tcp4", "127.0.0.1:"+port, 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g4.Close() })
		served := make([]atomic.Int64, 4)
		for i := range 2 {
			serveIndex(t, g6.Listener(i), byte(i), &served[i])
			serveIndex(t, g4.Listener(i), byte(10+i), &served[2+i])
		}
		got := map[string][]int{}
		for range 20 {
			for _, dst := range []struct{ network, host string }{{"tcp4", "127.0.0.1"}, {"tcp6", "::1"}} {
				idx, err := dialIndex(dst.network, net.JoinHostPort(dst.host, port))
				if err != nil {
					t.Fatal(err)
				}
				group := int(idx) / 10 * 10 // 0: the v6 group, 10: the v4 group
				if len(got[dst.host]) == 0 || got[dst.host][len(got[dst.host])-1] != group {
					got[dst.host] = append(got[dst.host], group)
				}
			}
		}
		if diff := cmp.Diff(map[string][]int{"127.0.0.1": {10}, "::1": {0}}, got); diff != "" {
			t.Errorf("group reached per client address (-want +got):\n%s", diff)
		}
	})
}
