//go:build !linux

package supervise

import "context"

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
