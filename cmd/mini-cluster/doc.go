// Command mini-cluster runs N copies of a program that share listening
// sockets bound once by mini-cluster itself, restarts them when they crash,
// replaces them without dropping a connection when asked, and stops them
// cleanly.
//
//	mini-cluster [flags] [--] PROGRAM [ARGS...]
//	mini-cluster -config FILE [-control PATH] [-pid-file PATH] [-user USER[:GROUP]] [-log-format text|json]
//	mini-cluster status|restart|stop|scale N|send SLOT MSG|broadcast MSG|max-running-time D -control PATH [-group NAME] [-json] [-timeout D]
//	mini-cluster suspend|resume GROUP -control PATH [-json] [-timeout D]
//
// Flags: -n, -listen (repeatable), -mode shared|reuseport|handoff,
// -restart-strategy, -shutdown-timeout, -ready, -start-timeout, -heartbeat, -pid-file,
// -control, -user (run workers as another user; the master must be root),
// -log-format, -config (groups from a file instead of PROGRAM and the
// per-group flags). Signals: SIGTERM and SIGINT stop gracefully (a
// second one kills), SIGHUP and SIGUSR1 restart with zero downtime, SIGTTIN
// and SIGTTOU add or remove a worker, SIGUSR2 re-executes the master binary
// in place (same pid, same listeners; the workers are replaced by as many
// new ones). The subcommands talk to a running master over its -control
// socket.
//
// With -config, one process runs every group of a JSON file, locally and on
// ssh hosts (where mini-cluster runs in its hidden agent mode): global
// worker ids, group params, suspend and resume, per-group control with
// -group. SIGUSR2 and socket activation are refused in that mode.
//
// Exit codes: 0 after a clean stop, 1 when start-up failed (an address
// could not be bound, the pid file is locked, the program is missing) or
// supervision could not run, 2 for a bad command line or configuration
// file.
//
// docs/operations.md describes flags, signals, the worker environment, a
// systemd unit and a Kubernetes pod spec. Linux only.
package main
