package cluster

import "log/slog"

// AdoptControl is adoptControl, for a control socket passed as
// HANDOFF_CONTROL_LISTEN=value; stop shuts the adopted socket down (it is
// never served).
func AdoptControl(path, value string) (stop func(), lockErr, err error) {
	srv, lockErr, err := adoptControl(path, value)
	if err != nil {
		return nil, nil, err
	}
	srv.log = slog.New(slog.DiscardHandler)
	return srv.shutdown, lockErr, nil
}
