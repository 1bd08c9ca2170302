package reuseport_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/reuseport"
)

// acceptServerHelper is the benchmark's server, in its own process so that
// getrusage measures the server alone: a group of Args()[0] listeners on
// 127.0.0.1, one goroutine accepting and closing on each. It prints the
// port, then answers each "mark" line on stdin with its CPU time so far (ns,
// user+system) and the connections accepted; it exits when stdin closes.
func acceptServerHelper() int {
	args := helperproc.Args()
	if len(args) != 1 {
		return 2
	}
	n, err := strconv.Atoi(args[0])
	if err != nil {
		return 2
	}
	g, err := reuseport.ListenGroup(context.Background(), "tcp4", "127.0.0.1:0", n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "acceptserver:", err)
		return 1
	}
	var (
		accepted atomic.Int64
		wg       sync.WaitGroup
	)
	for i := range n {
		l := g.Listener(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				c.Close()
			}
		}()
	}
	fmt.Println(g.Addr().(*net.TCPAddr).Port)
	s := bufio.NewScanner(os.Stdin)
	for s.Scan() {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			return 1
		}
		cpu := ru.Utime.Nano() + ru.Stime.Nano()
		fmt.Println(cpu, accepted.Load())
	}
	g.Close()
	wg.Wait()
	return 0
}

// acceptBaseline holds the 1-listener figures of the current run, so the
// 2- and 4-listener runs report their ratios to it side by side.
var acceptBaseline struct {
	connsPerSec, cpuPerConn float64
}

// BenchmarkAccept measures new connections accepted per second by a server
// process with 1, 2 or 4 reuseport listeners (one accept goroutine each),
// with 4 client goroutines in the benchmark process, and the server's CPU
// time per connection from getrusage. Each connection is closed by the
// server and aborted (RST) by the client, so no TIME_WAIT piles up.
// Ratios to the 1-listener run are reported as conns/s-x and cpu/conn-x.
func BenchmarkAccept(b *testing.B) {
	for _, n := range []int{1, 2, 4} {
		b.Run("listeners="+strconv.Itoa(n), func(b *testing.B) { benchAccept(b, n) })
	}
}

func benchAccept(b *testing.B, n int) {
	fdcensus.Verify(b)
	pc := proccensus.New(b)
	b.ReportAllocs()
	cmd := helperproc.Command(b, "acceptserver", &helperproc.Options{
		Env:  []string{pc.Env()},
		Args: []string{strconv.Itoa(n)},
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
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		timer := time.AfterFunc(10*time.Second, func() { _ = cmd.Process.Kill() })
		defer timer.Stop()
		if err := cmd.Wait(); err != nil {
			b.Errorf("server: %v", err)
		}
	}()
	lines := bufio.NewScanner(stdout)
	readLine := func() []string {
		if !lines.Scan() {
			b.Fatalf("server output ended: %v", lines.Err())
		}
		return strings.Fields(lines.Text())
	}
	mark := func() (cpuNs, accepted int64) {
		if _, err := io.WriteString(stdin, "mark\n"); err != nil {
			b.Fatal(err)
		}
		f := readLine()
		if len(f) != 2 {
			b.Fatalf("server said %q", f)
		}
		cpuNs, _ = strconv.ParseInt(f[0], 10, 64)
		accepted, _ = strconv.ParseInt(f[1], 10, 64)
		return cpuNs, accepted
	}
	addr := "127.0.0.1:" + strings.Join(readLine(), "")
	cpu0, acc0 := mark()

	b.ResetTimer()
	start := time.Now()
	ran, err := runBounded(b.N, 4, start.Add(5*time.Minute), func(int) error {
		c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer closeAbort(c)
		if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		// The server closes without writing: EOF means it was accepted.
		_, err = io.Copy(io.Discard, c)
		return err
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil || ran != b.N {
		b.Fatalf("%d of %d connections: %v", ran, b.N, err)
	}
	cpu1, acc1 := mark()
	if acc1-acc0 != int64(b.N) {
		b.Fatalf("server accepted %d connections, clients made %d", acc1-acc0, b.N)
	}
	connsPerSec := float64(b.N) / elapsed.Seconds()
	cpuPerConn := float64(cpu1-cpu0) / float64(b.N)
	b.ReportMetric(connsPerSec, "conns/s")
	b.ReportMetric(cpuPerConn, "server-cpu-ns/conn")
	if n == 1 {
		acceptBaseline.connsPerSec, acceptBaseline.cpuPerConn = connsPerSec, cpuPerConn
	} else if acceptBaseline.connsPerSec > 0 && acceptBaseline.cpuPerConn > 0 {
		b.ReportMetric(connsPerSec/acceptBaseline.connsPerSec, "conns/s-x")
		b.ReportMetric(cpuPerConn/acceptBaseline.cpuPerConn, "cpu/conn-x")
	}
}
