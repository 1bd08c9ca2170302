// Command mini-cluster runs N copies of a program that share listening
// sockets bound once by mini-cluster itself, restarts them when they crash,
// replaces them without dropping a connection when asked, and stops them
// cleanly.
//
//	mini-cluster [flags] [--] PROGRAM [ARGS...]
//
// Flags: -n, -listen (repeatable), -mode (shared only), -restart-strategy,
// -shutdown-timeout, -ready, -pid-file, -log-format. Signals: SIGTERM and
// SIGINT stop gracefully (a second one kills), SIGHUP and SIGUSR1 restart
// with zero downtime, SIGTTIN and SIGTTOU add or remove a worker.
//
// Exit codes: 0 after a clean stop, 1 when start-up failed (an address
// could not be bound, the pid file is locked, the program is missing) or
// supervision could not run, 2 for a bad command line.
//
// docs/operations.md describes flags, signals, the worker environment, a
// systemd unit and a Kubernetes pod spec. Linux only.
package main
