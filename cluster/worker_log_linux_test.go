//go:build linux

package cluster_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
)

// TestLogHandlerTimeUTC: a record's time reaches the master as the same
// instant whatever its zone; a zone offset of 24 hours or more (which
// time.FixedZone allows and RFC 3339 does not) used to be sent as is, the
// master refused the record and killed the worker, again with every
// replacement. A time whose UTC year is outside 0..9999 is left out.
func TestLogHandlerTimeUTC(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 30, 0, 123456789, time.UTC)
	for _, tc := range []struct {
		name   string
		t      time.Time
		noTime bool
	}{
		{name: "utc", t: at},
		{name: "offset +27:46", t: at.In(time.FixedZone("odd", 100000))},
		{name: "offset -27:46", t: at.In(time.FixedZone("odd", -100000))},
		{name: "offset +23:59", t: at.In(time.FixedZone("edge", 24*3600-60))},
		{name: "year 9999 ahead of utc", t: time.Date(9999, 12, 31, 23, 0, 0, 0, time.FixedZone("w", -12*3600)), noTime: true},
		{name: "year 0 behind utc", t: time.Date(0, 1, 1, 1, 0, 0, 0, time.FixedZone("e", 12*3600)), noTime: true},
		{name: "year 9999 in utc", t: time.Date(9999, 12, 31, 23, 0, 0, 0, time.FixedZone("e", 12*3600))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frames := cluster.ForwardedLog(func(h slog.Handler) {
				h.Handle(context.Background(), slog.NewRecord(tc.t, slog.LevelInfo, "m", 0))
			})
			if len(frames) != 1 {
				t.Fatalf("%d frames queued, want 1", len(frames))
			}
			m, err := cluster.DecodeControl(frames[0])
			if err != nil {
				t.Fatalf("the master would refuse the record (and kill the worker): %v", err)
			}
			want := tc.t
			if tc.noTime {
				want = time.Time{}
			}
			if !m.Time.Equal(want) {
				t.Errorf("time %v, want %v", m.Time, want)
			}
		})
	}
}

// TestLogHandlerReportsDropped: records dropped on a full queue are
// reported once there is room again, by a warning with their count: the
// channel's writer queues it when it takes a frame, so it comes also when
// nothing is logged after the burst (a shutdown without heartbeats used to
// leave no trace; the count used to be kept and never read before that).
func TestLogHandlerReportsDropped(t *testing.T) {
	q := cluster.NewLogQueue(2)
	log := slog.New(q.Handler())
	for i := range 5 {
		log.Info("r" + strconv.Itoa(i))
	}
	log.Info("full")
	type rec struct {
		Level, Msg string
		Attrs      string
	}
	decode := func(frames [][]byte) []rec {
		t.Helper()
		var out []rec
		for _, f := range frames {
			m, err := cluster.DecodeControl(f)
			if err != nil {
				t.Fatalf("the master would refuse %q: %v", f, err)
			}
			out = append(out, rec{m.Level.String(), m.Msg, fmt.Sprint(m.Attrs)})
		}
		return out
	}
	warn := func(n int) rec {
		return rec{"WARN", "cluster: log records dropped: the master did not keep up", fmt.Sprintf("[dropped=%d]", n)}
	}
	want := []rec{{"INFO", "r0", "[]"}, {"INFO", "r1", "[]"}, warn(4)}
	if diff := cmp.Diff(want, decode(q.Drain())); diff != "" {
		t.Errorf("records written, nothing logged after the burst (-want +got):\n%s", diff)
	}
	// Reported once.
	log.Info("after")
	want = []rec{{"INFO", "after", "[]"}}
	if diff := cmp.Diff(want, decode(q.Drain())); diff != "" {
		t.Errorf("records of the next round (-want +got):\n%s", diff)
	}
	// A record that finds the queue full cannot report either: the count
	// goes on, and the writer reports it.
	for _, m := range []string{"b", "c", "d", "e"} {
		log.Info(m)
	}
	want = []rec{{"INFO", "b", "[]"}, {"INFO", "c", "[]"}, warn(2)}
	if diff := cmp.Diff(want, decode(q.Drain())); diff != "" {
		t.Errorf("records of a full queue (-want +got):\n%s", diff)
	}
	if got := q.Drain(); len(got) != 0 {
		t.Errorf("%d frames more, want none", len(got))
	}
}

// TestHeartbeatEvery: the heartbeat period is WATCHDOG_USEC/3, at least
// 1 ms; a value too large for a time.Duration means no heartbeats (it used
// to wrap around to a 1 ms period, a dial and a send on NOTIFY_SOCKET per
// millisecond under systemd).
func TestHeartbeatEvery(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want time.Duration
	}{
		{"", 0},
		{"x", 0},
		{"0", 0},
		{"-3000000", 0},
		{"3000000", time.Second},
		{"1", time.Millisecond},
		{strconv.FormatInt(math.MaxInt64/1000, 10), time.Duration(math.MaxInt64/1000*1000) / 3},
		{strconv.FormatInt(math.MaxInt64/1000+1, 10), 0},
		{strconv.FormatInt(math.MaxInt64, 10), 0},
		{"9223372036854775808", 0},
	} {
		if got := cluster.HeartbeatEvery(tc.v); got != tc.want {
			t.Errorf("WATCHDOG_USEC=%s: every %v, want %v", tc.v, got, tc.want)
		}
	}
}
