// Package cluster runs a program as a cluster of worker processes that
// share listening sockets: the master side of mini-cluster.
//
// This file set currently holds the protocol pieces the master and workers
// share with systemd: socket activation (LISTEN_FDS, LISTEN_FDNAMES,
// LISTEN_PID) and readiness notification (NOTIFY_SOCKET, sd_notify(3)).
// Both are spoken with programs in any language, so both parsers treat
// their input as untrusted.
//
// Linux only.
package cluster
