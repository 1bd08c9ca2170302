//go:build !linux && !freebsd && !darwin && !dragonfly && !netbsd && !openbsd

package reuseport

import (
	"fmt"
	"net"
	"syscall"
)

func reuseOption() string { return "" }

func control(*Config, string, syscall.RawConn) error {
	return fmt.Errorf("reuseport: SO_REUSEPORT: %w", ErrNotSupported)
}

func setBacklog(*net.TCPListener, int) error {
	return fmt.Errorf("reuseport: backlog: %w", ErrNotSupported)
}
