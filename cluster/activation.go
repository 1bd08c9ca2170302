package cluster

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/handoff-go/handoff/internal/listenfds"
)

// The systemd socket-activation protocol (sd_listen_fds(3)): a process
// started with LISTEN_PID equal to its own pid owns descriptors 3 ..
// 3+LISTEN_FDS-1, optionally named by the colon-separated LISTEN_FDNAMES.

const (
	envListenPID     = "LISTEN_PID"
	envListenFDs     = "LISTEN_FDS"
	envListenFDNames = "LISTEN_FDNAMES"
	listenFDsStart   = 3
	// maxListenFDs bounds LISTEN_FDS: a larger value is garbage, not a
	// reason to walk thousands of descriptor numbers.
	maxListenFDs = 1024
)

// ErrActivation reports a malformed socket-activation environment.
var ErrActivation = errors.New("cluster: malformed socket-activation environment")

// Activated is one descriptor passed by socket activation.
type Activated struct {
	FD   int
	Name string // from LISTEN_FDNAMES; "unknown" when not given, as systemd says
}

// parseActivation reads the socket-activation variables through getenv for
// process pid. Variables meant for another process (LISTEN_PID absent or
// different) mean no descriptors: they are never adopted. Garbage (a
// non-numeric or negative count, a count above maxListenFDs, names that do
// not match the count) is an error wrapping ErrActivation, never a guess.
func parseActivation(getenv func(string) string, pid int) ([]Activated, error) {
	pidStr, nStr := getenv(envListenPID), getenv(envListenFDs)
	if pidStr == "" && nStr == "" {
		return nil, nil
	}
	lp, err := strconv.Atoi(pidStr)
	if err != nil || lp <= 0 {
		return nil, fmt.Errorf("%w: %s=%q is not a pid", ErrActivation, envListenPID, pidStr)
	}
	if lp != pid {
		return nil, nil
	}
	n, err := strconv.Atoi(nStr)
	if err != nil || n < 0 || n > maxListenFDs {
		return nil, fmt.Errorf("%w: %s=%q is not a count from 0 to %d", ErrActivation, envListenFDs, nStr, maxListenFDs)
	}
	var names []string
	if s := getenv(envListenFDNames); s != "" {
		names = strings.Split(s, ":")
		if len(names) != n {
			return nil, fmt.Errorf("%w: %s names %d descriptors, %s=%d", ErrActivation, envListenFDNames, len(names), envListenFDs, n)
		}
		for _, name := range names {
			if listenfds.ValidName(name) != nil {
				return nil, fmt.Errorf("%w: descriptor name %q", ErrActivation, name)
			}
		}
	}
	out := make([]Activated, n)
	for i := range out {
		out[i] = Activated{FD: listenFDsStart + i, Name: "unknown"}
		if names != nil {
			out[i].Name = names[i]
		}
	}
	return out, nil
}
