package cluster

import "time"

// SetAgentFlushTimeout sets how long an agent lets its last frames out at
// exit, for tests of a stuck wire; the returned function restores it. Call
// it before the agent starts and restore after it returned.
func SetAgentFlushTimeout(d time.Duration) (restore func()) {
	prev := agentFlushTimeout
	agentFlushTimeout = d
	return func() { agentFlushTimeout = prev }
}
