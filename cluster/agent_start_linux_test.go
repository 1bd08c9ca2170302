//go:build linux

package cluster_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/valyala/fastjson"
)

// TestAgentCommandRightAfterStart: a command right behind the start spec
// (what a master sends when a suspend came while the agent started) is
// carried out, not refused because the agent's supervisor was not running
// yet.
func TestAgentCommandRightAfterStart(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	a := startAgentPipe(t)
	a.send(startSpec(t, pc, 1))
	a.send(`{"type":"suspend","seq":1}`)
	var refusal string
	a.until("the suspend's ack", func(v *fastjson.Value) bool {
		if !isType("ack")(v) || v.GetInt("seq") != 1 {
			return false
		}
		refusal = string(v.GetStringBytes("error"))
		return true
	})
	if refusal != "" {
		t.Errorf("suspend right after the start spec refused: %s", refusal)
	}
	a.until("a suspended status without workers", func(v *fastjson.Value) bool {
		return isType("status")(v) && v.GetBool("suspended") && allStopped(v)
	})
	a.inW.Close()
	if _, err := a.drain(); err != nil {
		t.Errorf("RunAgent: %v", err)
	}
}

// allStopped reports a status whose slots run no process.
func allStopped(v *fastjson.Value) bool {
	for _, sl := range v.GetArray("status", "slots") {
		if sl.GetInt("pid") != 0 {
			return false
		}
	}
	return true
}

// TestAgentHeartbeatTimeout: the agent gives up on a silent master after
// the start spec's heartbeat timeout plus 2 s (the master's own limit,
// so both ends agree), not after a fixed three status intervals.
func TestAgentHeartbeatTimeout(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	t.Cleanup(cluster.SetAgentFlushTimeout(time.Second))
	a := startAgentPipe(t)
	// Three intervals of 500 ms plus 2 s would be 3.5 s.
	a.send(strings.Replace(startSpec(t, pc, 1), `"status_interval_ms":500`, `"status_interval_ms":500,"heartbeat_timeout_ms":1000`, 1))
	a.until("started", isType("started"))
	a.quiet()
	_, err := a.drain()
	if !errors.Is(err, cluster.ErrAgentProtocol) || !strings.Contains(err.Error(), "nothing from the master for 3s") {
		t.Errorf("RunAgent: %v, want ErrAgentProtocol after 1 s plus 2 s of silence", err)
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}
