//go:build !linux

package supervise

import (
	"context"
	"syscall"
)

func (s *Supervisor) run(context.Context, bool) error {
	close(s.done)
	close(s.events)
	close(s.lines)
	return ErrNotSupported
}

// HandleSignals returns ErrNotSupported on this platform.
func HandleSignals(*Supervisor, Strategy) (stop func(), err error) {
	return nil, ErrNotSupported
}

// sigStop: where supervision is not supported, no signal number is set
// apart (Run fails anyway).
const sigStop = syscall.Signal(-1)

// maxSignal bounds StopSignal where supervision is not supported.
func maxSignal() syscall.Signal { return 127 }
