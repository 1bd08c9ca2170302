//go:build linux

package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
	"golang.org/x/sys/unix"
)

// Agent timing and queue bounds.
const (
	// agentSpecTimeout bounds the wait for the start spec: the master
	// sends it right after ssh connected.
	agentSpecTimeout = 30 * time.Second
	// agentLogQueue log records may wait to be written; more are dropped
	// and counted, so a slow link never blocks the workers' output.
	agentLogQueue = 1024
	// agentCommandQueue commands may wait for the one being carried out.
	agentCommandQueue = 16
	// agentControlQueue frames other than logs may wait to be written;
	// beyond that the wire is stuck and they are dropped (status frames
	// come every interval, so the queue holds a minute of them).
	agentControlQueue = 64
	// agentPoll is how often the agent looks for a status change.
	agentPoll = 200 * time.Millisecond
	// agentPollStart is how often a command is retried while the
	// supervisor is starting.
	agentPollStart = 10 * time.Millisecond
)

// agentFlushTimeout bounds the wait for the last frames at exit: a wire
// that stopped moving must not keep the agent from exiting. A variable so
// that tests of a stuck wire need not wait 5 s.
var agentFlushTimeout = 5 * time.Second

// RunAgent runs the agent side of a remote group (see AgentArg): it reads
// the start spec from in, runs one Master for the host's workers, and
// speaks the agent protocol (docs/protocol.md) on in and out until the
// master asks it to stop, in reaches EOF, ctx is done, or the process gets
// SIGHUP, SIGTERM or SIGINT; it then stops the workers gracefully and
// returns nil. A second signal kills the workers. A malformed frame from
// the master, or no frame from it (its pings) for the start spec's
// heartbeat timeout plus 2 s (three status intervals plus 2 s from a
// master that sends none), stops the workers too and returns an error
// matching ErrAgentProtocol: a link that dropped without a FIN or RST leaves sshd
// (ClientAliveInterval 0 by default) holding the session for hours, so
// stdin EOF alone would leave the workers running. Frames are written by
// one goroutine from bounded queues, so a stuck wire never blocks the
// agent's reaction to the master, signals or its own stop; RunAgent waits
// at most 5 s for its last frames.
//
// When out is os.Stdout, RunAgent moves the wire to a private descriptor
// and points descriptor 1 at stderr, so that nothing else in the process
// can write into the protocol stream. Only frames are written to out.
func RunAgent(ctx context.Context, in io.Reader, out io.Writer) error {
	out, restore, err := isolateStdout(out)
	if err != nil {
		return err
	}
	defer restore()

	// The agent acts on signals itself. SIGPIPE is caught too: once the
	// ssh session is gone, a write to descriptor 1 would otherwise kill
	// the process at once (Go's rule for fds 1 and 2), before the
	// workers were stopped. Notify, unlike Ignore, does not pass SIG_IGN
	// on to the workers. SIGQUIT stops like SIGTERM, as for a master
	// (stopSignals), rather than the runtime's goroutine dump and exit 2,
	// which left the workers to die without a drain.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGHUP, unix.SIGTERM, unix.SIGINT, unix.SIGQUIT, unix.SIGPIPE)
	defer signal.Stop(sigs)

	a := &agent{
		w:     ipcframe.NewWriter(out, &ipcframe.WriterOptions{MaxFrame: maxAgentFrame}),
		wake:  make(chan struct{}, 1),
		wrote: make(chan struct{}),
	}
	go a.writeLoop()
	// flush lets the last frames out, for at most agentFlushTimeout.
	flush := func() {
		a.closeQueue()
		select {
		case <-a.wrote:
		case <-time.After(agentFlushTimeout):
		}
	}
	frames := make(chan agentMsg)
	readErr := make(chan error, 1)
	readDone := make(chan struct{})
	defer close(readDone)
	go a.read(in, frames, readErr, readDone)

	spec, err := a.awaitSpec(ctx, frames, readErr, sigs)
	if err != nil {
		a.fatal(err)
		flush()
		return err
	}
	if spec == nil {
		flush()
		return nil // told to stop before the spec came
	}

	log := slog.New(&agentLogHandler{a: a})
	m, err := New(agentConfig(spec, log))
	if err != nil {
		a.fatal(err)
		flush()
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runDone := make(chan error, 1)
	// ran is closed when Run returned: until then a command that finds
	// the supervisor not running yet waits for it (obey).
	ran := make(chan struct{})
	go func() {
		err := m.Run(runCtx)
		close(ran)
		runDone <- err
	}()
	var wg sync.WaitGroup
	cmds := make(chan agentMsg, agentCommandQueue)
	wg.Add(1)
	go func() { defer wg.Done(); a.obey(m, cmds, ran) }()
	started := agentMsg{Type: "started", PID: os.Getpid()}
	for _, addr := range m.Addrs() {
		started.Addrs = append(started.Addrs, addr.String())
	}
	a.send(&started)

	interval := spec.StatusInterval
	if interval <= 0 {
		interval = defaultStatusInterval
	}
	tick := time.NewTicker(min(agentPoll, interval))
	defer tick.Stop()
	silence := spec.agentSilence()
	var (
		heard    = time.Now() // the last frame from the master
		last     time.Time
		lastSeen string
		stopping bool
		final    error
		ctxDone  = ctx.Done()
	)
	stop := func(why string) {
		if !stopping {
			stopping = true
			log.Info("agent stopping workers", "reason", why)
			_ = m.Stop()
		}
	}
	for {
		select {
		case msg := <-frames:
			heard = time.Now()
			switch msg.Type {
			case "ping":
			case "kill":
				// The master's second stop signal: no grace, here
				// either.
				stop("kill requested by the master")
				_ = m.Kill()
			case "stop":
				stop("stop requested by the master")
				a.send(&agentMsg{Type: "ack", Seq: msg.Seq})
			case "restart", "suspend", "resume", "max_running_time":
				select {
				case cmds <- msg:
				default:
					a.send(&agentMsg{Type: "ack", Seq: msg.Seq, Error: "agent busy: too many commands queued"})
				}
			default:
				final = fmt.Errorf("%w: unexpected %q frame from the master", ErrAgentProtocol, msg.Type)
				a.fatal(final)
				stop("protocol error")
			}
		case err := <-readErr:
			readErr = nil // the reader is done; never selected again
			if !errors.Is(err, io.EOF) {
				final = err
				a.fatal(err)
			}
			stop("the master's session ended")
		case sig := <-sigs:
			switch {
			case sig == unix.SIGPIPE:
			case stopping:
				_ = m.Kill()
			default:
				stop("signal " + sig.String())
			}
		case <-ctxDone:
			ctxDone = nil
			stop("context done")
		case err := <-runDone:
			close(cmds)
			wg.Wait()
			// Queued log frames go before the last status and "exit", so
			// the master sees the workers' last words.
			a.sendStatus(m)
			exit := agentMsg{Type: "exit"}
			if err != nil {
				exit.Error = err.Error()
				if final == nil {
					final = err
				}
			}
			a.send(&exit)
			flush()
			return final
		case now := <-tick.C:
			if !stopping && now.Sub(heard) > silence {
				final = fmt.Errorf("%w: nothing from the master for %v", ErrAgentProtocol, silence)
				a.fatal(final)
				stop("the master went silent")
			}
			seen := a.statusKey(m)
			if seen != lastSeen || now.Sub(last) >= interval {
				a.sendStatus(m)
				last, lastSeen = now, seen
			}
		}
	}
}

// awaitSpec waits for the start spec; it returns nil, nil if the master
// went away or a stop came first.
func (a *agent) awaitSpec(ctx context.Context, frames <-chan agentMsg, readErr <-chan error, sigs <-chan os.Signal) (*agentStart, error) {
	timer := time.NewTimer(agentSpecTimeout)
	defer timer.Stop()
	for {
		select {
		case msg := <-frames:
			if msg.Type != "start" {
				return nil, fmt.Errorf("%w: first frame is %q, not a start spec", ErrAgentProtocol, msg.Type)
			}
			return msg.Start, nil
		case err := <-readErr:
			if errors.Is(err, io.EOF) {
				return nil, nil
			}
			return nil, err
		case <-timer.C:
			return nil, fmt.Errorf("%w: no start spec within %v", ErrAgentProtocol, agentSpecTimeout)
		case <-ctx.Done():
			return nil, nil
		case sig := <-sigs:
			if sig != unix.SIGPIPE {
				return nil, nil
			}
		}
	}
}

// agentConfig maps the start spec to the agent's Master.
func agentConfig(s *agentStart, log *slog.Logger) *Config {
	ids := slices.Clone(s.IDs)
	return &Config{
		Program: s.Program, Args: s.Args, Workers: len(ids), Listen: s.Listen,
		Ready: s.Ready, Mode: s.Mode, Strategy: s.Strategy,
		ShutdownTimeout: s.ShutdownTimeout, StartTimeout: s.StartTimeout,
		Backoff: s.Backoff, Heartbeat: s.Heartbeat, Restart: s.Restart,
		MaxRunningTime: s.MaxRunningTime, Suspended: s.Suspended,
		Group: s.Group, Params: s.Params, GroupSize: s.GroupSize, GroupIndexBase: s.IndexBase,
		// The agent's Master is never scaled (no signal handler, no
		// control socket, no scale frame), so every slot has an id.
		WorkerID: func(slot int) int {
			if slot >= 0 && slot < len(ids) {
				return ids[slot]
			}
			return -1
		},
		Env:    append(os.Environ(), s.Env...),
		Logger: log,
		// Stdout and Stderr nil: worker output is logged, and so relayed.
	}
}

// agent is the state RunAgent shares with its goroutines.
type agent struct {
	w       *ipcframe.Writer
	dropped atomic.Int64
	// wake tells writeLoop that queue has frames or is closed; wrote is
	// closed when writeLoop returns.
	wake  chan struct{}
	wrote chan struct{}

	// queue holds the encoded frames to write, in order, logs of them
	// (at most agentLogQueue) and others (at most agentControlQueue).
	// Once closed, or once a write failed (the session is gone), frames
	// are dropped: the handler may still be called by late goroutines.
	mu     sync.Mutex
	queue  []queuedFrame
	logs   int
	others int
	closed bool
	broken bool

	// statusCut is what sendStatus last left out of a status ("" for
	// nothing); only RunAgent's loop uses it.
	statusCut string
}

// read decodes frames from the master until an error, which it sends on
// errc (io.EOF at a clean end).
func (a *agent) read(in io.Reader, frames chan<- agentMsg, errc chan<- error, done <-chan struct{}) {
	r := ipcframe.NewReader(in, &ipcframe.ReaderOptions{MaxFrame: maxAgentFrame})
	var (
		p   fastjson.Parser
		buf []byte
		err error
	)
	for {
		buf, err = r.ReadFrame(buf[:0])
		if err != nil {
			if !errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: %w", ErrAgentProtocol, err)
			}
			break
		}
		var msg agentMsg
		if err = decodeAgentMsg(&p, buf, &msg); err != nil {
			break
		}
		select {
		case frames <- msg:
		case <-done:
			return
		}
	}
	errc <- err
}

// obey carries out the master's commands one at a time, each answered with
// an ack, off the main loop so that a slow suspend does not delay status.
// "started" goes out while Run is still starting the supervisor: a command
// that finds it not running yet is retried every agentPollStart until it
// runs, Run returned (ran closed) or agentSpecTimeout passed, so that the
// master's first command (a suspend set while the agent started) is not
// refused for a moment's race.
func (a *agent) obey(m *Master, cmds <-chan agentMsg, ran <-chan struct{}) {
	for msg := range cmds {
		do := func() error {
			switch msg.Type {
			case "restart":
				return m.Restart()
			case "suspend":
				return m.Suspend()
			case "resume":
				return m.Resume()
			case "max_running_time":
				return m.SetMaxRunningTime(msg.MaxRunning)
			}
			return nil
		}
		err := do()
		deadline := time.Now().Add(agentSpecTimeout)
	retry:
		for errors.Is(err, supervise.ErrNotRunning) && !errors.Is(err, supervise.ErrStopping) && time.Now().Before(deadline) {
			select {
			case <-ran:
				break retry
			case <-time.After(agentPollStart):
			}
			err = do()
		}
		ack := agentMsg{Type: "ack", Seq: msg.Seq}
		if err != nil {
			ack.Error = err.Error()
		}
		a.send(&ack)
	}
}

// send queues one frame for writeLoop.
func (a *agent) send(msg *agentMsg) {
	a.enqueue(appendAgentMsg(nil, msg), false)
}

// enqueue queues an encoded frame, or drops it (counting log records)
// when its queue is full, the queue closed or the wire broken.
func (a *agent) enqueue(frame []byte, isLog bool) {
	a.mu.Lock()
	full := a.closed || a.broken || isLog && a.logs >= agentLogQueue || !isLog && a.others >= agentControlQueue
	if !full {
		a.queue = append(a.queue, queuedFrame{frame, isLog})
		if isLog {
			a.logs++
		} else {
			a.others++
		}
	}
	a.mu.Unlock()
	if full {
		if isLog {
			a.dropped.Add(1)
		}
		return
	}
	a.wakeWriter()
}

// closeQueue lets writeLoop return once the queue is written.
func (a *agent) closeQueue() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.wakeWriter()
}

// wakeWriter tells writeLoop to look at the queue; a wake already pending
// covers this one.
func (a *agent) wakeWriter() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// writeLoop is the only writer of the wire. A failed write means the
// session is gone (the reader sees that too and the agent stops), so the
// error is not kept: later frames are dropped. A frame over the limit is
// not a failed write: it is dropped alone.
func (a *agent) writeLoop() {
	defer close(a.wrote)
	for {
		a.mu.Lock()
		if len(a.queue) == 0 {
			closed := a.closed
			a.mu.Unlock()
			if closed {
				return
			}
			<-a.wake
			continue
		}
		frame, isLog := a.queue[0].frame, a.queue[0].log
		a.queue[0] = queuedFrame{}
		a.queue = a.queue[1:]
		if isLog {
			a.logs--
		} else {
			a.others--
		}
		broken := a.broken
		a.mu.Unlock()
		if broken {
			continue
		}
		if err := a.w.WriteFrame(frame); err != nil {
			if errors.Is(err, ipcframe.ErrFrameTooLarge) {
				// Nothing of it was written: the stream is intact, and
				// the acks, logs and exit after it must still go out
				// (an agent that sends nothing more has its session, and
				// every worker of its host, ended for silence).
				if isLog {
					a.dropped.Add(1)
				}
				a.warn("agent dropped a frame too large for the wire", "bytes", len(frame), "limit", maxAgentFrame)
				continue
			}
			a.mu.Lock()
			a.broken = true
			a.mu.Unlock()
		}
	}
}

// warn relays a warning of the agent itself, as its log handler would.
func (a *agent) warn(msg string, args ...any) {
	r := slog.NewRecord(time.Now(), slog.LevelWarn, msg, 0)
	r.Add(args...)
	_ = (&agentLogHandler{a: a}).Handle(context.Background(), r)
}

type queuedFrame struct {
	frame []byte
	log   bool
}

// fatal tells the master why the agent gives up.
func (a *agent) fatal(err error) {
	a.send(&agentMsg{Type: "error", Error: err.Error()})
}

// sendStatus queues the agent's status, with less in it if the whole
// would not fit a frame (fitStatus): a status that never went out would
// leave the master's session silent. What was left out is logged when it
// changes, not every interval. Called from RunAgent's loop only.
func (a *agent) sendStatus(m *Master) {
	frame, left := agentStatusFrame(&agentMsg{
		Type: "status", Status: m.m.controlStatus(), Ready: isClosed(m.Ready()),
		Suspended: m.Suspended(), Dropped: a.dropped.Load(),
	})
	if cut := strings.Join(left, ", "); cut != a.statusCut {
		a.statusCut = cut
		if cut != "" {
			a.warn("agent status too large for a frame; left out "+cut, "limit", maxAgentFrame)
		}
	}
	a.enqueue(frame, false)
}

// statusKey summarises what a status change is: a worker started,
// stopped or became ready, or the suspension changed. Uptimes are left
// out, or every poll would be a change.
func (a *agent) statusKey(m *Master) string {
	st := m.m.status()
	var b strings.Builder
	fmt.Fprintf(&b, "%d %d %v %v %v;", st.Generation, st.ReadyWorkers, st.Restarting, m.Suspended(), isClosed(m.Ready()))
	for _, sl := range st.Slots {
		fmt.Fprintf(&b, "%d:%d:%d,", sl.Slot, sl.PID, sl.State)
	}
	return b.String()
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// agentLogHandler relays the agent Master's log records (and with them
// its workers' output) to the master as "log" frames. Attributes of
// groups are flattened into "group.key".
type agentLogHandler struct {
	a      *agent
	prefix string
	attrs  []agentAttr
}

func (h *agentLogHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *agentLogHandler) Handle(_ context.Context, r slog.Record) error {
	msg := agentMsg{Type: "log", Level: r.Level, Msg: r.Message, Attrs: slices.Clone(h.attrs)}
	r.Attrs(func(at slog.Attr) bool {
		msg.Attrs = appendFlat(msg.Attrs, h.prefix, at)
		return len(msg.Attrs) < maxAgentAttrs
	})
	// A worker's record (logFromWorker) carries any level and key it sent:
	// the frame is cut to what the master's decoder takes, for a record it
	// refused would be lost, and an older master ends the session for it.
	h.a.enqueue(encodeAgentLog(&msg), true)
	return nil
}

func (h *agentLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := &agentLogHandler{a: h.a, prefix: h.prefix, attrs: slices.Clone(h.attrs)}
	for _, at := range as {
		n.attrs = appendFlat(n.attrs, h.prefix, at)
	}
	return n
}

func (h *agentLogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &agentLogHandler{a: h.a, prefix: h.prefix + name + ".", attrs: h.attrs}
}

func appendFlat(dst []agentAttr, prefix string, at slog.Attr) []agentAttr {
	v := at.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if at.Key != "" {
			p += at.Key + "."
		}
		for _, g := range v.Group() {
			dst = appendFlat(dst, p, g)
		}
		return dst
	}
	if at.Key == "" {
		return dst
	}
	return append(dst, agentAttr{Key: prefix + at.Key, Value: v})
}

// isolateStdout keeps the wire out of reach of stray writes: when out is
// os.Stdout, the wire moves to a new close-on-exec descriptor and
// descriptor 1 becomes a copy of stderr. restore closes the wire.
func isolateStdout(out io.Writer) (io.Writer, func(), error) {
	if out != io.Writer(os.Stdout) {
		return out, func() {}, nil
	}
	rc, err := os.Stdout.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: agent: stdout: %w", err)
	}
	var wire int
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		wire, opErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
		if opErr != nil {
			opErr = os.NewSyscallError("fcntl", opErr)
			return
		}
		if opErr = unix.Dup3(2, int(fd), 0); opErr != nil {
			opErr = os.NewSyscallError("dup3", opErr)
			unix.Close(wire)
		}
	}); err != nil {
		return nil, nil, fmt.Errorf("cluster: agent: stdout: %w", err)
	}
	if opErr != nil {
		return nil, nil, fmt.Errorf("cluster: agent: stdout: %w", opErr)
	}
	f := os.NewFile(uintptr(wire), "agent-wire")
	return f, func() { f.Close() }, nil
}
