package cluster

import "github.com/handoff-go/handoff/supervise"

// AsUser runs fn as the master runs what it does for a worker of user c
// (nil: the master's own user, without effective capabilities).
func AsUser(c *supervise.Credential, fn func() error) error { return asUser(c, fn) }
