package reuseport_test

import (
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/reuseport"
)

// V6Only never makes an IPv4 address refuse IPv4. For "tcp" and "udp"
// package net binds 0.0.0.0 as a dual-stack [::] socket; with IPV6_V6ONLY
// on it, a caller who asked for the IPv4 wildcard got a socket that
// refused every IPv4 client. Listen and ListenPacket bind it as tcp4/udp4.
// An empty host stays IPv6-only, as documented.
func TestV6OnlyKeepsIPv4(t *testing.T) {
	fdcensus.Verify(t)
	cfg := &reuseport.Config{V6Only: true}

	tcp := []struct {
		name   string
		listen func() (net.Listener, error)
		v4     bool // reachable over IPv4
		ipv4   bool // Addr is an IPv4 address
	}{
		{"Listen tcp 0.0.0.0", func() (net.Listener, error) { return cfg.Listen(testCtx(t), "tcp", "0.0.0.0:0") }, true, true},
		{"Listen tcp ::ffff:0.0.0.0", func() (net.Listener, error) { return cfg.Listen(testCtx(t), "tcp", "[::ffff:0.0.0.0]:0") }, true, true},
		{"Listen tcp 127.0.0.1", func() (net.Listener, error) { return cfg.Listen(testCtx(t), "tcp", "127.0.0.1:0") }, true, true},
	}
	if haveIPv6Loopback() {
		tcp = append(tcp, struct {
			name   string
			listen func() (net.Listener, error)
			v4     bool
			ipv4   bool
		}{"Listen tcp, empty host", func() (net.Listener, error) { return cfg.Listen(testCtx(t), "tcp", ":0") }, false, false})
	}
	for _, tt := range tcp {
		t.Run(tt.name, func(t *testing.T) {
			l, err := tt.listen()
			if err != nil {
				t.Fatal(err)
			}
			var served atomic.Int64
			serveIndex(t, l, 7, &served)
			a := l.Addr().(*net.TCPAddr)
			if got := a.IP.To4() != nil; got != tt.ipv4 {
				t.Errorf("bound %v; IPv4 address %v, want %v", a, got, tt.ipv4)
			}
			_, err = dialIndex("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(a.Port)))
			switch {
			case tt.v4 && err != nil:
				t.Errorf("bound %v; IPv4 client: %v", a, err)
			case !tt.v4 && !errors.Is(err, syscall.ECONNREFUSED):
				t.Errorf("bound %v; IPv4 client: %v, want ECONNREFUSED", a, err)
			}
		})
	}

	t.Run("ListenPacketGroup udp 0.0.0.0", func(t *testing.T) {
		// Member 0 binds port 0 (bound first without SO_REUSEPORT), member
		// 1 the port it got: both paths of ListenPacket.
		g, err := cfg.ListenPacketGroup(testCtx(t), "udp", "0.0.0.0:0", 2)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		a := g.Addr().(*net.UDPAddr)
		for i := range g.Len() {
			if la := g.PacketConn(i).LocalAddr().(*net.UDPAddr); la.IP.To4() == nil {
				t.Errorf("member %d bound %v, want an IPv4 address", i, la)
			}
		}
		c, err := net.Dial("udp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(a.Port)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := make(chan error, g.Len())
		for i := range g.Len() {
			pc := g.PacketConn(i)
			if err := pc.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			go func() {
				var b [16]byte
				_, _, err := pc.ReadFrom(b[:])
				got <- err
			}()
		}
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		// One member gets the datagram; the other times out (or fails
		// when the group closes).
		if err := <-got; err != nil {
			t.Errorf("bound %v; datagram from 127.0.0.1: %v", a, err)
		}
		for i := range g.Len() {
			g.PacketConn(i).SetReadDeadline(time.Unix(1, 0))
		}
		<-got
	})
}
