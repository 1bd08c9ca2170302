//go:build !linux

package cluster

import (
	"fmt"
	"net"
)

// HandoffListener is the listener of a handoff-mode worker; handoff mode is
// Linux only.
func HandoffListener(name string) (net.Listener, error) {
	return nil, fmt.Errorf("%w: %w", ErrNoHandoff, ErrNotSupported)
}
