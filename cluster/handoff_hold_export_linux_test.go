//go:build linux

package cluster

// LockWorker takes worker pid's send lock (hoWorker.mu), as a dispatcher's
// send to it does, until unlock; false if no worker has that pid.
func (r *HandoffRig) LockWorker(pid int) (unlock func(), ok bool) {
	r.h.mu.Lock()
	var w *hoWorker
	for _, x := range r.h.workers {
		if x.pid == pid {
			w = x
		}
	}
	r.h.mu.Unlock()
	if w == nil {
		return nil, false
	}
	w.mu.Lock()
	return w.mu.Unlock, true
}
