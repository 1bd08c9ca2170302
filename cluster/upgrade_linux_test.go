package cluster_test

import (
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
