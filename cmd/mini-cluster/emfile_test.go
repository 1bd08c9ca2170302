//go:build linux

package main

import (
	"context"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestEMFILEUnderLoad is TESTPLAN L7 (and E1 for a worker): the worker's
// soft RLIMIT_NOFILE is 128 and 200 keep-alive clients connect, so it
// runs out of descriptors with connections still queued. One worker makes
// that certain: it cannot hold more than 128 minus its own descriptors,
// and the test checks that it did fail accepts with EMFILE. While at
// EMFILE the worker serves the connections it holds and does not spin
// (under 50 % of a CPU over the period, E1's bound); no connection is
// refused or lost (the queued ones are served once clients leave); then a
// fresh request is answered within 1 s.
//
// In handoff mode the master accepts, so the worker's limit bounds what it
// receives instead: it grants the master room for the descriptors it has
// free, and its Accept fails with EMFILE when none are, as accept(2) does.
// A batch that arrived with too few free descriptors would be lost (the
// kernel drops what does not fit), so every client's request must succeed;
// whether one does arrive that way here depends on timing, and package
// cluster's TestHandoffWorker* tests force each case.
func TestEMFILEUnderLoad(t *testing.T) {
	const (
		limit   = 128
		clients = 200
	)
	for _, mode := range []string{"shared", "handoff"} {
		t.Run("L7 "+mode, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			dir := t.TempDir()
			m := startMaster(t, pc, []string{"SRV_REPORT=" + dir, "SRV_NOFILE=" + strconv.Itoa(limit)},
				append([]string{"-mode", mode, "-n", "1", "-listen", "127.0.0.1:0", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
			addr := m.waitReady()
			w := m.workers()
			if len(w) != 1 {
				t.Fatalf("%d workers, want 1", len(w))
			}
			pid := w[0]
			span := time.Duration(loadSize(5, 10)) * time.Second
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var res loadclient.Result
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Each request may wait in the queue for the whole EMFILE
				// period: the timeout is well past it.
				res = loadclient.Run(ctx, loadclient.Options{Addr: addr, KeepAlive: clients, Requests: 20000, Duration: span + 30*time.Second,
					Timeout: span + 20*time.Second, Pause: 500 * time.Millisecond, Header: "X-Worker", Record: true})
			}()
			stop := func() {
				cancel()
				wg.Wait()
			}
			emfile := func() int { return reports(t, dir, "emfile")[pid] }
			peakNow := func() int { return reports(t, dir, "peak")[pid] }
			if !waitFor(15*time.Second, func() bool { return emfile() > 0 }) {
				stop()
				t.Fatalf("the worker never failed an accept with EMFILE (most connections open at once: %d)", peakNow())
			}
			// The EMFILE period: CPU, descriptors and replies.
			e0, c0, t0 := emfile(), cpuTicks([]int{pid}), time.Now()
			maxFDs := 0
			for i := 0; i < int(span/(100*time.Millisecond)); i++ {
				time.Sleep(100 * time.Millisecond)
				if ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd"); err == nil {
					maxFDs = max(maxFDs, len(ents))
				}
			}
			c1, t1, e1 := cpuTicks([]int{pid}), time.Now(), emfile()
			stop()
			busy := time.Duration(c1-c0) * clockTick
			inSpan := 0
			for _, r := range res.Replies {
				if r.Done.After(t0) && r.Done.Before(t1) {
					inSpan++
				}
			}
			peak := peakNow()
			t.Logf("%s: %v; worker at EMFILE: %d failed accepts before the period, %d during it; most connections open at once %d, most descriptors %d (limit %d); CPU %v in %v (%.1f %%); %d replies during the period",
				mode, res, e0, e1-e0, peak, maxFDs, limit, busy, t1.Sub(t0).Round(time.Millisecond), 100*busy.Seconds()/t1.Sub(t0).Seconds(), inSpan)
			if e1 == e0 {
				t.Errorf("no accept failed with EMFILE during the period: the CPU figure is not one at EMFILE")
			}
			if peak >= clients {
				t.Errorf("the worker held %d connections at once under a limit of %d descriptors: EMFILE never mattered", peak, limit)
			}
			if busy > t1.Sub(t0)/2 {
				t.Errorf("worker used %v of CPU in %v at EMFILE: spinning", busy, t1.Sub(t0))
			}
			// Responsive: the clients it holds keep being answered, each
			// (on average) at least once in the period, a tenth of their
			// rate.
			if inSpan < peak {
				t.Errorf("%d replies during the EMFILE period from a worker holding %d connections: not serving them", inSpan, peak)
			}
			if res.Refused != 0 || res.Failed() != 0 || res.OK != res.Sent {
				t.Errorf("refused or lost requests at EMFILE: %v; errors %q", res, res.Errors)
			}
			// Every client is gone: a fresh request must not wait for a
			// long accept back-off.
			start := time.Now()
			_, _, err := get(addr, "/")
			if d := time.Since(start); err != nil || d >= time.Second {
				t.Errorf("fresh request after the clients left: %v after %v, want success within 1 s", err, d)
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}
