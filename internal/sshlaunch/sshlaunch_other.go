//go:build !linux

package sshlaunch

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
)

// Command returns an error wrapping ErrNotSupported: the launcher is
// supported on Linux only.
func (t Target) Command(ctx context.Context, remoteArgv []string) (*exec.Cmd, error) {
	return nil, fmt.Errorf("%w (%s)", ErrNotSupported, runtime.GOOS)
}
