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
//   - One socket per address, shared: closing one of several SO_REUSEPORT
//     sockets resets the connections queued on it, closing a shared
//     socket's copy in one worker loses nothing. A worker that exits, is
//     killed or is replaced never costs a queued connection.
//   - Listening sockets (bound or adopted) are set to blocking mode once,
//     before the first worker starts, as systemd does. O_NONBLOCK belongs
//     to the shared open file description, so a worker that changes it
//     changes it for all: workers must not rely on either mode.
//   - Descriptors the master inherited without close-on-exec are marked
//     close-on-exec by New; only the listeners reach workers. Activation
//     descriptors are validated (open, inherited, a listening or datagram
//     socket) before New opens anything else.
//   - The notify socket is a 0600 path in a private 0700 directory,
//     removed when Run returns. Notifications are attributed by the
//     kernel-supplied sender credentials (SCM_CREDENTIALS): the sender must
//     run as the master's user and be a worker or a descendant of one
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
// Only the shared mode exists: the master never accepts connections
// itself, and does not even poll its listeners. Watchdog deadlines
// (WATCHDOG=1, systemd's WatchdogSec=) are not enforced. Per-worker
// SO_REUSEPORT sockets, accept-and-hand-off, the control socket and
// in-place re-exec of the master (SIGUSR2) are not part of this package
// yet.
//
// # Who should not use it
//
// Programs that need cgroup containment, resource limits or dependency
// ordering between services should use systemd units directly; a single
// process that only wants zero-downtime restarts of itself may be better
// served by handing its listener to its successor (package scmrights).
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
