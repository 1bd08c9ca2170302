package supervise

import "log/slog"

// SetHookWatch installs a hook run by a worker's watcher when it starts,
// before it waits for the worker's exit; nil removes it. Tests only, before
// Run.
func SetHookWatch(h func(pid int)) { testHookWatch = h }

// SetHookExited installs a hook run by a worker's watcher once the worker
// has exited, before anything is done about it; nil removes it. Tests only;
// not safe while a Supervisor runs.
func SetHookExited(h func(pid int)) { testHookExited = h }

// SetHookBeforePost installs a hook run after an exited worker was marked
// reaped, and before its exit is posted to the event loop; the worker is
// still unreaped, and the hook may reap it. nil removes it. Tests only,
// before Run.
func SetHookBeforePost(h func(pid int)) { testHookBeforePost = h }

// SetHookPIDFileRead installs a hook run by ReadPIDFile between reading the
// pid file and testing its lock; nil removes it. Tests only.
func SetHookPIDFileRead(h func()) { testHookPIDFileRead = h }

// SetHookPIDFileLive installs a hook run by ReadPIDFile right after it
// found the lock's live byte held; nil removes it. Tests only.
func SetHookPIDFileLive(h func()) { testHookPIDFileLive = h }

// SetHookPIDFileOpen installs a hook run by ReadPIDFile right before it
// opens the pid file; nil removes it. Tests only.
func SetHookPIDFileOpen(h func()) { testHookPIDFileOpen = h }

// SetHookPIDFileWrite installs a hook run by Write right before it renames
// the new pid file into place (false) and right after (true); nil removes
// it. Tests only.
func SetHookPIDFileWrite(h func(renamed bool)) { testHookPIDFileWrite = h }

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

// SetHookBeforeReap installs a hook run after a worker's exit was posted and
// before its watcher reaps it; nil removes it. Tests only, before Run.
func SetHookBeforeReap(h func(pid int)) { testHookBeforeReap = h }

// SetHookAfterReap installs a hook run after the watcher's wait4 of a worker,
// with its error, and before the pid is disowned; nil removes it. Tests
// only, before Run.
func SetHookAfterReap(h func(pid int, err error)) { testHookAfterReap = h }

// ReapOrphans runs one pass of the orphan reaper on the calling thread, as
// a subreaper supervisor's whose OwnChild is own; the caller keeps the
// goroutine locked to its thread to decide which children are whose.
func ReapOrphans(own func(pid int) bool) {
	p := &platform{
		s:     &Supervisor{opt: Options{OwnChild: own}, log: slog.New(slog.DiscardHandler)},
		owned: map[int]uint64{},
		nudge: make(chan struct{}, 1),
	}
	procs.mu.Lock()
	if procs.platforms == nil {
		procs.platforms = make(map[*platform]struct{})
	}
	procs.platforms[p] = struct{}{}
	procs.mu.Unlock()
	defer func() {
		procs.mu.Lock()
		delete(procs.platforms, p)
		procs.mu.Unlock()
	}()
	p.reapOrphans()
}
