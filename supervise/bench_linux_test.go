package supervise_test

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// sleepSpec runs /usr/bin/sleep, the cheapest worker, for benchmarks.
func sleepSpec(b *testing.B, c *proccensus.Census) supervise.Spec {
	b.Helper()
	path, err := exec.LookPath("sleep")
	if err != nil {
		b.Skip("no sleep binary")
	}
	return supervise.Spec{Path: path, Args: []string{"3600"}, Env: append(os.Environ(), c.Env())}
}

// benchRun starts a supervisor whose events go to a channel.
func benchRun(b *testing.B, spec supervise.Spec, opts *supervise.Options) (*supervise.Supervisor, <-chan supervise.Event) {
	b.Helper()
	opts.Logger = quiet
	sup, err := supervise.New(spec, opts)
	if err != nil {
		b.Fatal(err)
	}
	events := make(chan supervise.Event, 4096)
	go func() {
		for e := range sup.Events() {
			events <- e
		}
		close(events)
	}()
	done := make(chan error, 1)
	go func() { done <- sup.Run(context.Background()) }()
	b.Cleanup(func() {
		_ = sup.Stop()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = sup.Kill()
			<-done
		}
	})
	return sup, events
}

func next(b *testing.B, events <-chan supervise.Event, k supervise.EventKind) supervise.Event {
	b.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-events:
			if e.Kind == k {
				return e
			}
		case <-timeout:
			b.Fatalf("no %v event", k)
		}
	}
}

// BenchmarkRespawn measures respawn latency: from the supervisor seeing a
// ready worker's exit to the replacement having been started (target p50 <
// 10 ms). The baseline is a bare fork+exec+kill+wait of the same program, in
// the same binary, so the ratio shows the supervisor's own share.
func BenchmarkRespawn(b *testing.B) {
	b.Run("supervisor", func(b *testing.B) {
		c := proccensus.New(b)
		sup, events := benchRun(b, sleepSpec(b, c), &supervise.Options{ReadyOnStart: true,
			Backoff: supervise.Backoff{Min: time.Millisecond, Burst: -1}})
		pid := next(b, events, supervise.Started).PID
		base := forkExecLatency(b, sleepSpec(b, c))
		lat := make([]time.Duration, 0, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			time.Sleep(2 * time.Millisecond) // past Backoff.Min of uptime: not throttled
			p, err := os.FindProcess(pid)
			if err != nil {
				b.Fatal(err)
			}
			_ = p.Kill()
			_ = p.Release()
			exited := next(b, events, supervise.Exited)
			started := next(b, events, supervise.Started)
			lat = append(lat, started.Time.Sub(exited.Time))
			pid = started.PID
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		b.ReportMetric(float64(lat[len(lat)/2])/float64(base), "x-forkexec-p50")
		_ = sup
	})
	b.Run("baseline-forkexec", func(b *testing.B) {
		c := proccensus.New(b)
		spec := sleepSpec(b, c)
		b.ReportAllocs()
		for range b.N {
			cmd := exec.Command(spec.Path, spec.Args...)
			cmd.Env = spec.Env
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
}

// forkExecLatency is the median time os/exec takes to start spec's program:
// the floor under any respawn.
func forkExecLatency(b *testing.B, spec supervise.Spec) time.Duration {
	b.Helper()
	var d []time.Duration
	for range 15 {
		cmd := exec.Command(spec.Path, spec.Args...)
		cmd.Env = spec.Env
		begin := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		d = append(d, time.Since(begin))
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	slices.Sort(d)
	return d[len(d)/2]
}

// BenchmarkRestart measures a graceful restart of 4 workers with each
// strategy, from the request to RestartDone (workers ready on start).
func BenchmarkRestart(b *testing.B) {
	for _, strategy := range []supervise.Strategy{supervise.Rolling, supervise.Parallel} {
		b.Run(strategy.String(), func(b *testing.B) {
			c := proccensus.New(b)
			sup, events := benchRun(b, sleepSpec(b, c), &supervise.Options{Workers: 4, ReadyOnStart: true})
			for range 4 {
				next(b, events, supervise.Ready)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := sup.Restart(strategy); err != nil {
					b.Fatal(err)
				}
				if e := next(b, events, supervise.RestartDone); e.Generation < 2 {
					b.Fatalf("event %+v", e)
				}
			}
		})
	}
}

// BenchmarkIdleCPU measures the CPU time this process uses while a
// supervisor of 4 workers idles (no polling loops: about zero), against the
// same interval with no supervisor.
func BenchmarkIdleCPU(b *testing.B) {
	const interval = 100 * time.Millisecond
	// measure returns CPU nanoseconds this process used per idle second.
	measure := func(n int) float64 {
		var cpu time.Duration
		for range n {
			var before, after unix.Rusage
			_ = unix.Getrusage(unix.RUSAGE_SELF, &before)
			time.Sleep(interval)
			_ = unix.Getrusage(unix.RUSAGE_SELF, &after)
			cpu += time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
		}
		return float64(cpu.Nanoseconds()) / (float64(n) * interval.Seconds())
	}
	idle := func(b *testing.B) {
		b.Helper()
		b.ReportMetric(measure(b.N), "cpu-ns/idle-s")
	}
	b.Run("baseline", idle)
	b.Run("supervisor", func(b *testing.B) {
		c := proccensus.New(b)
		sup, events := benchRun(b, sleepSpec(b, c), &supervise.Options{Workers: 4, ReadyOnStart: true})
		for range 4 {
			next(b, events, supervise.Ready)
		}
		time.Sleep(50 * time.Millisecond)
		b.ResetTimer()
		got := measure(b.N)
		b.StopTimer()
		b.ReportMetric(got, "cpu-ns/idle-s")
		// Same-run baseline after the supervisor stopped: the test
		// process's own idle noise.
		_ = sup.Stop()
		base := measure(max(b.N, 3))
		b.ReportMetric(got-base, "extra-cpu-ns/idle-s")
	})
}
