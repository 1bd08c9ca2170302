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
// per-group flags). Signals: SIGTERM, SIGINT and SIGQUIT stop gracefully (a
// second one kills), SIGHUP and SIGUSR1 restart with zero downtime, SIGTTIN
// and SIGTTOU add or remove a worker, SIGUSR2 re-executes the master binary
// in place (same pid, same listeners; the workers are replaced by as many
// new ones); SIGPIPE is caught and does nothing. The subcommands talk to a
// running master over its -control socket.
//
// The master's stdout and stderr never hold it: a reader that stalls gets
// lines queued (256 KiB a stream), then dropped and counted (logged once
// output flows again), and a master that stops exits within
// -shutdown-timeout plus about 2 s whoever reads; a reader that exits
// (EPIPE) gets nothing more, and the master runs on (output.go).
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
