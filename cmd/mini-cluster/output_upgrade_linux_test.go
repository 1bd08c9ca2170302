package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestUpgradeReportsUnwrittenOutput: an in-place upgrade's execve
// discards what the master's outputs queued; with a stdout nobody reads,
// some always is. The old image gives the outputs a bounded time to drain
// and the new image logs how many lines were lost. They used to vanish
// without a word, contradicting the "output dropped" promise.
func TestUpgradeReportsUnwrittenOutput(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "mc.pid")
	marker := filepath.Join(dir, "chatted")
	outR, outW := stalledPipe(t)
	defer outR.Close()
	m := startMasterIO(t, pc, outW, nil, "-n", "1", "-ready", "started", "-shutdown-timeout", "1s", "-listen", "127.0.0.1:0", "-pid-file", pidFile,
		"--", "/bin/sh", "-c", chattyWorker, "sh", marker)
	pidFileOf(t, m, pidFile)
	if !waitFor(10*time.Second, func() bool { _, err := os.Stat(marker); return err == nil }) {
		t.Fatal("the worker wrote nothing")
	}
	m.signal(syscall.SIGUSR2)
	if !waitFor(20*time.Second, func() bool {
		return strings.Contains(m.log.String(), `msg="upgrade: took over from the previous image"`)
	}) {
		t.Fatal("no new image within 20 s")
	}
	re := regexp.MustCompile(`level=WARN msg="output dropped: the previous image could not write it before its execve \(its reader did not keep up\)" lines=(\d+)`)
	if sub := re.FindStringSubmatch(m.log.String()); sub == nil {
		t.Error("the new image did not report the output the exec discarded")
	} else if n, _ := strconv.Atoi(sub[1]); n <= 0 {
		t.Errorf("lines=%s, want > 0", sub[1])
	}
	if !strings.Contains(m.log.String(), `msg="upgrade: executing the new image"`) {
		t.Error(`"upgrade: executing the new image" did not reach the log before the exec`)
	}
	m.signal(syscall.SIGTERM)
	checkStopped(t, m, pc, pidFile, "", 30*time.Second)
}

// TestFlushOutputsCounts: flushOutputs waits at most its bound for a
// stalled stream and counts every line not written, queued or being
// written; once the reader is back, it waits for them and counts none.
func TestFlushOutputsCounts(t *testing.T) {
	fdcensus.Verify(t)
	r, w := stalledPipe(t)
	defer r.Close()
	var logBuf syncBuffer
	errOut := newOutput("stderr", &logBuf, nil)
	out := newOutput("stdout", w, errOut)
	line := []byte(strings.Repeat("z", 63) + "\n")
	const written = 50
	for range written {
		out.Write(line)
	}
	// The pipe is full: nothing of the lines can be written.
	if left := flushOutputs(50*time.Millisecond, out, errOut); left != written {
		t.Errorf("flushOutputs on a stalled stream = %d, want %d", left, written)
	}
	got := make(chan int, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- bytes.Count(b, line)
	}()
	if left := flushOutputs(20*time.Second, out, errOut); left != 0 {
		t.Errorf("flushOutputs with the reader back = %d, want 0", left)
	}
	closeOutputs(10*time.Second, out, errOut)
	w.Close()
	if n := <-got; n != written {
		t.Errorf("%d lines arrived, want %d", n, written)
	}
}
