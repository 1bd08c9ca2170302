//go:build linux

package cluster

import (
	"os"
	"runtime"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSigaction is the kernel's struct sigaction for rt_sigaction(2),
// up to the handler; rest covers what follows on every architecture
// (flags, restorer, mask), copied as it is.
type kernelSigaction struct {
	head    [sigactionHead]byte // sa_flags on mips, which puts it first
	handler uintptr
	rest    [48]byte
}

// sigIGN is SIG_IGN.
const sigIGN = 1

// ignoreForExec sets sigs ignored (SIG_IGN) with rt_sigaction(2), behind
// the Go runtime's back, and returns a function that puts back the
// actions it replaced: the runtime's handlers, which it still believes
// installed. SIG_IGN is what must survive an execve(2) (see
// ignoredAcrossExec); signal.Ignore would set it too, but also strip the
// signals from every signal.Notify in the process, a program's own
// channels included, which nothing could restore after an exec that
// fails. A signal arriving meanwhile is dropped. The caller must undo it
// before anything else changes these signals' handling (signal.Notify,
// Reset or Ignore for them), and must call restore only if the exec
// failed.
func ignoreForExec(sigs []unix.Signal) (restore func(), err error) {
	type saved struct {
		sig unix.Signal
		act kernelSigaction
	}
	var done []saved
	restore = func() {
		for _, s := range slices.Backward(done) {
			_ = rtSigaction(s.sig, &s.act, nil)
		}
	}
	for _, sig := range sigs {
		var old kernelSigaction
		if err := rtSigaction(sig, nil, &old); err != nil {
			restore()
			return nil, err
		}
		ign := old
		ign.handler = sigIGN
		if err := rtSigaction(sig, &ign, nil); err != nil {
			restore()
			return nil, err
		}
		done = append(done, saved{sig, old})
	}
	return restore, nil
}

func rtSigaction(sig unix.Signal, act, old *kernelSigaction) error {
	_, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(act)), uintptr(unsafe.Pointer(old)), sigsetSize, 0, 0)
	runtime.KeepAlive(act)
	runtime.KeepAlive(old)
	if e != 0 {
		return os.NewSyscallError("rt_sigaction", e)
	}
	return nil
}
