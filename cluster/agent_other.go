//go:build !linux

package cluster

import (
	"context"
	"io"
)

// RunAgent runs the agent side of a remote group (see AgentArg); it is
// Linux only.
func RunAgent(ctx context.Context, in io.Reader, out io.Writer) error { return ErrNotSupported }
