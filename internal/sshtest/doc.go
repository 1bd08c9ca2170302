// Package sshtest starts a real OpenSSH server on 127.0.0.1 for tests of code
// that launches work over ssh (internal/sshlaunch, mini-cluster's remote
// groups).
//
// Start writes everything under t.TempDir(): a fresh ed25519 host key, a
// client key pair whose public half is the only authorized key, and the
// sshd_config. The test process itself listens on 127.0.0.1, on a port the
// kernel picks, and keeps that socket until t.Cleanup; each connection it
// accepts is handed, as stdin and stdout, to its own sshd in inetd mode
// (-i -e), a child of the test. The server allows public-key
// authentication only (no passwords, no keyboard-interactive, no PAM).
// Sessions log in as the user running the test, which must be root: sshd
// needs root to switch to a user and to use its privilege-separation
// directory /run/sshd (created if missing).
//
// The address belongs to the test for the server's whole life, whatever
// the sshd processes do: no other server (another package's tests run at
// the same time, with sshd servers of their own) can take the port and
// answer a client with another host key. Picking a free port and letting
// sshd bind it later could not promise that.
//
// # Who should not use it
//
// Production code: the server trusts one generated key, disables StrictModes
// (see Start) and is torn down with the test. Tests that cannot run as root:
// Start skips them, and it skips them too when sshd or ssh-keygen is not
// installed (.ci/install-deps installs both, so CI runs them).
//
// # Platform support
//
// Linux only; elsewhere Start skips the test.
//
// # Ownership
//
// The server, its files and its processes belong to the test that started
// it. Start makes its own process census (internal/proccensus) and hands
// its marker to every sshd and, through sshd_config SetEnv, to every session, so
// the census sees sshd, its per-connection children and every remote
// command. At cleanup the server closes its listening socket (sessions
// already open go on), fails the test if any of those processes is still
// alive after the census's grace period, then kills them so they cannot
// disturb the next test, and reaps every sshd it started.
package sshtest
