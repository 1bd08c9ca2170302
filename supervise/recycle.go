package supervise

import "errors"

// ErrBusy is returned by Recycle while a graceful restart or another
// recycle is in flight, or while the worker is not ready yet.
var ErrBusy = errors.New("supervise: busy")

// Recycle replaces the worker id, which must be the serving worker of its
// slot, as one slot of a rolling restart would but without a new
// generation: a replacement (same generation, next incarnation) is started
// for the slot and, once it is ready, id is stopped gracefully. If the
// replacement exits or misses Options.StartTimeout first, id keeps serving
// and nothing is retried: the caller decides when to try again. Recycle
// returns at once; Status.Recycling is true until the outcome is known. It
// fails with ErrBusy (a restart or another recycle is in flight, or id is
// not ready) or ErrUnknownWorker (id no longer serves its slot). A graceful
// restart begun meanwhile stops the replacement: it replaces id anyway; so
// does a Scale that removes the slot. If id exits first, the replacement
// serves the slot in place of a respawn, or is stopped if the restart
// policy (or the burst limit) leaves the slot down.
func (s *Supervisor) Recycle(id ID) error {
	return s.call(request{kind: reqRecycle, id: id}).err
}
