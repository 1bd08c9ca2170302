package cluster

import (
	"log/slog"

	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
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

// BindPolicyUnparsed is BindPolicy for an address ParseAddr did not
// check.
func BindPolicyUnparsed(network, address string) error {
	return bindPolicy(Addr{Network: network, Address: address}, nil)
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

// BindForWorker binds addr as the master does for a worker's request once
// bindPolicy has passed (its checks are not made here: this is what a
// symlink swapped in after them meets), workers running as cred (nil: the
// master's user). release closes the listener.
func BindForWorker(addr string, cred *supervise.Credential) (release func(), err error) {
	a, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	l, err := bindFor(a, true, cred)
	if err != nil {
		return nil, err
	}
	return l.close, nil
}

// EffectiveCapsAsWorker returns the effective capability set of the
// thread the master creates a worker's unix socket on when workers run as
// its own user (asUser with no credential).
func EffectiveCapsAsWorker() (uint64, error) {
	var eff uint64
	err := asUser(nil, func() error {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			return err
		}
		eff = uint64(data[1].Effective)<<32 | uint64(data[0].Effective)
		return nil
	})
	return eff, err
}
