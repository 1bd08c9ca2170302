// Command fdsend sends file descriptors, with names and a payload, to an
// fdrecv waiting on a unix socket.
//
// Usage:
//
//	fdsend -socket PATH [-fd N]... [-file PATH]... [-listen ADDR]... [-name NAME]... [-payload TEXT] [-timeout D] [-allow-uid UID]...
//
// The descriptors are sent in command-line order, all in one message:
// -fd N sends the inherited descriptor N, -file PATH opens PATH read-only,
// -listen ADDR binds a fresh listener (tcp://HOST:PORT, udp://HOST:PORT,
// unix:///PATH, a relative PATH made absolute; a plain HOST:PORT means
// tcp), in blocking mode and as plain TCP (not Go's default Multipath
// TCP), as systemd hands sockets out; -fd descriptors keep the mode they
// have. PATH and unix:// paths are files: a leading '@' (an abstract name)
// is a usage error. -name gives the descriptors
// their names, in the same order (one per descriptor, or none: every name
// is then "unknown", as in systemd). fdsend waits up to -timeout for PATH
// to appear, then for fdrecv's reply ("placed", then end of file once
// PROGRAM runs) and exits with fdrecv's status when it refused the message
// or its PROGRAM could not be executed, so a script can keep serving when
// the hand-off failed.
//
// fdsend checks the receiver's uid with SO_PEERCRED before sending: it must
// be fdsend's own uid or one given with -allow-uid, so a socket planted by
// another user never gets the descriptors.
//
// After a successful send fdsend closes its own copies; a unix:// listener
// keeps its path once sendmsg succeeded, whatever the reply, since the
// receiver may already serve it.
//
// # Who should not use it
//
// Go programs that can import package scmrights. fdsend is for shell
// scripts, programs in other languages and debugging.
//
// # Platforms
//
// Linux only. Elsewhere it exits with status 1 and a message wrapping
// errNotSupported.
//
// # Exit codes
//
// See usage (fdsend -h) and docs/fdcli.md: 0 success, 1 other failure,
// 2 usage, 3 timeout, 4 count mismatch (reported by fdrecv), 5 truncated
// (reported by fdrecv), 6 permission refused, 7 socket path problem,
// 8 protocol error, 9 a source could not be opened or bound, 10 fdrecv
// could not hand the descriptors to its PROGRAM.
package main
