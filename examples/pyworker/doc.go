// Package pyworker holds worker.py, a mini-cluster worker written in Python
// with the standard library only; the Go package itself is empty and exists
// for the tests.
//
// worker.py speaks the systemd protocols (LISTEN_FDS/LISTEN_PID,
// NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID), so it runs unchanged under
// mini-cluster or a systemd socket unit. The tests run it directly, with a
// socket-activation environment they build, and check what it sends on
// NOTIFY_SOCKET (READY=1 once, WATCHDOG=1 repeatedly, STOPPING=1), that it
// serves, that a failed notification or accept does not stop it, and that
// SIGTERM ends it with status 0.
//
// Who should not use it: nobody imports it; copy worker.py instead.
//
// Platforms: worker.py runs where Python and socket activation do; the
// tests are Linux only (they read /proc and use prlimit(2)).
//
// Ownership: worker.py serves the first socket-activated descriptor and
// closes the others at start-up; on SIGTERM it closes (never shuts down) the
// shared listener, so sibling workers keep accepting.
package pyworker
