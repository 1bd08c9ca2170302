// Package supervise runs N slots of one program and keeps them healthy: the
// process supervisor under mini-cluster, usable alone by anyone who needs
// "run N of these and keep them healthy". Its semantics follow s6, runit and
// systemd's Restart=.
//
// # Model
//
// A Supervisor runs Options.Workers slots of a Spec. Each slot has a stable
// index; every spawn gets an ID (slot, generation, incarnation) that is
// never reused. Run supervises until its context is done or Stop/Kill is
// called. Everything that happens is reported on Events (started, ready,
// exited, restarting, failed, ...), and logged with log/slog.
//
//   - Restart policy: always (default), on-failure, never; an exit with
//     Options.PermanentExitCode (125) is never restarted.
//   - Throttling: a slot that dies before it was ready, or within
//     Backoff.Min (1 s) of starting, is respawned no sooner than 1 s later,
//     doubling to 30 s with jitter, reset after 10 s of ready uptime; a
//     ready worker that ran longer is respawned at once. Two limits fail
//     the slot loudly (Failed, ErrBurst): more than 5 starts in 10 s
//     (Backoff.Burst, Window), and 5 consecutive starts that died before
//     ready or within Backoff.Min (Backoff.QuickFailures) — with the
//     defaults a crash loop's delays (1+2+4+8 s) keep it under the burst
//     limit, so this second rule is what fails it, after its 5th start,
//     about 15 s in. Replacements spawned by graceful restarts count for
//     neither. Spawn failures (missing binary, EACCES, ETXTBSY) are retried
//     the same way and never stop the supervisor.
//   - Readiness: a worker is ready when MarkReady/MarkReadyPID is called
//     for it (wire a notify socket to it) or, with Options.ReadyOnStart, at
//     once. A worker not ready within StartTimeout is killed. Readiness of
//     a worker that has already exited is refused (checked on its pidfd),
//     and so is readiness of one being stopped (ErrUnknownWorker).
//   - Stop: StopSignal (SIGTERM) then SIGCONT to the worker's process
//     group, SIGKILL to the group after StopTimeout (and to a worker that
//     left its group, through its pidfd). When a worker exits by itself,
//     what is left of its process group is killed at once; when it exits
//     after being asked to stop, the rest of its group keeps the rest of
//     StopTimeout, and Run waits for it (Kill ends it).
//   - Graceful restart (Restart): rolling or parallel; one in flight, any
//     requests during it coalesce into one more. If a new worker fails to
//     start, exits or misses its start timeout, the restart fails and the
//     old workers keep serving. A new worker that cannot be spawned for
//     lack of resources (EMFILE, ENFILE, ENOMEM, EAGAIN, ENOBUFS: the
//     supervisor out of descriptors, say) does not fail it at once: the
//     restart stays in flight and the spawn is retried with the Backoff
//     delays (1 s doubling), up to Backoff.QuickFailures failures in a row
//     (5: the last about 15 s in, up to 18 s with jitter), while the old
//     workers serve.
//   - Recycle replaces one ready worker the same way without a new
//     generation (for a maximum running time); a replacement that fails
//     leaves the old worker serving. A restart, or a Scale removing the
//     slot, stops a replacement in flight; if the old worker dies first,
//     the replacement takes its slot unless the restart policy leaves it
//     down.
//   - Scale/ScaleBy at run time (StartEmpty starts with no slot); a slot
//     removed and re-added keeps counting incarnations, so an ID is never
//     repeated. HandleSignals maps TERM/INT
//     (stop, then kill), HUP/USR1 (restart) and TTIN/TTOU (scale) for
//     commands; a TERM/INT before Run makes Run stop at once, one after Run
//     returned takes the signal's default action.
//   - Output capture (Options.CaptureOutput): stdout and stderr line by
//     line on Lines, tagged with ID and pid; a slow reader never blocks a
//     worker, lines are dropped and counted instead.
//
// # Process hygiene
//
// Every worker runs in its own process group (a terminal's Ctrl-C reaches
// only the supervisor), with default signal dispositions even if the
// supervisor ignores some (nohup: the process then catches those signals
// into a channel nobody reads, for good; see Options.KeepIgnoredSignals),
// stdin on /dev/null, and Pdeathsig
// SIGKILL. Workers are forked from one goroutine locked to its OS thread
// for the supervisor's lifetime, because Pdeathsig fires when the forking
// thread, not the process, dies. Workers are watched and signalled through
// pidfds; a process group is signalled only while its leader is known to be
// unreaped, so a recycled pid is never hit. Exits are noticed through the
// runtime poller: an idle supervisor uses no CPU. With Options.Subreaper the
// process becomes a child subreaper and reaps orphaned descendants: it
// lists its children (/proc/self/task/*/children) and reaps only those
// that are not workers, with wait4(WNOHANG), so a worker's own exit status
// is never stolen (without that file, it peeks with waitid(WNOWAIT)); only
// enable it when nothing else in the process starts children.
//
// # Supervisor death
//
// If the supervisor is SIGKILLed, every worker (each process it forked)
// gets SIGKILL from the kernel through Pdeathsig. The workers' own children
// and further descendants do not: Pdeathsig is per process, not inherited
// across fork, and no signal reaches a process group whose leader was
// killed. They survive, re-parented to init or the nearest subreaper, still
// holding whatever they inherited (listening sockets, pipes). A worker that
// forks must give its children their own Pdeathsig, or the supervisor must
// run in a cgroup (a systemd unit with KillMode=control-group, or a cgroup
// v2 directory killed through cgroup.kill): only a cgroup contains every
// descendant, including those that left the process group with setsid.
// The package does not create cgroups.
//
// # Replacing the supervisor's image
//
// Supervisor.Exec executes a new program in place of the running process
// (execve(2), same pid) while Run runs, keeping the workers alive. It must
// run on the spawner thread: Pdeathsig fires when the thread that forked a
// worker exits, and execve from a multi-threaded process kills every
// thread but the caller, so an execve from any other thread SIGKILLs every
// worker. From the spawner thread, that thread becomes the new image's main
// thread: the workers stay its children (waitable through pidfds,
// os.FindProcess) and still die with it. The new image gets
// ExecSpec.Files and the workers' output pipes as inherited descriptors and
// the worker list through ExecSpec.Env; nothing else of the supervisor
// survives, so the new image must adopt and retire those workers itself.
// An execve that fails before the kernel's point of no return (ENOENT,
// EACCES, ETXTBSY, ENOEXEC) changes nothing, except that the groups of
// stopped workers still in their grace are killed right before execve;
// a target known to fail (missing, not executable, a #! interpreter
// missing) is refused before that. PIDFile.LockFile and
// AdoptPIDFile carry a pid file's lock across the exec.
//
// # Ownership
//
// Spec.ExtraFiles and Launch.ExtraFiles stay owned by the caller; the
// supervisor passes them to each worker as descriptors 3, 4, ... without
// calling (*os.File).Fd, so sockets keep their non-blocking mode
// (O_NONBLOCK belongs to the open file description the worker shares:
// clear it on what a worker that does not expect EAGAIN gets). The
// worker's stdin (/dev/null) and captured stdout and stderr are blocking
// for it; only the supervisor's read ends are non-blocking. Every
// descriptor the supervisor opens (pidfds, pipes, /dev/null) is
// close-on-exec and closed when Run returns. Descriptors of the process that
// lack close-on-exec (inherited from its own parent, say) do reach workers,
// as with os/exec.
//
// # Who should not use it
//
// Programs that need cgroup-level containment, resource limits or
// dependency ordering between services should use systemd. The supervisor
// does not daemonise, does not change rlimits (workers get the soft
// RLIMIT_NOFILE the process started with, which Go restores for children),
// and does not restart itself.
//
// # Platforms
//
// Linux only, 5.4 or newer: exits are watched with waitid(P_PIDFD), which
// Run probes for and, if missing, returns an error wrapping
// ErrNotSupported. On other systems Run, HandleSignals, Exec and the pid
// file functions return an error wrapping ErrNotSupported.
package supervise
