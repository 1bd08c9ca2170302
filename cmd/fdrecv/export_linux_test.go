//go:build linux

package main

// The hidden stage 2 interface, for tests that start stage 2 directly.
const (
	ShimArg0     = shimArg0
	ShimEnv      = shimEnv
	ShimReplyEnv = shimReplyEnv
	ShimStdioEnv = shimStdioEnv
)

// ParseParkedStdio and FormatParkedStdio expose the shimStdioEnv codec:
// for each of 0, 1, 2 the parked descriptor, or -1.
func ParseParkedStdio(s string) ([3]int, error) { return parseParkedStdio(s) }

func FormatParkedStdio(p [3]int) string { return parkedStdio(p).String() }

// MaxPending is how many allowed connections fdrecv reads at once.
const MaxPending = maxPending

// MaxAccepted is how many allowed connections fdrecv holds, read or
// waiting for a slot, before it refuses more.
const MaxAccepted = maxAccepted
