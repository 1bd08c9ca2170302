//go:build linux

package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
)

// agentFrames runs emit against an agent's writer side and returns the
// frames it wrote, each decoded as the master decodes it (the error of the
// first that does not decode).
func agentFrames(t testing.TB, emit func(w *cluster.AgentWire)) ([]cluster.AgentMsg, error) {
	t.Helper()
	var wire bytes.Buffer
	w := cluster.NewAgentWire(&wire)
	emit(w)
	w.Close()
	rd := ipcframe.NewReader(&wire, &ipcframe.ReaderOptions{MaxFrame: cluster.MaxAgentFrame})
	var (
		p    fastjson.Parser
		msgs []cluster.AgentMsg
	)
	for i := 0; i < 1<<16; i++ {
		f, err := rd.ReadFrame(nil)
		if errors.Is(err, io.EOF) {
			return msgs, nil
		}
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		msg, err := cluster.DecodeAgentMsg(&p, f)
		if err != nil {
			return msgs, err
		}
		msgs = append(msgs, msg)
	}
	t.Fatal("endless wire")
	return nil, nil
}

// TestAgentLogRecordsFitMaster: every record the agent's log handler
// relays is one the master's decoder takes. A worker's forwarded record
// may carry any level ("INFO+5000") and attribute key, which the agent's
// master logs as they are; the master refused a level beyond ±1000 or a
// key over 256 bytes as a protocol error and ended the host's session.
// The agent clamps the level, cuts keys between UTF-8 characters and cuts
// a record too large for a frame.
func TestAgentLogRecordsFitMaster(t *testing.T) {
	long := func(s string, n int) string { return strings.Repeat(s, n) }
	type attr struct {
		Key string
		Val any
	}
	for _, tc := range []struct {
		name    string
		level   slog.Level
		msg     string
		attrs   []slog.Attr
		group   string
		wantLvl slog.Level
		want    []attr // nil: not compared
	}{
		{name: "worker level INFO+5000", level: slog.LevelInfo + 5000, msg: "x", wantLvl: 1000, want: []attr{}},
		{name: "level -5000", level: -5000, msg: "x", wantLvl: -1000, want: []attr{}},
		{name: "300-byte key", level: slog.LevelInfo, msg: "request",
			attrs:   []slog.Attr{slog.Int("slot", 0), slog.Int("pid", 42), slog.String(long("k", 300), "v")},
			wantLvl: slog.LevelInfo, want: []attr{{"slot", int64(0)}, {"pid", int64(42)}, {long("k", 256), "v"}}},
		{name: "key cut between characters", level: slog.LevelWarn, msg: "x",
			attrs:   []slog.Attr{slog.String(long("é", 200), "v")},
			wantLvl: slog.LevelWarn, want: []attr{{long("é", 128), "v"}}},
		{name: "invalid UTF-8 key", level: slog.LevelInfo, msg: "x",
			attrs:   []slog.Attr{slog.Bool(long("\xff", 100), true)},
			wantLvl: slog.LevelInfo, want: []attr{{long("\uFFFD", 85), true}}},
		{name: "long group prefix", level: slog.LevelInfo, msg: "x", group: long("g", 250),
			attrs:   []slog.Attr{slog.Int("slot", 1)},
			wantLvl: slog.LevelInfo, want: []attr{{long("g", 250) + ".slot", int64(1)}}},
		{name: "values of every kind", level: slog.LevelInfo, msg: "x",
			attrs: []slog.Attr{slog.Uint64("u", math.MaxUint64), slog.Uint64("small", 7), slog.Float64("nan", math.NaN()),
				slog.Float64("f", 1e300), slog.Time("t", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), slog.Duration("d", time.Second),
				slog.Any("err", errors.New("boom"))},
			wantLvl: slog.LevelInfo, want: []attr{{"u", "18446744073709551615"}, {"small", int64(7)}, {"nan", "NaN"},
				{"f", 1e300}, {"t", "2026-01-02T03:04:05Z"}, {"d", "1s"}, {"err", "boom"}}},
		{name: "70 attributes", level: slog.LevelInfo, msg: "x", attrs: func() []slog.Attr {
			var as []slog.Attr
			for i := range 70 {
				as = append(as, slog.Int("a"+strings.Repeat("x", i), i))
			}
			return as
		}(), wantLvl: slog.LevelInfo},
		{name: "2 MiB message", level: slog.LevelError, msg: long("m", 2<<20), wantLvl: slog.LevelError, want: []attr{}},
		{name: "64 escaped 64 KiB values", level: slog.LevelInfo, msg: long("\x01", 100<<10), attrs: func() []slog.Attr {
			var as []slog.Attr
			for i := range 64 {
				as = append(as, slog.String(long("\x02", 250)+string(rune('A'+i)), long("\x03", 64<<10)))
			}
			return as
		}(), wantLvl: slog.LevelInfo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs, err := agentFrames(t, func(w *cluster.AgentWire) {
				h := w.Logger().Handler()
				if tc.group != "" {
					h = h.WithGroup(tc.group)
				}
				r := slog.NewRecord(time.Now(), tc.level, tc.msg, 0)
				r.AddAttrs(tc.attrs...)
				_ = h.Handle(context.Background(), r)
				if w.Dropped() != 0 {
					t.Errorf("record dropped")
				}
			})
			if err != nil {
				t.Fatalf("the master refuses the relayed record: %v", err)
			}
			if len(msgs) != 1 || msgs[0].Type != "log" {
				t.Fatalf("frames %+v, want one log record", msgs)
			}
			m := msgs[0]
			if m.Level != tc.wantLvl {
				t.Errorf("level %d, want %d", m.Level, tc.wantLvl)
			}
			if !utf8.ValidString(m.Msg) || !strings.HasPrefix(m.Msg, tc.msg[:min(len(tc.msg), 100)]) {
				t.Errorf("message of %d bytes is not the record's, cut", len(m.Msg))
			}
			if len(m.Attrs) > 64 {
				t.Errorf("%d attributes", len(m.Attrs))
			}
			for _, a := range m.Attrs {
				if len(a.Key) > 256 || !utf8.ValidString(a.Key) {
					t.Errorf("key %.40q of %d bytes", a.Key, len(a.Key))
				}
			}
			if tc.want != nil {
				got := []attr{}
				for _, a := range m.Attrs {
					got = append(got, attr{a.Key, a.Value.Any()})
				}
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("attributes (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// TestAgentOversizedFrameKeepsWire: a frame over the agent protocol's
// limit is dropped alone. writeLoop took ErrFrameTooLarge for a broken
// wire and dropped every later frame (acks, logs, exit), so the master
// ended the session for silence 15 s later, restarting the host's workers.
func TestAgentOversizedFrameKeepsWire(t *testing.T) {
	msgs, err := agentFrames(t, func(w *cluster.AgentWire) {
		w.Enqueue(make([]byte, cluster.MaxAgentFrame+1), false)
		w.Ack(7)
		// The warning is queued once the oversized frame was tried,
		// while the ack waits: a closed queue would drop it.
		if !w.Settle() {
			t.Error("frames still queued after 10 s")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		switch m.Type {
		case "log":
			got = append(got, m.Level.String()+" "+m.Msg)
		case "ack":
			got = append(got, "ack")
			if m.Seq != 7 {
				t.Errorf("ack of seq %d, want 7", m.Seq)
			}
		default:
			got = append(got, m.Type)
		}
	}
	// Both, in either order: the warning is queued once the writer tried
	// the oversized frame, which may be before or after the ack was.
	slices.Sort(got)
	want := []string{"WARN agent dropped a frame too large for the wire", "ack"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("frames after an oversized one (-want +got):\n%s", diff)
	}
}

// bigStatus is an agent's status of n slots, each with a STATUS= text and
// a last exit.
func bigStatus(n int, text string) *cluster.ControlStatus {
	st := &cluster.ControlStatus{PID: 4194304, Generation: 12, Workers: n, ReadyWorkers: n}
	for i := range n {
		st.Slots = append(st.Slots, cluster.ControlSlot{Slot: i, PID: 4194000 + i, Generation: 12, State: supervise.SlotReloading,
			Uptime: 1000 * time.Hour, Restarts: 123, ID: i, Index: i, Status: text,
			LastExit: &cluster.ControlExit{PID: 4194001, Code: -1, Signal: 9, Time: time.Unix(1763700000, 0)}})
	}
	return st
}

// TestAgentStatusFrameFits: a status of 4096 slots always goes out within
// the frame limit, the slots' STATUS= texts (then their last exits) left
// out when the whole does not fit: 4096 40-byte texts took 1.09 MB, and
// such a status never reached the master. A status that fits is sent
// whole.
func TestAgentStatusFrameFits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		slots int
		text  string
		left  []string
	}{
		{"4096 slots, no text", 4096, "", nil},
		{"16 slots, 256-byte texts", 16, strings.Repeat("a", 256), nil},
		{"4096 slots, 40-byte texts", 4096, strings.Repeat("a", 40), []string{"slot status texts"}},
		{"4096 slots, escaped texts", 4096, strings.Repeat("\x01", 256), []string{"slot status texts"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := bigStatus(tc.slots, tc.text)
			frame, left := cluster.AgentStatusFrame(st)
			if len(frame) > cluster.MaxAgentFrame {
				t.Fatalf("frame of %d bytes, limit %d", len(frame), cluster.MaxAgentFrame)
			}
			if diff := cmp.Diff(tc.left, left); diff != "" {
				t.Errorf("left out (-want +got):\n%s", diff)
			}
			var p fastjson.Parser
			m, err := cluster.DecodeAgentMsg(&p, frame)
			if err != nil {
				t.Fatalf("master refuses the status: %v", err)
			}
			if len(m.Status.Slots) != tc.slots || m.Status.Workers != tc.slots {
				t.Fatalf("%d slots of %d workers, want %d", len(m.Status.Slots), m.Status.Workers, tc.slots)
			}
			for i, sl := range m.Status.Slots {
				wantText := tc.text
				if left != nil {
					wantText = ""
				}
				if sl.PID != 4194000+i || sl.Status != wantText || sl.LastExit == nil {
					t.Fatalf("slot %d: %+v", i, sl)
				}
			}
			if st.Slots[0].Status != tc.text {
				t.Error("the agent's own status was changed")
			}
		})
	}
}

// TestAgentLogMendedNotCut: a short message with invalid UTF-8 reaches the
// master mended (U+FFFD), without the cut marker a message over the limit
// gets.
func TestAgentLogMendedNotCut(t *testing.T) {
	msgs, err := agentFrames(t, func(w *cluster.AgentWire) {
		r := slog.NewRecord(time.Now(), slog.LevelInfo, "short \xff message", 0)
		_ = w.Logger().Handler().Handle(context.Background(), r)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].Msg != "short \uFFFD message" {
		t.Errorf("frames %+v, want one record with the message mended and uncut", msgs)
	}
}
