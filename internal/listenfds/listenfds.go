// Package listenfds holds the rules of systemd's socket-activation
// protocol (sd_listen_fds(3)) that more than one part of handoff applies:
// the master adopting and handing out LISTEN_FDS, and fdrecv exec'ing a
// program with them.
package listenfds

import (
	"errors"
	"fmt"
)

// MaxNameLen is the longest descriptor name systemd accepts.
const MaxNameLen = 255

// ErrName reports a descriptor name outside systemd's rule.
var ErrName = errors.New("invalid descriptor name")

// ValidName applies systemd's rule for FileDescriptorName= and
// LISTEN_FDNAMES entries: 1 to 255 printable ASCII characters, no ':' (the
// separator).
func ValidName(s string) error {
	if s == "" || len(s) > MaxNameLen {
		return fmt.Errorf("%w: must be 1 to %d bytes long", ErrName, MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == ':' {
			return fmt.Errorf("%w: %q: byte %#x not allowed (printable ASCII except ':')", ErrName, s, c)
		}
	}
	return nil
}
