//go:build linux

package cluster

import "os"

// HandoffCarry is what an in-place upgrade carries of one old worker's
// connection channel (handoffCarry).
type HandoffCarry struct {
	Out         int
	Sent        uint32
	Limited     bool
	Limit       uint32
	Ready, Away bool
	Subs        []string
}

// Carried is what an upgrade would carry of worker pid's channel
// (handoffCarried); false if nothing.
func (r *HandoffRig) Carried(pid int) (HandoffCarry, bool) {
	for _, c := range r.m.handoffCarried(map[int]bool{pid: true}) {
		if c.pid == pid {
			return HandoffCarry{Out: c.out, Sent: c.sent, Limited: c.limited, Limit: c.limit, Ready: c.ready, Away: c.away, Subs: c.subs}, true
		}
	}
	return HandoffCarry{}, false
}

// AdoptOldCarried is AdoptOldPeer for a worker the old image described
// with c, as an upgrade state's "h" record does; it returns the made-up
// pid.
func (r *HandoffRig) AdoptOldCarried(f *os.File, peer int, c HandoffCarry) (int, error) {
	r.pids--
	pid := r.pids
	r.m.up = &upgrade{state: &upgradeState{handoff: []handoffCarry{{pid: pid, out: c.Out, sent: c.Sent, limited: c.Limited, limit: c.Limit, ready: c.Ready, away: c.Away, subs: c.Subs}}}}
	return pid, r.m.handoffAdoptOld(pid, 0, f, peer)
}

// RetireOld is the master's handoffRetireOld: the new image's workers are
// ready.
func (r *HandoffRig) RetireOld() { r.m.handoffRetireOld() }
