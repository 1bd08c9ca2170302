// Package cluster runs a program as a cluster of worker processes that
// share listening sockets: the master side of mini-cluster.
//
// A Master binds every listen address once (or, when the process was itself
// socket-activated by systemd, adopts the descriptors it was given), keeps
// those sockets for the cluster's whole lifetime, and hands the very same
// sockets to every worker and every generation as descriptors 3, 4, ... in
// listen order. Workers learn about them through the systemd protocols, so
// any program that supports socket activation works unchanged:
// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (set by an exec shim, ShimArg,
// because os/exec cannot set a child's own pid), NOTIFY_SOCKET for
// readiness (sd_notify(3)), and HANDOFF_WORKER_ID, HANDOFF_WORKER_GENERATION
// and HANDOFF_WORKERS. Processes, restarts, readiness deadlines, stop
// escalation and the pid file are package supervise's.
//
// # Invariants
//
//   - Every listening socket is the master's: closing one of several
//     SO_REUSEPORT sockets resets the connections queued on it, closing a
//     copy in one worker loses nothing. A worker that exits, is killed or
//     is replaced never costs a queued connection (in shared and handoff
//     modes one socket per address; in reuseport mode one per address and
//     slot, kept while the slot exists).
//   - Listening sockets (bound or adopted) are set to blocking mode once,
//     before the first worker starts, as systemd does (non-blocking in
//     handoff mode, where the master accepts on them). O_NONBLOCK belongs
//     to the shared open file description, so a worker that changes it
//     changes it for all: workers must not rely on either mode.
//   - Descriptors the master inherited without close-on-exec are marked
//     close-on-exec by New; only the listeners reach workers. Activation
//     descriptors are validated (open, inherited, a listening or datagram
//     socket) before New opens anything else.
//   - The notify socket is a 0600 path in a private 0700 directory,
//     removed when Run returns (with Config.Credential, the socket is the
//     workers' user's and the directory, still the master's, 0710 with
//     the workers' group). Notifications are attributed by the
//     kernel-supplied sender credentials (SCM_CREDENTIALS): the sender must
//     run as the workers' user (the master's, or Config.Credential's) and
//     be a worker or a descendant of one
//     (its parent chain is read from /proc); anything else is logged and
//     ignored. A descendant that exits before its message is read cannot be
//     attributed (systemd has the same race).
//   - Socket-activation and sd_notify input is untrusted: malformed
//     variables fail with ErrActivation, adopted descriptors that are not
//     listening or datagram sockets are refused, a malformed notification
//     field is ignored while the message's valid fields count, and
//     descriptors sent with a notification (FDSTORE, BARRIER) are closed.
//     Warnings about notify input are rate-limited.
//   - Workers die with the master: supervise arms Pdeathsig, and the exec
//     shim re-arms it on the thread that calls execve (the setting is per
//     thread) and checks that its parent is still the master. A worker's
//     own children are not covered: after a master SIGKILL they may keep
//     the listening sockets; only a cgroup (a systemd unit, a container)
//     contains them.
//
// # Modes
//
// Config.Mode (-mode; workers see HANDOFF_MODE) chooses how connections
// reach workers. ModeShared, the default, is the above: the master never
// accepts, and does not even poll its listeners. ModeReuseport gives each
// slot its own SO_REUSEPORT socket per TCP or UDP address, bound by the
// master in one group (port 0 resolved once), owned by it for as long as
// the slot exists and handed to the slot's worker of every generation as
// descriptors 3..; a removed slot's sockets are closed at once on
// scale-down. Unix listeners are refused (ErrMode). ModeHandoff makes
// the master accept on its listeners (non-blocking, on the netpoller) and
// pass each connection, with its listener name and remote address, to a
// subscribed worker over a per-worker SOCK_SEQPACKET channel
// (HANDOFF_CONN_FD, docs/protocol.md "Connection handoff"), several per
// message when they queued up, least-loaded by the workers'
// acknowledgements, never blocking on a full channel; HandoffListener (and
// Listen in handoff mode) is the worker's net.Listener for them. UDP
// listeners are refused (ErrMode). In every mode a worker that exits or is
// killed costs no connection still queued in the kernel or held by the
// master; in handoff mode a worker that dies loses the ones delivered to it
// and not accepted, and one that closes its listener gives them back.
//
// # In-place upgrade (SIGUSR2)
//
// Under HandleSignals, SIGUSR2 re-executes the binary the master was
// started from in place: same pid, same argv. The path is argv[0] as
// started (made absolute at New, symlinks not resolved, so a swapped
// release symlink is followed). Before anything changes, the new binary is
// run once with UpgradeProbeArg and the master's arguments, and must accept
// them and name the state version within 2 s (a program embedding Master
// handles it with UpgradeProbeArgs and RunUpgradeProbe), else the upgrade
// is refused and the old image serves on. The execve
// runs on supervise's spawner thread (supervise.Supervisor.Exec), so the
// workers' parent-death signal does not fire and they stay children of the
// new image. Listeners (and reuseport slot sockets, listeners bound for
// workers), the pid file's lock, the control socket and the master ends of
// the workers' channels are inherited descriptors; their numbers, the old
// workers and their output pipes travel in HANDOFF_UPGRADE_STATE, which the
// new image checks before adopting anything. A state it rejects makes it
// close every inherited descriptor but the pid file's lock and the control
// socket, and kill and reap the old image's workers (children whose
// environment carries HANDOFF_WORKER_ID), before it binds afresh (logged as
// an error); an accepted state's unnamed descriptors are closed and the
// workers it lists as not handed over killed. Other children of the
// process are left alone. The new image starts a full set of workers (as many as the old
// image had in force, so scaling survives) and retires the old ones once
// its own are ready; until then the old workers serve, in handoff mode
// too (the state carries what the dispatcher knew of their channels). A failed execve (missing, non-executable or
// busy binary) leaves everything as it was. A SIGUSR2 during an upgrade is
// ignored. See docs/operations.md.
//
// # Suspend, resume and maximum running time
//
// Master.Suspend stops every worker gracefully and starts none until
// Resume (Config.Suspended starts that way; such a master is ready at
// once). The listeners stay open, so connections wait in the kernel's
// backlog, in the reuseport slots' sockets (kept while suspended) or, in
// handoff mode, in the master, and are served after Resume; scaling while
// suspended changes the count resumed, Restart fails with ErrSuspended,
// and SIGUSR2 is refused (the upgrade state does not record a
// suspension). Config.MaxRunningTime recycles a worker that has run that
// long with supervise.Supervisor.Recycle: a replacement for its slot
// (same generation, next incarnation) first, the old worker stopped once
// it is ready; one slot at a time, never during a restart or while
// suspended, and a replacement that fails leaves the old worker serving,
// tried again later. Config.Restart is supervise's restart policy. Group
// settings (Config.Group and the fields after it) add HANDOFF_GROUP,
// HANDOFF_GROUP_INDEX, HANDOFF_GROUP_SIZE and HANDOFF_PARAMS to the
// workers' environment, read by Group and Params.
//
// # Worker API and control channel
//
// A Go worker calls IsWorker, ID, Group, Params, Listen, ListenPacket,
// Ready, Done, Context, LogHandler, Send and Messages; the same code runs standalone
// (Listen binds locally, Send fails with ErrNotWorker, Done fires on
// SIGTERM/SIGINT). Each worker process has a control channel to the
// master (HANDOFF_CONTROL_FD, docs/protocol.md "Control channel"):
// ipcframe frames of JSON messages, parsed by one fastjson decoder at both
// ends. Through it a worker asks the master to bind an address it did not
// inherit (bound once, cached for the cluster's lifetime and shared by
// every worker and generation), forwards log records, exchanges messages
// (Config.OnMessage, Master.Send, Master.Broadcast), and sends heartbeats
// (Config.Heartbeat; WATCHDOG=1 on NOTIFY_SOCKET counts too): a ready
// worker silent for Heartbeat*HeartbeatFactor is killed and replaced.
// Queues are bounded both ways. A worker that writes anything invalid on
// its channel is killed (process group) and replaced with a logged
// reason; the master and the other workers are untouched. Heartbeats go
// on after Done closes, while the worker drains, until it exits or the
// master is gone.
//
// The package's first call of the worker API (any of the above), not an
// init function, since a master imports the package too, takes what the process was started with, as
// sd_listen_fds(3) and sd_notify(3) do when asked to unset the
// environment: it reads LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES,
// NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID, HANDOFF_CONTROL_FD,
// HANDOFF_CONN_FD, HANDOFF_CONN_VERSION and HANDOFF_MODE once, removes
// them from the environment, and uses the values read for Ready,
// heartbeats, Listen and HandoffListener. When LISTEN_PID names the
// process it marks close-on-exec the descriptors 3..3+LISTEN_FDS-1 and
// the control and connection channels, whatever else fails (a malformed
// LISTEN_FDNAMES, a channel that is refused), and adopts a channel only if
// it was inherited (not close-on-exec) and is a unix socket. So a child
// the program starts after that call inherits none of them: it cannot
// report ready or send heartbeats for its parent (the master accepts a
// worker's descendants' notifications), nor read its connections. Call
// the API (IsWorker will do) before starting children, and read these
// variables yourself, if at all, before that first call.
// HANDOFF_WORKER_ID, HANDOFF_WORKER_GENERATION and HANDOFF_WORKERS stay
// in the environment for the program to read; ID reports 0 in a process
// LISTEN_PID does not name (a worker's child). Standalone, with none of
// the variables set, nothing changes. HandoffListener called before the
// rest of the API, by a program that does its own socket activation and
// sd_notify, sets the worker up all the same (descriptors, control
// channel, heartbeats) but leaves the environment as it is, for that
// program to read.
//
// Ready closes the inherited sockets no Listen or ListenPacket call has
// claimed (as tableflip does; systemd advises closing
// descriptors a service does not know): a name the worker does not know
// from a newer supervisor, an address it no longer serves, and the
// descriptors beyond the names when LISTEN_FDNAMES names fewer than
// LISTEN_FDS (a worker takes those as "unknown", and only if they are
// inherited listening or datagram sockets, and never serves them; the
// master refuses that mismatch). In handoff mode, where the master
// accepts, it closes the inherited listeners even when Listen was called
// for them. The worker's descriptors are then exactly those it uses. It
// closes, never shuts down: the master, systemd and the other workers keep
// the sockets. Only inherited listening and datagram sockets are closed,
// never the control or connection channel. A Listen after Ready for a
// closed socket's address gets the master's socket (the master answers a
// request for one of its own listeners with it); standalone it fails with
// ErrNoListener, so a program started by systemd claims its sockets before
// Ready.
//
// # Control socket
//
// With Config.Control the master serves a unix socket (DialControl,
// ControlClient; docs/protocol.md) for status, restart, stop, scale, send,
// broadcast and max-running-time (and, for a Fleet, suspend and resume). It lives in a 0700 directory of the master's user (created
// if missing, refused if another user's or open to others), has mode 0600
// under any umask, replaces a stale socket and never a live one (package
// internal/sockfile), and is removed on exit only if it is still the file
// the master created. Peers are checked with SO_PEERCRED before anything
// is read: only root and the master's uid are served, others are closed on
// unanswered. Frames (64 KiB), clients (8 at once) and time (idle, write
// deadlines) are bounded; malformed input gets a typed error answer or a
// close and never reaches the supervisor. Status adds to supervise.Status
// each slot's last exit, recorded by the master from the supervisor's
// events (best effort: supervise drops events when its buffer is full).
//
// # Groups (Fleet)
//
// NewFleet runs the groups of a FileConfig (mini-cluster -config) in one
// process: a Master per group with local workers and an ssh agent session
// per remote host. Global worker ids are laid out in file order; a slot
// added by scaling gets a fresh id. The Fleet owns the one control socket
// (requests may name a group; "suspend" and "resume" must), pid file,
// signals and systemd notifications; its masters have none of their own.
// Socket activation and SIGUSR2 are refused in a Fleet.
//
// # Remote agents
//
// A remote host's workers run under an agent, the mini-cluster binary
// started over ssh with AgentArg (RunAgent): one Master for that host's
// workers, speaking ipcframe frames of JSON on the session's stdin and
// stdout (docs/protocol.md, "Agent protocol (ssh)"). The agent relays its
// log and its workers' output, reports status every second (the session's
// heartbeat; the master pings it as often), and stops its workers
// gracefully when the session ends, the master's pings stop, or it is
// signalled. Host keys are always checked (internal/sshlaunch). The
// operator's side (SSH groups, one mini-cluster per host under systemd, a
// Kubernetes pod, security notes) is in docs/operations.md, "Running beyond
// one host".
//
// # Who should not use it
//
// Programs that need cgroup containment, resource limits or dependency
// ordering between services should use systemd units directly; a single
// process that only wants zero-downtime restarts of itself may be better
// served by handing its listener to its successor (package scmrights).
// SSH groups run fixed workers on fixed hosts: placement, failover to
// another host and autoscaling across machines are an orchestrator's job
// (one mini-cluster per pod or per host, see docs/operations.md).
//
// # Platforms
//
// Linux only (pidfds, SCM_CREDENTIALS, /proc). Elsewhere New returns an
// error wrapping ErrNotSupported; the protocol parsers build everywhere.
//
// # Ownership
//
// The Master owns its listening sockets and the notify socket and closes
// them when Run returns (or on Close if Run is never called). Workers get
// copies; a worker closing its copy never affects the others. Descriptors
// adopted from systemd become the Master's.
package cluster
