//go:build linux

package cluster

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestUpgradeStateOwedLeftOut: the upgrade state leaves out the dispatch
// state ("h" and "o" records) of only the workers that keep it from
// fitting or from reading back, and says which, so every other old
// worker stays in the new image's rotation. Here four workers are each
// owed DONEs of 64 runs of 255-byte names (some 33 KB of records each;
// four exceed the bound, three fit), and one is owed a run longer than
// the parser takes (as the old master could count). The old code left out
// every worker's: "dropped=4 why=133205 bytes with them, more than
// 131008".
func TestUpgradeStateOwedLeftOut(t *testing.T) {
	t.Parallel()
	base := func(heavy, light int) (*upgradeState, []int) {
		st := &upgradeState{pid: 5, pidLock: -1, listeners: []Activated{{FD: 3, Name: "tcp-8080"}}}
		var pids []int
		for i := range heavy + light {
			pid := 1000 + i
			pids = append(pids, pid)
			st.workers = append(st.workers, oldWorker{pid: pid, slot: i, generation: 1, stdout: -1, stderr: -1})
			c := handoffCarry{pid: pid, out: 1, sent: 7, ready: true, subs: []int{3}}
			if i < heavy {
				for k := range maxCarryOwed {
					c.owed = append(c.owed, owedRun{strings.Repeat(string(rune('a'+k%2)), maxCarryOwedLen), 1 + k})
				}
			}
			st.handoff = append(st.handoff, c)
		}
		return st, pids
	}
	for _, tc := range []struct {
		name string
		st   func() (*upgradeState, []int)
		// left out, by index in the workers
		drop []int
	}{
		{"four owed much", func() (*upgradeState, []int) { return base(4, 8) }, []int{3}},
		{"a run too long", func() (*upgradeState, []int) {
			st, pids := base(0, 8)
			st.handoff[2].owed = []owedRun{{"x", maxCarryOwedRun + 1}}
			return st, pids
		}, []int{2}},
		{"both", func() (*upgradeState, []int) {
			st, pids := base(4, 8)
			st.handoff[6].owed = []owedRun{{"x", maxCarryOwedRun + 1}}
			return st, pids
		}, []int{3, 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, pids := tc.st()
			out, err := st.encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseUpgradeState(out)
			if err != nil {
				t.Fatalf("the state written does not parse: %v", err)
			}
			var wantPIDs, dropped []int
			for i, pid := range pids {
				if slices.Contains(tc.drop, i) {
					dropped = append(dropped, pid)
				} else {
					wantPIDs = append(wantPIDs, pid)
				}
			}
			var gotPIDs []int
			for _, h := range got.handoff {
				gotPIDs = append(gotPIDs, h.pid)
			}
			if diff := cmp.Diff(wantPIDs, gotPIDs); diff != "" {
				t.Errorf("workers whose dispatch state is written (-want +got):\n%s", diff)
			}
			if st.handoffDropped != len(dropped) {
				t.Errorf("handoffDropped %d, want %d (why: %v)", st.handoffDropped, len(dropped), st.handoffWhy)
			}
			why := fmt.Sprint(st.handoffWhy)
			for _, pid := range dropped {
				if !strings.Contains(why, fmt.Sprint(" ", pid)) {
					t.Errorf("why %q does not name pid %d", why, pid)
				}
			}
			t.Logf("dropped=%d why=%v", st.handoffDropped, st.handoffWhy)
		})
	}
}

// TestHandoffOwedRunBound: a worker owed more DONEs of one name in a row
// than an upgrade state's "o" record carries broke the protocol (as one
// owed more runs than that does), instead of a count past the bound that
// made its state unreadable: the new image then dropped every worker's.
func TestHandoffOwedRunBound(t *testing.T) {
	t.Parallel()
	h := &handoff{}
	for _, tc := range []struct {
		n       int
		wantErr bool
	}{
		{hoMaxOwedRun - 1, false},
		{hoMaxOwedRun, true},
	} {
		w := &hoWorker{pid: -2, pidfd: -1, peer: -1}
		w.idle.L = &w.mu
		// Held, nothing is sent: the DONE is owed whatever the channel
		// (here none).
		w.mu.Lock()
		w.setHeld(true)
		w.owed = []hoOwed{{"tcp-8080", tc.n}}
		w.mu.Unlock()
		err := h.owe(w, -1, []byte("tcp-8080"))
		if (err != nil) != tc.wantErr {
			t.Errorf("owed %d: UNSUB: %v, want an error %v", tc.n, err, tc.wantErr)
		}
		want := []hoOwed{{"tcp-8080", min(tc.n+1, hoMaxOwedRun)}}
		if diff := cmp.Diff(want, w.owed, cmp.AllowUnexported(owedRun{})); diff != "" {
			t.Errorf("owed %d: owed after the UNSUB (-want +got):\n%s", tc.n, diff)
		}
	}
}
