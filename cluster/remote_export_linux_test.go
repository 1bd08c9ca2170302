package cluster

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/handoff-go/handoff/ipcframe"
)

// RemoteGroup exposes the master side of a remote group to the external
// tests.
type RemoteGroup struct{ r *remoteGroup }

// NewRemoteGroup is newRemoteGroup; env is added to the ssh client's
// environment and interval, if positive, is the agent's status interval.
func NewRemoteGroup(g *GroupConfig, h *RemoteHost, ids []int, indexBase int, log *slog.Logger, env []string, interval time.Duration) (*RemoteGroup, error) {
	r, err := newRemoteGroup(g, h, ids, indexBase, log)
	if err != nil {
		return nil, err
	}
	r.env = env
	if interval > 0 {
		r.statusInterval = interval
	}
	return &RemoteGroup{r: r}, nil
}

func (g *RemoteGroup) Run(ctx context.Context)                 { g.r.run(ctx) }
func (g *RemoteGroup) Status() ControlRemote                   { return g.r.status() }
func (g *RemoteGroup) Restart() error                          { return g.r.restart() }
func (g *RemoteGroup) Suspend() error                          { return g.r.suspend() }
func (g *RemoteGroup) Resume() error                           { return g.r.resume() }
func (g *RemoteGroup) Ready() <-chan struct{}                  { return g.r.ready() }
func (g *RemoteGroup) Kill()                                   { g.r.kill() }
func (g *RemoteGroup) SetMaxRunningTime(d time.Duration) error { return g.r.setMaxRunningTime(d) }

// SetHeartbeatTimeout sets how long a session may go without a frame
// (the agent allows the master as long plus 2 s); call it before Run.
func (g *RemoteGroup) SetHeartbeatTimeout(d time.Duration) { g.r.silence = d }

// SetAckTimeout sets how long a command waits for its ack beyond the
// group's shutdown timeout; call it before Run or RemoteSession.
func (g *RemoteGroup) SetAckTimeout(d time.Duration) { g.r.ackTimeout = d }

// SSHPID is the pid of the current session's ssh client (0 if none).
func (g *RemoteGroup) SSHPID() int {
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	return g.r.sshPID
}

// RemoteSession runs the master's frame reader of a session whose start
// spec asked for suspended and maxRun on frames; the session's commands go
// to cmds. It returns when frames end. If the session asks to be ended
// meanwhile, the reason goes to aborted (when not nil).
func RemoteSession(g *RemoteGroup, frames io.Reader, cmds io.Writer, suspended bool, maxRun time.Duration, aborted chan<- error) error {
	s := &remoteSession{w: ipcframe.NewWriter(cmds, &ipcframe.WriterOptions{MaxFrame: maxAgentFrame}), done: make(chan struct{}),
		abort: make(chan error, 1), pending: make(map[int64]chan error), suspended: suspended, maxRun: maxRun}
	defer close(s.done)
	if aborted != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case err := <-s.abort:
				aborted <- err
			case <-stop:
			}
		}()
	}
	return g.r.readFrames(frames, s, make(chan struct{}, 1)).err
}

// Remembered returns the suspension and maximum running time the group's
// next session starts with.
func (g *RemoteGroup) Remembered() (bool, time.Duration) {
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	return g.r.suspended, g.r.maxRun
}

// RemoteSyncTries is how often a new agent's refusal of the remembered
// state is retried before its session is ended.
const RemoteSyncTries = remoteSyncTries

// RemoteReadFrames runs the master's frame reader of a session on frames
// (an agent's output), with commands of the given seqs waiting for their
// acks that nobody collects, and returns why it ended.
func RemoteReadFrames(g *RemoteGroup, frames io.Reader, seqs []int64) error {
	s := &remoteSession{done: make(chan struct{}), pending: make(map[int64]chan error)}
	for _, seq := range seqs {
		s.pending[seq] = make(chan error, 1)
	}
	return g.r.readFrames(frames, s, make(chan struct{}, 1)).err
}

// ReconnectDelay is the wait before a group's next session: delay with
// jitter (rnd in [0, 1) picks how much), at most maxDelay.
func ReconnectDelay(delay, maxDelay time.Duration, jitter, rnd float64) time.Duration {
	return reconnectDelay(delay, maxDelay, jitter, rnd)
}
