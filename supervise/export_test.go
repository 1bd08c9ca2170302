package supervise

import "time"

// Throttle exposes the respawn policy to the external tests, which drive it
// with made-up times instead of a clock.
type Throttle struct{ t *throttle }

func NewThrottle(b Backoff, rand func() float64) *Throttle {
	t := newThrottle(b)
	t.rand = rand
	return &Throttle{t}
}

func (t *Throttle) Started(now time.Time) { t.t.started(now) }

// Next is the throttle's decision for a worker that ran for uptime, of which
// readyFor after ready; err (wrapping ErrBurst) means the slot fails.
func (t *Throttle) Next(now time.Time, uptime, readyFor time.Duration, ready bool) (time.Duration, error) {
	return t.t.next(now, uptime, readyFor, ready)
}

func (t *Throttle) Reset() { t.t.reset() }

// SplitLines runs the output line splitter over chunks.
func SplitLines(max int, chunks [][]byte) []string {
	var out []string
	ls := lineSplitter{max: max, emit: func(b []byte) { out = append(out, string(b)) }}
	for _, c := range chunks {
		ls.write(c)
	}
	ls.flush()
	return out
}

// ParsePID exposes the pid file parser to the fuzz target.
func ParsePID(b []byte) (int, error) { return parsePID(b) }

// ParseLockRecord and AppendLockRecord expose the lock record format to
// the tests and the fuzz target.
func ParseLockRecord(b []byte, name string) (pid, prev int, err error) {
	return parseLockRecord(b, name)
}

func AppendLockRecord(dst []byte, name string, pid, prev int) []byte {
	return appendLockRecord(dst, name, pid, prev)
}
