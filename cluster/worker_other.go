//go:build !linux

package cluster

import (
	"context"
	"net"
	"os"
)

// wchannel is the control channel, which needs Linux: elsewhere a process
// is never a worker and the API works standalone.
type wchannel struct{}

// initWorker reads NOTIFY_SOCKET, for Ready, and with take removes it from
// the environment, as sd_notify(3) does when asked to (see takeEnv on
// Linux). ID
// stays 0: only a Linux process is ever a master's worker.
func initWorker(w *wstate, take bool) {
	w.notify = os.Getenv(envNotifySocket)
	if take {
		os.Unsetenv(envNotifySocket)
	}
}

func (w *wstate) send([]byte) error { return ErrNotWorker }

func (w *wstate) forward([]byte) {}

// listen binds locally: without a master there is nothing to inherit
// from it. The empty address names an inherited socket, which needs Linux.
func (w *wstate) listen(ctx context.Context, network, address string) (net.Listener, error) {
	if address == "" {
		return nil, ErrNoListener
	}
	var lc net.ListenConfig
	return lc.Listen(ctx, network, address)
}

func (w *wstate) listenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	if address == "" {
		return nil, ErrNoListener
	}
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, address)
}

// releaseInherited has nothing to close: only Linux adopts inherited
// sockets.
func (w *wstate) releaseInherited() {}
