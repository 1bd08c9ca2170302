//go:build linux

package cluster_test

import (
	"context"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
)

// FuzzAgentLogRecord: whatever record the agent's log handler is given
// (any level, message, keys, values, group and attribute count, as a
// worker's forwarded record may carry), the frame it writes is one the
// master's decoder takes, and a level within ±1000 arrives unchanged.
// The committed corpus (testdata/fuzz/FuzzAgentLogRecord) holds the
// records that ended sessions: a level of INFO+5000, a 300-byte key.
func FuzzAgentLogRecord(f *testing.F) {
	f.Add(int64(0), "worker started", "slot", "v", "", 1.5, uint8(1), uint16(1))
	f.Add(int64(5004), "x", "k", "v", "", 0.0, uint8(0), uint16(1))
	f.Add(int64(0), "request", strings.Repeat("k", 300), "v", "", 0.0, uint8(1), uint16(1))
	f.Add(int64(-9), "m", "é\xff", "\x00\"\\", "grp", math.Inf(1), uint8(70), uint16(3))
	f.Add(int64(8), strings.Repeat("\x01", 5000), "key", strings.Repeat("\x02", 1000), "g", math.NaN(), uint8(64), uint16(200))
	f.Fuzz(func(t *testing.T, level int64, msg, key, val, group string, fl float64, nattrs uint8, rep uint16) {
		nattrs %= 80
		rep %= 300
		msgs, err := agentFrames(t, func(w *cluster.AgentWire) {
			h := w.Logger().Handler()
			if group != "" {
				h = h.WithGroup(group).WithAttrs([]slog.Attr{slog.String(key, val)})
			}
			r := slog.NewRecord(time.Unix(1, 0), slog.Level(max(min(level, math.MaxInt32), math.MinInt32)), msg, 0)
			long := strings.Repeat(val, int(rep))
			for i := range int(nattrs) {
				switch i % 4 {
				case 0:
					r.AddAttrs(slog.String(key, long))
				case 1:
					r.AddAttrs(slog.Float64(key+"f", fl))
				case 2:
					r.AddAttrs(slog.Uint64(val, uint64(level)))
				default:
					r.AddAttrs(slog.Group(key, slog.String(val, msg)))
				}
			}
			_ = h.Handle(context.Background(), r)
		})
		if err != nil {
			t.Fatalf("the master refuses a relayed record: %v", err)
		}
		if len(msgs) > 1 {
			t.Fatalf("%d frames for one record", len(msgs))
		}
		lv := slog.Level(max(min(level, math.MaxInt32), math.MinInt32))
		if len(msgs) == 1 && lv >= slog.LevelInfo && lv <= 1000 && msgs[0].Level != lv {
			t.Fatalf("level %d arrived as %d", lv, msgs[0].Level)
		}
	})
}
