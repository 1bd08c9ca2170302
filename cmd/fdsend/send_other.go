//go:build !linux

package main

import (
	"context"
	"errors"
)

var errNotSupported = errors.New("fdsend: not supported on this platform (needs Linux)")

func send(context.Context, *config) error { return errNotSupported }
