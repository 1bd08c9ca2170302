//go:build linux

package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/handoff-go/handoff/internal/sshlaunch"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
)

// Remote session timing.
const (
	// remoteAckTimeout bounds the wait for a command's ack beyond the
	// time the command itself may take (a suspend stops workers with
	// the grace period).
	remoteAckTimeout = 10 * time.Second
	// remoteStopGrace is added to the shutdown timeout when waiting for
	// a stopping agent before ssh is killed.
	remoteStopGrace = 5 * time.Second
	// remoteStableAfter: a session that lasted this long resets the
	// reconnect delay.
	remoteStableAfter = 10 * time.Second
	// remoteStderrTail bytes of ssh's stderr are kept for Classify.
	remoteStderrTail = 8 << 10
	// remoteLineMax bounds one logged line of ssh's stderr.
	remoteLineMax = 1024
)

// remoteGroup runs the workers of one group on one remote host: an agent
// session over ssh at a time (sshlaunch), reconnected with backoff until
// the context of run is done. Its methods are safe for concurrent use.
type remoteGroup struct {
	g         *GroupConfig
	h         *RemoteHost
	ids       []int
	indexBase int
	log       *slog.Logger
	target    sshlaunch.Target
	host      string // h.SSH for logs and status

	// statusInterval is the agent's heartbeat; env is added to the ssh
	// client's environment (tests mark it for their process census).
	statusInterval time.Duration
	env            []string

	readyOnce sync.Once
	readyCh   chan struct{}
	// killCh is closed by kill: sessions end at once and agents kill
	// their workers.
	killOnce sync.Once
	killCh   chan struct{}

	mu        sync.Mutex
	suspended bool
	maxRun    time.Duration  // the maximum running time later sessions start with
	sess      *remoteSession // nil between sessions
	st        ControlRemote
	dropped   int64 // the agent's dropped log records, last reported
	sshPID    int   // the current session's ssh client, 0 between sessions
}

// remoteSession is one ssh connection to an agent.
type remoteSession struct {
	w    *ipcframe.Writer
	done chan struct{} // closed when the session's frames end

	// suspended and maxRun are what the start spec asked for.
	suspended bool
	maxRun    time.Duration

	mu      sync.Mutex
	seq     int64
	pending map[int64]chan error
}

// newRemoteGroup prepares the remote host h of group g; ids are the global
// ids of its workers (one per worker, h.Count of them) and indexBase the
// group index of the first. Nothing is started before run.
func newRemoteGroup(g *GroupConfig, h *RemoteHost, ids []int, indexBase int, log *slog.Logger) (*remoteGroup, error) {
	if h.Count < 1 || len(ids) != h.Count {
		return nil, fmt.Errorf("%w: remote %s: %d ids for %d workers", ErrConfig, h.SSH, len(ids), h.Count)
	}
	if len(g.Listen) == 0 {
		return nil, fmt.Errorf("%w: group %s: remote workers need a listen address", ErrConfig, g.Name)
	}
	t, err := sshlaunch.ParseTarget(h.SSH)
	if err != nil {
		return nil, fmt.Errorf("%w: remote %q: %w", ErrConfig, h.SSH, err)
	}
	t.Port, t.Identity, t.KnownHosts = h.Port, h.Identity, h.KnownHosts
	if _, err := t.Args([]string{remoteBinary(h), AgentArg}); err != nil {
		return nil, fmt.Errorf("%w: remote %q: %w", ErrConfig, h.SSH, err)
	}
	if log == nil {
		log = slog.Default()
	}
	port := h.Port
	if port == 0 {
		port = sshlaunch.DefaultPort
	}
	r := &remoteGroup{
		g: g, h: h, ids: slices.Clone(ids), indexBase: indexBase, target: t, host: h.SSH,
		log:            log.With("group", g.Name, "host", h.SSH),
		statusInterval: defaultStatusInterval,
		readyCh:        make(chan struct{}),
		killCh:         make(chan struct{}),
		suspended:      g.Suspended,
		maxRun:         g.MaxRunningTime,
		st:             ControlRemote{Host: h.SSH, Port: port, Workers: h.Count},
	}
	return r, nil
}

func remoteBinary(h *RemoteHost) string {
	if h.Binary == "" {
		return "mini-cluster"
	}
	return h.Binary
}

// ready is closed once an agent first reported every worker ready.
func (r *remoteGroup) ready() <-chan struct{} { return r.readyCh }

// status returns the host's last known state.
func (r *remoteGroup) status() ControlRemote {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.st
	st.Slots = slices.Clone(r.st.Slots)
	return st
}

// restart asks the agent for a graceful restart of the host's workers.
func (r *remoteGroup) restart() error { return r.command(&agentMsg{Type: "restart"}) }

// kill ends the host's session at once, its agent told to SIGKILL its
// workers' process groups (the fleet's second stop signal). Idempotent.
func (r *remoteGroup) kill() { r.killOnce.Do(func() { close(r.killCh) }) }

// suspend stops the host's workers; a later session starts suspended too.
func (r *remoteGroup) suspend() error { return r.setSuspended(true) }

// resume starts the host's workers again; a later session starts them too.
func (r *remoteGroup) resume() error { return r.setSuspended(false) }

// setSuspended remembers the state for later sessions and forwards it to
// the current one. Without a session it only remembers; if the agent
// refuses (a restart in flight), the previous state is kept.
func (r *remoteGroup) setSuspended(on bool) error {
	typ := "resume"
	if on {
		typ = "suspend"
	}
	return rememberAndForward(r, &r.suspended, on, &agentMsg{Type: typ})
}

// setMaxRunningTime remembers the maximum running time for later sessions
// and forwards it to the current one, like setSuspended.
func (r *remoteGroup) setMaxRunningTime(d time.Duration) error {
	if err := checkMaxRunning(d); err != nil {
		return err
	}
	return rememberAndForward(r, &r.maxRun, d, &agentMsg{Type: "max_running_time", MaxRunning: d})
}

// rememberAndForward sets *field (guarded by r.mu) to v for later sessions
// and sends msg to the current one. Without a session it only remembers;
// if the agent refuses, the previous value is kept.
func rememberAndForward[T any](r *remoteGroup, field *T, v T, msg *agentMsg) error {
	r.mu.Lock()
	prev := *field
	*field = v
	r.mu.Unlock()
	err := r.command(msg)
	if err != nil && !errors.Is(err, ErrRemoteDown) {
		r.mu.Lock()
		*field = prev
		r.mu.Unlock()
		return err
	}
	return nil
}

// command sends msg, numbered, and waits for its ack.
func (r *remoteGroup) command(msg *agentMsg) error {
	typ := msg.Type
	r.mu.Lock()
	s := r.sess
	r.mu.Unlock()
	if s == nil {
		return fmt.Errorf("%w: %s (group %s)", ErrRemoteDown, r.host, r.g.Name)
	}
	ack := make(chan error, 1)
	s.mu.Lock()
	s.seq++
	seq := s.seq
	s.pending[seq] = ack
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, seq)
		s.mu.Unlock()
	}()
	msg.Seq = seq
	if err := s.w.WriteFrame(appendAgentMsg(nil, msg)); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrRemoteDown, r.host, err)
	}
	timer := time.NewTimer(r.shutdownTimeout() + remoteAckTimeout)
	defer timer.Stop()
	select {
	case err := <-ack:
		return err
	case <-s.done:
		return fmt.Errorf("%w: %s: session ended before the agent answered %s", ErrRemoteDown, r.host, typ)
	case <-timer.C:
		return fmt.Errorf("%w: %s: no answer to %s", ErrAgentFailed, r.host, typ)
	}
}

func (r *remoteGroup) shutdownTimeout() time.Duration {
	if r.g.ShutdownTimeout > 0 {
		return r.g.ShutdownTimeout
	}
	return supervise.DefaultStopTimeout
}

// run keeps an agent session up until ctx is done, reconnecting with the
// group's backoff (1 s doubling to 30 s, with jitter, by default). A
// refused host key or key is not a passing fault: the next attempt waits
// the longest delay, and every attempt is logged as an error naming the
// cause. On return the agent has been asked to stop its workers and ssh
// has exited.
func (r *remoteGroup) run(ctx context.Context) {
	// The group's backoff, with supervise's defaults, paces reconnects too.
	b := r.g.Backoff.WithDefaults()
	minDelay, maxDelay, jitter := b.Min, b.Max, b.Jitter
	delay := minDelay
	for ctx.Err() == nil {
		began := time.Now()
		err := r.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) >= remoteStableAfter {
			delay = minDelay
		}
		if errors.Is(err, sshlaunch.ErrHostKey) || errors.Is(err, sshlaunch.ErrAuth) {
			delay = maxDelay
			r.log.Error("remote host refused: fix known_hosts or the key; retrying", "err", err, "retry_in", delay)
		} else {
			r.log.Warn("agent session ended; reconnecting", "err", err, "retry_in", delay)
		}
		d := delay
		if jitter > 0 {
			d += time.Duration(rand.Float64() * jitter * float64(delay))
		}
		d = min(d, maxDelay)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(delay*2, maxDelay)
	}
}

// startSpec builds the spec of a new session.
func (r *remoteGroup) startSpec() *agentStart {
	g := r.g
	r.mu.Lock()
	suspended, maxRun := r.suspended, r.maxRun
	r.mu.Unlock()
	return &agentStart{
		Version: agentVersion, Group: g.Name, Program: g.Program, Args: g.Args,
		IDs: r.ids, IndexBase: r.indexBase, GroupSize: g.Size(), Params: g.Params,
		Env: g.Env, Listen: g.Listen, Mode: g.Mode, Ready: g.Ready, Strategy: g.Strategy,
		Restart: g.Restart, Backoff: g.Backoff, Heartbeat: g.Heartbeat,
		ShutdownTimeout: g.ShutdownTimeout, StartTimeout: g.StartTimeout,
		MaxRunningTime: maxRun, StatusInterval: r.statusInterval,
		Suspended: suspended,
	}
}

// heldChildren are children this process started itself and waits for
// (the ssh clients of remote groups): no supervisor's orphan reaper may
// take them (see holdChild).
var heldChildren sync.Map // pid -> struct{}

// holdChild keeps the orphan reapers of every local group's supervisor
// (subreapers as PID 1) away from child pid until releaseChild, once the
// caller has waited for it.
func holdChild(pid int)    { heldChildren.Store(pid, struct{}{}) }
func releaseChild(pid int) { heldChildren.Delete(pid) }

// session runs one agent session and returns why it ended (nil when ctx
// ended it).
func (r *remoteGroup) session(ctx context.Context) (err error) {
	// ssh's own context outlives ctx by the stop grace: on ctx done the
	// agent is asked to stop its workers first.
	sshCtx, kill := context.WithCancel(context.Background())
	defer kill()
	cmd, err := r.target.Command(sshCtx, []string{remoteBinary(r.h), AgentArg})
	if err != nil {
		return r.ended(err)
	}
	if r.env != nil {
		cmd.Env = append(os.Environ(), r.env...)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return r.ended(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		stdin.Close()
		return r.ended(err)
	}
	stderr := &stderrLog{log: r.log}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return r.ended(fmt.Errorf("cluster: ssh: %w", err))
	}
	// As PID 1 the local groups' supervisors reap orphans: this child is
	// ours to wait for (its exec succeeded moments ago; it cannot have
	// exited and been taken in between).
	holdChild(cmd.Process.Pid)
	s := &remoteSession{
		w:       ipcframe.NewWriter(stdin, &ipcframe.WriterOptions{MaxFrame: maxAgentFrame}),
		done:    make(chan struct{}),
		pending: make(map[int64]chan error),
	}
	r.mu.Lock()
	r.st.Sessions++
	r.sshPID = cmd.Process.Pid
	r.mu.Unlock()
	r.log.Info("agent session starting", "target", r.target.String(), "ssh_pid", cmd.Process.Pid)

	// The spec may block until ssh connected; the reader runs meanwhile.
	frames := make(chan error, 1)
	alive := make(chan struct{}, 1)
	go func() { frames <- r.readFrames(stdout, s, alive) }()
	spec := r.startSpec()
	s.suspended, s.maxRun = spec.Suspended, spec.MaxRunningTime
	specErr := s.w.WriteFrame(appendAgentMsg(nil, &agentMsg{Type: "start", Start: spec}))

	// agentSilentIntervals status intervals without a frame end a
	// session: the agent or the link is stuck (ssh's own keepalive takes
	// up to three ServerAliveIntervals).
	silent := agentSilentIntervals * r.statusInterval
	connect := r.target.ConnectTimeout
	if connect <= 0 {
		connect = sshlaunch.DefaultConnectTimeout
	}
	watchdog := time.NewTimer(silent + connect)
	defer watchdog.Stop()
	var why error
	stopSent := false
	ctxDone := ctx.Done()
	killC := r.killCh
	// hard is armed when ssh was told to end: if it has not exited
	// KillDelay later, it is killed outright (exec's WaitDelay applies
	// only inside Wait, which must come after the last read).
	var hard <-chan time.Time
	end := func() {
		kill()
		if hard == nil {
			hard = time.After(sshlaunch.KillDelay)
		}
	}
	// sendOff writes a stop or kill frame off the loop: a stuck link must
	// not keep the watchdog from firing. The write fails once ssh is gone.
	sendOff := func(typ string) {
		go func() {
			if err := s.w.WriteFrame(appendAgentMsg(nil, &agentMsg{Type: typ})); err != nil {
				kill()
			}
		}()
	}
	if specErr != nil {
		why = fmt.Errorf("cluster: sending the start spec: %w", specErr)
		end()
	} else {
		go r.ping(s)
	}
loop:
	for {
		select {
		case why2 := <-frames:
			if why == nil {
				why = why2
			}
			break loop
		case <-alive:
			if !stopSent {
				watchdog.Reset(silent)
			}
		case <-watchdog.C:
			if stopSent {
				r.log.Warn("agent did not stop in time; killing ssh")
			} else {
				why = fmt.Errorf("%w: agent silent for %v", ErrAgentProtocol, silent)
			}
			end()
		case <-hard:
			_ = cmd.Process.Kill()
		case <-killC:
			killC = nil
			stopSent = true
			sendOff("kill")
			// Time for the agent to kill its workers and report; then
			// ssh goes, and the agent stops anyway at EOF.
			watchdog.Reset(remoteStopGrace)
		case <-ctxDone:
			ctxDone = nil
			if killC == nil {
				continue // killed already: no grace to wait for
			}
			stopSent = true
			sendOff("stop")
			watchdog.Reset(r.shutdownTimeout() + remoteStopGrace)
		}
	}
	// The reader saw EOF (or gave up): ssh is exiting or must be made to.
	stdin.Close()
	if why != nil {
		kill()
	}
	waitDone := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		releaseChild(cmd.Process.Pid)
		waitDone <- err
	}()
	var waitErr error
	select {
	case waitErr = <-waitDone:
	case <-time.After(r.shutdownTimeout() + remoteStopGrace):
		kill()
		waitErr = <-waitDone
	}
	close(s.done)
	r.mu.Lock()
	r.sess = nil
	r.sshPID = 0
	r.st.Connected, r.st.AgentPID = false, 0
	r.st.Slots, r.st.ReadyWorkers = nil, 0
	r.mu.Unlock()
	if ctx.Err() != nil && why == nil {
		r.log.Info("agent session closed")
		return nil
	}
	if cerr := r.target.Classify(waitErr, stderr.tail()); cerr != nil {
		var se *sshlaunch.SessionError
		if errors.As(cerr, &se) || why == nil {
			why = cerr
		} else {
			why = fmt.Errorf("%w (ssh: %v)", why, cerr)
		}
	}
	if why == nil {
		why = errors.New("cluster: agent session ended")
	}
	return r.ended(why)
}

// ping is the master's heartbeat to the agent: after a link dropped
// without a FIN, sshd may keep the session (and the agent's stdin) open
// for hours, and the agent's only way to notice is the pings stopping.
// A write stuck on a full pipe ends when the session closes stdin.
func (r *remoteGroup) ping(s *remoteSession) {
	t := time.NewTicker(r.statusInterval)
	defer t.Stop()
	frame := appendAgentMsg(nil, &agentMsg{Type: "ping"})
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			if err := s.w.WriteFrame(frame); err != nil {
				return
			}
		}
	}
}

// ended records why a session ended or failed.
func (r *remoteGroup) ended(err error) error {
	r.mu.Lock()
	r.st.LastError = err.Error()
	r.mu.Unlock()
	return err
}

// readFrames handles the agent's frames until the stream ends; it returns
// why the session should end (nil on a clean exit frame followed by EOF).
func (r *remoteGroup) readFrames(stdout io.Reader, s *remoteSession, alive chan<- struct{}) error {
	rd := ipcframe.NewReader(stdout, &ipcframe.ReaderOptions{MaxFrame: maxAgentFrame})
	var (
		p      fastjson.Parser
		buf    []byte
		msg    agentMsg
		result error
		exited bool
	)
	fail := func(err error) {
		if result == nil {
			result = err
		}
	}
	for {
		var err error
		buf, err = rd.ReadFrame(buf[:0])
		if err != nil {
			if !errors.Is(err, io.EOF) {
				fail(fmt.Errorf("%w: %w", ErrAgentProtocol, err))
			} else if !exited {
				fail(errors.New("cluster: agent session ended without an exit frame"))
			}
			// Drain so ssh never blocks on a full pipe before Wait.
			_, _ = io.Copy(io.Discard, io.LimitReader(stdout, 1<<20))
			return result
		}
		select {
		case alive <- struct{}{}:
		default:
		}
		if err := decodeAgentMsg(&p, buf, &msg); err != nil {
			fail(err)
			r.log.Error("bad frame from the agent; ending the session", "err", err)
			return result
		}
		switch msg.Type {
		case "started":
			r.mu.Lock()
			r.sess = s
			r.st.Connected, r.st.AgentPID, r.st.LastError = true, msg.PID, ""
			want, wantMax := r.suspended, r.maxRun
			r.mu.Unlock()
			r.log.Info("agent started", "agent_pid", msg.PID, "addrs", msg.Addrs)
			if want != s.suspended {
				// A suspend or resume came between the spec and now,
				// when there was no session to forward it to.
				go func() {
					if err := r.setSuspended(want); err != nil {
						r.log.Warn("forwarding suspend/resume to the new agent", "suspend", want, "err", err)
					}
				}()
			}
			if wantMax != s.maxRun {
				// Likewise for a maximum running time.
				go func() {
					if err := r.setMaxRunningTime(wantMax); err != nil {
						r.log.Warn("forwarding the maximum running time to the new agent", "max_running_time", wantMax, "err", err)
					}
				}()
			}
		case "status":
			r.onStatus(&msg)
		case "log":
			attrs := make([]any, 0, len(msg.Attrs))
			for _, a := range msg.Attrs {
				// r.log names the group and host already: the agent's
				// own "group" would be a duplicate key (two in one JSON
				// log object), and a lying agent could pass its lines off
				// as another group's or host's.
				if a.Key == "group" || a.Key == "host" {
					continue
				}
				attrs = append(attrs, slog.Attr{Key: a.Key, Value: a.Value})
			}
			r.log.Log(context.Background(), msg.Level, msg.Msg, attrs...)
		case "ack":
			s.mu.Lock()
			ch := s.pending[msg.Seq]
			s.mu.Unlock()
			if ch != nil {
				var err error
				if msg.Error != "" {
					err = &AgentError{Message: msg.Error}
				}
				// A repeated ack (a confused agent) must not block the
				// reader: the channel holds the one answer awaited.
				select {
				case ch <- err:
				default:
				}
			}
		case "error":
			fail(&AgentError{Message: msg.Error})
			r.log.Error("agent failed", "err", msg.Error)
		case "exit":
			exited = true
			if msg.Error != "" {
				fail(&AgentError{Message: msg.Error})
			}
		default:
			fail(fmt.Errorf("%w: unexpected %q frame from the agent", ErrAgentProtocol, msg.Type))
			return result
		}
	}
}

func (r *remoteGroup) onStatus(msg *agentMsg) {
	st := msg.Status
	for i := range st.Slots {
		sl := &st.Slots[i]
		if sl.Slot < len(r.ids) {
			sl.ID = r.ids[sl.Slot]
		}
		sl.Index = r.indexBase + sl.Slot
	}
	r.mu.Lock()
	r.st.Slots, r.st.ReadyWorkers = st.Slots, st.ReadyWorkers
	r.st.AgentPID = st.PID
	prev := r.dropped
	r.dropped = msg.Dropped
	r.mu.Unlock()
	if msg.Dropped > prev {
		r.log.Warn("agent dropped log records (slow link)", "dropped", msg.Dropped-prev)
	}
	if msg.Ready && st.ReadyWorkers >= st.Workers {
		r.readyOnce.Do(func() { close(r.readyCh) })
	}
}

// stderrLog logs ssh's stderr (ssh's own diagnostics and the agent's) line
// by line, and keeps its tail for Classify. It is the Stderr of exec.Cmd,
// so Write is called from one goroutine.
type stderrLog struct {
	log  *slog.Logger
	mu   sync.Mutex
	buf  []byte // tail, at most remoteStderrTail bytes
	line []byte
}

func (w *stderrLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if len(w.buf) > remoteStderrTail {
		w.buf = append(w.buf[:0], w.buf[len(w.buf)-remoteStderrTail:]...)
	}
	for _, c := range p {
		if c == '\n' {
			w.flush()
			continue
		}
		if len(w.line) < remoteLineMax {
			w.line = append(w.line, c)
		}
	}
	return len(p), nil
}

func (w *stderrLog) flush() {
	if l := bytes.TrimSpace(w.line); len(l) > 0 {
		w.log.Warn("ssh stderr", "line", string(l), "stream", "ssh")
	}
	w.line = w.line[:0]
}

func (w *stderrLog) tail() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.buf)
}

var _ io.Writer = (*stderrLog)(nil)
