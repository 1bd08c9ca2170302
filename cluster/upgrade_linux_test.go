package cluster_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/cluster"
)

// TestUpgradeEnv: the new image gets no socket-activation variables of the
// old one (its listeners travel in the state) and exactly one state.
func TestUpgradeEnv(t *testing.T) {
	t.Parallel()
	in := []string{"PATH=/bin", "LISTEN_PID=1", "LISTEN_FDS=2", "LISTEN_FDNAMES=a:b", "HANDOFF_UPGRADE_STATE=old", "NOTIFY_SOCKET=/run/sd", "LISTEN_FDSX=keep"}
	want := []string{"PATH=/bin", "NOTIFY_SOCKET=/run/sd", "LISTEN_FDSX=keep", "HANDOFF_UPGRADE_STATE=new"}
	if diff := cmp.Diff(want, cluster.UpgradeEnv(in, "new")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestRunUpgradeProbe: the probe names the state versions this binary
// parses, one header a line, which a running master checks before it
// executes the binary in place.
func TestRunUpgradeProbe(t *testing.T) {
	var b strings.Builder
	if err := cluster.RunUpgradeProbe(&b); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("handoff-upgrade v1\n", b.String()); diff != "" {
		t.Errorf("probe output (-want +got):\n%s", diff)
	}
}
