package main

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A master's stdout and stderr (its log, and in text mode its workers'
// output) are often pipes to a logger that can stall (a full pipe to a
// stopped pager, a logger blocked on its own output), or that goes away
// (mini-cluster ... | head). A blocking write there would hold whatever
// wrote: a stop signal behind a log line, the copy of worker output the
// master waits for when it stops. So each stream is an output: writes are
// queued and written by a goroutine of its own, and a write waits for its
// bytes to be written only while the stream keeps up. Once one has waited
// outputWait, the stream counts as stalled, and writes return at once
// until the queue is empty again; past outputQueueMax queued bytes, lines
// are dropped and counted, and the count is logged (a warning "output
// dropped") once the stream takes writes again. A stream whose reader went
// away (EPIPE) is gone: everything written to it later is discarded, with
// one warning on stderr when it is stdout. At exit the queues get
// outputFlush to drain; before an in-place upgrade's execve, which
// discards them, they get the time the master gives (flushOutputs), and
// the new image logs how many lines were lost. systemd as PID 1 logs alike: its log socket has a
// 10 ms send timeout (log.c, create_log_socket), and a message that cannot
// go out within it is lost rather than hang the service manager.

const (
	// outputQueueMax bounds the bytes queued for one stream (a few
	// thousand log lines).
	outputQueueMax = 256 << 10
	// outputWait is how long a write waits for its bytes while the
	// stream keeps up: writes stay in order with the process's actions
	// (a line logged before an in-place upgrade's execve is out before
	// it), and a stall delays a writer that long once.
	outputWait = 500 * time.Millisecond
	// outputFlush is how long the queues may take to drain at exit.
	outputFlush = 2 * time.Second
)

// output is one standard stream of the master (see above). Write may be
// called concurrently; it never blocks longer than outputWait, and it
// always reports the whole of p written (queued, discarded or dropped), as
// no caller could do better with an error. Close it with closeOutputs.
type output struct {
	name string
	w    io.Writer
	// log is where the stream's drops are reported: stderr's output,
	// this one for stderr.
	log *output

	mu     sync.Mutex
	queue  [][]byte
	queued int
	// enq and done count the bytes queued and the bytes written or
	// discarded since the start: a write waits until done reaches the
	// enq its bytes made.
	enq, done uint64
	// progress is closed, and replaced, whenever done moves.
	progress chan struct{}
	stalled  bool
	gone     bool
	closed   bool
	// dropped counts the lines dropped since the last report.
	dropped uint64
	// writing counts the lines of the batch being written not written
	// yet: they are not in queue any more, and an execve would lose
	// them too (flushOutputs).
	writing uint64
	// format is the log format of the reports (-log-format).
	format string

	wake   chan struct{}
	exited chan struct{}
}

// newOutputs wraps a master's stdout and stderr.
func newOutputs(stdout, stderr io.Writer) (out, errOut *output) {
	errOut = newOutput("stderr", stderr, nil)
	out = newOutput("stdout", stdout, errOut)
	return out, errOut
}

func newOutput(name string, w io.Writer, log *output) *output {
	if f, ok := w.(*os.File); ok {
		if rc, err := f.SyscallConn(); err == nil {
			w = fileWriter{rc}
		}
	}
	o := &output{name: name, w: w, log: log, format: "text", progress: make(chan struct{}), wake: make(chan struct{}, 1), exited: make(chan struct{})}
	if o.log == nil {
		o.log = o
	}
	go o.loop()
	return o
}

// setLogFormat sets the format of w's drop reports, if w is an output.
func setLogFormat(w io.Writer, format string) {
	if o, ok := w.(*output); ok {
		o.mu.Lock()
		o.format = format
		o.mu.Unlock()
	}
}

func (o *output) Write(p []byte) (int, error) {
	end, progress, ok := o.enqueue(p, true)
	if !ok {
		return len(p), nil
	}
	timer := time.NewTimer(outputWait)
	defer timer.Stop()
	for {
		select {
		case <-progress:
			o.mu.Lock()
			if o.done >= end || o.gone || o.stalled {
				o.mu.Unlock()
				return len(p), nil
			}
			progress = o.progress
			o.mu.Unlock()
		case <-timer.C:
			o.mu.Lock()
			o.stalled = true
			o.mu.Unlock()
			return len(p), nil
		}
	}
}

// enqueue queues a copy of p, or drops or discards it. With wait, it
// returns what a write that waits for its bytes waits for, ok false when
// there is nothing to wait for.
func (o *output) enqueue(p []byte, wait bool) (end uint64, progress chan struct{}, ok bool) {
	if len(p) == 0 {
		return 0, nil, false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.gone {
		return 0, nil, false
	}
	if o.queued+len(p) > outputQueueMax {
		o.dropped += lines(p)
		return 0, nil, false
	}
	o.queue = append(o.queue, bytes.Clone(p))
	o.queued += len(p)
	o.enq += uint64(len(p))
	select {
	case o.wake <- struct{}{}:
	default:
	}
	// Past closeOutputs nothing may be left to write it.
	return o.enq, o.progress, wait && !o.stalled && !o.closed
}

// loop writes the queue out, one Write's bytes at a time: each is a line
// or a log record, so that a line shorter than PIPE_BUF stays whole on a
// pipe that stdout and stderr share (2>&1).
func (o *output) loop() {
	defer close(o.exited)
	for {
		o.mu.Lock()
		for len(o.queue) == 0 {
			if o.closed {
				o.mu.Unlock()
				return
			}
			o.mu.Unlock()
			<-o.wake
			o.mu.Lock()
		}
		batch, n := o.queue, o.queued
		o.queue, o.queued = nil, 0
		for _, b := range batch {
			o.writing += lines(b)
		}
		o.mu.Unlock()
		var failed uint64
		wrote, gone := false, false
		for _, b := range batch {
			err := writeAll(o.w, b)
			o.mu.Lock()
			o.writing -= lines(b)
			o.mu.Unlock()
			if errors.Is(err, unix.EPIPE) {
				gone = true
				break
			}
			if err != nil {
				failed += lines(b)
			} else {
				wrote = true
			}
		}
		o.mu.Lock()
		o.done += uint64(n)
		o.writing = 0
		newlyGone := gone && !o.gone
		if gone {
			o.gone = true
			o.done += uint64(o.queued)
			o.queue, o.queued, o.dropped = nil, 0, 0
		}
		o.dropped += failed
		if len(o.queue) == 0 {
			o.stalled = false
		}
		var report uint64
		if wrote && o.dropped > 0 {
			report, o.dropped = o.dropped, 0
		}
		close(o.progress)
		o.progress = make(chan struct{})
		o.mu.Unlock()
		if newlyGone && o.log != o {
			o.report("stdout discarded from now on: its reader went away (EPIPE)")
		}
		if report > 0 {
			o.report("output dropped: its reader did not keep up", "lines", report)
		}
	}
}

// report logs a warning about o on o.log, without waiting: the report
// may be one about o.log, made by its own writing goroutine.
func (o *output) report(msg string, attrs ...any) {
	o.log.mu.Lock()
	format := o.log.format
	o.log.mu.Unlock()
	var b bytes.Buffer
	h, err := logHandler(format, &b)
	if err != nil {
		return
	}
	slog.New(h).Warn(msg, append([]any{"stream", o.name}, attrs...)...)
	o.log.enqueue(b.Bytes(), false)
}

// closeOutputs lets the outputs drain for at most d in all, one after
// the other: stdout's before stderr's, which takes stdout's reports.
func closeOutputs(d time.Duration, outs ...*output) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for _, o := range outs {
		o.mu.Lock()
		o.closed = true
		o.mu.Unlock()
		select {
		case o.wake <- struct{}{}:
		default:
		}
		select {
		case <-o.exited:
		case <-timer.C:
			return
		}
	}
}

// flushOutputs lets the outputs write what they queued for at most d in
// all, one after the other, and returns the lines still unwritten: queued,
// being written, or dropped and not reported yet. An in-place upgrade
// calls it (cluster.Config.FlushOutput) right before its execve, which
// discards all of those, and the new image logs the count. A stream gone
// (EPIPE) has nothing unwritten: it discards its output by design.
func flushOutputs(d time.Duration, outs ...*output) (left uint64) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	expired := false
	for _, o := range outs {
		o.mu.Lock()
		target := o.enq
		for !expired && !o.gone && o.done < target {
			progress := o.progress
			o.mu.Unlock()
			select {
			case <-progress:
			case <-timer.C:
				expired = true
			}
			o.mu.Lock()
		}
		if !o.gone {
			for _, b := range o.queue {
				left += lines(b)
			}
			left += o.writing + o.dropped
		}
		o.mu.Unlock()
	}
	return left
}

// lines counts the lines of p, a partial one included.
func lines(p []byte) uint64 {
	n := uint64(bytes.Count(p, []byte{'\n'}))
	if len(p) > 0 && p[len(p)-1] != '\n' {
		n++
	}
	return n
}

func writeAll(w io.Writer, p []byte) error {
	for len(p) > 0 {
		n, err := w.Write(p)
		if err != nil {
			return err
		}
		if n <= 0 {
			return io.ErrShortWrite
		}
		p = p[n:]
	}
	return nil
}

// fileWriter writes to a file with write(2) on its descriptor: a write
// through os.Stdout or os.Stderr that fails with EPIPE raises SIGPIPE
// again (os.epipecheck), which kills the process unless signal.Notify
// catches it, and the master writes before HandleSignals does. The
// descriptor stays blocking if it was (the file's own goroutine waits in
// the kernel); if it is non-blocking, the runtime poller waits.
type fileWriter struct {
	rc syscall.RawConn
}

func (w fileWriter) Write(p []byte) (int, error) {
	var n int
	var err error
	if rerr := w.rc.Write(func(fd uintptr) bool {
		for {
			n, err = unix.Write(int(fd), p)
			if err != unix.EINTR {
				return err != unix.EAGAIN
			}
		}
	}); rerr != nil {
		return 0, rerr
	}
	if err != nil {
		return 0, os.NewSyscallError("write", err)
	}
	return n, nil
}
