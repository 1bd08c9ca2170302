package cluster_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/cluster"
)

// handoffState is the state of a handoff-mode master with listeners
// -listen listeners and binds bound for workers, and workers workers,
// each with its W record and three channel records (as upgradeState
// writes them: descriptors in the thousands for a large cluster), plus
// the "h" record of each, subscribed to every listener.
func handoffState(listeners, binds, workers int) (base string, hs []string) {
	var b strings.Builder
	b.WriteString("handoff-upgrade v1 5\n")
	fd := 3
	var subs []string
	for i := range listeners {
		fmt.Fprintf(&b, "L %d tcp-203.0.113.10-%d\n", fd, 8000+i)
		subs = append(subs, fmt.Sprint(fd))
		fd++
	}
	for i := range binds {
		fmt.Fprintf(&b, "B %d tcp://127.0.0.1:%d\n", fd, 20000+i)
		subs = append(subs, fmt.Sprint(fd))
		fd++
	}
	fd = max(fd, 1000)
	for i := range workers {
		pid := 100000 + i
		for _, k := range []string{"chan", "conn", "peer"} {
			fmt.Fprintf(&b, "F %d %s.%d\n", fd, k, pid)
			fd++
		}
		fmt.Fprintf(&b, "W %d %d 1 %d %d\n", pid, i, fd, fd+1)
		fd += 2
		hs = append(hs, fmt.Sprintf("%d 3 123456 - r %s", pid, strings.Join(subs, " ")))
	}
	return b.String(), hs
}

// TestUpgradeStateHandoffSize: the handoff dispatch state ("h" records)
// names listeners by descriptor, so it stays small: 300 workers with 16
// listeners each upgrade with it (the old code spelt every listener's
// name for every worker, and failed that upgrade: "too many workers").
// A state that fits only without some of it goes without as little as it
// must (the old workers left out are then retired at once) instead of
// failing the upgrade.
func TestUpgradeStateHandoffSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		listeners, workers int
		dropped            bool
	}{
		{16, 300, false},
		{16, 600, false},
		{1, 1000, false},
		{16, 1000, true},
	} {
		base, hs := handoffState(tc.listeners, 0, tc.workers)
		out, dropped, err := cluster.EncodeUpgradeStateWith(base, hs)
		if err != nil {
			t.Errorf("%d workers, %d listeners: %v", tc.workers, tc.listeners, err)
			continue
		}
		t.Logf("%d workers, %d listeners: %d bytes, %d bytes a worker", tc.workers, tc.listeners, len(out), len(out)/tc.workers)
		if tc.dropped != (dropped > 0) || dropped == tc.workers {
			t.Errorf("%d workers, %d listeners: %d h records left out, want some (%v), not all", tc.workers, tc.listeners, dropped, tc.dropped)
		}
		if got := strings.Count(out, "\nh "); got != tc.workers-dropped {
			t.Errorf("%d workers, %d listeners: %d h records written, want %d", tc.workers, tc.listeners, got, tc.workers-dropped)
		}
		// As few left out as fit: one more (all are the same size) would not.
		if dropped > 0 && len(out)+len(" ")+len(hs[0])+len("h\n") <= cluster.MaxUpgradeState {
			t.Errorf("%d workers, %d listeners: %d bytes with %d h records left out: room for one more", tc.workers, tc.listeners, len(out), dropped)
		}
		if again, err := cluster.ReencodeUpgradeState(out); err != nil || again != out {
			t.Errorf("%d workers, %d listeners: the state written does not round-trip: %v", tc.workers, tc.listeners, err)
		}
	}
}

// TestUpgradeStateHandoffManyListeners: a worker may subscribe to every
// listener a state can name, 1024 -listen ones and 256 bound for
// workers; what the encoder writes of it the parser accepts (the old
// parser took at most 1024 names, so the new image started clean and
// killed every worker).
func TestUpgradeStateHandoffManyListeners(t *testing.T) {
	t.Parallel()
	base, hs := handoffState(1024, 256, 2)
	out, dropped, err := cluster.EncodeUpgradeStateWith(base, hs)
	if err != nil {
		t.Fatal(err)
	}
	if dropped != 0 {
		t.Errorf("%d h records left out, want none", dropped)
	}
	if again, err := cluster.ReencodeUpgradeState(out); err != nil || again != out {
		t.Errorf("the state written does not round-trip: %v", err)
	}
}
