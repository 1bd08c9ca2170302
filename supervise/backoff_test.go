package supervise_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/supervise"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type death struct {
	uptime time.Duration
	ready  bool
	// readyFor is the part of uptime after ready; 0 with ready means all
	// of it (ready on start).
	readyFor time.Duration
}

type step struct {
	Delay time.Duration
	OK    bool
}

// simulate starts a slot at t0 and replays deaths: each worker runs for its
// uptime, and the next start happens after the returned delay.
func simulate(b supervise.Backoff, rnd func() float64, deaths []death) []step {
	th := supervise.NewThrottle(b, rnd)
	now := t0
	var out []step
	for _, d := range deaths {
		th.Started(now)
		now = now.Add(d.uptime)
		readyFor := d.readyFor
		if d.ready && readyFor == 0 {
			readyFor = d.uptime
		}
		delay, err := th.Next(now, d.uptime, readyFor, d.ready)
		ok := err == nil
		if err != nil && !errors.Is(err, supervise.ErrBurst) {
			panic(err)
		}
		out = append(out, step{delay, ok})
		if !ok {
			break
		}
		now = now.Add(delay)
	}
	return out
}

func repeat(d death, n int) []death {
	out := make([]death, n)
	for i := range out {
		out[i] = d
	}
	return out
}

func zero() float64 { return 0 }
func half() float64 { return 0.5 }

// TestThrottle proves the respawn policy (TESTPLAN C1, C2) with made-up
// times: at least Min between spawns of a slot that dies before ready or
// within Min, exponential growth to Max, jitter bounds, reset after a stable
// uptime, and the burst limit.
func TestThrottle(t *testing.T) {
	s := time.Second
	ms := time.Millisecond
	tests := []struct {
		name   string
		b      supervise.Backoff
		rnd    func() float64
		deaths []death
		want   []step
	}{
		{
			name:   "crash loop with defaults: 1 s floor, doubling, failed at the 5th consecutive quick death (C1)",
			rnd:    zero,
			deaths: repeat(death{0, false, 0}, 8),
			want:   []step{{1 * s, true}, {2 * s, true}, {4 * s, true}, {8 * s, true}, {0, false}},
		},
		{
			name:   "spawn failures and deaths within Min are quick deaths too",
			rnd:    zero,
			deaths: []death{{0, false, 0}, {500 * ms, true, 0}, {0, false, 0}, {900 * ms, true, 0}, {0, false, 0}},
			want:   []step{{1 * s, true}, {2 * s, true}, {4 * s, true}, {8 * s, true}, {0, false}},
		},
		{
			name:   "a worker that ran ready past Min breaks the consecutive count",
			rnd:    zero,
			b:      supervise.Backoff{Burst: -1},
			deaths: []death{{0, false, 0}, {0, false, 0}, {0, false, 0}, {0, false, 0}, {2 * s, true, 0}, {0, false, 0}, {0, false, 0}},
			want:   []step{{1 * s, true}, {2 * s, true}, {4 * s, true}, {8 * s, true}, {0, true}, {16 * s, true}, {30 * s, true}},
		},
		{
			name:   "quick-failure limit disabled: doubling to the 30 s cap, never a fork bomb",
			b:      supervise.Backoff{QuickFailures: -1},
			rnd:    zero,
			deaths: repeat(death{0, false, 0}, 8),
			want:   []step{{1 * s, true}, {2 * s, true}, {4 * s, true}, {8 * s, true}, {16 * s, true}, {30 * s, true}, {30 * s, true}, {30 * s, true}},
		},
		{
			name:   "jitter only ever lengthens the delay and stays under the cap",
			b:      supervise.Backoff{QuickFailures: -1},
			rnd:    half,
			deaths: repeat(death{0, false, 0}, 6),
			want:   []step{{1100 * ms, true}, {2200 * ms, true}, {4400 * ms, true}, {8800 * ms, true}, {17600 * ms, true}, {30 * s, true}},
		},
		{
			name:   "ready but died within its first second counts as a quick death",
			rnd:    zero,
			deaths: []death{{500 * ms, true, 0}, {500 * ms, true, 0}},
			want:   []step{{1 * s, true}, {2 * s, true}},
		},
		{
			name:   "ready for over a second: respawned at once (s6)",
			rnd:    zero,
			deaths: []death{{3 * s, true, 0}, {3 * s, true, 0}},
			want:   []step{{0, true}, {0, true}},
		},
		{
			name:   "stable uptime resets the exponent",
			rnd:    zero,
			deaths: []death{{0, false, 0}, {0, false, 0}, {0, false, 0}, {20 * s, true, 0}, {0, false, 0}},
			want:   []step{{1 * s, true}, {2 * s, true}, {4 * s, true}, {0, true}, {1 * s, true}},
		},
		{
			name: "ResetAfter counts from ready, not from start",
			rnd:  zero,
			// 12 s up but only 4 s of it ready: the exponent is kept.
			deaths: []death{{0, false, 0}, {0, false, 0}, {12 * s, true, 4 * s}, {0, false, 0}},
			want:   []step{{1 * s, true}, {2 * s, true}, {0, true}, {4 * s, true}},
		},
		{
			name:   "burst: the 6th start within 10 s fails the slot",
			rnd:    zero,
			deaths: repeat(death{1500 * ms, true, 0}, 10),
			want:   []step{{0, true}, {0, true}, {0, true}, {0, true}, {0, false}},
		},
		{
			name:   "burst limit disabled",
			b:      supervise.Backoff{Burst: -1},
			rnd:    zero,
			deaths: repeat(death{1500 * ms, true, 0}, 7),
			want:   []step{{0, true}, {0, true}, {0, true}, {0, true}, {0, true}, {0, true}, {0, true}},
		},
		{
			name:   "custom numbers",
			b:      supervise.Backoff{Min: 10 * ms, Max: 25 * ms, Burst: 3, Window: time.Second, Jitter: -1},
			deaths: repeat(death{0, false, 0}, 5),
			want:   []step{{10 * ms, true}, {20 * ms, true}, {0, false}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := simulate(tc.b, tc.rnd, tc.deaths)
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("steps (-want +got):\n%s", d)
			}
		})
	}
}

// TestThrottleCrashLoopRate runs a crash loop with the default numbers and
// real jitter on a made-up clock: at most ~10 spawns in any 10 s, and the
// slot fails (ErrBurst) after its 5th start, within a minute (TESTPLAN C1).
func TestThrottleCrashLoopRate(t *testing.T) {
	t.Parallel()
	th := supervise.NewThrottle(supervise.Backoff{}, nil)
	now := t0
	var starts []time.Time
	var failed error
	for range 50 {
		th.Started(now)
		starts = append(starts, now)
		d, err := th.Next(now, 0, 0, false)
		if err != nil {
			failed = err
			break
		}
		if d < time.Second {
			t.Fatalf("delay %v < 1 s", d)
		}
		now = now.Add(d)
	}
	for i := range starts {
		n := 0
		for _, s := range starts[i:] {
			if s.Sub(starts[i]) < 10*time.Second {
				n++
			}
		}
		if n > 10 {
			t.Fatalf("%d spawns within 10 s from %v", n, starts[i])
		}
	}
	if !errors.Is(failed, supervise.ErrBurst) || len(starts) != 5 || starts[4].Sub(t0) > time.Minute {
		t.Errorf("crash loop with default numbers: %d starts over %v, then %v; want failed (ErrBurst) after 5 starts",
			len(starts), starts[len(starts)-1].Sub(t0), failed)
	}
}

func TestSplitLines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		max    int
		chunks []string
		want   []string
	}{
		{"simple", 10, []string{"a\nb\n"}, []string{"a", "b"}},
		{"split across writes", 10, []string{"he", "llo\nwo", "rld\n"}, []string{"hello", "world"}},
		{"no final newline", 10, []string{"a\nb"}, []string{"a", "b"}},
		{"empty lines kept", 10, []string{"\n\n"}, []string{"", ""}},
		{"long line cut at max", 4, []string{"abcdefghij\n"}, []string{"abcd", "efgh", "ij"}},
		{"exactly max", 4, []string{"abcd\n"}, []string{"abcd"}},
		{"long over writes", 3, []string{"ab", "cd", "ef", "g\n"}, []string{"abc", "def", "g"}},
		{"crlf kept", 10, []string{"a\r\n"}, []string{"a\r"}},
	}
	for _, tc := range tests {
		var chunks [][]byte
		for _, c := range tc.chunks {
			chunks = append(chunks, []byte(c))
		}
		if d := cmp.Diff(tc.want, supervise.SplitLines(tc.max, chunks)); d != "" {
			t.Errorf("%s: lines (-want +got):\n%s", tc.name, d)
		}
	}
}

// FuzzSplitLines checks that however output is chunked, the lines equal a
// reference split, each at most max bytes, and that nothing is lost.
func FuzzSplitLines(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), uint8(3), uint8(8))
	f.Add([]byte("no newline"), uint8(1), uint8(4))
	f.Add([]byte("\n\n\r\n"), uint8(2), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, cut uint8, max uint8) {
		m := int(max%32) + 1
		c := int(cut%16) + 1
		var chunks [][]byte
		for i := 0; i < len(data); i += c {
			chunks = append(chunks, data[i:min(i+c, len(data))])
		}
		got := supervise.SplitLines(m, chunks)
		want := supervise.SplitLines(m, [][]byte{data})
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("chunking changed lines (-whole +chunked):\n%s", d)
		}
		var total int
		for _, l := range got {
			if len(l) > m {
				t.Fatalf("line of %d bytes > max %d", len(l), m)
			}
			total += len(l)
		}
		if total != len(data)-strings.Count(string(data), "\n") {
			t.Fatalf("bytes lost: %d of %d", total, len(data))
		}
	})
}

// TestBackoffWithDefaults: the policy the supervisor applies, as other
// code (cluster's ssh reconnects) reads it.
func TestBackoffWithDefaults(t *testing.T) {
	def := supervise.Backoff{Min: time.Second, Max: 30 * time.Second, Jitter: 0.2, ResetAfter: 10 * time.Second,
		Burst: 5, Window: 10 * time.Second, QuickFailures: 5}
	for _, tc := range []struct {
		name string
		in   supervise.Backoff
		want supervise.Backoff
	}{
		{"zero", supervise.Backoff{}, def},
		{"max below min", supervise.Backoff{Min: 2 * time.Minute},
			supervise.Backoff{Min: 2 * time.Minute, Max: 2 * time.Minute, Jitter: 0.2, ResetAfter: 10 * time.Second,
				Burst: 5, Window: 10 * time.Second, QuickFailures: 5}},
		{"disabled", supervise.Backoff{Jitter: -1, Burst: -1, QuickFailures: -1},
			supervise.Backoff{Min: time.Second, Max: 30 * time.Second, ResetAfter: 10 * time.Second,
				Burst: -1, Window: 10 * time.Second, QuickFailures: -1}},
		{"set", def, def},
		// Jitter is a fraction: a larger one counts as 1, NaN disables.
		{"huge jitter", supervise.Backoff{Jitter: 1e300}, withJitter(def, 1)},
		{"infinite jitter", supervise.Backoff{Jitter: math.Inf(1)}, withJitter(def, 1)},
		{"jitter 1", supervise.Backoff{Jitter: 1}, withJitter(def, 1)},
		{"jitter 0.5", supervise.Backoff{Jitter: 0.5}, withJitter(def, 0.5)},
		{"NaN jitter", supervise.Backoff{Jitter: math.NaN()}, withJitter(def, 0)},
		{"negative infinite jitter", supervise.Backoff{Jitter: math.Inf(-1)}, withJitter(def, 0)},
	} {
		if diff := cmp.Diff(tc.want, tc.in.WithDefaults()); diff != "" {
			t.Errorf("%s: (-want +got)\n%s", tc.name, diff)
		}
	}
}

// TestBackoffHugeJitter: a jitter whose product with the delay overflows
// time.Duration made the delay negative, clamped to Min: a crash loop was
// respawned every Min instead of backing off. Jitter counts as at most 1,
// and the delay still doubles.
func TestBackoffHugeJitter(t *testing.T) {
	half := func() float64 { return 0.5 }
	quick := death{uptime: 10 * time.Millisecond}
	for _, jitter := range []float64{1e300, math.Inf(1), 1e10, 1} {
		b := supervise.Backoff{Min: time.Second, Max: 30 * time.Second, Jitter: jitter, Burst: -1, QuickFailures: -1}
		got := simulate(b, half, repeat(quick, 6))
		want := []step{{1500 * time.Millisecond, true}, {3 * time.Second, true}, {6 * time.Second, true},
			{12 * time.Second, true}, {24 * time.Second, true}, {30 * time.Second, true}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("jitter %g: (-want +got)\n%s", jitter, diff)
		}
	}
}

// TestBackoffLargeMax: with Max near the largest Duration the doubling
// wrapped negative, so the delay fell back to Min.
func TestBackoffLargeMax(t *testing.T) {
	const maxDuration = time.Duration(math.MaxInt64)
	quick := death{uptime: time.Millisecond}
	for _, jitter := range []float64{-1, 1} {
		b := supervise.Backoff{Min: time.Second, Max: maxDuration, Jitter: jitter, Burst: -1, QuickFailures: -1}
		steps := simulate(b, func() float64 { return 0.999 }, repeat(quick, 40))
		prev := time.Duration(0)
		for i, s := range steps {
			if s.Delay < prev || s.Delay < time.Second {
				t.Fatalf("jitter %g: delay %d is %v after %v: want at least Min and never shorter", jitter, i, s.Delay, prev)
			}
			prev = s.Delay
		}
		if prev != maxDuration {
			t.Errorf("jitter %g: last delay %v, want Max %v", jitter, prev, maxDuration)
		}
	}
}

func withJitter(b supervise.Backoff, j float64) supervise.Backoff {
	b.Jitter = j
	return b
}
