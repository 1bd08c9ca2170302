//go:build linux

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestPIDFileDuringStartup is TESTPLAN D1 in the binary: a reader polls
// the -pid-file path in a tight loop from before the master starts until
// well after it is ready, while SRV_READY_GATE holds the workers' READY=1
// for a second or more. Until the gate opens every read must find no file
// (the master writes it only once ready); from the first read that finds
// it, every read must return exactly the live master's pid and a newline
// (the file is replaced by rename, never written in place: never empty,
// never partial, never another pid), and supervise.ReadPIDFile must call
// it live. After SIGTERM the file is gone. Both start-up paths that write
// the file are covered: the flags (one cluster) and -config (a fleet,
// ready once every group is).
func TestPIDFileDuringStartup(t *testing.T) {
	const (
		minMisses = 10000 // reads during the hold, at least 1 s
		minHits   = 10000 // reads once the file is there
		maxReads  = 20_000_000
	)
	cases := []struct {
		name  string
		args  func(t *testing.T, pidPath string) []string
		ready func(m *master)
	}{
		{"flags", func(t *testing.T, pidPath string) []string {
			return append([]string{"-n", "2", "-listen", "127.0.0.1:0", "-pid-file", pidPath, "-log-format", "json", "--"}, fakeSrvCmd(t)...)
		}, func(m *master) { m.waitReady() }},
		{"config", func(t *testing.T, pidPath string) []string {
			srv := fakeSrvCmd(t)
			group := func(name string) string {
				return `{"name":` + jsonStr(name) + `,"command":[` + jsonStr(srv[0]) + `,` + jsonStr(srv[1]) + `],"count":1,"listen":["127.0.0.1:0"],"shutdown_timeout":"5s"}`
			}
			return []string{"-config", writeConfig(t, `{"groups":[`+group("a")+`,`+group("b")+`]}`), "-pid-file", pidPath, "-log-format", "json"}
		}, func(m *master) { m.waitGroupsReady() }},
	}
	for _, c := range cases {
		t.Run("D1 "+c.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			dir := t.TempDir()
			pidPath := filepath.Join(dir, "mc.pid")
			gate := filepath.Join(t.TempDir(), "gate")

			r := &pidReader{path: pidPath, stop: make(chan struct{}), done: make(chan struct{})}
			go r.run(maxReads, 60*time.Second)
			defer r.halt()
			if !waitFor(5*time.Second, func() bool { s := r.snapshot(); return s.misses >= 100 }) {
				t.Fatalf("the reader did not start: %+v", r.snapshot())
			}

			m := startMaster(t, pc, []string{"SRV_READY_GATE=" + gate}, c.args(t, pidPath)...)
			mpid := m.cmd.Process.Pid
			r.setPID(mpid)
			// The hold: the workers run and wait for the gate.
			if !waitFor(20*time.Second, func() bool { return count(m.records(), "worker started") >= 2 }) {
				t.Fatalf("workers not started within 20 s:\n%s", m.log.String())
			}
			hold := time.Now()
			if !waitFor(10*time.Second, func() bool {
				return time.Since(hold) >= time.Second && r.snapshot().misses >= minMisses
			}) {
				t.Fatalf("fewer than %d reads within 10 s: %+v", minMisses, r.snapshot())
			}
			if rec := count(m.records(), "cluster ready", "every group ready"); rec != 0 {
				t.Fatalf("ready before the gate opened: SRV_READY_GATE did not hold the workers")
			}
			before := r.snapshot()
			opened := time.Now()
			if err := os.WriteFile(gate, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			c.ready(m)
			readyAt := time.Now()
			// The file is written before the ready record is logged.
			if b, err := os.ReadFile(pidPath); err != nil || string(b) != strconv.Itoa(mpid)+"\n" {
				t.Errorf("pid file once ready: %q, %v; want %d", b, err, mpid)
			}
			if !waitFor(20*time.Second, func() bool {
				s := r.snapshot()
				return s.hits >= minHits && s.liveChecks > 0 && time.Since(readyAt) >= 500*time.Millisecond
			}) {
				t.Errorf("fewer than %d reads found the file within 20 s of ready: %+v", minHits, r.snapshot())
			}
			// Written by temp + rename: nothing else is left in the
			// directory (the lock file stays for the master's life).
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			if diff := cmp.Diff([]string{"mc.pid", "mc.pid.lock"}, names); diff != "" {
				t.Errorf("pid file directory once ready (-want +got):\n%s", diff)
			}
			r.halt()
			s := r.snapshot()
			t.Logf("%s: %d reads: %d without the file before the gate (held %v), %d found it (%d also through ReadPIDFile), first %v after the gate opened",
				c.name, s.misses+s.hits, before.misses, opened.Sub(hold).Round(time.Millisecond), s.hits, s.liveChecks, s.firstHit.Sub(opened).Round(time.Microsecond))

			if len(s.errs) != 0 {
				t.Errorf("reads failed other than ENOENT: %q", s.errs)
			}
			if before.hits != 0 {
				t.Errorf("%d reads found the pid file before the workers were let ready: %v", before.hits, s.contents)
			}
			if !s.firstHit.IsZero() && !s.firstHit.After(opened) {
				t.Errorf("the pid file was there %v before the gate opened", opened.Sub(s.firstHit))
			}
			want := map[string]int{strconv.Itoa(mpid) + "\n": s.hits}
			if diff := cmp.Diff(want, s.contents); diff != "" {
				t.Errorf("pid file contents read (content: reads) (-want +got):\n%s", diff)
			}
			if s.vanished != 0 {
				t.Errorf("the pid file was missing in %d reads after it first appeared", s.vanished)
			}
			if len(s.liveErrs) != 0 {
				t.Errorf("ReadPIDFile, once the file was there (want pid %d, live): %q", mpid, s.liveErrs)
			}
			if total := s.misses + s.hits; total < minMisses+minHits {
				t.Errorf("%d reads, want at least %d", total, minMisses+minHits)
			}

			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
			if _, err := os.Lstat(pidPath); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("pid file after SIGTERM: %v, want it removed", err)
			}
			if pid, live, err := supervise.ReadPIDFile(pidPath); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("ReadPIDFile after SIGTERM: %d, %v, %v; want ENOENT", pid, live, err)
			}
		})
	}
}

// pidReader reads a pid file in a tight loop and tallies what it finds.
type pidReader struct {
	path       string
	stop, done chan struct{}
	haltOnce   sync.Once

	mu         sync.Mutex
	pid        int // the live master's, once known: ReadPIDFile checks
	misses     int // ENOENT before the file was first found
	hits       int // reads that found the file
	vanished   int // ENOENT after it was first found
	firstHit   time.Time
	contents   map[string]int
	liveChecks int
	errs       []string // other errors, the first 10
	liveErrs   []string // ReadPIDFile not reporting pid live, the first 10
}

type pidReads struct {
	misses, hits, vanished, liveChecks int
	firstHit                           time.Time
	contents                           map[string]int
	errs, liveErrs                     []string
}

func (r *pidReader) setPID(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pid = pid
}

// run reads until halt, n reads or d, whichever comes first.
func (r *pidReader) run(n int, d time.Duration) {
	defer close(r.done)
	deadline := time.Now().Add(d)
	for i := 0; i < n; i++ {
		if i%1024 == 0 {
			select {
			case <-r.stop:
				return
			default:
			}
			if time.Now().After(deadline) {
				return
			}
		}
		b, err := os.ReadFile(r.path)
		// Every 64th read that finds the file also asks ReadPIDFile,
		// which checks the lock as well.
		var live string
		check := false
		if err == nil {
			r.mu.Lock()
			check = r.hits%64 == 0
			pid := r.pid
			r.mu.Unlock()
			if check {
				if got, ok, lerr := supervise.ReadPIDFile(r.path); lerr != nil || !ok || got != pid {
					live = fmt.Sprintf("%d, live %v, %v", got, ok, lerr)
				}
			}
		}
		end := time.Now()
		r.mu.Lock()
		switch {
		case err == nil:
			if r.hits == 0 {
				r.firstHit = end
				r.contents = map[string]int{}
			}
			r.hits++
			r.contents[string(b)]++
			if check {
				r.liveChecks++
			}
			if live != "" && len(r.liveErrs) < 10 {
				r.liveErrs = append(r.liveErrs, live)
			}
		case errors.Is(err, fs.ErrNotExist) && r.hits == 0:
			r.misses++
		case errors.Is(err, fs.ErrNotExist):
			r.vanished++
		case len(r.errs) < 10:
			r.errs = append(r.errs, err.Error())
		}
		r.mu.Unlock()
	}
}

func (r *pidReader) halt() {
	r.haltOnce.Do(func() { close(r.stop) })
	<-r.done
}

func (r *pidReader) snapshot() pidReads {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := make(map[string]int, len(r.contents))
	for k, v := range r.contents {
		c[k] = v
	}
	return pidReads{misses: r.misses, hits: r.hits, vanished: r.vanished, liveChecks: r.liveChecks, firstHit: r.firstHit,
		contents: c, errs: slices.Clone(r.errs), liveErrs: slices.Clone(r.liveErrs)}
}
