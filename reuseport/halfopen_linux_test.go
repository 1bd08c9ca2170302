package reuseport_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/reuseport"
)

// halfOpenConns is how many handshakes the half-open scenario leaves in the
// SYN queue, far below any listen backlog or tcp_max_syn_backlog.
const halfOpenConns = 64

// runHalfOpenLoss leaves connections half-open on a two-member group and
// closes one member. TCP_DEFER_ACCEPT makes the listener drop the client's
// bare final ACK and keep the request socket in the SYN queue (SYN_RECV)
// until data arrives (tcp_check_req), while the client already considers
// itself connected. After the close every client sends one byte: a request
// of the closed member is migrated to the survivor with
// net.ipv4.tcp_migrate_req=1 (tcp_v4_rcv: reuseport_migrate_sock) and
// otherwise dropped, so the byte is answered with RST.
func runHalfOpenLoss() (res lossResult, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// 5 s keeps the request sockets well past the scenario; the SYN-ACK
	// timer (1 s) migrates or drops them the same way if it fires first.
	cfg := &reuseport.Config{DeferAccept: 5 * time.Second}
	g, err := cfg.ListenGroup(ctx, "tcp4", "127.0.0.1:0", 2)
	if err != nil {
		return res, err
	}
	defer g.Close()
	keep, drop := g.Listener(0), g.Listener(1)
	port := g.Addr().(*net.TCPAddr).Port
	if _, res.Backlog, err = acceptQueue(keep); err != nil {
		return res, err
	}
	res.Conns = min(halfOpenConns, lossConns(res.Backlog))

	clients := make([]net.Conn, 0, res.Conns)
	defer func() {
		for _, c := range clients {
			closeAbort(c)
		}
	}()
	for range res.Conns {
		c, err := net.DialTimeout("tcp4", g.Addr().String(), 5*time.Second)
		if err != nil {
			return res, err
		}
		clients = append(clients, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if res.HalfOpen, err = synRecv(port); err != nil {
			return res, err
		}
		if res.HalfOpen == res.Conns {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("only %d of %d connections in SYN_RECV", res.HalfOpen, res.Conns)
		}
		time.Sleep(time.Millisecond)
	}
	// Nothing may have reached an accept queue: these are half-open only.
	for i, l := range []net.Listener{keep, drop} {
		if res.Queued[i], _, err = acceptQueue(l); err != nil {
			return res, err
		}
	}

	drop.Close()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := keep.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte{'k'})
			closeAbort(c)
		}
	}()
	defer func() {
		keep.Close()
		wg.Wait()
	}()
	readDeadline := time.Now().Add(3 * time.Second)
	for _, c := range clients {
		_ = c.SetDeadline(readDeadline)
		if _, err := c.Write([]byte{'d'}); err != nil {
			if isReset(err) {
				res.Reset++
				continue
			}
			return res, fmt.Errorf("client write: %w", err)
		}
	}
	for _, c := range clients {
		var b [1]byte
		_, err := io.ReadFull(c, b[:])
		switch {
		case err == nil:
			res.OK++
		case isTimeout(err):
			res.Timeout++
		case isReset(err):
			res.Reset++
		default:
			return res, fmt.Errorf("client read: %w", err)
		}
	}
	return res, nil
}

// synRecv counts request sockets (state 03, SYN_RECV) on local port in
// /proc/net/tcp, which lists them with the sockets of this network
// namespace.
func synRecv(port int) (int, error) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	suffix := fmt.Sprintf(":%04X", port)
	n := 0
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 4 || fields[3] != "03" || !strings.HasSuffix(fields[1], suffix) {
			continue
		}
		n++
	}
	return n, s.Err()
}

// TestHalfOpenMigrateReq checks the docs' claim that tcp_migrate_req moves
// half-open requests too: connections left in the SYN queue of a closed
// member (TCP_DEFER_ACCEPT holds them there) are reset without the sysctl
// and all answered by the surviving member with it. Both run in a private
// network namespace so the host's setting is irrelevant.
func TestHalfOpenMigrateReq(t *testing.T) {
	if _, err := os.Stat("/proc/sys/net/ipv4/tcp_migrate_req"); err != nil {
		t.Skip("kernel has no net.ipv4.tcp_migrate_req (Linux < 5.14)")
	}
	fdcensus.Verify(t)
	for _, migrate := range []string{"0", "1"} {
		t.Run("tcp_migrate_req="+migrate, func(t *testing.T) {
			res := netnsLoss(t, migrate, "-", "halfopen")[0]
			t.Logf("half-open, tcp_migrate_req=%s: %d connections in SYN_RECV, accept queues %v, one member closed: ok=%d reset=%d timeout=%d",
				migrate, res.HalfOpen, res.Queued, res.OK, res.Reset, res.Timeout)
			if res.HalfOpen != res.Conns || res.Queued != [2]int{} {
				t.Fatalf("not half-open: %d of %d in SYN_RECV, accept queues %v", res.HalfOpen, res.Conns, res.Queued)
			}
			if res.Timeout != 0 || res.OK+res.Reset != res.Conns {
				t.Errorf("outcomes ok=%d reset=%d timeout=%d do not add up to %d answered or reset", res.OK, res.Reset, res.Timeout, res.Conns)
			}
			if migrate == "1" && res.OK != res.Conns {
				t.Errorf("with tcp_migrate_req=1, %d of %d half-open connections lost", res.Reset, res.Conns)
			}
			// The closed member's share is Binomial(64, 1/2): P(0) = 2^-64.
			if migrate == "0" && res.Reset == 0 {
				t.Errorf("without tcp_migrate_req no half-open connection was reset: %+v", res)
			}
		})
	}
}
