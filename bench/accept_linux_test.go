//go:build linux

package main_test

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
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

// acceptFigures holds conns/s and server CPU per connection of every
// variant this process measured, by name, so that the variants after a
// baseline report their ratios to it side by side.
var acceptFigures sync.Map // string → acceptFigure

type acceptFigure struct{ connsPerSec, cpuPerConn float64 }

// acceptRefRatios are the ratios to a variant other than inplace: unit,
// the variants reporting it, the variant divided by, and whether it is of
// server CPU per connection rather than of conns/s. The runner's accept
// case computes the same per round (cases.go), whatever the order.
var acceptRefRatios = []struct {
	unit     string
	variants []string
	ref      string
	cpu      bool
}{
	{"x-inplace-c", []string{"inplace", "handoff-c"}, "inplace-c", false},
	{"cpu-x-inplace-c", []string{"handoff-c"}, "inplace-c", true},
	{"x-handoff-c", []string{"handoff", "handoff-naive"}, "handoff-c", false},
}

// BenchmarkAccept measures new TCP connections per second on loopback and
// the server CPU spent on each (user+system, from getrusage(RUSAGE_SELF) of
// every server process, master and workers alike, taken before and after
// the timed part). Servers are re-executed copies of this binary; each
// accepts, turns the connection into a net.Conn and closes it, which the
// client (4 goroutines here) sees as EOF before aborting with RST, so no
// TIME_WAIT piles up. Variants, in this order rotated by
// $HANDOFF_BENCH_ROTATE (a ratio is reported only when the variant it
// divides by ran before in the process):
//
//	inplace        one process accepting on its listener
//	inplace-c      the same in C (testdata/caccept.c): accept4, close
//	handoff-c      a C master: blocking accept4, one connection per
//	               sendmsg/SCM_RIGHTS over SOCK_SEQPACKET to the next of N
//	               C workers (round robin), which recvmsg and close it
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
// The C variants are skipped, saying why, without a C compiler.
//
// Reported: conns/s, server-cpu-us/conn (no allocs/op: the servers are
// other processes), x-inplace / cpu-x-inplace (over
// inplace's), for the handoff variants conns/msg, the connections per
// handoff message, and the ratios to the C variants of acceptRefRatios:
// x-inplace-c (inplace and handoff-c over inplace-c: Go's in place and C's
// hand-off against C's in place), cpu-x-inplace-c (handoff-c's server CPU
// per connection over inplace-c's) and x-handoff-c (handoff and
// handoff-naive over handoff-c).
func BenchmarkAccept(b *testing.B) {
	// Once for every sub-benchmark: the parent runs once.
	cbin, whyNot := buildCAccept(b)
	for _, v := range inOrder("inplace", "inplace-c", "handoff-c", "handoff", "handoff-naive", "shared", "reuseport") {
		b.Run(v, func(b *testing.B) {
			if strings.HasSuffix(v, "-c") && cbin == "" {
				b.Skip(whyNot)
			}
			benchAccept(b, cbin, v)
		})
	}
}

// acceptServer is one server process of a benchmark.
type acceptServer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

// startAcceptServer starts a server in mode with files at fd 3...: this
// binary's accept-server role, or the C program bin (caccept) when bin is
// not "". Both speak the same protocol on stdin and stdout.
func startAcceptServer(b *testing.B, pc *proccensus.Census, bin, mode string, files ...*os.File) *acceptServer {
	b.Helper()
	args := []string{mode, strconv.Itoa(acceptWorkers)}
	var cmd *exec.Cmd
	if bin == "" {
		cmd = helperproc.Command(b, "accept-server", &helperproc.Options{
			Env:        []string{pc.Env()},
			ExtraFiles: files,
			Args:       args,
		})
	} else {
		cmd = exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), pc.Env())
		cmd.ExtraFiles = files
		cmd.Stderr = os.Stderr
		dieWithUs(cmd)
	}
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

// benchAccept runs one variant; cbin is the C servers' binary, needed by
// the variants ending in -c.
func benchAccept(b *testing.B, cbin, variant string) {
	fdcensus.Verify(b)
	pc := proccensus.New(b)
	// No b.ReportAllocs: this process is the load client, and its
	// allocations would read as the servers'; server-cpu-us/conn is their
	// cost.
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
	// A -c variant is its Go namesake's set-up with the C servers.
	base, isC := strings.CutSuffix(variant, "-c")
	bin := ""
	if isC {
		// caccept serves in place (listen) and hands off (master, worker).
		if base != "inplace" && base != "handoff" {
			b.Fatalf("unknown variant %q", variant)
		}
		if cbin == "" {
			b.Fatalf("%s: no C binary", variant)
		}
		bin = cbin
	}
	switch base {
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
		switch base {
		case "inplace":
			servers = append(servers, startAcceptServer(b, pc, bin, "listen", lf))
			counted = servers
		case "shared":
			for range acceptWorkers {
				servers = append(servers, startAcceptServer(b, pc, bin, "listen", lf))
			}
			counted = servers
		default:
			suffix := strings.TrimPrefix(base, "handoff")
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
				w := startAcceptServer(b, pc, bin, "worker"+suffix, wf)
				workers = append(workers, w)
				servers = append(servers, w)
			}
			servers = append(servers, startAcceptServer(b, pc, bin, "master"+suffix, master...))
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
			servers = append(servers, startAcceptServer(b, pc, bin, "listen", f))
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
	acceptFigures.Store(variant, acceptFigure{connsPerSec, cpuPerConn})
	ref := func(name string) (acceptFigure, bool) {
		f, ok := acceptFigures.Load(name)
		if !ok {
			return acceptFigure{}, false
		}
		fig := f.(acceptFigure)
		return fig, fig.connsPerSec > 0 && fig.cpuPerConn > 0
	}
	if in, ok := ref("inplace"); ok && variant != "inplace" {
		b.ReportMetric(connsPerSec/in.connsPerSec, "x-inplace")
		b.ReportMetric(cpuPerConn/in.cpuPerConn, "cpu-x-inplace")
	}
	for _, rr := range acceptRefRatios {
		r, ok := ref(rr.ref)
		if !ok || !slices.Contains(rr.variants, variant) {
			continue
		}
		if rr.cpu {
			b.ReportMetric(cpuPerConn/r.cpuPerConn, rr.unit)
		} else {
			b.ReportMetric(connsPerSec/r.connsPerSec, rr.unit)
		}
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

// TestAcceptC runs the C variants of BenchmarkAccept for 50 connections:
// the C servers must speak the accept-server protocol (every connection
// counted by the workers, "conns/msg" 1 for the C master), reap cleanly and
// leave no descriptor behind; handoff-c, run after inplace-c, reports its
// ratios to it.
func TestAcceptC(t *testing.T) {
	fdcensus.Verify(t)
	cbin, whyNot := buildCAccept(t)
	if cbin == "" {
		t.Skip(whyNot)
	}
	bt := flag.Lookup("test.benchtime")
	old := bt.Value.String()
	if err := bt.Value.Set("50x"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = bt.Value.Set(old) }()
	tests := []struct {
		variant string
		want    []string // units reported besides conns/s
	}{
		{"inplace-c", []string{"server-cpu-us/conn"}},
		{"handoff-c", []string{"server-cpu-us/conn", "conns/msg", "x-inplace-c", "cpu-x-inplace-c"}},
	}
	for _, tt := range tests {
		r := testing.Benchmark(func(b *testing.B) { benchAccept(b, cbin, tt.variant) })
		if r.N != 50 {
			t.Fatalf("%s: ran %d connections, want 50 (did the benchmark fail?)", tt.variant, r.N)
		}
		if r.Extra["conns/s"] <= 0 {
			t.Errorf("%s: conns/s %v", tt.variant, r.Extra["conns/s"])
		}
		for _, u := range tt.want {
			if _, ok := r.Extra[u]; !ok {
				t.Errorf("%s: %s not reported: %v", tt.variant, u, r.Extra)
			}
		}
		if m, ok := r.Extra["conns/msg"]; ok && m != 1 {
			t.Errorf("%s: %v conns/msg, want 1 (one connection per message)", tt.variant, m)
		}
	}
}

// TestBuildCWithoutCompiler checks that without a C compiler the C
// variants are skipped with a message saying what is missing.
func TestBuildCWithoutCompiler(t *testing.T) {
	t.Setenv(CAcceptVar, "")
	t.Setenv("PATH", t.TempDir())
	bin, whyNot := buildCAccept(t)
	if bin != "" || !strings.Contains(whyNot, "no C compiler") || !strings.Contains(whyNot, "in-place and hand-off") {
		t.Errorf("buildCAccept without a compiler = %q, %q; want \"\" and why", bin, whyNot)
	}
}
