//go:build linux

package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestEMFILEUnderLoad is TESTPLAN L7 and E1 for a worker: the worker's
// soft RLIMIT_NOFILE is 128 (L7) or 64 (E1) and 200 keep-alive clients
// connect, so it runs out of descriptors with connections still queued.
// One worker makes that certain: it cannot hold more than the limit minus
// its own descriptors, and the test checks that it did fail accepts with
// EMFILE. While at EMFILE the worker serves the connections it holds and
// does not spin (under 50 % of a CPU over the period, E1's bound); no
// connection is refused or lost (the queued ones are served once clients
// leave); then a fresh request is answered within 1 s. In shared mode a
// new connection also arrives every 100 ms of the period (E1's "while new
// connections arrive"), each answered once the clients leave.
//
// The naive row is E1's ACCEPT_NAIVE=1 control (e1_test.go): the same
// scenario with a worker that retries a failed accept at once must show
// the spin the bound is there to catch, or the measurement proves nothing:
// it is runnable all the period and uses over half a CPU, unless the
// machine is so busy that it waited for a CPU longer than it ran.
//
// In handoff mode the master accepts, so the worker's limit bounds what it
// receives instead: it grants the master room for the descriptors it has
// free, and its Accept fails with EMFILE when none are, as accept(2) does.
// A batch that arrived with too few free descriptors would be lost (the
// kernel drops what does not fit), so every client's request must succeed;
// whether one does arrive that way here depends on timing, and package
// cluster's TestHandoffWorker* tests force each case. No connections
// arrive during the period there, as the master would accept each only to
// hold it for a worker with no room.
func TestEMFILEUnderLoad(t *testing.T) {
	const clients = 200
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, mode string
		limit      int
		// spanCI and spanLong are the EMFILE period in seconds, without
		// and with -long (TESTPLAN E1: 10 s).
		spanCI, spanLong int
		worker           string // the worker's role argument
		// spins: the worker is the naive one, the control that must
		// exceed the CPU bound the others must stay under.
		spins bool
	}{
		{"L7 shared", "shared", 128, 5, 10, fakeSrvArg, false},
		{"L7 handoff", "handoff", 128, 5, 10, fakeSrvArg, false},
		{"E1 shared", "shared", 64, 3, 10, fakeSrvArg, false},
		{"E1 shared naive", "shared", 64, 3, 10, naiveSrvArg, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			dir := t.TempDir()
			m := startMaster(t, pc, []string{"SRV_REPORT=" + dir, "SRV_NOFILE=" + strconv.Itoa(tc.limit)},
				"-mode", tc.mode, "-n", "1", "-listen", "127.0.0.1:0", "-log-format", "json", "--", bin, tc.worker)
			addr := m.waitReady()
			w := m.workers()
			if len(w) != 1 {
				t.Fatalf("%d workers, want 1", len(w))
			}
			pid := w[0]
			span := time.Duration(loadSize(tc.spanCI, tc.spanLong)) * time.Second
			// Each request may wait in the queue for the whole EMFILE
			// period: the timeout is well past it.
			stop := runLoad(loadclient.Options{Addr: addr, KeepAlive: clients, Requests: 20000, Duration: span + 30*time.Second,
				Timeout: span + 20*time.Second, Pause: 500 * time.Millisecond, Header: "X-Worker", Record: true})
			defer stop()
			var arrivals []net.Conn
			defer func() {
				for _, c := range arrivals {
					c.Close()
				}
			}()
			emfile := func() int { return reports(t, dir, "emfile")[pid] }
			peakNow := func() int { return reports(t, dir, "peak")[pid] }
			if !waitFor(15*time.Second, func() bool { return emfile() > 0 }) {
				stop()
				t.Fatalf("the worker never failed an accept with EMFILE (most connections open at once: %d)", peakNow())
			}
			// The EMFILE period: CPU, descriptors and replies.
			e0, c0, r0, t0 := emfile(), cpuTicks([]int{pid}), runnable(pid), time.Now()
			maxFDs := 0
			var dialErrs []error
			for i := 0; i < int(span/(100*time.Millisecond)); i++ {
				time.Sleep(100 * time.Millisecond)
				if ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd"); err == nil {
					maxFDs = max(maxFDs, len(ents))
				}
				if tc.mode != "shared" {
					continue
				}
				// The kernel completes the handshake and queues the
				// connection: it waits for an accept like the clients'.
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil {
					arrivals = append(arrivals, c)
					_, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+addr+"\r\nConnection: close\r\n\r\n")
				}
				if err != nil {
					dialErrs = append(dialErrs, err)
				}
			}
			c1, r1, t1, e1 := cpuTicks([]int{pid}), runnable(pid), time.Now(), emfile()
			res := stop()
			busy, ran, period := time.Duration(c1-c0)*clockTick, r1-r0, t1.Sub(t0)
			inSpan := 0
			for _, r := range res.Replies {
				if r.Done.After(t0) && r.Done.Before(t1) {
					inSpan++
				}
			}
			peak := peakNow()
			t.Logf("%s: %v; worker at EMFILE: %d failed accepts before the period, %d during it; most connections open at once %d, most descriptors %d (limit %d); CPU %v in %v (%.1f %%), runnable %v (%.1f %%); %d replies during the period; %d connections arrived in it",
				tc.name, res, e0, e1-e0, peak, maxFDs, tc.limit, busy, period.Round(time.Millisecond), 100*busy.Seconds()/period.Seconds(), ran.Round(time.Millisecond), 100*ran.Seconds()/period.Seconds(), inSpan, len(arrivals))
			if e1 == e0 {
				t.Errorf("no accept failed with EMFILE during the period: the CPU figure is not one at EMFILE")
			}
			if peak >= clients {
				t.Errorf("the worker held %d connections at once under a limit of %d descriptors: EMFILE never mattered", peak, tc.limit)
			}
			// E1's bound: half a CPU over the period. Time runnable (on
			// a CPU or waiting for one) is only logged for the worker
			// that backs off: under load it waits for a CPU at every
			// wake-up, up to 44 % of the period seen at a load average
			// of 8 on 2 cores.
			half := period / 2
			if !tc.spins {
				if busy > half {
					t.Errorf("worker used %v of CPU in %v at EMFILE: spinning", busy, period)
				}
			} else {
				// The control: a spinner is runnable all the time.
				if ran <= half {
					t.Errorf("naive worker runnable %v in %v at EMFILE, want over half: not spinning", ran, period)
				}
				// It exceeds the CPU bound when a core is to spare
				// (55-100 % measured on the shared 2-core machine), but
				// not when the machine is saturated: with two other
				// CPU-bound processes it got 25-55 %. A spinner that got
				// no more than half a CPU waited for one at least as long
				// as it ran, so only then is the CPU figure let off.
				switch wait := ran - busy; {
				case busy > half:
				case ran > half && wait >= busy:
					t.Logf("CPU control inconclusive: the machine is saturated (the naive worker ran %v and waited %v for a CPU)", busy, wait)
				default:
					t.Errorf("naive worker used %v of CPU in %v at EMFILE (runnable %v), want over half: the CPU bound cannot tell a spin", busy, period, ran)
				}
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
			if len(dialErrs) != 0 {
				t.Errorf("%d connections could not arrive during the period: %v", len(dialErrs), dialErrs[0])
			}
			// The clients are gone: every connection that arrived during
			// the period is accepted and answered.
			deadline := time.Now().Add(10 * time.Second)
			var unanswered []string
			for _, c := range arrivals {
				c.SetReadDeadline(deadline)
				reply, err := io.ReadAll(c)
				if err != nil || !strings.HasPrefix(string(reply), "HTTP/1.1 200") {
					unanswered = append(unanswered, fmt.Sprintf("%q, %v", reply, err))
				}
			}
			if len(unanswered) != 0 {
				t.Errorf("%d of %d connections that arrived at EMFILE not answered 200, first: %s", len(unanswered), len(arrivals), unanswered[0])
			}
			// A fresh request must not wait for a long accept back-off.
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

// runnable is the time pid's threads have spent on a CPU or waiting for
// one (/proc/<pid>/task/*/schedstat, nanoseconds), to tell a worker that
// would spin but is starved by other load from one that does not spin.
// Threads that exited are left out; the Go runtime keeps its threads.
func runnable(pid int) time.Duration {
	var sum time.Duration
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/schedstat")
		if f := strings.Fields(string(b)); err == nil && len(f) >= 2 {
			run, _ := strconv.ParseInt(f[0], 10, 64)
			wait, _ := strconv.ParseInt(f[1], 10, 64)
			sum += time.Duration(run + wait)
		}
	}
	return sum
}
