//go:build linux

package main_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/reuseport"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// acceptClients is how many client goroutines connect at once.
const acceptClients = 4

// acceptWorkers is N, the number of worker processes of the multi-process
// variants: one per CPU, at least 2, at most 8.
var acceptWorkers = min(max(runtime.NumCPU(), 2), 8)

// acceptBaseline holds the in-place figures of this process, so the other
// variants report their ratios to them side by side.
var acceptBaseline struct{ connsPerSec, cpuPerConn float64 }

// BenchmarkAccept measures new TCP connections per second on loopback and
// the server CPU spent on each (user+system, from getrusage(RUSAGE_SELF) of
// every server process, master and workers alike, taken before and after
// the timed part). Servers are re-executed copies of this binary; each
// accepts, turns the connection into a net.Conn and closes it, which the
// client (4 goroutines here) sees as EOF before aborting with RST, so no
// TIME_WAIT piles up. Variants, in this order rotated by
// $HANDOFF_BENCH_ROTATE (x-inplace and cpu-x-inplace need inplace to have
// run before in the process):
//
//	inplace        one process accepting on its listener
//	handoff        a master accepts with non-blocking accept4 until the
//	               backlog is empty (at most 253), sends all those
//	               connections in one scmrights message over SOCK_SEQPACKET
//	               to the next of N workers (round robin) and closes its
//	               copies; workers Recv and NetConn each descriptor
//	handoff-naive  the same with the stdlib: Accept, one connection per
//	               WriteMsgUnix+UnixRights, ReadMsgUnix+net.FileConn
//	shared         N workers accepting on one shared listening socket
//	reuseport      N workers, each on its own member of a reuseport group
//
// Reported: conns/s, server-cpu-us/conn, x-inplace / cpu-x-inplace, and
// for the handoff variants conns/msg, the connections per handoff message.
func BenchmarkAccept(b *testing.B) {
	for _, v := range inOrder("inplace", "handoff", "handoff-naive", "shared", "reuseport") {
		b.Run(v, func(b *testing.B) { benchAccept(b, v) })
	}
}

// acceptServer is one server process of a benchmark.
type acceptServer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startAcceptServer(b *testing.B, pc *proccensus.Census, mode string, files ...*os.File) *acceptServer {
	b.Helper()
	cmd := helperproc.Command(b, "accept-server", &helperproc.Options{
		Env:        []string{pc.Env()},
		ExtraFiles: files,
		Args:       []string{mode, strconv.Itoa(acceptWorkers)},
	})
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.WaitDelay = 5 * time.Second
	helperproc.Start(b, cmd)
	s := &acceptServer{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	if line := s.line(b); line != "ok" {
		b.Fatalf("accept server %s said %q", mode, line)
	}
	return s
}

func (s *acceptServer) line(b *testing.B) string {
	b.Helper()
	if !s.out.Scan() {
		b.Fatalf("accept server output ended: %v", s.out.Err())
	}
	return s.out.Text()
}

// mark returns the server's CPU time so far, the connections it handled
// and the handoff messages it sent (a master; 0 for the others).
func (s *acceptServer) mark(b *testing.B) (cpu time.Duration, handled, sent int64) {
	b.Helper()
	if _, err := io.WriteString(s.stdin, "mark\n"); err != nil {
		b.Fatal(err)
	}
	var ns int64
	if _, err := fmt.Sscan(s.line(b), &ns, &handled, &sent); err != nil {
		b.Fatalf("accept server mark: %v", err)
	}
	return time.Duration(ns), handled, sent
}

// stop closes the server's stdin, which makes it exit, and reaps it.
func (s *acceptServer) stop(b *testing.B) {
	b.Helper()
	s.stdin.Close()
	timer := time.AfterFunc(10*time.Second, func() { _ = s.cmd.Process.Kill() })
	defer timer.Stop()
	if err := s.cmd.Wait(); err != nil {
		b.Errorf("accept server: %v", err)
	}
}

// tcpFile returns a descriptor of l for a child's ExtraFiles.
func tcpFile(b *testing.B, l net.Listener) *os.File {
	b.Helper()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		b.Fatal(err)
	}
	return f
}

func benchAccept(b *testing.B, variant string) {
	fdcensus.Verify(b)
	pc := proccensus.New(b)
	b.ReportAllocs()
	var (
		servers []*acceptServer
		counted []*acceptServer // the ones whose handled counts sum to the connections
		addr    string
		files   []*os.File
	)
	defer func() {
		for _, s := range servers {
			s.stop(b)
		}
	}()
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
		files = nil
	}
	defer closeFiles()
	switch variant {
	case "inplace", "shared", "handoff", "handoff-naive":
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr = ln.Addr().String()
		lf := tcpFile(b, ln)
		// Only close(2), never shutdown(2): the children keep the socket.
		ln.Close()
		files = append(files, lf)
		switch variant {
		case "inplace":
			servers = append(servers, startAcceptServer(b, pc, "listen", lf))
			counted = servers
		case "shared":
			for range acceptWorkers {
				servers = append(servers, startAcceptServer(b, pc, "listen", lf))
			}
			counted = servers
		default:
			suffix := strings.TrimPrefix(variant, "handoff")
			master := []*os.File{lf}
			var workers []*acceptServer
			for range acceptWorkers {
				fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					b.Fatal(os.NewSyscallError("socketpair", err))
				}
				mf, wf := os.NewFile(uintptr(fds[0]), "master"), os.NewFile(uintptr(fds[1]), "worker")
				files = append(files, mf, wf)
				master = append(master, mf)
				w := startAcceptServer(b, pc, "worker"+suffix, wf)
				workers = append(workers, w)
				servers = append(servers, w)
			}
			servers = append(servers, startAcceptServer(b, pc, "master"+suffix, master...))
			counted = workers
		}
	case "reuseport":
		g, err := reuseport.ListenGroup(context.Background(), "tcp4", "127.0.0.1:0", acceptWorkers)
		if err != nil {
			b.Skipf("reuseport unavailable: %v", err)
		}
		addr = g.Addr().String()
		for i := range acceptWorkers {
			files = append(files, tcpFile(b, g.Listener(i)))
		}
		g.Close()
		for _, f := range files {
			servers = append(servers, startAcceptServer(b, pc, "listen", f))
		}
		counted = servers
	default:
		b.Fatalf("unknown variant %q", variant)
	}
	// The children hold their copies now.
	closeFiles()

	mark := func() (cpu time.Duration, handled, sent int64) {
		for _, s := range servers {
			c, h, m := s.mark(b)
			cpu += c
			sent += m
			for _, cs := range counted {
				if cs == s {
					handled += h
				}
			}
		}
		return cpu, handled, sent
	}
	// Warm-up: the first connections pay for the servers' start-up (page
	// faults, the netpoller's first wake-ups).
	if ran, err := dialLoop(20, addr); err != nil {
		b.Fatalf("warm-up: %d connections: %v", ran, err)
	}
	cpu0, h0, m0 := mark()
	b.ResetTimer()
	start := time.Now()
	ran, err := dialLoop(b.N, addr)
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatalf("%d of %d connections: %v", ran, b.N, err)
	}
	cpu1, h1, m1 := mark()
	if h1-h0 != int64(b.N) {
		b.Fatalf("servers handled %d connections, clients made %d", h1-h0, b.N)
	}
	connsPerSec := float64(b.N) / elapsed.Seconds()
	cpuPerConn := float64(cpu1-cpu0) / 1e3 / float64(b.N)
	b.ReportMetric(connsPerSec, "conns/s")
	b.ReportMetric(cpuPerConn, "server-cpu-us/conn")
	if m1 > m0 {
		b.ReportMetric(float64(b.N)/float64(m1-m0), "conns/msg")
	}
	if variant == "inplace" {
		acceptBaseline.connsPerSec, acceptBaseline.cpuPerConn = connsPerSec, cpuPerConn
	} else if acceptBaseline.connsPerSec > 0 && acceptBaseline.cpuPerConn > 0 {
		b.ReportMetric(connsPerSec/acceptBaseline.connsPerSec, "x-inplace")
		b.ReportMetric(cpuPerConn/acceptBaseline.cpuPerConn, "cpu-x-inplace")
	}
}

// dialLoop makes n connections to addr from acceptClients goroutines, each
// waiting for the server's close (EOF) and then aborting with RST. It stops
// at the first error or after five minutes and returns how many ran.
func dialLoop(n int, addr string) (int, error) {
	var (
		next, ran atomic.Int64
		errOnce   sync.Once
		first     error
		wg        sync.WaitGroup
	)
	deadline := time.Now().Add(5 * time.Minute)
	d := net.Dialer{Timeout: 5 * time.Second}
	for range acceptClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for int(next.Add(1)) <= n && time.Now().Before(deadline) {
				err := dialOnce(&d, addr)
				if err != nil {
					errOnce.Do(func() { first = err })
					return
				}
				ran.Add(1)
			}
		}()
	}
	wg.Wait()
	if first == nil && int(ran.Load()) != n {
		first = errors.New("deadline passed")
	}
	return int(ran.Load()), first
}

func dialOnce(d *net.Dialer, addr string) error {
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		return err
	}
	defer func() {
		// RST instead of FIN: no TIME_WAIT on either side.
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	// The server closes without writing: EOF means it was handled.
	_, err = io.Copy(io.Discard, c)
	return err
}

// roleAcceptServer is one server process of BenchmarkAccept. Args: MODE N.
//
//	listen         accept on the listener at fd 3, close each connection
//	master         accept on fd 3, hand batches to the N workers at fd 4..
//	master-naive   the same, one connection per message, stdlib calls
//	worker         receive connections on fd 3 and close them
//	worker-naive   the same with ReadMsgUnix and net.FileConn
//
// It prints "ok" once set up, answers every "mark" line on stdin with its
// CPU time so far in ns (getrusage RUSAGE_SELF, user+system), the
// connections it handled and the handoff messages it sent, and exits when
// stdin closes.
func roleAcceptServer() int {
	a := helperproc.Args()
	if len(a) != 2 {
		return fatalf("accept-server: args %q", a)
	}
	nworkers, err := strconv.Atoi(a[1])
	if err != nil || nworkers < 1 {
		return fatalf("accept-server: workers %q", a[1])
	}
	var handled, sent atomic.Int64
	errc := make(chan error, 1)
	report := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	switch a[0] {
	case "listen":
		ln, err := fileListener(3)
		if err != nil {
			return fatalf("%v", err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					report(err)
					return
				}
				handled.Add(1)
				c.Close()
			}
		}()
	case "master", "master-naive":
		var workers []*net.UnixConn
		// Not probed with fcntl: the runtime's own descriptors follow
		// the inherited ones.
		for fd := 4; fd < 4+nworkers; fd++ {
			uc, err := scmrights.UnixConn(fd)
			if err != nil {
				return fatalf("worker socket %d: %v", fd, err)
			}
			workers = append(workers, uc)
		}
		if a[0] == "master" {
			// A net.Listener's RawConn refuses Read (EINVAL); an *os.File
			// on a non-blocking descriptor is on the netpoller and allows it.
			if err := unix.SetNonblock(3, true); err != nil {
				return fatalf("%v", os.NewSyscallError("fcntl", err))
			}
			ln := os.NewFile(3, "listener")
			go func() { report(handoffBatched(ln, workers, &handled, &sent)) }()
		} else {
			ln, err := fileListener(3)
			if err != nil {
				return fatalf("%v", err)
			}
			go func() { report(handoffNaive(ln, workers, &handled, &sent)) }()
		}
	case "worker":
		uc, err := scmrights.UnixConn(3)
		if err != nil {
			return fatalf("%v", err)
		}
		c, err := scmrights.NewConn(uc)
		if err != nil {
			return fatalf("%v", err)
		}
		go func() {
			buf := make([]byte, 16)
			fds := make([]int, scmrights.MaxFDs)
			for {
				_, nfds, err := c.Recv(buf, fds)
				if err != nil {
					report(err)
					return
				}
				for _, fd := range fds[:nfds] {
					nc, err := scmrights.NetConn(fd)
					if err != nil {
						report(err)
						return
					}
					handled.Add(1)
					nc.Close()
				}
			}
		}()
	case "worker-naive":
		uc, err := scmrights.UnixConn(3)
		if err != nil {
			return fatalf("%v", err)
		}
		go func() {
			buf := make([]byte, 16)
			oob := make([]byte, syscall.CmsgSpace(4))
			for {
				_, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
				if err != nil {
					report(err)
					return
				}
				cms, err := syscall.ParseSocketControlMessage(oob[:oobn])
				if err != nil {
					report(err)
					return
				}
				for i := range cms {
					fds, err := syscall.ParseUnixRights(&cms[i])
					if err != nil {
						report(err)
						return
					}
					for _, fd := range fds {
						f := os.NewFile(uintptr(fd), "conn")
						nc, err := net.FileConn(f)
						f.Close()
						if err != nil {
							report(err)
							return
						}
						handled.Add(1)
						nc.Close()
					}
				}
			}
		}()
	default:
		return fatalf("accept-server: unknown mode %q", a[0])
	}
	fmt.Println("ok")
	lines := make(chan struct{})
	go func() {
		s := bufio.NewScanner(os.Stdin)
		for s.Scan() {
			lines <- struct{}{}
		}
		close(lines)
	}()
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				return 0
			}
			var ru unix.Rusage
			if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
				return fatalf("%v", os.NewSyscallError("getrusage", err))
			}
			fmt.Println(ru.Utime.Nano()+ru.Stime.Nano(), handled.Load(), sent.Load())
		case err := <-errc:
			// A worker sees EOF when the master exits first at the end.
			if errors.Is(err, io.EOF) {
				return 0
			}
			return fatalf("accept-server %s: %v", a[0], err)
		}
	}
}

// fileListener returns a net.Listener for the listening socket at fd.
func fileListener(fd int) (net.Listener, error) {
	f := os.NewFile(uintptr(fd), "listener-"+strconv.Itoa(fd))
	defer f.Close()
	return net.FileListener(f)
}

// handoffBatched accepts every connection queued on ln without blocking
// (accept4 until EAGAIN, at most scmrights.MaxFDs), sends them in one
// message to the next worker and closes its copies. It blocks on the
// netpoller only when the backlog is empty.
func handoffBatched(ln *os.File, workers []*net.UnixConn, handled, sent *atomic.Int64) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	conns := make([]*scmrights.Conn, len(workers))
	for i, uc := range workers {
		if conns[i], err = scmrights.NewConn(uc); err != nil {
			return fmt.Errorf("worker connection: %w", err)
		}
	}
	batch := make([]int, 0, scmrights.MaxFDs)
	var acceptErr error
	drain := func(fd uintptr) bool {
		for len(batch) < cap(batch) {
			// Blocking, as cluster's master does: the worker's os.NewFile
			// then leaves it off its poller. No address: x/sys's Accept4
			// would add a getsockopt(SO_PROTOCOL) per inet connection.
			nfd, _, e := unix.Syscall6(unix.SYS_ACCEPT4, fd, 0, 0, unix.SOCK_CLOEXEC, 0, 0)
			switch {
			case e == 0:
				batch = append(batch, int(nfd))
				continue
			case e == unix.EINTR || e == unix.ECONNABORTED:
				continue
			case e == unix.EAGAIN:
			default:
				acceptErr = os.NewSyscallError("accept4", e)
			}
			break
		}
		// Park on the netpoller only when nothing was accepted.
		return len(batch) > 0 || acceptErr != nil
	}
	for next := 0; ; next = (next + 1) % len(conns) {
		batch = batch[:0]
		if err := rc.Read(drain); err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		if len(batch) > 0 {
			err := conns[next].Send([]byte{byte(len(batch))}, batch...)
			if err != nil {
				err = fmt.Errorf("send %d: %w", len(batch), err)
			}
			// The worker has its own copies now; ours must not linger.
			for _, fd := range batch {
				unix.Close(fd)
			}
			if err != nil {
				return err
			}
			handled.Add(int64(len(batch)))
			sent.Add(1)
		}
		if acceptErr != nil {
			return acceptErr
		}
	}
}

// handoffNaive is what a first attempt with the stdlib looks like: one
// Accept and one WriteMsgUnix per connection.
func handoffNaive(ln net.Listener, workers []*net.UnixConn, handled, sent *atomic.Int64) error {
	for next := 0; ; next = (next + 1) % len(workers) {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			c.Close()
			return err
		}
		var sendErr error
		if err := rc.Control(func(fd uintptr) {
			_, _, sendErr = workers[next].WriteMsgUnix([]byte{1}, syscall.UnixRights(int(fd)), nil)
		}); err != nil {
			sendErr = err
		}
		c.Close()
		if sendErr != nil {
			return sendErr
		}
		handled.Add(1)
		sent.Add(1)
	}
}
