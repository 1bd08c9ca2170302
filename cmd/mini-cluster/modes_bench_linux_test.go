//go:build linux

package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// cpuTicks sums utime+stime (clock ticks, every thread, live or exited) of
// pids from /proc/<pid>/stat.
func cpuTicks(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		f, ok := statFields("/proc/" + strconv.Itoa(pid) + "/stat")
		if ok && len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			sum += u + s
		}
	}
	return sum
}

// clockTick is USER_HZ, 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// startInPlace runs the fake worker alone on its own listener, accepting
// in place: the baseline. It returns the address and the server's pid.
func startInPlace(b *testing.B, pc *proccensus.Census) (string, int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	addr := ln.Addr().String()
	ln.Close()
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	dir, err := os.MkdirTemp("", "hb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	ns, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "n"), Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ns.Close() })
	bin, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	// The exec shim sets LISTEN_PID to the server's own pid.
	cmd := exec.Command(bin, cluster.ShimArg, bin, bin, fakeSrvArg)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Env = append(os.Environ(), pc.Env(), "LISTEN_FDS=1", "LISTEN_FDNAMES=tcp", "NOTIFY_SOCKET="+filepath.Join(dir, "n"))
	cmd.Stderr = os.Stderr
	benchPdeathsig(cmd)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	if !waitFor(10*time.Second, func() bool { _, _, err := get(addr, "/"); return err == nil }) {
		b.Fatal("in-place server not serving")
	}
	return addr, cmd.Process.Pid
}

// BenchmarkModes measures new connections per second (one HTTP request
// each, 8 clients) and server CPU per connection (the master and its
// worker, or the lone server) for one worker in shared, reuseport and
// handoff mode and for one process accepting in place, in interleaved
// rounds of the same run, and reports each mode's ratios to in place
// (targets: handoff ≥ 0.83 of the in-place rate, ≤ 1.5× its CPU) as
// medians of the per-round ratios.
func BenchmarkModes(b *testing.B) {
	pc := proccensus.New(b)
	n := max(b.N, 3000)
	type server struct {
		name string
		addr string
		pids func() []int
	}
	bin, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	addr, pid := startInPlace(b, pc)
	servers := []server{{"inplace", addr, func() []int { return []int{pid} }}}
	for _, mode := range []string{"shared", "reuseport", "handoff"} {
		m := startMaster(b, pc, nil, append([]string{"-mode", mode, "-n", "1", "-listen", "127.0.0.1:0", "--"}, bin, fakeSrvArg)...)
		a := m.waitReady()
		b.Cleanup(func() { m.signal(syscall.SIGTERM); m.wait(15 * time.Second) })
		servers = append(servers, server{mode, a, func() []int { return append(m.workers(), m.cmd.Process.Pid) }})
	}
	run := func(s server, n int) (float64, float64) {
		pids := s.pids()
		c0 := cpuTicks(pids)
		r := loadclient.Run(context.Background(), loadclient.Options{Addr: s.addr, NewConn: 8, Requests: n, Duration: time.Minute})
		c1 := cpuTicks(pids)
		if r.OK != n {
			b.Fatalf("%s: %v", s.name, r)
		}
		return float64(r.OK) / r.Elapsed.Seconds(), float64(c1-c0) * float64(clockTick/time.Microsecond) / float64(n)
	}
	for _, s := range servers {
		run(s, 300) // warm-up
	}
	rate := map[string][]float64{}
	cpu := map[string][]float64{}
	rateX := map[string][]float64{}
	cpuX := map[string][]float64{}
	b.SetBytes(0)
	b.ResetTimer()
	for round := range modesRounds {
		// A different server goes first each round, so drift and the
		// order within a round hit each alike.
		r, c := map[string]float64{}, map[string]float64{}
		for i := range servers {
			s := servers[(round+i)%len(servers)]
			r[s.name], c[s.name] = run(s, n)
		}
		for _, s := range servers {
			rate[s.name] = append(rate[s.name], r[s.name])
			cpu[s.name] = append(cpu[s.name], c[s.name])
			rateX[s.name] = append(rateX[s.name], r[s.name]/r["inplace"])
			cpuX[s.name] = append(cpuX[s.name], c[s.name]/c["inplace"])
		}
		b.Logf("round %d: handoff/inplace rate %.3f cpu %.3f", round+1, r["handoff"]/r["inplace"], c["handoff"]/c["inplace"])
	}
	b.StopTimer()
	// Medians of the rounds; the ratios are the medians of the per-round
	// ratios, each taken against in place measured in the same round.
	for _, s := range servers {
		b.ReportMetric(median(rate[s.name]), s.name+"-conn/s")
		b.ReportMetric(median(cpu[s.name]), s.name+"-cpu-µs/conn")
		if s.name != "inplace" {
			b.ReportMetric(median(rateX[s.name]), s.name+"/inplace-rate")
			b.ReportMetric(median(cpuX[s.name]), s.name+"/inplace-cpu")
		}
	}
}

// modesRounds is the number of rounds of BenchmarkModes.
const modesRounds = 5
