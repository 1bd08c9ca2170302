//go:build linux

package cluster

import (
	"net"
	"os"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/scmrights"
)

// SetHandoffBeforeUnsub makes the last Close of a name call fn right before
// it sends UNSUB, the name already out of the worker's subscriptions.
func SetHandoffBeforeUnsub(fn func(name string)) (restore func()) {
	hoBeforeUnsub = fn
	return func() { hoBeforeUnsub = nil }
}

// SetHandoffCloseWait sets how long Close waits for the master's DONE.
func SetHandoffCloseWait(d time.Duration) (restore func()) {
	prev := hoCloseWait
	hoCloseWait = d
	return func() { hoCloseWait = prev }
}

// ListenerName is the master's name for ln.
func ListenerName(ln net.Listener) string { return fdName(ln.Addr().Network(), ln.Addr().String()) }

// AddListener adds ln to the dispatcher at run time, as the master does
// when a worker's Listen has it bind an address (handoffAdd); the rig owns
// the duplicate it adds.
func (r *HandoffRig) AddListener(ln net.Listener) error {
	fd, err := scmrights.Dup(ln.(syscall.Conn))
	if err != nil {
		return err
	}
	name := ListenerName(ln)
	l := &listener{addr: ln.Addr(), name: name, file: os.NewFile(uintptr(fd), name)}
	r.m.listeners = append(r.m.listeners, l)
	return r.h.add(l)
}
