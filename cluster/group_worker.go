package cluster

import (
	"os"
	"strconv"
	"sync"
)

// Group worker environment, set by the master when Config.Group is set.
const (
	envGroup      = "HANDOFF_GROUP"
	envGroupIndex = "HANDOFF_GROUP_INDEX"
	envGroupSize  = "HANDOFF_GROUP_SIZE"
	envParams     = "HANDOFF_PARAMS"
)

type groupInfo struct {
	name        string
	index, size int
	params      []byte
}

// groupEnv is read once, like ID: the process's environment at start is
// what the master gave it. Only a worker a master started (one with its
// control channel, which only the process LISTEN_PID names adopts) reads
// it: a worker's children inherit the variables but are not in the group,
// as ID is 0 in them.
var groupEnv = sync.OnceValue(func() groupInfo {
	g := groupInfo{size: 1}
	if !self().isWorker {
		return g
	}
	g.name = os.Getenv(envGroup)
	if g.name == "" {
		return g
	}
	// The master never sets malformed numbers; anything else set them, and
	// the standalone values are the safe answer.
	if i, err := strconv.Atoi(os.Getenv(envGroupIndex)); err == nil && i >= 0 {
		g.index = i
	}
	if n, err := strconv.Atoi(os.Getenv(envGroupSize)); err == nil && n > 0 {
		g.size = n
	}
	g.params = []byte(os.Getenv(envParams))
	if len(g.params) == 0 {
		g.params = []byte("{}")
	}
	return g
})

// Group returns the worker's group (HANDOFF_GROUP), its index in the group
// (HANDOFF_GROUP_INDEX, 0 to size-1 as configured; a worker added by
// scaling up may be beyond) and the group's size (HANDOFF_GROUP_SIZE).
// Outside a group it returns "", 0, 1: standalone, and in a process that
// is not the worker the master started (IsWorker false), such as a
// worker's child that inherited the variables. Like ID, the first call
// sets the worker API up.
func Group() (name string, index, size int) {
	g := groupEnv()
	return g.name, g.index, g.size
}

// Params returns the group's parameters (HANDOFF_PARAMS), a JSON value
// from the configuration file, or nil outside a group (as for Group). The
// slice is the caller's.
func Params() []byte {
	g := groupEnv()
	if g.name == "" {
		return nil
	}
	return append([]byte(nil), g.params...)
}
