//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// stalledPipe returns a pipe of one page whose buffer is full: whoever
// writes to w blocks until r is read, which the test never does (a logger
// that stopped reading). The caller closes both.
func stalledPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	size, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 4096)
	if err != nil {
		r.Close()
		w.Close()
		t.Fatal(err)
	}
	if _, err := w.Write(bytes.Repeat([]byte{'x'}, size)); err != nil {
		r.Close()
		w.Close()
		t.Fatal(err)
	}
	return r, w
}

// startMasterIO is startMaster with the master's stdout and stderr given
// (nil: the log the test reads); the test's own copy of an *os.File is
// closed once the master has it.
func startMasterIO(t *testing.T, pc *proccensus.Census, stdout, stderr *os.File, args ...string) *master {
	t.Helper()
	cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{Env: []string{pc.Env()}, Args: args})
	m := startCmdIO(t, cmd, t.TempDir(), stdout, stderr)
	for _, f := range []*os.File{stdout, stderr} {
		if f != nil {
			f.Close()
		}
	}
	return m
}

// pidFileOf waits until path holds pid (the master writes it when the
// cluster is ready).
func pidFileOf(t *testing.T, m *master, path string) {
	t.Helper()
	want := strconv.Itoa(m.cmd.Process.Pid)
	if !waitFor(20*time.Second, func() bool {
		b, _ := os.ReadFile(path)
		return strings.TrimSpace(string(b)) == want
	}) {
		t.Fatalf("the master did not write its pid file: not ready within 20 s, or blocked:\n%s", m.log.String())
	}
}

// checkStopped checks what a clean stop leaves: exit code 0 within d, no
// pid file, the listener closed, no worker.
func checkStopped(t *testing.T, m *master, pc *proccensus.Census, pidFile, addr string, d time.Duration) {
	t.Helper()
	if code := m.wait(d); code != exitOK {
		t.Errorf("exit code %d (%v), want 0", code, m.cmd.ProcessState)
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file after the stop: %v", err)
	}
	if addr != "" {
		if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after the stop", addr)
		}
	}
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}

// chattyWorker writes 200 lines, says so with a marker file ($1), then a
// line every 10 ms until stopped.
const chattyWorker = `i=0; while [ $i -lt 200 ]; do echo "line $i"; i=$((i+1)); done; : > "$1"; while :; do echo more; sleep 0.01; done`

// TestStopWithStalledOutput: a master whose stdout, or stdout and
// stderr, nobody reads (a stalled logger) still stops at SIGTERM, and
// exits: neither a log line nor the copy of its workers' output holds it.
// It used to log the signal (blocked on a full stderr) before acting on
// it, and to wait for the copy of worker output (blocked on a full
// stdout) after its workers were gone.
func TestStopWithStalledOutput(t *testing.T) {
	for _, tc := range []struct {
		name        string
		stallStderr bool
	}{
		{"stdout", false},
		{"stdout and stderr", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			dir := t.TempDir()
			pidFile := filepath.Join(dir, "mc.pid")
			marker := filepath.Join(dir, "chatted")
			outR, outW := stalledPipe(t)
			defer outR.Close()
			var errW *os.File
			if tc.stallStderr {
				var errR *os.File
				errR, errW = stalledPipe(t)
				defer errR.Close()
			}
			m := startMasterIO(t, pc, outW, errW, "-n", "2", "-ready", "started", "-shutdown-timeout", "1s", "-listen", "127.0.0.1:0", "-pid-file", pidFile,
				"--", "/bin/sh", "-c", chattyWorker, "sh", marker)
			pidFileOf(t, m, pidFile)
			addr := ""
			if !tc.stallStderr {
				addr = m.waitReady()
			}
			if !waitFor(10*time.Second, func() bool { _, err := os.Stat(marker); return err == nil }) {
				t.Fatal("the workers wrote nothing")
			}
			m.signal(syscall.SIGTERM)
			// -shutdown-timeout, the 2 s the output gets to drain at
			// exit, and room for a loaded machine.
			checkStopped(t, m, pc, pidFile, addr, 30*time.Second)
			if !tc.stallStderr && !strings.Contains(m.log.String(), `msg="stop signal: stopping workers gracefully" signal=terminated`) {
				t.Errorf("the stop signal was not logged")
			}
		})
	}
}

// TestOutputReaderGone: when the reader of the master's stdout or stderr
// exits (mini-cluster ... | head -3), the master neither dies of SIGPIPE
// (it did: exit 141 in a shell, its workers SIGKILLed by their
// parent-death signal without a drain, the pid file left) nor logs to
// the dead stream again: it runs on, and stops cleanly at SIGTERM.
func TestOutputReaderGone(t *testing.T) {
	t.Run("stdout", func(t *testing.T) {
		fdcensus.Verify(t)
		pc := proccensus.New(t)
		pidFile := filepath.Join(t.TempDir(), "mc.pid")
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		m := startMasterIO(t, pc, w, nil, "-n", "2", "-ready", "started", "-shutdown-timeout", "2s", "-listen", "127.0.0.1:0", "-pid-file", pidFile,
			"--", "/bin/sh", "-c", "while :; do echo line; sleep 0.02; done")
		addr := m.waitReady()
		// head -3.
		br := bufio.NewReader(r)
		for range 3 {
			if _, err := br.ReadString('\n'); err != nil {
				t.Fatal(err)
			}
		}
		r.Close()
		const gone = `msg="stdout discarded from now on: its reader went away (EPIPE)" stream=stdout`
		if !waitFor(10*time.Second, func() bool { return strings.Contains(m.log.String(), gone) }) {
			t.Fatalf("no %q in the log (exited: %v)", gone, m.cmd.ProcessState)
		}
		// Output keeps coming (a line every 20 ms from each worker):
		// the master lives on, and says so once.
		pidFileOf(t, m, pidFile)
		// SIGPIPE is caught by the master, not ignored: its workers
		// start with the default action.
		ws := m.workers()
		if len(ws) != 2 {
			t.Fatalf("workers %v, want 2", ws)
		}
		for _, pid := range ws {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			if err != nil {
				t.Fatal(err)
			}
			_, rest, _ := strings.Cut(string(b), "SigIgn:")
			mask, err := strconv.ParseUint(strings.Fields(rest)[0], 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			if mask&(1<<(unix.SIGPIPE-1)) != 0 {
				t.Errorf("worker %d ignores SIGPIPE (SigIgn %x)", pid, mask)
			}
		}
		m.signal(syscall.SIGTERM)
		checkStopped(t, m, pc, pidFile, addr, 20*time.Second)
		if n := strings.Count(m.log.String(), gone); n != 1 {
			t.Errorf("%d %q lines, want 1", n, gone)
		}
		if strings.Contains(m.log.String(), "worker exited unexpectedly") {
			t.Errorf("a worker died instead of being stopped:\n%s", m.log.String())
		}
	})
	t.Run("stderr", func(t *testing.T) {
		fdcensus.Verify(t)
		pc := proccensus.New(t)
		pidFile := filepath.Join(t.TempDir(), "mc.pid")
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		m := startMasterIO(t, pc, nil, w, "-n", "1", "-ready", "started", "-shutdown-timeout", "2s", "-listen", "127.0.0.1:0", "-pid-file", pidFile,
			"--", "sleep", "1001")
		// The log is on the pipe: read it up to "cluster ready".
		br := bufio.NewReader(r)
		deadline := time.Now().Add(20 * time.Second)
		r.SetReadDeadline(deadline)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("reading the log: %v", err)
			}
			if strings.Contains(line, `msg="cluster ready"`) {
				break
			}
		}
		pidFileOf(t, m, pidFile)
		r.Close()
		// Logging the signal fails with EPIPE.
		m.signal(syscall.SIGTERM)
		checkStopped(t, m, pc, pidFile, "", 20*time.Second)
	})
}

// TestQuitStopsGracefully: SIGQUIT is a graceful stop, as SIGTERM, for a
// master and for a -config fleet: the workers get SIGTERM, the pid file
// goes, exit 0. It used to be the Go runtime's goroutine dump and exit 2,
// the workers SIGKILLed by their parent-death signal.
func TestQuitStopsGracefully(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config bool
	}{{"master", false}, {"config", true}} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			dir := t.TempDir()
			pidFile := filepath.Join(dir, "mc.pid")
			// The worker reports its SIGTERM, once its trap is set.
			trapped := filepath.Join(dir, "trapped")
			prog := writeScript(t, "#!/bin/sh\ntrap 'echo got-term; exit 0' TERM\n: > "+trapped+"\nwhile :; do sleep 0.05; done\n")
			args := []string{"-n", "1", "-ready", "started", "-listen", "127.0.0.1:0", "--", prog}
			if tc.config {
				args = []string{"-config", writeConfig(t, `{"groups":[{"name":"web","command":[`+jsonStr(prog)+`],"count":1,"listen":["127.0.0.1:0"],"ready":"started","shutdown_timeout":"5s"}]}`)}
			}
			m := startMaster(t, pc, nil, append([]string{"-pid-file", pidFile, "-log-format", "json"}, args...)...)
			pidFileOf(t, m, pidFile)
			if !waitFor(10*time.Second, func() bool { _, err := os.Stat(trapped); return err == nil }) {
				t.Fatal("the worker did not set its trap")
			}
			m.signal(syscall.SIGQUIT)
			checkStopped(t, m, pc, pidFile, "", 20*time.Second)
			log := m.log.String()
			for _, want := range []string{`"signal":"quit"`, "got-term"} {
				if !strings.Contains(log, want) {
					t.Errorf("no %q in the log", want)
				}
			}
			if strings.Contains(log, "goroutine ") {
				t.Errorf("the master dumped its goroutines")
			}
		})
	}
}

// TestSecondStopDuringLeftoverSweep: a second SIGTERM while the master
// waits for a leftover process (a worker's descendant that left its
// process group and ignores SIGTERM) kills it at once, and is not
// reported as "signal not acted on" (it was acted on: the supervisor had
// stopped, and the kill request went to the sweep).
func TestSecondStopDuringLeftoverSweep(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	prog := writeScript(t, "#!/bin/sh\nsetsid sh -c 'trap \"\" TERM; exec sleep 1012' &\nexec sleep 1011\n")
	// A long grace: the leftover is killed by the second signal, well
	// before it would be by the timeout.
	m := startMaster(t, pc, nil, "-n", "1", "-ready", "started", "-shutdown-timeout", "60s", "-listen", "127.0.0.1:0", "-log-format", "json", prog)
	m.waitReady()
	if !waitFor(10*time.Second, func() bool {
		for _, p := range pc.Marked() {
			if strings.Contains(p.Cmdline, "sleep 1012") {
				return true
			}
		}
		return false
	}) {
		t.Fatal("the setsid descendant did not start")
	}
	m.signal(syscall.SIGTERM)
	if !waitFor(20*time.Second, func() bool {
		return count(m.records(), "stopping a leftover process of a worker (it left the worker's process group)") > 0
	}) {
		t.Fatal("no leftover sweep")
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(20 * time.Second); code != exitOK {
		t.Errorf("exit code %d, want 0", code)
	}
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
	if n := count(m.records(), "signal not acted on"); n != 0 {
		t.Errorf("%d \"signal not acted on\" records for a signal that was acted on", n)
	}
	if n := count(m.records(), "second stop signal: no worker to kill; leftover processes get SIGKILL at once"); n != 1 {
		t.Errorf("%d records of the second stop signal, want 1", n)
	}
}

// statusWorker sends READY=1 and STATUS=busy, then, once the file $1
// exists, an empty STATUS=, which clears the status (as in systemd).
const statusWorker = `
import os, socket, sys, time
def notify(s):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    c.sendto(s.encode(), os.environ["NOTIFY_SOCKET"])
    c.close()
notify("READY=1\nSTATUS=busy")
for i in range(2000):
    if os.path.exists(sys.argv[1]):
        break
    time.sleep(0.01)
notify("STATUS=")
time.sleep(1000)
`

// TestEmptyStatusClears: a worker's empty STATUS= clears its status, as
// systemd does; it used to be taken for no STATUS= at all.
func TestEmptyStatusClears(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is required (CI installs it): %v", err)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "worker.py")
	if err := os.WriteFile(script, []byte(statusWorker), 0o644); err != nil {
		t.Fatal(err)
	}
	clear := filepath.Join(dir, "clear")
	ctlPath := filepath.Join(controlDir(t), "ctl")
	m := startMaster(t, pc, nil, "-n", "1", "-listen", "127.0.0.1:0", "-control", ctlPath, "-log-format", "json", "--", py, script, clear)
	m.waitReady()
	status := func() (string, string) {
		slots, out := statusSlots(t, ctlPath)
		if len(slots) != 1 {
			t.Fatalf("status -json: %s", out)
		}
		return string(slots[0].GetStringBytes("status")), out
	}
	if !waitFor(10*time.Second, func() bool { s, _ := status(); return s == "busy" }) {
		t.Fatal("STATUS=busy not shown")
	}
	if err := os.WriteFile(clear, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { s, _ := status(); return s == "" }) {
		_, out := status()
		t.Errorf("status after an empty STATUS=: %s", out)
	}
	_, out := status()
	if strings.Contains(out, `"status"`) {
		t.Errorf("status -json shows a status field after it was cleared: %s", out)
	}
	code, table, errOut := ctl("status", "-control", ctlPath)
	if code != 0 || strings.Contains(table, "busy") {
		t.Errorf("status table after the status was cleared: exit %d\n%s%s", code, table, errOut)
	}
	stopClean(t, m)
}

// TestOutputStallDropsAndReports: writes to a stream nobody reads return
// (after outputWait for the first); past outputQueueMax queued bytes lines
// are dropped, and once the reader reads again the drops are reported on
// the log stream, the count matching what never arrived.
func TestOutputStallDropsAndReports(t *testing.T) {
	fdcensus.Verify(t)
	r, w := stalledPipe(t)
	defer r.Close()
	var logBuf syncBuffer
	errOut := newOutput("stderr", &logBuf, nil)
	out := newOutput("stdout", w, errOut)
	setLogFormat(errOut, "text")
	line := []byte(strings.Repeat("y", 99) + "\n")
	const written = 2 * outputQueueMax / 100
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range written {
			out.Write(line)
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("writes to a stalled stream blocked")
	}
	out.mu.Lock()
	dropped := out.dropped
	out.mu.Unlock()
	if dropped == 0 {
		t.Fatalf("no line dropped of %d bytes queued", written*len(line))
	}
	// The reader comes back.
	got := make(chan int, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- bytes.Count(b, line)
	}()
	re := regexp.MustCompile(`level=WARN msg="output dropped: its reader did not keep up" stream=stdout lines=(\d+)`)
	if !waitFor(20*time.Second, func() bool { return re.MatchString(logBuf.String()) }) {
		t.Fatalf("no drop report in the log: %q", logBuf.String())
	}
	closeOutputs(10*time.Second, out, errOut)
	w.Close()
	n := <-got
	reported, _ := strconv.Atoi(re.FindStringSubmatch(logBuf.String())[1])
	if n+reported != written {
		t.Errorf("%d lines arrived and %d reported dropped, want %d in all", n, reported, written)
	}
}

// TestOutputGone: a stream whose reader went away (EPIPE) is discarded
// from then on; that is reported once, on the log stream.
func TestOutputGone(t *testing.T) {
	fdcensus.Verify(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r.Close()
	var logBuf syncBuffer
	errOut := newOutput("stderr", &logBuf, nil)
	out := newOutput("stdout", w, errOut)
	setLogFormat(errOut, "json")
	for range 10 {
		if n, err := out.Write([]byte("line\n")); n != 5 || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	closeOutputs(10*time.Second, out, errOut)
	if n := strings.Count(logBuf.String(), `"level":"WARN","msg":"stdout discarded from now on: its reader went away (EPIPE)","stream":"stdout"}`); n != 1 {
		t.Errorf("%d reports, want 1: %q", n, logBuf.String())
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	if !out.gone || len(out.queue) != 0 || out.dropped != 0 {
		t.Errorf("after EPIPE: gone %v, %d queued, %d dropped; want gone, nothing queued or dropped", out.gone, len(out.queue), out.dropped)
	}
}
