//go:build linux && (mips || mipsle || mips64 || mips64le)

package cluster

import "unsafe"

// On mips the kernel's struct sigaction starts with an unsigned int
// sa_flags, which puts the handler one pointer size in (padding on
// mips64), and its sigset_t has 128 bits (_NSIG).
const (
	sigactionHead = unsafe.Sizeof(uintptr(0))
	sigsetSize    = 16
)
