// Command fdrecv receives file descriptors sent by fdsend over a unix socket
// it creates, and either describes them or execs a program with them, the
// way systemd socket activation would (LISTEN_FDS, LISTEN_FDNAMES,
// LISTEN_PID).
//
// Usage:
//
//	fdrecv -socket PATH [-n N] [-timeout D] [-json] [-allow-uid UID]... [-- PROGRAM ARGS...]
//
// fdrecv creates PATH with package internal/sockfile (mode 0600 under any
// umask, 0666 with -allow-uid; a stale socket replaced, a live one never
// unlinked), accepts senders, checks each one's uid with SO_PEERCRED before
// reading anything (it must be fdrecv's own uid or one given with
// -allow-uid), and receives one message: descriptors, their names and a
// payload (the wire format is specified in docs/fdcli.md). A refused uid
// is answered and dropped at once, without waiting for it; allowed
// connections are read side by side (up to 8), the first complete message
// taken; a connection that sends nothing within 5 s, or whose sender hung
// up while its message waited, is dropped. None of these delays or aborts
// the hand-off. Bad input from the sender (a malformed
// message, names that do not match the descriptors, more or fewer
// descriptors than -n) fails with a distinct exit code, and every received
// descriptor is closed. A message too large, a zero-length record (with
// or without descriptors; told from end of file by SO_PASSCRED: every
// record comes with credentials, end of file with none), or a message
// with truncated control data gets its status (8, 8, 5) and is dropped:
// fdrecv accepts the next sender. Whatever the peer sent after the record
// that got a reply is discarded before the connection closes, so the
// reply is never lost to ECONNRESET; with PROGRAM, as soon as the message
// is taken, so that neither a failed exec nor PROGRAM's own loses it.
// PATH is a file: a leading '@' (an abstract name) is a usage error.
//
// Without PROGRAM, fdrecv prints one line per descriptor saying what it is
// (a file and its path, a pipe, a TCP listener and its address, ...) and the
// payload, or with -json one JSON object, then closes the descriptors.
//
// With PROGRAM, fdrecv replaces itself with PROGRAM (same pid, so LISTEN_PID
// is right): descriptor i arrives as 3+i, without close-on-exec; every other
// descriptor above 2 is closed at exec. The move to 3, 4, ... happens in a
// fresh image of fdrecv (re-exec of /proc/self/exe, handled in init before
// anything opens a descriptor) because in a running Go program descriptors
// 3 and 4 usually belong to the runtime (netpoller, cgroup CPU-limit file),
// which must never be overwritten while other threads may use them. The
// sender's "placed" reply is sent from that fresh image once the
// descriptors are in place, and success is the reply channel (held
// close-on-exec) closing at PROGRAM's execve; a failed execve sends status
// 10 instead. So a sender never closes its copy of a listener that PROGRAM
// did not get. Conversely PROGRAM runs only if "placed" was delivered: a
// sender that hung up (it reports a failure) makes fdrecv exit 1 instead;
// docs/fdcli.md states the windows that remain (the sender's -timeout
// expiring right after "placed", a kill between "placed" and execve, a
// failed execve whose status 10 reply cannot be sent).
// A standard descriptor (0-2) in non-blocking mode, as
// Node.js and some terminals leave them, would make the fresh image's
// runtime create its netpoller at 3 and 4 (os.NewFile registers
// non-blocking descriptors), so fdrecv parks each such descriptor above 2
// for the re-exec, a blocking /dev/null holding its slot, and puts it back
// right before PROGRAM's execve (or before printing a failure): PROGRAM
// gets exactly the caller's standard descriptors, and O_NONBLOCK, shared
// with the caller, is never changed. If a target slot is held anyway,
// fdrecv refuses with exit 10 rather than overwrite it.
//
// # Who should not use it
//
// Programs written in Go that can import package scmrights: they should
// receive descriptors directly. fdrecv is for handing sockets to programs
// that only understand socket activation, and for debugging.
//
// # Platforms
//
// Linux only (SO_PEERCRED, close_range, /proc/self/exe). Elsewhere it exits
// with status 1 and a message wrapping errNotSupported.
//
// # Exit codes
//
// See usage (fdrecv -h) and docs/fdcli.md: 0 success, 1 other failure,
// 2 usage, 3 timeout, 4 descriptor count mismatch, 7 socket path problem,
// 8 protocol error, 10 exec failed. (A refused sender is answered 6, one
// whose control data was truncated 5, and fdrecv accepts the next one: 5
// and 6 are never its own exit codes.)
package main
