package cluster

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/supervise"
)

// TestForgetPendingStatus: forget reports a STATUS= the rate limit held
// back, an empty one (a clear) included: the exit record then carries
// last_status="" instead of leaving the stale status the log's last word.
func TestForgetPendingStatus(t *testing.T) {
	type res struct {
		Unlogged string
		Pending  bool
		Logged   int
	}
	for _, tc := range []struct {
		name     string
		statuses []string
		want     res
	}{
		{"none", nil, res{}},
		{"logged", []string{"busy"}, res{Logged: 1}},
		{"held back", []string{"busy", "idle"}, res{Unlogged: "idle", Pending: true, Logged: 1}},
		{"clear held back", []string{"busy", ""}, res{Unlogged: "", Pending: true, Logged: 1}},
		{"back to the logged one", []string{"busy", "idle", "busy"}, res{Logged: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			log := slog.New(slog.NewTextHandler(&b, nil))
			var s notifyState
			defer s.close()
			id := supervise.ID{Slot: 0, Generation: 1}
			// statusInterval (1 s) holds back every status after the
			// first one: the test ends long before it does, and forget
			// stops the timer.
			for _, st := range tc.statuses {
				s.status(log, 42, id, st)
			}
			var got res
			_, got.Unlogged, got.Pending = s.forget(42, id)
			got.Logged = bytes.Count(b.Bytes(), []byte("worker status"))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
