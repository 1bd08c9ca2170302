//go:build !linux

package main

import (
	"context"
	"errors"
	"io"
)

var errNotSupported = errors.New("fdrecv: not supported on this platform (needs Linux)")

func receive(context.Context, *config, io.Writer, io.Writer) error { return errNotSupported }
