//go:build linux && !mips && !mipsle && !mips64 && !mips64le

package cluster

// The kernel's struct sigaction starts with the handler, and its sigset_t
// has 64 bits (_NSIG), the size rt_sigaction(2) insists on.
const (
	sigactionHead = 0
	sigsetSize    = 8
)
