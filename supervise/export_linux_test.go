package supervise

// SetHookBeforeReap installs a hook run after a worker exited and before it
// is reaped; nil removes it. Tests only; not safe while a Supervisor runs.
func SetHookBeforeReap(h func(pid int)) { testHookBeforeReap = h }

// SetHookAfterReap installs a hook run after a worker was reaped and before
// its exit is processed; nil removes it. Tests only, before Run.
func SetHookAfterReap(h func(pid int)) { testHookAfterReap = h }

// SetHookPIDFileRead installs a hook run by ReadPIDFile between reading the
// pid file and testing its lock; nil removes it. Tests only.
func SetHookPIDFileRead(h func()) { testHookPIDFileRead = h }

// DisownRecycled registers a worker pid, lets a newer worker take the same
// (recycled) pid, disowns the first and reports whether the pid is still
// owned, as the newer worker needs.
func DisownRecycled() bool {
	p := &platform{owned: map[int]uint64{}, nudge: make(chan struct{}, 1)}
	const pid = 4242
	p.owned[pid] = 1 // the first worker, since reaped
	p.owned[pid] = 2 // the spawner forked a new worker with that pid
	p.disown(pid, 1) // the first worker's watcher catches up
	_, owned := p.owned[pid]
	return owned
}

// SetHookBeforeDisown installs a hook run after a worker was reaped and
// before its pid is disowned; nil removes it. Tests only, before Run.
func SetHookBeforeDisown(h func(pid int)) { testHookBeforeDisown = h }
