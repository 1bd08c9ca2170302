// Package sshtest starts a real OpenSSH server on 127.0.0.1 for tests of code
// that launches work over ssh (internal/sshlaunch, mini-cluster's remote
// groups).
//
// Start writes everything under t.TempDir(): a fresh ed25519 host key, a
// client key pair whose public half is the only authorized key, the
// sshd_config and the PidFile. sshd runs in the foreground (-D -e) as a child
// of the test, listens on 127.0.0.1 only, on a free port, with public-key
// authentication only (no passwords, no keyboard-interactive, no PAM), and is
// stopped and reaped at t.Cleanup. Sessions log in as the user running the
// test, which must be root: sshd needs root to switch to a user and to use
// its privilege-separation directory /run/sshd (created if missing).
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
// its marker to sshd and, through sshd_config SetEnv, to every session, so
// the census sees sshd, its per-connection children and every remote
// command. At cleanup the server stops sshd, fails the test if any of those
// processes is still alive after the census's grace period, and then kills
// them so they cannot disturb the next test.
package sshtest
