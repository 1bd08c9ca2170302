package reuseport_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/reuseport"
)

// joinHelper tries to join the group at Args() = network, address and
// prints "joined" or "refused" (EADDRINUSE through ErrAddrInUse). A TCP
// member that joined answers every connection with 'X' until stdin closes,
// so the parent can see whether an intruder was served traffic.
func joinHelper() int {
	args := helperproc.Args()
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "join: want network and address")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var (
		l   net.Listener
		pc  net.PacketConn
		err error
	)
	if strings.HasPrefix(args[0], "tcp") {
		l, err = reuseport.Listen(ctx, args[0], args[1])
	} else {
		pc, err = reuseport.ListenPacket(ctx, args[0], args[1])
	}
	switch {
	case errors.Is(err, reuseport.ErrAddrInUse) && errors.Is(err, syscall.EADDRINUSE):
		fmt.Println("refused")
	case err != nil:
		fmt.Println("error:", err)
	default:
		fmt.Println("joined")
	}
	done := make(chan struct{})
	if l != nil {
		go func() {
			defer close(done)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte{'X'})
				c.Close()
			}
		}()
	} else {
		close(done)
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	if l != nil {
		l.Close()
	}
	if pc != nil {
		pc.Close()
	}
	<-done
	return 0
}

// startHelper starts cmd with its stdout piped and returns the first line
// it prints. The cleanup closes stdin, waits (killing after a bound) and
// fails the test on a non-zero exit.
func startHelper(t *testing.T, cmd *exec.Cmd) (firstLine string) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		timer := time.AfterFunc(10*time.Second, func() { _ = cmd.Process.Kill() })
		defer timer.Stop()
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v", err)
		}
	})
	lines := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		s.Scan()
		lines <- s.Text()
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-lines:
		return l
	case <-time.After(20 * time.Second):
		t.Fatal("helper printed nothing in 20 s")
		return ""
	}
}

// TestOtherUserCannotJoin is B6: a process running as nobody tries to bind
// the group's port with SO_REUSEPORT; the kernel refuses (EADDRINUSE)
// because reuseport groups are per effective uid, and no connection reaches
// it. The same-uid row documents the other half: a process of the same user
// joins silently and takes a share of the connections, which is why
// mini-cluster defaults to one shared socket.
func TestOtherUserCannotJoin(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a helper as nobody")
	}
	fdcensus.Verify(t)
	const conns = 50
	tests := []struct {
		name     string
		network  string
		asNobody bool
		want     string
	}{
		{"tcp other uid", "tcp4", true, "refused"},
		{"udp other uid", "udp4", true, "refused"},
		{"tcp same uid joins", "tcp4", false, "joined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pc := proccensus.New(t)
			ctx := testCtx(t)
			var (
				addr   string
				served atomic.Int64
			)
			if tt.network == "tcp4" {
				l, err := reuseport.Listen(ctx, tt.network, "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				serveIndex(t, l, 'P', &served)
				addr = l.Addr().String()
			} else {
				c, err := reuseport.ListenPacket(ctx, tt.network, "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				addr = c.LocalAddr().String()
			}
			cmd := helperproc.Command(t, "join", &helperproc.Options{
				Env:      []string{pc.Env()},
				AsNobody: tt.asNobody,
				Args:     []string{tt.network, addr},
			})
			if got := startHelper(t, cmd); got != tt.want {
				t.Fatalf("helper (nobody=%v) said %q, want %q", tt.asNobody, got, tt.want)
			}
			if tt.network != "tcp4" {
				return
			}
			counts := map[byte]int{}
			for range conns {
				b, err := dialIndex("tcp4", addr)
				if err != nil {
					t.Fatal(err)
				}
				counts[b]++
			}
			t.Logf("%d connections: %d to the owner, %d to the helper", conns, counts['P'], counts['X'])
			if tt.want == "refused" {
				if diff := cmp.Diff(map[byte]int{'P': conns}, counts); diff != "" {
					t.Errorf("answers by server (-want +got):\n%s", diff)
				}
			} else if counts['X'] == 0 {
				// With two members P(no connection to the helper) = 2^-50.
				t.Errorf("a same-uid member joined but got no connections: %v", counts)
			}
		})
	}
}

// lossResult counts what happened to connections queued (handshake done,
// not yet accepted) when one holder of the listening socket closed it.
type lossResult struct {
	Queued  [2]int // in the accept queue of the kept and the closed socket
	OK      int    // answered by the socket that stayed open
	Reset   int    // RST or EOF before an answer
	Timeout int    // no answer within the deadline
}

// runQueuedLoss queues conns connections, closes one holder, serves the rest
// and classifies every client's outcome. mode "reuseport": a group of two
// sockets, one of them closed. mode "shared": one socket held through two
// descriptors (as a master and a worker hold it), one descriptor closed.
func runQueuedLoss(mode string, conns int) (res lossResult, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var keep, drop net.Listener
	switch mode {
	case "reuseport":
		g, err := reuseport.ListenGroup(ctx, "tcp4", "127.0.0.1:0", 2)
		if err != nil {
			return res, err
		}
		defer g.Close()
		keep, drop = g.Listener(0), g.Listener(1)
	case "shared":
		l, err := reuseport.Listen(ctx, "tcp4", "127.0.0.1:0")
		if err != nil {
			return res, err
		}
		defer l.Close()
		f, err := l.(*net.TCPListener).File()
		if err != nil {
			return res, err
		}
		dup, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return res, err
		}
		defer dup.Close()
		keep, drop = l, dup
	default:
		return res, fmt.Errorf("unknown mode %q", mode)
	}

	clients := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range clients {
			closeAbort(c)
		}
	}()
	for range conns {
		c, err := net.DialTimeout("tcp4", keep.Addr().String(), 5*time.Second)
		if err != nil {
			return res, err
		}
		clients = append(clients, c)
	}
	// connect returns when the SYN-ACK arrived; the server side queues the
	// connection when the client's ACK is processed, so wait for the queues
	// to hold every connection before closing anything.
	deadline := time.Now().Add(5 * time.Second)
	for {
		q0, _, err := acceptQueue(keep)
		if err != nil {
			return res, err
		}
		q1 := 0
		if mode == "reuseport" {
			if q1, _, err = acceptQueue(drop); err != nil {
				return res, err
			}
		}
		res.Queued = [2]int{q0, q1}
		if q0+q1 == conns {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("only %v of %d connections queued", res.Queued, conns)
		}
		time.Sleep(time.Millisecond)
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
			c.Close()
		}
	}()
	readDeadline := time.Now().Add(3 * time.Second)
	for _, c := range clients {
		_ = c.SetReadDeadline(readDeadline)
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
			keep.Close()
			wg.Wait()
			return res, fmt.Errorf("client: %w", err)
		}
	}
	keep.Close()
	wg.Wait()
	return res, nil
}

// TestCloseWithQueuedConnections measures the accept-queue loss that makes
// mini-cluster's master own every listener: 200 connections wait in the
// queues of a two-member group, one member is closed, and every connection
// in its queue is reset (unless net.ipv4.tcp_migrate_req=1). The same with
// one socket held twice, one holder closing: nothing is lost.
func TestCloseWithQueuedConnections(t *testing.T) {
	fdcensus.Verify(t)
	const conns = 200
	migrate := readSysctlOr(t, "/proc/sys/net/ipv4/tcp_migrate_req", 0) != 0
	for _, mode := range []string{"reuseport", "shared"} {
		t.Run(mode, func(t *testing.T) {
			res, err := runQueuedLoss(mode, conns)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d connections, queued %v, then one holder closed: ok=%d reset=%d timeout=%d",
				mode, conns, res.Queued, res.OK, res.Reset, res.Timeout)
			want := lossResult{Queued: res.Queued, OK: conns}
			if mode == "reuseport" && !migrate {
				// Exactly the closed member's queue is lost. Its share is
				// Binomial(200, 1/2), so P(empty) = 2^-200.
				want.OK, want.Reset = res.Queued[0], res.Queued[1]
				if res.Queued[1] == 0 {
					t.Errorf("closed member had nothing queued: %v", res.Queued)
				}
			}
			if diff := cmp.Diff(want, res); diff != "" {
				t.Errorf("outcome (-want +got):\n%s", diff)
			}
		})
	}
}

func readSysctlOr(t testing.TB, path string, def int) int {
	if _, err := os.Stat(path); err != nil {
		return def
	}
	return readSysctl(t, path)
}

// lossNetnsHelper runs in a fresh network namespace: it brings lo up, sets
// net.ipv4.tcp_migrate_req=1 there (the sysctl is per namespace, so the
// machine's setting is untouched), runs the reuseport loss scenario and
// prints the result as JSON.
func lossNetnsHelper() int {
	if err := loopbackUp(); err != nil {
		fmt.Fprintln(os.Stderr, "lossns:", err)
		return 2
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_migrate_req", []byte("1\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "lossns:", err)
		return 2
	}
	res, err := runQueuedLoss("reuseport", 200)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lossns:", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return os.NewSyscallError("ioctl SIOCGIFFLAGS", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return os.NewSyscallError("ioctl SIOCSIFFLAGS", err)
	}
	return nil
}

// TestCloseWithQueuedConnectionsMigrateReq runs the reuseport scenario in a
// private network namespace with net.ipv4.tcp_migrate_req=1: the kernel
// moves the closed member's queue to the surviving member, and nothing is
// lost.
func TestCloseWithQueuedConnectionsMigrateReq(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for a private network namespace")
	}
	if _, err := os.Stat("/proc/sys/net/ipv4/tcp_migrate_req"); err != nil {
		t.Skip("kernel has no net.ipv4.tcp_migrate_req (Linux < 5.14)")
	}
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	cmd := helperproc.Command(t, "lossns", &helperproc.Options{Env: []string{pc.Env()}})
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	var out strings.Builder
	cmd.Stdout = &out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) {
			t.Skipf("cannot create a network namespace here: %v", err)
		}
		t.Fatal(err)
	}
	timer := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	var res lossResult
	if err := json.Unmarshal([]byte(out.String()), &res); err != nil {
		t.Fatalf("helper output %q: %v", out.String(), err)
	}
	t.Logf("reuseport, tcp_migrate_req=1: 200 connections, queued %v, one member closed: ok=%d reset=%d timeout=%d",
		res.Queued, res.OK, res.Reset, res.Timeout)
	if diff := cmp.Diff(lossResult{Queued: res.Queued, OK: 200}, res); diff != "" {
		t.Errorf("outcome (-want +got):\n%s", diff)
	}
}
