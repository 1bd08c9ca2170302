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

// parseWorkerActivation is parseActivation for a worker (TESTPLAN A19). It
// also accepts LISTEN_FDNAMES naming fewer descriptors than LISTEN_FDS, as
// a supervisor newer than the worker may pass: the names belong to the
// first descriptors, and the rest come back last, named "unknown", extra
// counting them. A worker adopts an extra only if it is an inherited
// listening or datagram socket, and Ready closes it unless Listen claimed
// it. More names than descriptors, or any other garbage, is still an
// error. The master keeps parseActivation's strict rule (TESTPLAN A20):
// it hands what it adopts on to workers and must not guess.
func parseWorkerActivation(getenv func(string) string, pid int) (act []Activated, extra int, err error) {
	act, err = parseActivation(getenv, pid)
	names := getenv(envListenFDNames)
	if err == nil || names == "" {
		return act, 0, err
	}
	n, nerr := strconv.Atoi(getenv(envListenFDs))
	named := strings.Count(names, ":") + 1
	if nerr != nil || n > maxListenFDs || named >= n {
		return nil, 0, err
	}
	short := func(k string) string {
		if k == envListenFDs {
			return strconv.Itoa(named)
		}
		return getenv(k)
	}
	act, err = parseActivation(short, pid)
	if err != nil {
		return nil, 0, err
	}
	for fd := listenFDsStart + named; fd < listenFDsStart+n; fd++ {
		act = append(act, Activated{FD: fd, Name: "unknown"})
	}
	return act, n - named, nil
}
