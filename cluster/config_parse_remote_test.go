package cluster_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
)

// TestParseConfigRemoteAgentLimits: a group with remote hosts is held to
// what their agents take (fewer arguments, variables and listen addresses
// than a file may hold, frames of at most 1 MiB): an agent would refuse
// the start spec at every session, and the host would be retried for
// ever. The same group without remote hosts is fine.
func TestParseConfigRemoteAgentLimits(t *testing.T) {
	const host = `, "remote": [{"ssh": "h", "count": 1, "identity": "/i", "known_hosts": "/k"}]`
	args := func(n int) string {
		return strings.TrimSuffix(strings.Repeat(`"a", `, n), ", ")
	}
	listen := func(n int) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteString(", ")
			}
			if i == n-1 {
				b.WriteString(mark)
			}
			b.WriteString(`"127.0.0.1:` + strconv.Itoa(10000+i) + `"`)
		}
		return b.String()
	}
	tests := []struct {
		name, group, path, msg string
	}{
		{"arguments", `"name": "g", "listen": ["127.0.0.1:0"], "command": ["p", ` + args(1024) + `, §"a"]`,
			"groups[0].command[1025]", "at most 1024 arguments after the program"},
		{"env", `"name": "g", "command": ["p"], "listen": ["127.0.0.1:0"], "env": {` + envVars(1024) + `"x": §""}`,
			"groups[0].env.x", "at most 1024 variables"},
		{"listen", `"name": "g", "command": ["p"], "listen": [` + listen(65) + `]`,
			"groups[0].listen[64]", "at most 64 listen addresses"},
		// A byte the spec escapes (\u007f) grows it sixfold.
		{"frame", `"name": "g", "listen": ["127.0.0.1:0"], "command": ["p", "` + strings.Repeat("\x7f", 60000) + `", "` +
			strings.Repeat("\x7f", 60000) + `", "` + strings.Repeat("\x7f", 60000) + `"], "remote": [§{"ssh": "h", "count": 1, "identity": "/i", "known_hosts": "/k"}]`,
			"groups[0].remote[0]", "an agent takes frames of at most 1048576"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := `{"groups": [{` + tt.group
			if tt.name != "frame" {
				in += host
			}
			in += `}]}`
			checkConfigError(t, in, tt.path, tt.msg)
			// Local workers only: no agent, no agent limits.
			if tt.name != "frame" {
				local := strings.Replace(`{"groups": [{`+tt.group+`}]}`, mark, "", 1)
				if _, err := cluster.ParseConfig([]byte(local)); err != nil {
					t.Errorf("local group: %v", err)
				}
			}
		})
	}
}

// TestParseConfigHeartbeatTimeout: a remote host's "heartbeat_timeout" is
// 0 (the default, 15 s) or 3 s to 10 min.
func TestParseConfigHeartbeatTimeout(t *testing.T) {
	const ok = `"count": 1, "identity": "/i", "known_hosts": "/k"`
	fc, err := cluster.ParseConfig([]byte(remote(ok + `, "heartbeat_timeout": "30s"`)))
	if err != nil {
		t.Fatal(err)
	}
	if got := fc.Groups[0].Remote[0].HeartbeatTimeout; got != 30*time.Second {
		t.Errorf("HeartbeatTimeout = %v, want 30s", got)
	}
	fc, err = cluster.ParseConfig([]byte(remote(ok)))
	if err != nil {
		t.Fatal(err)
	}
	if got := fc.Groups[0].Remote[0].HeartbeatTimeout; got != 0 {
		t.Errorf("HeartbeatTimeout = %v, want 0 (the default)", got)
	}
	checkConfigError(t, remote(ok+`, "heartbeat_timeout": §"1s"`), "groups[0].remote[0].heartbeat_timeout", "at least 3s")
	checkConfigError(t, remote(ok+`, "heartbeat_timeout": §"11m"`), "groups[0].remote[0].heartbeat_timeout", "from 0 to 10m0s")
	checkConfigError(t, remote(ok+`, "heartbeat_timeout": §15`), "groups[0].remote[0].heartbeat_timeout", "want a duration")
}
