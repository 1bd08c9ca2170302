//go:build linux

package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// BenchmarkHello measures requests/s of examples/hello under
// "mini-cluster -n 2" and standalone with the same load client in the same
// run, and reports the ratio (target ≥ 0.97: the master is not on the data
// path in shared mode). Both sides are warmed up, then measured in two
// interleaved rounds (cluster, standalone, cluster, standalone) so drift and
// warm-up hit both alike; each round serves at least 10000 requests over 8
// keep-alive connections.
func BenchmarkHello(b *testing.B) {
	hello := buildHello(b)
	pc := proccensus.New(b)
	n := max(b.N, 10000)
	load := func(addr string, n int) float64 {
		r := loadclient.Run(context.Background(), loadclient.Options{Addr: addr, KeepAlive: 8, Requests: n, Duration: time.Minute})
		if r.OK != n {
			b.Fatalf("load on %s: %v", addr, r)
		}
		return float64(r.OK) / r.Elapsed.Seconds()
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	free := ln.Addr().String()
	ln.Close()
	alone := exec.Command(hello, "-addr", free)
	alone.Env = append(os.Environ(), pc.Env())
	if err := alone.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { alone.Process.Signal(syscall.SIGTERM); alone.Wait() }()
	if !waitFor(10*time.Second, func() bool { _, _, err := get(free, "/"); return err == nil }) {
		b.Fatal("standalone hello not serving")
	}

	m := startMaster(b, pc, nil, "-n", "2", "-listen", "127.0.0.1:0", "--", hello)
	addr := m.waitReady()

	load(addr, 1000) // warm-up: connections, page cache, CPU frequency
	load(free, 1000)
	b.ReportAllocs()
	b.ResetTimer()
	var clusterRPS, aloneRPS float64
	for range 2 {
		clusterRPS += load(addr, n) / 2
		aloneRPS += load(free, n) / 2
	}
	b.StopTimer()
	b.ReportMetric(clusterRPS, "cluster-req/s")
	b.ReportMetric(aloneRPS, "standalone-req/s")
	b.ReportMetric(clusterRPS/aloneRPS, "cluster/standalone")
	b.ReportMetric(float64(rssKiB(m.cmd.Process.Pid)), "master-RSS-KiB")
	m.signal(syscall.SIGTERM)
	m.wait(15 * time.Second)
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
