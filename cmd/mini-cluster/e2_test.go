//go:build linux

package main

import (
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestRestartAtEMFILE is TESTPLAN E2: the master is out of descriptors
// when a graceful restart (SIGHUP) needs socketpairs for its new worker.
// The test sets the master's soft RLIMIT_NOFILE (prlimit) to its lowest
// free descriptor number, so no new descriptor fits, while clients keep
// sending requests. The spawn fails cleanly (logged, nothing leaked, no
// worker started) and is retried with supervise's backoff (1 s, then 2 s)
// while the old workers serve every request; once the limit is restored,
// a retry brings up the new generation. sent == ok, nothing refused.
//
// In handoff mode the master accepts too, so new connections would wait
// in the backlog until the limit is back, and any accept the master
// completed meanwhile would use descriptors the test means to keep away
// from the restart: its clients are keep-alive ones, connected before the
// limit is set. In shared mode workers accept, and some clients open a
// connection per request.
func TestRestartAtEMFILE(t *testing.T) {
	for _, mode := range []string{"shared", "handoff"} {
		t.Run("E2 "+mode, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			m := startMaster(t, pc, nil, append([]string{"-mode", mode, "-n", "2", "-listen", "127.0.0.1:0", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
			addr := m.waitReady()
			old := m.workers()
			slices.Sort(old)
			if len(old) != 2 {
				t.Fatalf("workers %v, want 2", old)
			}
			mpid := m.cmd.Process.Pid
			kinds0, sockets0, err := fdShape(mpid)
			if err != nil {
				t.Fatal(err)
			}

			opts := loadclient.Options{Addr: addr, KeepAlive: 8, Requests: 20000, Duration: 40 * time.Second,
				Timeout: 20 * time.Second, Pause: 20 * time.Millisecond, Header: "X-Worker", Record: true}
			if mode == "shared" {
				opts.NewConn = 2
			}
			stop := runLoad(opts)
			defer stop()
			// The keep-alive clients connect (bounded: any still
			// connecting is served once the limit is back).
			time.Sleep(500 * time.Millisecond)

			var orig unix.Rlimit
			if err := unix.Prlimit(mpid, unix.RLIMIT_NOFILE, nil, &orig); err != nil {
				t.Fatal(err)
			}
			snap, err := fdcensus.Take(mpid)
			if err != nil {
				t.Fatal(err)
			}
			// RLIMIT_NOFILE bounds descriptor numbers, and a new
			// descriptor takes the lowest free one.
			limit := 0
			for ; ; limit++ {
				if _, used := snap[limit]; !used {
					break
				}
			}
			if err := unix.Prlimit(mpid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(limit), Max: orig.Max}, nil); err != nil {
				t.Fatal(err)
			}
			restored := false
			restore := func() {
				if !restored {
					restored = true
					if err := unix.Prlimit(mpid, unix.RLIMIT_NOFILE, &orig, nil); err != nil {
						t.Error(err)
					}
				}
			}
			defer restore()

			spawnFailures := func() int { return strings.Count(m.log.String(), `"event":"spawn-failed"`) }
			ended := func() int { return count(m.records(), "restart done", restartFailedMsg) }
			m.signal(syscall.SIGHUP)
			if !waitFor(5*time.Second, func() bool { return spawnFailures() > 0 }) {
				t.Fatalf("no spawn failed within 5 s of SIGHUP with RLIMIT_NOFILE %d (%d descriptors open)", limit, len(snap))
			}
			// The EMFILE period: at least 1.5 s, and a retry seen.
			t0 := time.Now()
			extra := map[int]bool{}
			for i := 0; i < 100 && (time.Since(t0) < 1500*time.Millisecond || spawnFailures() < 2); i++ {
				for _, pid := range m.workers() {
					if !slices.Contains(old, pid) {
						extra[pid] = true
					}
				}
				if ended() > 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			t1, failures := time.Now(), spawnFailures()
			if mode == "shared" {
				// Nothing else in the master opens descriptors: any change
				// is a failed spawn's.
				if d := fdcensus.Diff(snap, mustTake(t, mpid)); d != "" {
					t.Errorf("master's descriptors changed during the EMFILE period:\n%s", d)
				}
			}
			if len(extra) != 0 {
				t.Errorf("worker processes %v started while the master was at EMFILE", keys(extra))
			}
			if failures < 2 {
				t.Errorf("%d failed spawns in %v at EMFILE, want a retry", failures, t1.Sub(t0).Round(time.Millisecond))
			}
			if n := ended(); n != 0 {
				t.Errorf("the restart ended (%d) while the master was at EMFILE; want it retried", n)
			}
			if !strings.Contains(m.log.String(), "too many open files") {
				t.Errorf("the master did not log EMFILE as the spawn's error")
			}

			restore()
			tr := time.Now()
			if !waitFor(15*time.Second, func() bool { return count(m.records(), "restart done") > 0 }) {
				t.Fatalf("no restart done within 15 s of the limit's restore; %v", stop())
			}
			done := time.Since(tr)
			if n := count(m.records(), restartFailedMsg); n != 0 {
				t.Errorf("restart failed (%d times)", n)
			}
			checkReplaced(t, m, addr, old, "2", "after the restart")
			time.Sleep(300 * time.Millisecond) // load on the new generation
			res := stop()

			// Who answered during the EMFILE period.
			during := map[int]int{}
			for _, r := range res.Replies {
				if r.Done.After(t0) && r.Done.Before(t1) {
					pid, _, _ := strings.Cut(r.Value, ":")
					n, _ := strconv.Atoi(pid)
					during[n]++
				}
			}
			t.Logf("%s: %v; RLIMIT_NOFILE %d for %v (%d failed spawns); restart done %v after the restore; replies during the period by pid %v (old %v)",
				mode, res, limit, t1.Sub(t0).Round(time.Millisecond), failures, done.Round(time.Millisecond), during, old)
			if res.Sent == 0 || res.OK != res.Sent || res.Refused != 0 || res.Failed() != 0 {
				t.Errorf("requests lost across the restart at EMFILE: %v; errors %q", res, res.Errors)
			}
			for pid := range during {
				if !slices.Contains(old, pid) {
					t.Errorf("pid %d answered during the EMFILE period, want only the old workers %v", pid, old)
				}
			}
			// Shared mode's per-request connections reach both workers;
			// handoff mode's keep-alive ones may all sit on one.
			want := 1
			if mode == "shared" {
				want = len(old)
			}
			if len(during) < want {
				t.Errorf("old workers answering during the EMFILE period: %v, want %d of %v", during, want, old)
			}
			// Nothing a failed spawn opened is left: the master holds what
			// it held before, per-worker descriptors renewed.
			checkFDShape(t, mpid, kinds0, sockets0, "across the restart")
			stopClean(t, m)
		})
	}
}

// restartFailedMsg is the master's record of a failed graceful restart.
const restartFailedMsg = "restart failed; the previous workers keep serving"

func mustTake(t *testing.T, pid int) fdcensus.Snapshot {
	t.Helper()
	s, err := fdcensus.Take(pid)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
