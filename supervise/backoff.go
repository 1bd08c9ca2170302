package supervise

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

const (
	defaultBackoffMin    = time.Second
	defaultBackoffMax    = 30 * time.Second
	defaultBackoffJitter = 0.2
	defaultResetAfter    = 10 * time.Second
	defaultBurst         = 5
	defaultWindow        = 10 * time.Second
	defaultQuickFailures = 5
)

// WithDefaults returns b with every zero field set to its default, as the
// supervisor reads it; for code that applies the same policy elsewhere.
func (b Backoff) WithDefaults() Backoff {
	b.fill()
	return b
}

func (b *Backoff) fill() {
	if b.Min <= 0 {
		b.Min = defaultBackoffMin
	}
	if b.Max <= 0 {
		b.Max = defaultBackoffMax
	}
	if b.Max < b.Min {
		b.Max = b.Min
	}
	// Jitter is a fraction of the delay: clamped here, for every reader
	// of the policy (cluster's ssh reconnects too), since a huge one made
	// the jitter's product overflow time.Duration into a negative delay,
	// so a crash loop was respawned without backoff.
	switch {
	case b.Jitter == 0:
		b.Jitter = defaultBackoffJitter
	case b.Jitter < 0 || math.IsNaN(b.Jitter):
		b.Jitter = 0
	case b.Jitter > 1:
		b.Jitter = 1
	}
	if b.ResetAfter <= 0 {
		b.ResetAfter = defaultResetAfter
	}
	if b.Burst == 0 {
		b.Burst = defaultBurst
	}
	if b.Window <= 0 {
		b.Window = defaultWindow
	}
	if b.QuickFailures == 0 {
		b.QuickFailures = defaultQuickFailures
	}
}

// throttle decides when a slot may be respawned. It holds no clock: every
// method takes the current time, so the policy is tested with made-up times.
type throttle struct {
	b       Backoff // filled
	attempt int     // quick deaths since the last reset: the delay's exponent
	quick   int     // consecutive quick deaths: the QuickFailures limit
	starts  []time.Time
	rand    func() float64 // [0,1); nil means math/rand/v2
}

func newThrottle(b Backoff) *throttle {
	b.fill()
	return &throttle{b: b}
}

// started records a spawn attempt (successful or not) at now.
func (t *throttle) started(now time.Time) {
	if t.b.Burst < 0 {
		return
	}
	t.starts = append(t.starts, now)
	// Only the last Burst starts can matter for the limit.
	if len(t.starts) > t.b.Burst {
		t.starts = append(t.starts[:0], t.starts[len(t.starts)-t.b.Burst:]...)
	}
}

// next returns the delay before respawning a worker that exited at now after
// running for uptime, of which readyFor after it reported ready (ready says
// whether it did), or an error wrapping ErrBurst if the slot must fail.
func (t *throttle) next(now time.Time, uptime, readyFor time.Duration, ready bool) (time.Duration, error) {
	if ready && readyFor >= t.b.ResetAfter {
		t.attempt = 0
	}
	quick := !ready || uptime < t.b.Min
	if !quick {
		t.quick = 0
	} else if t.quick++; t.b.QuickFailures > 0 && t.quick >= t.b.QuickFailures {
		return 0, fmt.Errorf("%w (%d consecutive starts died before ready or within %v)", ErrBurst, t.quick, t.b.Min)
	}
	var delay time.Duration
	// s6/runit: a worker that dies before it is ready or within its first
	// second is respawned no sooner than a second later, so a crash loop
	// cannot become a fork bomb.
	if quick {
		// Doubled up to Max, never past it: a Max near the largest
		// Duration would wrap base negative.
		base := t.b.Min
		for i := 0; i < t.attempt && base < t.b.Max; i++ {
			if base > t.b.Max/2 {
				base = t.b.Max
				break
			}
			base *= 2
		}
		delay = base
		if t.b.Jitter > 0 {
			r := rand.Float64
			if t.rand != nil {
				r = t.rand
			}
			// Capped at Max in floating point, before the conversion:
			// base plus up to base (Jitter <= 1) could still wrap.
			if j := float64(base) * t.b.Jitter * r(); j >= float64(t.b.Max-base) {
				delay = t.b.Max
			} else {
				delay += min(time.Duration(j), t.b.Max-base)
			}
		}
		delay = min(max(delay, t.b.Min), t.b.Max)
		t.attempt++
	}
	if t.b.Burst > 0 && len(t.starts) >= t.b.Burst {
		at := now.Add(delay)
		n := 0
		for _, s := range t.starts {
			if at.Sub(s) < t.b.Window {
				n++
			}
		}
		if n >= t.b.Burst {
			return 0, fmt.Errorf("%w (%d starts in %v)", ErrBurst, t.b.Burst, t.b.Window)
		}
	}
	return delay, nil
}

// reset forgets history, after a graceful restart or a revive of a failed
// slot.
func (t *throttle) reset() {
	t.attempt = 0
	t.quick = 0
	t.starts = t.starts[:0]
}
