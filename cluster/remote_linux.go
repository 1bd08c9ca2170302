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
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	// the grace period). A suspend, resume or max_running_time left
	// without an answer ends the session (see commandOn).
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
	// remoteExitGrace is how long ssh may take to exit by itself once the
	// agent's stream ended: its exit status says why (the host refused,
	// the remote binary is missing), a status that killing it would lose.
	remoteExitGrace = time.Second
	// remoteSyncTries and remoteSyncPause pace the forwarding of a state
	// set while a session's agent was starting; an agent that refuses it
	// that often has its session ended, so that the next one starts with
	// the state the master remembers.
	remoteSyncTries = 5
	remoteSyncPause = 200 * time.Millisecond
	// remoteMinReconnect is the least wait between two sessions of a
	// host, whatever the group's backoff says: a backoff of milliseconds
	// suits local workers, whose restarts the burst limit throttles, but a
	// host that refuses at once would then have ssh spawned hundreds of
	// times a second (TESTPLAN invariant 5: at least 1 s between spawns).
	remoteMinReconnect = time.Second
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

	// statusInterval is the agent's heartbeat; silence how long a session
	// may go without a frame, either way, before it is ended; env is added
	// to the ssh client's environment (tests mark it for their process
	// census).
	statusInterval time.Duration
	silence        time.Duration
	env            []string
	// ackTimeout is how long a command waits for its ack beyond the
	// shutdown timeout (remoteAckTimeout; tests shorten it).
	ackTimeout time.Duration

	readyOnce sync.Once
	readyCh   chan struct{}
	// killCh is closed by kill: sessions end at once and agents kill
	// their workers.
	killOnce sync.Once
	killCh   chan struct{}

	// setMu serialises the commands that change remembered state
	// (suspend, resume, max_running_time) with each other and with the
	// forwarding of that state to a new agent, so that a refusal restores
	// exactly what the refused call replaced.
	setMu sync.Mutex

	mu        sync.Mutex
	suspended bool
	maxRun    time.Duration  // the maximum running time later sessions start with
	sess      *remoteSession // nil between sessions
	st        ControlRemote
	dropped   int64 // the agent's dropped log records, last reported
	// gen and restarting are the agent's generation and restart state,
	// as last reported (gen outlives the session, restarting does not).
	gen        int
	restarting bool
	sshPID     int // the current session's ssh client, 0 between sessions

	// badLog paces the warnings about log records the master refused
	// (one a second): a worker may log such records in a loop.
	badLog warnLimiter
}

// remoteSession is one ssh connection to an agent.
type remoteSession struct {
	w    *ipcframe.Writer
	done chan struct{} // closed when the session's frames end
	// abort ends the session with the error sent (buffered, one).
	abort chan error
	// stale is set once the session is being ended because its agent's
	// state is not the group's (see abandon): nothing more is forwarded
	// to it, the next session's spec carries the remembered state.
	stale atomic.Bool

	// suspended and maxRun are the agent's state: what the start spec
	// asked for, then what it acknowledged. Guarded by the group's setMu.
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
	// An agent refuses a spec beyond its limits at every session: said
	// now, once, instead of retried for ever.
	if err := checkRemoteSpec(g, h.Count); err != nil {
		return nil, fmt.Errorf("%w: group %s: remote %s: %w", ErrConfig, g.Name, h.SSH, err)
	}
	// Without an ssh client no session can ever start: fail start-up as
	// a whole instead of retrying every 30 s.
	if _, err := exec.LookPath("ssh"); err != nil {
		return nil, fmt.Errorf("%w: group %s: remote %s: no ssh client: %w", ErrConfig, g.Name, h.SSH, err)
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
		silence:        defaultHeartbeatTimeout,
		ackTimeout:     remoteAckTimeout,
		readyCh:        make(chan struct{}),
		killCh:         make(chan struct{}),
		suspended:      g.Suspended,
		maxRun:         g.MaxRunningTime,
		st:             ControlRemote{Host: h.SSH, Port: port, Workers: h.Count},
	}
	if h.HeartbeatTimeout > 0 {
		r.silence = h.HeartbeatTimeout
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

// generation returns the agent's generation and whether it is restarting,
// as last reported (0, false before any report).
func (r *remoteGroup) generation() (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen, r.restarting
}

// restart asks the agent for a graceful restart of the host's workers.
func (r *remoteGroup) restart() error { return r.restartCtx(context.Background()) }

// restartCtx is restart, its wait for the agent's ack ended early when
// ctx is done (the control client that asked went away): the agent may
// still restart, and nothing the master remembers depends on it.
func (r *remoteGroup) restartCtx(ctx context.Context) error {
	r.mu.Lock()
	s := r.sess
	r.mu.Unlock()
	return r.commandOn(ctx, s, &agentMsg{Type: "restart"})
}

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
	return rememberAndForward(r, &r.suspended, on, suspendMsg(on))
}

func suspendMsg(on bool) *agentMsg {
	if on {
		return &agentMsg{Type: "suspend"}
	}
	return &agentMsg{Type: "resume"}
}

// setMaxRunningTime remembers the maximum running time for later sessions
// and forwards it to the current one, like setSuspended.
func (r *remoteGroup) setMaxRunningTime(d time.Duration) error {
	if err := checkMaxRunning(d); err != nil {
		return err
	}
	return rememberAndForward(r, &r.maxRun, d, maxRunMsg(d))
}

func maxRunMsg(d time.Duration) *agentMsg {
	return &agentMsg{Type: "max_running_time", MaxRunning: d}
}

// rememberAndForward sets *field (guarded by r.mu) to v for later sessions
// and sends msg to the current one (commandOn records the agent's new
// state). Without a session, or with one being ended, it only remembers:
// the next session's spec carries v. If the agent refuses, or does not
// answer, the previous value is kept (calls are serialised by r.setMu, so
// that is the value this call replaced) and the caller told it failed.
// An agent that did not answer may still apply msg late, its ack dropped,
// so commandOn has ended its session then: the next one starts with the
// previous value, the one the caller was told stands, instead of the group
// reporting one state while the host runs in the other.
func rememberAndForward[T any](r *remoteGroup, field *T, v T, msg *agentMsg) error {
	r.setMu.Lock()
	defer r.setMu.Unlock()
	r.mu.Lock()
	prev := *field
	*field = v
	s := r.sess
	r.mu.Unlock()
	if s == nil || s.stale.Load() {
		return nil
	}
	if err := r.commandOn(context.Background(), s, msg); err != nil && !errors.Is(err, ErrRemoteDown) {
		r.mu.Lock()
		*field = prev
		r.mu.Unlock()
		return err
	}
	return nil
}

// syncSession brings a new session's agent to the state the master
// remembers, when a suspend, resume or maximum running time came between
// its start spec and its "started" (no session to forward it to then).
// An explicit refusal is retried; if the agent keeps refusing, the session
// is ended (the next one starts with the remembered state), for a group
// that says "suspended" while the host's workers run would be a lie. A
// command without an answer is not retried: commandOn ended the session
// already, and a retry would hold setMu, and with it every suspend, resume
// and maximum running time of the group, for another ack timeout.
func (r *remoteGroup) syncSession(s *remoteSession) {
	// apply reports whether the session is still worth syncing.
	apply := func(msg func() (*agentMsg, bool)) bool {
		for try := 1; ; try++ {
			r.setMu.Lock()
			if s.stale.Load() {
				r.setMu.Unlock()
				return false
			}
			m, differs := msg()
			if !differs {
				r.setMu.Unlock()
				return true
			}
			err := r.commandOn(context.Background(), s, m)
			r.setMu.Unlock()
			var refused *AgentError
			switch {
			case err == nil:
				continue // applied; msg() now finds no difference
			case !errors.As(err, &refused):
				// The session is gone, or being ended for the agent's
				// silence: the next spec carries the state.
				return false
			case try >= remoteSyncTries:
				err = fmt.Errorf("cluster: the new agent refused %s %d times: %w", m.Type, try, err)
				r.log.Warn("ending the session: its agent's state differs from the group's", "err", err)
				s.abandon(err)
				return false
			}
			select {
			case <-s.done:
				return false
			case <-time.After(remoteSyncPause):
			}
		}
	}
	if !apply(func() (*agentMsg, bool) {
		r.mu.Lock()
		want := r.suspended
		r.mu.Unlock()
		if want == s.suspended {
			return nil, false
		}
		return suspendMsg(want), true
	}) {
		return
	}
	apply(func() (*agentMsg, bool) {
		r.mu.Lock()
		want := r.maxRun
		r.mu.Unlock()
		if want == s.maxRun {
			return nil, false
		}
		return maxRunMsg(want), true
	})
}

// commandOn sends msg to session s (nil: none), numbered, and waits for
// its ack. A successful suspend, resume or max_running_time is recorded
// as the agent's state; one left without an answer ends the session (the
// agent may still apply it, and its late ack finds nobody waiting: the
// master could no longer tell what the host runs). ctx done ends the wait
// too; only restart passes one that can be (a state change must learn
// its outcome, or end the session as above).
func (r *remoteGroup) commandOn(ctx context.Context, s *remoteSession, msg *agentMsg) error {
	typ := msg.Type
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
	timer := time.NewTimer(r.shutdownTimeout() + r.ackTimeout)
	defer timer.Stop()
	select {
	case err := <-ack:
		if err == nil {
			switch typ {
			case "suspend", "resume":
				s.suspended = typ == "suspend"
			case "max_running_time":
				s.maxRun = msg.MaxRunning
			}
		}
		return err
	case <-s.done:
		return fmt.Errorf("%w: %s: session ended before the agent answered %s", ErrRemoteDown, r.host, typ)
	case <-ctx.Done():
		return fmt.Errorf("cluster: %s: no longer waiting for the agent to answer %s: %w", r.host, typ, ctx.Err())
	case <-timer.C:
		switch typ {
		case "suspend", "resume", "max_running_time":
			err := fmt.Errorf("%w: %s: no answer to %s; ending the session, whose agent may still apply it", ErrAgentFailed, r.host, typ)
			r.log.Warn("ending the session: its agent's state is unknown", "err", err)
			s.abandon(err)
			return err
		}
		return fmt.Errorf("%w: %s: no answer to %s", ErrAgentFailed, r.host, typ)
	}
}

// abandon ends session s with err: its agent's state is not (or no longer
// known to be) the group's. Later commands that set state only remember
// it, for the next session's spec.
func (s *remoteSession) abandon(err error) {
	s.stale.Store(true)
	select {
	case s.abort <- err:
	default:
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
	// The group's backoff, with supervise's defaults, paces reconnects
	// too, never faster than remoteMinReconnect: the burst limit, which
	// throttles local respawns, does not apply to sessions.
	b := r.g.Backoff.WithDefaults()
	minDelay, maxDelay, jitter := max(b.Min, remoteMinReconnect), max(b.Max, remoteMinReconnect), b.Jitter
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
		t := time.NewTimer(reconnectDelay(delay, maxDelay, jitter, rand.Float64()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		// Not min(delay*2, maxDelay): that wraps negative for a Backoff.Max
		// near the largest Duration.
		if delay > maxDelay/2 {
			delay = maxDelay
		} else {
			delay *= 2
		}
	}
}

// reconnectDelay is the wait before the next session: delay plus up to
// jitter times itself (rnd in [0, 1) picks how much), at most maxDelay.
// The jitter is computed in float64 and capped before it becomes a
// Duration: Backoff.Jitter is not bounded for Go callers, and a jitter
// near 3e8 times a 30 s delay converts to a negative Duration, which would
// reconnect at once, in a loop. A NaN jitter counts as none.
func reconnectDelay(delay, maxDelay time.Duration, jitter, rnd float64) time.Duration {
	d := min(delay, maxDelay)
	if jitter > 0 {
		extra := rnd * jitter * float64(delay)
		if !(extra < float64(maxDelay-d)) { // also +Inf and NaN (0 × +Inf)
			return maxDelay
		}
		d += time.Duration(max(extra, 0))
	}
	return d
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
		HeartbeatTimeout: r.silence, Suspended: suspended,
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
	sshCtx, cancelSSH := context.WithCancel(context.Background())
	defer cancelSSH()
	cmd, err := r.target.Command(sshCtx, []string{remoteBinary(r.h), AgentArg})
	if err != nil {
		return r.ended(err)
	}
	if r.env != nil {
		cmd.Env = append(os.Environ(), r.env...)
	}
	// Both pipes are made here (not by StdinPipe and StdoutPipe, whose
	// failure after the other's leaks the child's end): every end is
	// closed on every path, and Wait never closes the read end under the
	// reader.
	inR, inW, err := os.Pipe()
	if err != nil {
		return r.ended(fmt.Errorf("cluster: ssh stdin: %w", err))
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return r.ended(fmt.Errorf("cluster: ssh stdout: %w", err))
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	stderr := &stderrLog{log: r.log}
	cmd.Stderr = stderr
	startErr := cmd.Start()
	// ssh has its copies now (or failed): the child's ends are not ours.
	inR.Close()
	outW.Close()
	if startErr != nil {
		inW.Close()
		outR.Close()
		return r.ended(fmt.Errorf("cluster: ssh: %w", startErr))
	}
	defer outR.Close()
	// As PID 1 the local groups' supervisors reap orphans: this child is
	// ours to wait for (its exec succeeded moments ago; it cannot have
	// exited and been taken in between).
	holdChild(cmd.Process.Pid)
	spec := r.startSpec()
	s := &remoteSession{
		w:         ipcframe.NewWriter(inW, &ipcframe.WriterOptions{MaxFrame: maxAgentFrame}),
		done:      make(chan struct{}),
		abort:     make(chan error, 1),
		pending:   make(map[int64]chan error),
		suspended: spec.Suspended,
		maxRun:    spec.MaxRunningTime,
	}
	r.mu.Lock()
	r.st.Sessions++
	r.sshPID = cmd.Process.Pid
	r.mu.Unlock()
	r.log.Info("agent session starting", "target", r.target.String(), "ssh_pid", cmd.Process.Pid)

	frames := make(chan framesEnd, 1)
	alive := make(chan struct{}, 1)
	go func() { frames <- r.readFrames(outR, s, alive) }()
	// The spec is written off the loop: ssh reads its stdin only once the
	// session channel is open, so a spec beyond the pipe's capacity
	// (64 KiB; params alone may be that) would block until then, or until
	// ssh exits, with stop and kill unheard.
	specFrame := appendAgentMsg(nil, &agentMsg{Type: "start", Start: spec})
	specDone := make(chan error, 1)
	go func() { specDone <- s.w.WriteFrame(specFrame) }()

	// A session without a frame for r.silence is ended: the agent or the
	// link is stuck (ssh's own keepalive takes up to three
	// ServerAliveIntervals).
	silent := r.silence
	connect := r.target.ConnectTimeout
	if connect <= 0 {
		connect = sshlaunch.DefaultConnectTimeout
	}
	watchdog := time.NewTimer(silent + connect)
	defer watchdog.Stop()
	var (
		why      error
		fe       framesEnd
		stopSent bool
		specSent bool
		// killed: the master ended ssh, so ssh's exit status says
		// nothing about the session.
		killed  atomic.Bool
		ctxDone = ctx.Done()
		killC   = r.killCh
		// hard is armed when ssh was told to end: if it has not exited
		// KillDelay later, it is killed outright.
		hard <-chan time.Time
	)
	kill := func() {
		killed.Store(true)
		cancelSSH()
	}
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
				cancelSSH()
			}
		}()
	}
	// stopAgent asks the agent to stop (or kill) its workers; before the
	// spec went out there is no agent to ask, and ssh just ends.
	stopAgent := func(typ string) {
		stopSent = true
		if specDone != nil {
			end()
			return
		}
		sendOff(typ)
	}
loop:
	for {
		select {
		case err := <-specDone:
			specDone = nil
			// A failed write means ssh went away (a refused host key):
			// the reader sees the end, and ssh's status says why.
			if err == nil {
				specSent = true
				go r.ping(s)
			}
		case fe = <-frames:
			// An agent that never got its spec (the master stopped
			// first) has nothing to say about the session.
			if why == nil && !(stopSent && !specSent) {
				why = fe.err
			}
			break loop
		case <-alive:
			if !stopSent {
				watchdog.Reset(silent)
			}
		case <-watchdog.C:
			if stopSent {
				r.log.Warn("agent did not stop in time; killing ssh")
			} else if why == nil {
				why = fmt.Errorf("%w: agent silent for %v", ErrAgentProtocol, silent)
			}
			end()
		case <-hard:
			_ = cmd.Process.Kill()
		case err := <-s.abort:
			if why == nil {
				why = err
			}
			end()
		case <-killC:
			killC = nil
			stopAgent("kill")
			// Time for the agent to kill its workers and report; then
			// ssh goes, and the agent stops anyway at EOF.
			watchdog.Reset(remoteStopGrace)
		case <-ctxDone:
			ctxDone = nil
			if killC == nil {
				continue // killed already: no grace to wait for
			}
			stopAgent("stop")
			watchdog.Reset(r.shutdownTimeout() + remoteStopGrace)
		}
	}
	// The reader is done. Closing stdin tells a live agent the master is
	// gone; one whose stream broke the protocol is ended now, its error
	// already in hand.
	inW.Close()
	if !fe.eof {
		kill()
	}
	// ssh may still write (a live agent's frames): drained so that it
	// never blocks on a full pipe while exiting.
	drained := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, outR)
		close(drained)
	}()
	waitDone := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		releaseChild(cmd.Process.Pid)
		waitDone <- err
	}()
	// After the agent's stream ended, ssh exits by itself with the
	// session's status: given a moment, unless the master ended it.
	grace := r.shutdownTimeout() + remoteStopGrace
	if why != nil {
		grace = remoteExitGrace
	}
	var waitErr error
	select {
	case waitErr = <-waitDone:
	case <-time.After(grace):
		kill()
		waitErr = <-waitDone
	}
	outR.Close()
	<-drained
	close(s.done)
	r.mu.Lock()
	r.sess = nil
	r.sshPID = 0
	r.st.Connected, r.st.AgentPID = false, 0
	r.st.Slots, r.st.ReadyWorkers = nil, 0
	r.restarting = false
	r.mu.Unlock()
	if ctx.Err() != nil && why == nil {
		r.log.Info("agent session closed")
		return nil
	}
	// ssh's status is the session's word only when ssh ended by itself:
	// one the master killed exits 255 too ("Killed by signal 15").
	if !killed.Load() {
		if cerr := r.classify(waitErr, stderr.tail()); cerr != nil {
			var se *sshlaunch.SessionError
			var re *remoteExitError
			if errors.As(cerr, &se) || errors.As(cerr, &re) || why == nil {
				why = cerr
			} else {
				why = fmt.Errorf("%w (ssh: %v)", why, cerr)
			}
		}
	}
	if why == nil {
		why = errors.New("cluster: agent session ended")
	}
	return r.ended(why)
}

// framesEnd is how the reader of a session ended: why (nil after a clean
// exit frame), and whether the stream reached its end (else the master
// gave up on a live agent's stream).
type framesEnd struct {
	err error
	eof bool
}

// remoteExitError is a remote command the remote shell could not run:
// exit status 127 (not found) or 126 (not executable), with the shell's
// last line of stderr, which names the cause.
type remoteExitError struct {
	Command string
	Status  int
	Line    string
	Err     error // from Wait
}

func (e *remoteExitError) Error() string {
	what := "was not found"
	if e.Status == 126 {
		what = "could not be executed"
	}
	msg := fmt.Sprintf("cluster: remote command %s %s (exit status %d)", sshlaunch.Quote(e.Command), what, e.Status)
	if e.Line != "" {
		msg += ": " + e.Line
	}
	return msg
}

func (e *remoteExitError) Unwrap() error { return e.Err }

// classify is Target.Classify, with the shell's exit statuses for a
// command it could not run told apart.
func (r *remoteGroup) classify(waitErr error, tail []byte) error {
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) && (ee.ExitCode() == 126 || ee.ExitCode() == 127) {
		return &remoteExitError{Command: remoteBinary(r.h), Status: ee.ExitCode(), Line: lastLine(tail), Err: waitErr}
	}
	return r.target.Classify(waitErr, tail)
}

// lastLine returns the last non-empty line of b, without control
// characters, at most remoteLineMax bytes: text from another host.
func lastLine(b []byte) string {
	lines := bytes.Split(b, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		l := bytes.TrimSpace(lines[i])
		if len(l) == 0 {
			continue
		}
		out := make([]byte, 0, min(len(l), remoteLineMax))
		for _, c := range l {
			if len(out) == remoteLineMax {
				break
			}
			if c >= 0x20 && c != 0x7f {
				out = append(out, c)
			}
		}
		return strings.ToValidUTF8(string(out), "")
	}
	return ""
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
// why the session should end (nil on a clean exit frame followed by EOF)
// and whether the stream ended, or the reader gave up on it at once (a
// protocol error: the session ends with it, not after the watchdog).
func (r *remoteGroup) readFrames(stdout io.Reader, s *remoteSession, alive chan<- struct{}) framesEnd {
	rd := ipcframe.NewReader(stdout, &ipcframe.ReaderOptions{MaxFrame: maxAgentFrame})
	var (
		p       fastjson.Parser
		buf     []byte
		msg     agentMsg
		result  error
		exited  bool
		started bool
	)
	// A new agent counts its dropped log records from 0: the last
	// session's count would hide (or, being higher, mute) this one's.
	r.mu.Lock()
	r.dropped = 0
	r.mu.Unlock()
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
				r.log.Error("bad frame from the agent; ending the session", "err", err)
				return framesEnd{result, false}
			}
			if !exited {
				fail(errors.New("cluster: agent session ended without an exit frame"))
			}
			return framesEnd{result, true}
		}
		select {
		case alive <- struct{}{}:
		default:
		}
		if err := decodeAgentMsg(&p, buf, &msg); err != nil {
			if errors.Is(err, errAgentLogRecord) {
				// One record lost, the stream intact: ending the session
				// would restart every worker of the host, and the worker
				// that logged it would end the next one too.
				r.badLog.warn(r.log, "dropped a log record from the agent", "err", err)
				continue
			}
			fail(err)
			r.log.Error("bad frame from the agent; ending the session", "err", err)
			return framesEnd{result, false}
		}
		switch msg.Type {
		case "started":
			if started {
				// One per session: each would start a syncSession, and an
				// agent repeating it (buggy or hostile) could pile up
				// goroutines without bound.
				fail(fmt.Errorf("%w: a second \"started\" frame from the agent", ErrAgentProtocol))
				r.log.Error("bad frame from the agent; ending the session", "err", result)
				return framesEnd{result, false}
			}
			started = true
			r.mu.Lock()
			r.sess = s
			r.st.Connected, r.st.AgentPID, r.st.LastError = true, msg.PID, ""
			r.mu.Unlock()
			r.log.Info("agent started", "agent_pid", msg.PID, "addrs", msg.Addrs)
			// A suspend, resume or maximum running time may have come
			// between the spec and now, with no session to forward it to.
			go r.syncSession(s)
		case "status":
			r.onStatus(&msg)
		case "log":
			r.log.Log(context.Background(), msg.Level, msg.Msg, relayedAttrs(msg.Attrs)...)
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
			r.log.Error("bad frame from the agent; ending the session", "err", result)
			return framesEnd{result, false}
		}
	}
}

// relayedAttrs are the attributes of an agent's log record as the master
// logs them. Handlers write duplicate keys as they come and readers of
// JSON logs keep the last, so keys the master's record has already are
// not taken from another host: "group" and "host" (r.log names them; the
// agent's own "group" is dropped) and the handler's time, level, msg and
// source (kept as "agent.time" and so on); a repeated key keeps its first
// value.
func relayedAttrs(in []agentAttr) []any {
	out := make([]any, 0, len(in))
	seen := make(map[string]bool, len(in))
	for _, a := range in {
		key := a.Key
		switch key {
		case "group", "host":
			continue
		case slog.TimeKey, slog.LevelKey, slog.MessageKey, slog.SourceKey:
			key = "agent." + key
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, slog.Attr{Key: key, Value: a.Value})
	}
	return out
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
	r.gen, r.restarting = st.Generation, st.Restarting
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
