//go:build !linux

package cluster

import (
	"context"
	"net"

	"github.com/handoff-go/handoff/supervise"
)

type master struct{}

func newMaster(*Config) (*master, error) { return nil, ErrNotSupported }

func (*master) addrs() []net.Addr              { return nil }
func (*master) readyCh() <-chan struct{}       { return nil }
func (*master) run(context.Context) error      { return ErrNotSupported }
func (*master) restart() error                 { return ErrNotSupported }
func (*master) stop() error                    { return ErrNotSupported }
func (*master) kill() error                    { return ErrNotSupported }
func (*master) scaleBy(int) error              { return ErrNotSupported }
func (*master) status() supervise.Status       { return supervise.Status{} }
func (*master) handleSignals() (func(), error) { return nil, ErrNotSupported }
func (*master) close() error                   { return nil }

func (*master) send(int, []byte) error { return ErrNotSupported }
func (*master) broadcast([]byte) error { return ErrNotSupported }

// RunShim is the exec shim (see ShimArg); it is Linux only.
func RunShim(args []string) error { return ErrNotSupported }
