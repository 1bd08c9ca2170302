package cluster

import (
	"log/slog"

	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
)

// ServeControl runs the control-channel read loop (both ends use it).
func ServeControl(conn *scmrights.Conn, maxFDs int, h func(typ string, fds []int) error) error {
	return serveControl(conn, maxFDs, func(m *ctlMsg, fds []int) error { return h(m.Type.String(), fds) })
}

// RestartWorker runs the master's kill path for pid.
func RestartWorker(m *Master, pid int, reason string) { m.m.restartWorker(pid, reason) }

// CountAsWorker makes the master's bookkeeping name pid as a worker, as it
// still does for a worker reaped before its Exited event was handled.
func CountAsWorker(m *Master, pid int) {
	m.m.mu.Lock()
	m.m.pids[pid] = testWorkerID
	m.m.mu.Unlock()
}

// testWorkerID is the ID CountAsWorker, TrackPID and WorkerGone give pid.
var testWorkerID = supervise.ID{Slot: 0, Generation: 1}

// TrackPID does what Launch.Done does for a worker just spawned.
func TrackPID(m *Master, pid int) { m.m.trackPID(pid, testWorkerID) }

// WorkerGone does what the worker's Exited event does to its channel
// state.
func WorkerGone(m *Master, pid int) { m.m.workerGone(pid, testWorkerID) }

// BindPolicy checks a -listen style address against what a worker may
// have the master bind.
func BindPolicy(addr string) error {
	a, err := ParseAddr(addr)
	if err != nil {
		return err
	}
	return bindPolicy(a, nil)
}

// BindPolicyAs is BindPolicy for workers running as cred
// (Config.Credential).
func BindPolicyAs(addr string, cred *supervise.Credential) error {
	a, err := ParseAddr(addr)
	if err != nil {
		return err
	}
	return bindPolicy(a, cred)
}

// ForwardedLog returns the control frames a worker's LogHandler queues
// while fn logs through it.
func ForwardedLog(fn func(slog.Handler)) [][]byte {
	w := &wstate{ch: &wchannel{out: make(chan []byte, workerQueue), gone: make(chan struct{})}}
	fn(&fwdHandler{w: w, level: slog.LevelDebug})
	var out [][]byte
	for len(w.ch.out) > 0 {
		out = append(out, <-w.ch.out)
	}
	return out
}
