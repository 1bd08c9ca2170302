package cluster

import (
	"maps"
	"slices"
)

// SetEventSeams makes the master build its supervisor with an event
// buffer of buffer events (0: supervise's default) and call gate (if not
// nil) after it checked for drops and before it waits for each event: a
// drop while gate blocks is then one the reader's next receive partly
// hides (it takes one of the queued events first). Call it before Run.
func SetEventSeams(m *Master, buffer int, gate func()) {
	m.m.eventBuffer, m.m.eventGate = buffer, gate
}

// WorkerBooks is the master's per-worker state, by pid, sorted.
type WorkerBooks struct {
	// Counted: m.pids (from Started events). Tracked: processes with a
	// pidfd. Channels: control channels. Routed: handoff rotation.
	Counted, Tracked, Channels, Routed []int
	// Live counts worker processes per slot, Slots lists the slots with
	// reuseport sockets of their own (mode state).
	Live  map[int]int
	Slots []int
}

// Books returns the master's per-worker state.
func Books(m *Master) WorkerBooks {
	mm := m.m
	var b WorkerBooks
	mm.mu.Lock()
	b.Counted = slices.Sorted(maps.Keys(mm.pids))
	mm.mu.Unlock()
	mm.ctl.mu.Lock()
	b.Tracked = slices.Sorted(maps.Keys(mm.ctl.procs))
	b.Channels = slices.Sorted(maps.Keys(mm.ctl.chans))
	mm.ctl.mu.Unlock()
	mm.mode.mu.Lock()
	b.Live = maps.Clone(mm.mode.live)
	b.Slots = slices.Sorted(maps.Keys(mm.mode.slots))
	mm.mode.mu.Unlock()
	if h := mm.mode.ho; h != nil {
		for _, w := range h.snapshot() {
			b.Routed = append(b.Routed, w.pid)
		}
		slices.Sort(b.Routed)
	}
	return b
}
