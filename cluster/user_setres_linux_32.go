//go:build linux && (386 || arm)

package cluster

import "golang.org/x/sys/unix"

// The set-ids system calls with 32-bit ids: on 386 and arm the plain
// ones take 16-bit ids (as in Go's syscall package).
const (
	sysSetresuid = unix.SYS_SETRESUID32
	sysSetresgid = unix.SYS_SETRESGID32
)
