//go:build linux

package cluster

import (
	"os"
	"slices"
)

// HandoffCarry is what an in-place upgrade carries of one old worker's
// connection channel (handoffCarry), its subscriptions by listener name
// (the state names them by descriptor).
type HandoffCarry struct {
	Out         int
	Sent        uint32
	Limited     bool
	Limit       uint32
	Ready, Away bool
	Subs        []string
	Owed        []HandoffOwed
}

// HandoffOwed is a run of N DONEs of listener Name owed to a worker.
type HandoffOwed struct {
	Name string
	N    int
}

// rigState is the state an upgrade of the rig's master would record of
// its listeners: each as an L record of its descriptor.
func (r *HandoffRig) rigState() *upgradeState {
	st := &upgradeState{pidLock: -1}
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	for _, hl := range r.h.lns {
		if fd, err := fileFD(hl.l.file); err == nil {
			st.listeners = append(st.listeners, Activated{FD: fd, Name: hl.name})
		}
	}
	return st
}

// Carried is what an upgrade would carry of worker pid's channel
// (handoffCarried); false if nothing. Like an exec's state, it holds the
// worker (sent nothing more) until Resume.
func (r *HandoffRig) Carried(pid int) (HandoffCarry, bool) {
	st := r.rigState()
	for _, c := range r.m.handoffCarried(map[int]bool{pid: true}) {
		if c.pid == pid {
			var names []string
			for _, fd := range c.subs {
				if i := slices.IndexFunc(st.listeners, func(a Activated) bool { return a.FD == fd }); i >= 0 {
					names = append(names, st.listeners[i].Name)
				}
			}
			var owed []HandoffOwed
			for _, o := range c.owed {
				owed = append(owed, HandoffOwed{o.name, o.n})
			}
			return HandoffCarry{Out: c.out, Sent: c.sent, Limited: c.limited, Limit: c.limit, Ready: c.ready, Away: c.away, Subs: names, Owed: owed}, true
		}
	}
	return HandoffCarry{}, false
}

// AdoptOldCarried is AdoptOldPeer for a worker the old image described
// with c, as an upgrade state's "h" record does; it returns the made-up
// pid. c.Subs names listeners of the rig (by descriptor in the state).
func (r *HandoffRig) AdoptOldCarried(f *os.File, peer int, c HandoffCarry) (int, error) {
	r.pids--
	pid := r.pids
	st := r.rigState()
	hc := handoffCarry{pid: pid, out: c.Out, sent: c.Sent, limited: c.Limited, limit: c.Limit, ready: c.Ready, away: c.Away}
	for _, name := range c.Subs {
		if i := slices.IndexFunc(st.listeners, func(a Activated) bool { return a.Name == name }); i >= 0 {
			hc.subs = append(hc.subs, st.listeners[i].FD)
		}
	}
	for _, o := range c.Owed {
		hc.owed = append(hc.owed, owedRun{o.Name, o.N})
	}
	st.handoff = []handoffCarry{hc}
	r.m.up = &upgrade{state: st}
	return pid, r.m.handoffAdoptOld(pid, 0, f, peer)
}

// RetireOld is the master's handoffRetireOld: the new image's workers are
// ready.
func (r *HandoffRig) RetireOld() { r.m.handoffRetireOld() }

// Subscribed says whether worker pid subscribes to the listener name.
func (r *HandoffRig) Subscribed(pid int, name string) bool {
	r.h.mu.Lock()
	idx, ok := r.h.byName[name]
	ws := slices.Clone(r.h.workers)
	r.h.mu.Unlock()
	for _, w := range ws {
		if w.pid == pid && ok && w.subscribed(idx) {
			return true
		}
	}
	return false
}

// SetHandoffBeforeSend makes every dispatcher call fn between sizing a
// send to a worker and making it.
func SetHandoffBeforeSend(fn func()) (restore func()) {
	hoBeforeSend = fn
	return func() { hoBeforeSend = nil }
}
