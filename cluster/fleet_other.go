//go:build !linux

package cluster

import (
	"context"
	"time"
)

type fleet struct {
	ready chan struct{}
}

func newFleet(*FileConfig, *FleetOptions) (*fleet, error) { return nil, ErrNotSupported }

func (*fleet) run(context.Context) error                     { return ErrNotSupported }
func (*fleet) controlStatus() *ControlStatus                 { return &ControlStatus{} }
func (*fleet) restart(string) error                          { return ErrNotSupported }
func (*fleet) stop() error                                   { return ErrNotSupported }
func (*fleet) kill() error                                   { return ErrNotSupported }
func (*fleet) suspend(string) error                          { return ErrNotSupported }
func (*fleet) resume(string) error                           { return ErrNotSupported }
func (*fleet) scale(string, int) error                       { return ErrNotSupported }
func (*fleet) setMaxRunningTime(string, time.Duration) error { return ErrNotSupported }
func (*fleet) handleSignals() (func(), error)                { return nil, ErrNotSupported }
func (*fleet) close() error                                  { return nil }
