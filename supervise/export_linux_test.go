package supervise

// SetHookBeforeReap installs a hook run after a worker exited and before it
// is reaped; nil removes it. Tests only; not safe while a Supervisor runs.
func SetHookBeforeReap(h func(pid int)) { testHookBeforeReap = h }

// SetHookAfterReap installs a hook run after a worker was reaped and before
// its exit is processed; nil removes it. Tests only, before Run.
func SetHookAfterReap(h func(pid int)) { testHookAfterReap = h }
