// Package sshlaunch runs a command on another host through the system
// OpenSSH client, with the command's stdin, stdout and stderr as the ssh
// session's streams. mini-cluster's remote groups and its agent mode build
// on it: the master starts "mini-cluster -handoff-agent" on each host this
// way and speaks ipcframe over the session's stdio.
//
// # Security rules
//
//   - Host keys are always checked: ssh runs with StrictHostKeyChecking=yes
//     against Target.KnownHosts only (GlobalKnownHostsFile=/dev/null,
//     UpdateHostKeys=no, so the file is never written). A Target without a
//     KnownHosts file is refused; there is no option to turn checking off.
//   - Batch mode: ssh never prompts (BatchMode=yes) and offers only
//     Target.Identity (IdentitiesOnly=yes), and reads no ssh_config file
//     (-F none), so what runs is exactly what the Target says: a config file
//     cannot add a ProxyCommand, a forwarding or another identity.
//   - No option injection: users and hosts are checked against a
//     conservative character set (no leading '-', no whitespace, no control
//     characters, no '@' in a host), paths may not hold whitespace, quotes,
//     backslashes, '%' or '$', nor start with '~' (ssh splits on and
//     expands those: % tokens, ${VAR}, the home directory), and "--" ends
//     ssh's options.
//   - No local shell: ssh is executed directly. The remote command is one
//     string that the remote user's login shell parses, so every argument is
//     quoted with POSIX single quotes; that login shell must be a POSIX shell
//     (sh, dash, bash, zsh, ksh), not csh or fish.
//
// # Failures
//
// ssh exits with status 255 when the session itself fails; Target.Classify
// turns that and ssh's stderr into a *SessionError wrapping ErrHostKey,
// ErrAuth, ErrUnreachable or ErrSession. A remote command that itself exits
// with 255 cannot be told apart, so remote programs launched this way should
// not use that status.
//
// # Who should not use it
//
// Code that needs interactive logins, password authentication, agent or
// port forwarding, or a Go-native ssh implementation.
//
// # Platform support
//
// Linux. Elsewhere Target.Command returns an error wrapping ErrNotSupported;
// ParseTarget, Args, Quote and Classify are portable.
//
// # Ownership
//
// Command returns an unstarted *exec.Cmd that belongs to the caller, who
// sets its stdio, starts it and must Wait for it. Cancelling the context
// sends ssh SIGTERM (it then closes the connection, and sshd ends the remote
// session's stdin and stdout) and SIGKILL if it has not exited after
// KillDelay.
package sshlaunch
