//go:build linux

package main_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// MiniClusterVar and HelloVar name prebuilt binaries of ./cmd/mini-cluster
// and ./examples/hello; the runner builds them once and sets both.
const (
	MiniClusterVar = "HANDOFF_BENCH_MINICLUSTER"
	HelloVar       = "HANDOFF_BENCH_HELLO"
)

// clusterWorkers is the -n of the mini-cluster benchmarks.
const clusterWorkers = 2

// BenchmarkMiniCluster measures mini-cluster -n 2 serving examples/hello,
// from the master's JSON log:
//
//	restart  SIGHUP to the master → its "restart done" record for the new
//	         generation (every worker of it ready; rolling strategy)
//	respawn  SIGKILL to one worker → the replacement's "worker started"
//	         record (respawn-ms-started) and its "serving" line, which
//	         hello writes just before READY=1 (ms/respawn)
//
// One operation is one restart or one respawn; ns/op is its latency.
func BenchmarkMiniCluster(b *testing.B) {
	// Built once for both sub-benchmarks: the parent runs once.
	bins, whyNot := clusterBinaries(b)
	run := func(bench func(*testing.B, clusterBins)) func(*testing.B) {
		return func(b *testing.B) {
			if whyNot != "" {
				b.Skip(whyNot)
			}
			bench(b, bins)
		}
	}
	b.Run("restart", run(benchRestart))
	b.Run("respawn", run(benchRespawn))
}

// clusterBins are the paths of the mini-cluster and hello binaries.
type clusterBins struct{ master, hello string }

// clusterBinaries returns mini-cluster and hello, prebuilt (the runner's)
// or built now into a directory removed when b ends, or why they cannot be
// had.
func clusterBinaries(b *testing.B) (bins clusterBins, whyNot string) {
	b.Helper()
	bins = clusterBins{master: os.Getenv(MiniClusterVar), hello: os.Getenv(HelloVar)}
	if bins.master != "" && bins.hello != "" {
		return bins, ""
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return bins, "mini-cluster benchmarks need the go command on PATH to build ./cmd/mini-cluster"
	}
	dir := b.TempDir()
	bins = clusterBins{master: filepath.Join(dir, "mini-cluster"), hello: filepath.Join(dir, "hello")}
	for _, p := range []struct{ pkg, out string }{{"../cmd/mini-cluster", bins.master}, {"../examples/hello", bins.hello}} {
		if msg, err := exec.Command(goTool, "build", "-o", p.out, p.pkg).CombinedOutput(); err != nil {
			return bins, fmt.Sprintf("cannot build %s: %v: %s", p.pkg, err, strings.TrimSpace(string(msg)))
		}
	}
	return bins, ""
}

// logRecord is one record of the master's -log-format json output.
type logRecord struct {
	Msg        string `json:"msg"`
	PID        int    `json:"pid"`
	Slot       *int   `json:"slot"`
	Generation int    `json:"generation"`
}

// clusterMaster is a running mini-cluster whose JSON records arrive on
// records as they are written.
type clusterMaster struct {
	cmd     *exec.Cmd
	records chan logRecord
	// pids are the workers of the first generation by slot, from their
	// "worker started" records.
	pids map[int]int
}

func startCluster(b *testing.B, pc *proccensus.Census, bins clusterBins) *clusterMaster {
	b.Helper()
	cmd := exec.Command(bins.master, "-n", fmt.Sprint(clusterWorkers), "-listen", "127.0.0.1:0",
		"-log-format", "json", "-shutdown-timeout", "5s", "--", bins.hello)
	cmd.Env = append(os.Environ(), pc.Env())
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	// Records go to stdout or stderr depending on the level; read both.
	cmd.Stderr = cmd.Stdout
	cmd.WaitDelay = 5 * time.Second
	dieWithUs(cmd)
	helperproc.Start(b, cmd)
	m := &clusterMaster{cmd: cmd, records: make(chan logRecord, 1024), pids: map[int]int{}}
	go m.read(out)
	b.Cleanup(func() { m.stop(b) })
	if _, err := m.await(20*time.Second, func(r logRecord) bool {
		if r.Msg == "worker started" && r.Slot != nil {
			m.pids[*r.Slot] = r.PID
		}
		return r.Msg == "cluster ready"
	}); err != nil {
		b.Fatalf("mini-cluster: %v", err)
	}
	return m
}

// read forwards JSON records and worker output lines; other lines are
// dropped. The
// channel closes when the master's output ends.
func (m *clusterMaster) read(r io.Reader) {
	defer close(m.records)
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		var rec logRecord
		if json.Unmarshal(s.Bytes(), &rec) == nil {
			m.records <- rec
			continue
		}
		// Worker output forwarded as "[slot pid] text".
		var slot int
		if _, err := fmt.Sscanf(s.Text(), "[%d %d]", &slot, &rec.PID); err == nil {
			_, rec.Msg, _ = strings.Cut(s.Text(), "] ")
			rec.Slot = &slot
			m.records <- rec
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// stop stops the master gracefully (SIGTERM) and reaps it; it kills it
// after 15 s. Stopping a stopped master does nothing.
func (m *clusterMaster) stop(b *testing.B) {
	if m.cmd.ProcessState != nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		b.Errorf("mini-cluster did not stop within 15 s of SIGTERM")
		_ = m.cmd.Process.Kill()
		<-done
	}
}

var errMasterGone = errors.New("the master's output ended")

// await returns the first record that satisfies match, within d.
func (m *clusterMaster) await(d time.Duration, match func(logRecord) bool) (logRecord, error) {
	timeout := time.After(d)
	for {
		select {
		case r, ok := <-m.records:
			if !ok {
				return logRecord{}, errMasterGone
			}
			if match(r) {
				return r, nil
			}
		case <-timeout:
			return logRecord{}, fmt.Errorf("no matching record within %v", d)
		}
	}
}

func benchRestart(b *testing.B, bins clusterBins) {
	fdcensus.Verify(b)
	pc := proccensus.New(b)
	m := startCluster(b, pc, bins)
	// No b.ReportAllocs: this process only signals and reads the master's
	// log; its allocations are not mini-cluster's.
	b.ResetTimer()
	for i := range b.N {
		gen := i + 2
		if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			b.Fatal(err)
		}
		if _, err := m.await(30*time.Second, func(r logRecord) bool {
			return r.Msg == "restart done" && r.Generation == gen
		}); err != nil {
			b.Fatalf("restart to generation %d: %v", gen, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/restart")
}

// respawnsPerCluster bounds the respawns asked of one master: supervise
// fails a slot after 5 starts within 10 s (its default burst limit), and
// the benchmark alternates between the 2 slots, so 6 respawns are 4 starts
// per slot. A fresh master takes over after that, outside the timer.
const respawnsPerCluster = 6

// respawnMinUptime is how long a worker runs before it is killed: supervise
// delays the respawn of a worker that dies within its first second by at
// least a second (a crash loop must not become a fork bomb), and the
// benchmark measures the respawn itself, not that back-off.
const respawnMinUptime = 1100 * time.Millisecond

func benchRespawn(b *testing.B, bins clusterBins) {
	fdcensus.Verify(b)
	pc := proccensus.New(b)
	// No b.ReportAllocs, as in benchRestart.
	var (
		m       *clusterMaster
		since   map[int]time.Time // when each slot's worker started
		started time.Duration
	)
	b.StopTimer()
	for i := range b.N {
		if i%respawnsPerCluster == 0 {
			if m != nil {
				m.stop(b)
			}
			m = startCluster(b, pc, bins)
			if len(m.pids) != clusterWorkers {
				b.Fatalf("found workers %v, want %d", m.pids, clusterWorkers)
			}
			since = map[int]time.Time{}
			for slot := range m.pids {
				since[slot] = time.Now()
			}
		}
		slot := i % clusterWorkers
		time.Sleep(time.Until(since[slot].Add(respawnMinUptime)))
		b.StartTimer()
		t0 := time.Now()
		if err := killPID(m.pids[slot]); err != nil {
			b.Fatal(err)
		}
		r, err := m.await(30*time.Second, func(r logRecord) bool {
			return r.Msg == "worker started" && r.Slot != nil && *r.Slot == slot
		})
		if err != nil {
			b.Fatalf("respawn of slot %d: %v", slot, err)
		}
		started += time.Since(t0)
		pid := r.PID
		if _, err := m.await(30*time.Second, func(r logRecord) bool {
			return r.PID == pid && strings.Contains(r.Msg, "serving")
		}); err != nil {
			b.Fatalf("replacement %d of slot %d: %v", pid, slot, err)
		}
		b.StopTimer()
		m.pids[slot], since[slot] = pid, time.Now()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/respawn")
	b.ReportMetric(float64(started.Microseconds())/1e3/float64(b.N), "respawn-ms-started")
}

// killPID sends SIGKILL through a pidfd: the pid is a live child of the
// master, which cannot be reaped (and the pid reused) before the master
// logs its replacement.
func killPID(pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return os.NewSyscallError("pidfd_open", err)
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		return os.NewSyscallError("pidfd_send_signal", err)
	}
	return nil
}
