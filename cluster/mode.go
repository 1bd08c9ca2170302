package cluster

import (
	"errors"
	"fmt"
)

// Mode says how workers get their connections.
type Mode int

const (
	// ModeShared hands every worker the very same listening sockets; the
	// kernel wakes one accepting worker per connection (the default).
	ModeShared Mode = iota
	// ModeReuseport gives each worker slot its own SO_REUSEPORT socket per
	// TCP or UDP address, bound and kept by the master for the cluster's
	// lifetime; the kernel spreads connections over the slots by a hash.
	ModeReuseport
	// ModeHandoff makes the master accept every connection and pass it,
	// with its listener name and remote address, to a worker over a
	// per-worker SOCK_SEQPACKET channel (HANDOFF_CONN_FD).
	ModeHandoff
)

// ErrMode reports a mode that cannot serve a listen address (a unix socket
// in reuseport mode, a UDP socket in handoff mode) or an unknown mode.
var ErrMode = errors.New("cluster: mode")

// ErrNoHandoff reports a handoff listener that cannot work: the process
// has no connection channel (it is not a handoff-mode worker), or the
// master has no listener of that name.
var ErrNoHandoff = errors.New("cluster: no handoff connection channel")

// ErrHandoffMessage reports a connection-channel message that breaks the
// handoff protocol (docs/protocol.md, "Connection handoff"). Descriptors
// that came with it have been closed.
var ErrHandoffMessage = errors.New("cluster: malformed handoff message")

// envMode names the worker's mode: shared, reuseport or handoff.
const envMode = "HANDOFF_MODE"

var modeNames = [...]string{ModeShared: "shared", ModeReuseport: "reuseport", ModeHandoff: "handoff"}

// String returns the -mode spelling of m.
func (m Mode) String() string {
	if m >= 0 && int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses "shared", "reuseport" or "handoff".
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if s == n {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("%w %q (want shared, reuseport or handoff)", ErrMode, s)
}

func (m Mode) valid() bool { return m >= ModeShared && m <= ModeHandoff }
