//go:build !linux && !freebsd && !darwin && !dragonfly && !netbsd && !openbsd

package reuseport

import (
	"fmt"
	"net"
	"syscall"
)

func reuseOption() string { return "" }

// maxGroupOS only keeps group sizes checked the same way everywhere; every
// member fails with ErrNotSupported here.
const maxGroupOS = MaxGroup

func control(*Config, string, syscall.RawConn) error {
	return fmt.Errorf("reuseport: SO_REUSEPORT: %w", ErrNotSupported)
}

func setBacklog(*net.TCPListener, int) error {
	return fmt.Errorf("reuseport: backlog: %w", ErrNotSupported)
}
