//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// BenchmarkHello measures requests/s of examples/hello under
// "mini-cluster -n 2" and standalone with the same load client in the same
// run, and reports the median of the per-round ratios (target ≥ 0.97: the
// master is not on the data path in shared mode). Both sides are warmed
// up, then measured in helloRounds interleaved rounds, the side going first
// alternating, so drift and warm-up hit both alike; each round serves at
// least 10000 requests over conns=8 or conns=64 keep-alive connections.
// The busiest worker's share of a cluster round's requests (X-Worker) is
// reported too: the connections go to whichever worker's poller wins each
// accept, so 8 of them may split anywhere from 8/0 to 4/4.
func BenchmarkHello(b *testing.B) {
	hello := buildHello(b)
	for _, conns := range []int{8, 64} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) { benchHello(b, hello, conns) })
	}
}

func benchHello(b *testing.B, hello string, conns int) {
	pc := proccensus.New(b)
	n := max(b.N, 10000)
	load := func(addr string, n int) (float64, float64) {
		r := loadclient.Run(context.Background(), loadclient.Options{Addr: addr, KeepAlive: conns, Requests: n, Duration: time.Minute, Header: "X-Worker"})
		if r.OK != n {
			b.Fatalf("load on %s: %v", addr, r)
		}
		top := 0
		for _, c := range r.Values {
			top = max(top, c)
		}
		return float64(r.OK) / r.Elapsed.Seconds(), float64(top) / float64(r.OK)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	free := ln.Addr().String()
	ln.Close()
	alone := startStandalone(b, pc, hello, "-addr", free)
	defer func() { alone.Process.Signal(syscall.SIGTERM); alone.Wait() }()
	if !waitFor(10*time.Second, func() bool { _, _, err := get(free, "/"); return err == nil }) {
		b.Fatal("standalone hello not serving")
	}

	m := startMaster(b, pc, nil, "-n", "2", "-listen", "127.0.0.1:0", "--", hello)
	addr := m.waitReady()

	load(addr, 1000) // warm-up: connections, page cache, CPU frequency
	load(free, 1000)
	b.ResetTimer()
	var ratios, shares, clusterRPS, aloneRPS []float64
	for i := range helloRounds {
		var c, a, share float64
		if i%2 == 0 {
			c, share = load(addr, n)
			a, _ = load(free, n)
		} else {
			a, _ = load(free, n)
			c, share = load(addr, n)
		}
		clusterRPS, aloneRPS = append(clusterRPS, c), append(aloneRPS, a)
		ratios, shares = append(ratios, c/a), append(shares, share)
		b.Logf("round %d: cluster/standalone %.3f (%.0f / %.0f req/s), busiest worker served %.0f%%", i+1, c/a, c, a, 100*share)
	}
	b.StopTimer()
	b.ReportMetric(median(clusterRPS), "cluster-req/s")
	b.ReportMetric(median(aloneRPS), "standalone-req/s")
	b.ReportMetric(median(ratios), "cluster/standalone")
	b.ReportMetric(median(shares), "busiest-worker-share")
	b.ReportMetric(float64(rssKiB(m.cmd.Process.Pid)), "master-RSS-KiB")
	m.signal(syscall.SIGTERM)
	m.wait(15 * time.Second)
}

// benchPdeathsigVar, set by the bench runner (go run ./bench, which runs
// BenchmarkHello from this binary), asks this binary, the helpers it
// re-executes and the processes its benchmarks start to die with their
// parent: a runner killed outright (SIGKILL) cleans up nothing, and the
// standalone hello, the master and its workers would otherwise run on as
// orphans.
const benchPdeathsigVar = "HANDOFF_BENCH_PDEATHSIG"

// armBenchPdeathsig, called by TestMain, makes this process die with its
// parent (PR_SET_PDEATHSIG) when benchPdeathsigVar is set. A parent gone
// before the call is missed: the window is the process's start-up.
func armBenchPdeathsig() {
	if os.Getenv(benchPdeathsigVar) == "" {
		return
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "mini-cluster test: prctl(PR_SET_PDEATHSIG): %v\n", err)
	}
}

// benchPdeathsig makes cmd, not yet started, die with this process
// (Pdeathsig) when benchPdeathsigVar is set; a master's workers then die
// with the master, which arms their own Pdeathsig. Pdeathsig fires when
// the forking thread exits, not the process: the benchmarks lock no
// goroutine to a thread, so the threads that fork live as long as the
// process.
func benchPdeathsig(cmd *exec.Cmd) {
	if os.Getenv(benchPdeathsigVar) == "" {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

// startStandalone starts the server a benchmark compares the cluster
// with, carrying pc's marker; the caller stops and reaps it.
func startStandalone(b testing.TB, pc *proccensus.Census, name string, args ...string) *exec.Cmd {
	b.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), pc.Env())
	benchPdeathsig(cmd)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd
}

// helloRounds is the number of interleaved rounds of BenchmarkHello.
const helloRounds = 4

// median returns the median of xs (the mean of the middle two for an even
// count); xs is sorted in place.
func median(xs []float64) float64 {
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

// BenchmarkRestartToReady measures the time from SIGHUP to the whole new
// generation ready ("restart done") with 2 hello workers, rolling.
func BenchmarkRestartToReady(b *testing.B) {
	hello := buildHello(b)
	pc := proccensus.New(b)
	m := startMaster(b, pc, nil, "-n", "2", "-listen", "127.0.0.1:0", "--", hello)
	m.waitReady()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		want := `msg="restart done" generation=` + strconv.Itoa(i+2)
		m.signal(syscall.SIGHUP)
		if !waitFor(30*time.Second, func() bool { return strings.Contains(m.log.String(), want) }) {
			b.Fatalf("no %q", want)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/restart")
	b.ReportMetric(float64(rssKiB(m.cmd.Process.Pid)), "master-RSS-KiB")
	m.signal(syscall.SIGTERM)
	m.wait(15 * time.Second)
}

// rssKiB reads VmRSS of pid.
func rssKiB(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}
