package cluster

import (
	"context"
	"fmt"
	"log/slog"
)

// ServeControlSocket serves a control socket at path whose status answers are
// status(); other requests fail. stop closes it.
func ServeControlSocket(path string, status func() *ControlStatus) (stop func(), err error) {
	srv, err := createControl(path)
	if err != nil {
		return nil, err
	}
	srv.b, srv.log = statusBackend(status), slog.New(slog.DiscardHandler)
	srv.wg.Add(1)
	go srv.serve()
	return srv.shutdown, nil
}

type statusBackend func() *ControlStatus

func (b statusBackend) controlStatus() *ControlStatus { return b() }

func (b statusBackend) controlDo(_ context.Context, req *sockMsg) error {
	return fmt.Errorf("%w: %s", ErrControlInvalid, req.Type)
}
