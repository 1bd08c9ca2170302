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
	Backlog int    // accept-queue limit of the listeners (TCP_INFO)
	Conns   int    // connections queued before the close
	Queued  [2]int // in the accept queue of the kept and the closed socket
	// HalfOpen counts request sockets in SYN_RECV before the close (the
	// half-open scenario only).
	HalfOpen int
	OK       int // answered by the socket that stayed open
	Reset    int // RST or EOF before an answer
	Timeout  int // no answer within the deadline
}

// maxLossConns is how many connections the loss scenario queues when the
// accept queue allows it.
const maxLossConns = 200

// lossConns sizes the scenario to an accept-queue limit: Linux queues up to
// limit+1 completed connections (sk_acceptq_is_full tests >) and drops the
// client's ACK beyond that, so a limit below 200 (net.core.somaxconn caps
// it) would make connections miss the queue. 8 spare slots, at least 1.
func lossConns(limit int) int {
	return min(maxLossConns, max(1, limit-8))
}

// runQueuedLoss queues lossConns(backlog) connections, closes one holder,
// serves the rest and classifies every client's outcome. mode "reuseport":
// a group of two sockets, one of them closed. mode "shared": one socket
// held through two descriptors (as a master and a worker hold it), one
// descriptor closed. The backlog is what the kernel gave net's listen(2),
// net.core.somaxconn, read back from TCP_INFO; in reuseport mode every
// connection could hash to one member, so each member must hold them all.
func runQueuedLoss(mode string) (res lossResult, err error) {
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

	_, res.Backlog, err = acceptQueue(keep)
	if err != nil {
		return res, err
	}
	conns := lossConns(res.Backlog)
	res.Conns = conns

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
// mini-cluster's master own every listener: 200 connections (fewer if
// net.core.somaxconn is below 208, see lossConns) wait in the queues of a
// two-member group, one member is closed, and every connection in its queue
// is reset (unless net.ipv4.tcp_migrate_req=1). The same with one socket
// held twice, one holder closing: nothing is lost.
func TestCloseWithQueuedConnections(t *testing.T) {
	fdcensus.Verify(t)
	migrate := readSysctlOr(t, "/proc/sys/net/ipv4/tcp_migrate_req", 0) != 0
	for _, mode := range []string{"reuseport", "shared"} {
		t.Run(mode, func(t *testing.T) {
			res, err := runQueuedLoss(mode)
			if err != nil {
				t.Fatal(err)
			}
			checkLoss(t, mode, migrate, res)
		})
	}
}

// checkLoss asserts the outcome of runQueuedLoss: with a reuseport group and
// no migration exactly the closed member's queue is reset, otherwise every
// client is answered.
func checkLoss(t *testing.T, mode string, migrate bool, res lossResult) {
	t.Helper()
	t.Logf("%s, tcp_migrate_req=%v, backlog %d: %d connections, queued %v, then one holder closed: ok=%d reset=%d timeout=%d",
		mode, migrate, res.Backlog, res.Conns, res.Queued, res.OK, res.Reset, res.Timeout)
	if want := lossConns(res.Backlog); res.Conns != want {
		t.Errorf("queued %d connections for backlog %d, want %d", res.Conns, res.Backlog, want)
	}
	want := lossResult{Backlog: res.Backlog, Conns: res.Conns, Queued: res.Queued, OK: res.Conns}
	if mode == "reuseport" && !migrate {
		want.OK, want.Reset = res.Queued[0], res.Queued[1]
		// The closed member's share is Binomial(conns, 1/2): with 32 or
		// more connections P(empty) <= 2^-32. Below that (a tiny
		// somaxconn) the exact accounting above still holds.
		if res.Conns >= 32 && res.Queued[1] == 0 {
			t.Errorf("closed member had nothing queued: %v", res.Queued)
		}
	}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("outcome (-want +got):\n%s", diff)
	}
}

func readSysctlOr(t testing.TB, path string, def int) int {
	if _, err := os.Stat(path); err != nil {
		return def
	}
	return readSysctl(t, path)
}

// lossNetnsHelper runs in a fresh network namespace: it brings lo up, sets
// net.ipv4.tcp_migrate_req and net.core.somaxconn there to Args()[0] and
// [1] (both per namespace, so the machine's settings are untouched; "-"
// keeps the namespace's default), runs the loss scenario for each mode in
// Args()[2:] and prints the results as one JSON array.
func lossNetnsHelper() int {
	args := helperproc.Args()
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "lossns: want migrate_req, somaxconn and modes")
		return 2
	}
	if err := loopbackUp(); err != nil {
		fmt.Fprintln(os.Stderr, "lossns:", err)
		return 2
	}
	for i, path := range []string{"/proc/sys/net/ipv4/tcp_migrate_req", "/proc/sys/net/core/somaxconn"} {
		if args[i] == "-" {
			continue
		}
		if err := os.WriteFile(path, []byte(args[i]+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "lossns:", err)
			return 2
		}
	}
	var results []lossResult
	for _, mode := range args[2:] {
		run := func() (lossResult, error) { return runQueuedLoss(mode) }
		if mode == "halfopen" {
			run = runHalfOpenLoss
		}
		res, err := run()
		if err != nil {
			fmt.Fprintln(os.Stderr, "lossns:", mode+":", err)
			return 1
		}
		results = append(results, res)
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
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

// runInNetns runs role in a child in a fresh network namespace (root only;
// the test is skipped where namespaces cannot be created) and returns its
// stdout. Sysctls under /proc/sys/net written there leave the host alone.
func runInNetns(t *testing.T, role string, args ...string) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root for a private network namespace")
	}
	pc := proccensus.New(t)
	cmd := helperproc.Command(t, role, &helperproc.Options{Env: []string{pc.Env()}, Args: args})
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
		t.Fatalf("helper %s: %v", role, err)
	}
	return out.String()
}

// probeNetnsHelper runs in a fresh network namespace: for each argument it
// sets net.ipv4.tcp_migrate_req to it, runs Probe, and prints the results
// as one JSON array.
func probeNetnsHelper() int {
	if err := loopbackUp(); err != nil {
		fmt.Fprintln(os.Stderr, "probens:", err)
		return 2
	}
	var caps []reuseport.Capability
	for _, v := range helperproc.Args() {
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_migrate_req", []byte(v+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "probens:", err)
			return 2
		}
		c, err := reuseport.Probe()
		if err != nil {
			fmt.Fprintln(os.Stderr, "probens:", err)
			return 1
		}
		caps = append(caps, c)
	}
	if err := json.NewEncoder(os.Stdout).Encode(caps); err != nil {
		return 1
	}
	return 0
}

// TestProbeMigrateReq sets net.ipv4.tcp_migrate_req to 0, 1, 0 in a private
// network namespace and checks that Probe follows each change, rather than
// comparing Probe with the same file it reads.
func TestProbeMigrateReq(t *testing.T) {
	if _, err := os.Stat("/proc/sys/net/ipv4/tcp_migrate_req"); err != nil {
		t.Skip("kernel has no net.ipv4.tcp_migrate_req (Linux < 5.14)")
	}
	fdcensus.Verify(t)
	out := runInNetns(t, "probens", "0", "1", "0")
	var got []reuseport.Capability
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	base := reuseport.Capability{Option: "SO_REUSEPORT", Shared: true, Balancing: true, Steering: true}
	on := base
	on.MigrateReq = true
	if diff := cmp.Diff([]reuseport.Capability{base, on, base}, got); diff != "" {
		t.Errorf("Probe with tcp_migrate_req=0,1,0 (-want +got):\n%s", diff)
	}
}

// TestCloseWithQueuedConnectionsMigrateReq runs the reuseport scenario in a
// private network namespace with net.ipv4.tcp_migrate_req=1: the kernel
// moves the closed member's queue to the surviving member, and nothing is
// lost.
func TestCloseWithQueuedConnectionsMigrateReq(t *testing.T) {
	if _, err := os.Stat("/proc/sys/net/ipv4/tcp_migrate_req"); err != nil {
		t.Skip("kernel has no net.ipv4.tcp_migrate_req (Linux < 5.14)")
	}
	fdcensus.Verify(t)
	for _, res := range netnsLoss(t, "1", "-", "reuseport") {
		checkLoss(t, "reuseport", true, res)
	}
}

// TestCloseWithQueuedConnectionsSmallBacklog runs both scenarios where
// net.core.somaxconn is 40 (set in a private network namespace): the test
// queues lossConns(40) = 32 connections instead of 200, and the outcome is
// the same, so a machine with a small somaxconn neither fails nor skips the
// loss test.
func TestCloseWithQueuedConnectionsSmallBacklog(t *testing.T) {
	fdcensus.Verify(t)
	got := netnsLoss(t, "0", "40", "reuseport", "shared")
	for i, mode := range []string{"reuseport", "shared"} {
		if got[i].Backlog != 40 || got[i].Conns != 32 {
			t.Errorf("%s: backlog %d, %d connections; want 40 and 32", mode, got[i].Backlog, got[i].Conns)
		}
		checkLoss(t, mode, false, got[i])
	}
}

// netnsLoss runs lossNetnsHelper with migrate_req, somaxconn ("-" keeps the
// default) and one result per mode.
func netnsLoss(t *testing.T, migrate, somaxconn string, modes ...string) []lossResult {
	t.Helper()
	out := runInNetns(t, "lossns", append([]string{migrate, somaxconn}, modes...)...)
	var res []lossResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	if len(res) != len(modes) {
		t.Fatalf("helper returned %d results for %d modes", len(res), len(modes))
	}
	return res
}
