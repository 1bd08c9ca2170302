//go:build linux

package sshlaunch

import (
	"context"
	"fmt"
	"os/exec"

	"golang.org/x/sys/unix"
)

// Command returns an unstarted ssh client command that runs remoteArgv on
// t, built by Args. The caller sets Stdin, Stdout and Stderr (keep stderr
// for Classify), starts it and waits for it. ctx bounds the whole session:
// cancelling it sends ssh SIGTERM, then SIGKILL after KillDelay.
func (t Target) Command(ctx context.Context, remoteArgv []string) (*exec.Cmd, error) {
	args, err := t.Args(remoteArgv)
	if err != nil {
		return nil, err
	}
	path, err := exec.LookPath("ssh")
	if err != nil {
		return nil, fmt.Errorf("sshlaunch: %w", err)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	// SIGTERM lets ssh close the connection itself; sshd then closes the
	// remote command's stdin and stdout, which ends a well-behaved agent
	// at once instead of after the keepalive timeout.
	cmd.Cancel = func() error { return cmd.Process.Signal(unix.SIGTERM) }
	cmd.WaitDelay = KillDelay
	return cmd, nil
}
