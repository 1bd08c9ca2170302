package reuseport

import (
	"fmt"
	"syscall"
)

// Instruction is one classic BPF instruction, laid out like Linux's struct
// sock_filter (linux/filter.h): opcode, jump offsets if true and if false,
// and the constant operand.
type Instruction struct {
	Op uint16
	Jt uint8
	Jf uint8
	K  uint32
}

// MaxInstructions is the kernel's limit on a classic BPF program
// (BPF_MAXINSNS).
const MaxInstructions = 4096

// AttachProgram attaches a classic BPF program to the reuseport group of the
// socket behind c (any member, bound or not, with SO_REUSEPORT set) with
// SO_ATTACH_REUSEPORT_CBPF. The program runs for each new connection or
// datagram and returns the index of the member to deliver to, in the order
// the members joined; an out-of-range index falls back to the kernel's hash.
// The kernel verifies the program and fails with EINVAL if it is malformed,
// and fails with EOPNOTSUPP on a Multipath TCP socket, which a
// net.ListenConfig creates by default since Go 1.24 unless
// SetMultipathTCP(false) is called (Listen here does not create them).
// Linux only; elsewhere the error wraps ErrNotSupported.
func AttachProgram(c syscall.RawConn, prog []Instruction) error {
	if len(prog) == 0 || len(prog) > MaxInstructions {
		return fmt.Errorf("%w: program of %d instructions not in 1..%d", ErrInvalidConfig, len(prog), MaxInstructions)
	}
	return attachProgram(c, prog)
}

// CPUProgram returns the program that picks member (receiving CPU mod n):
//
//	ld  [SKF_AD_OFF+SKF_AD_CPU]   ; A = CPU processing the packet
//	mod #n                        ; A %= n
//	ret a                         ; deliver to member A
//
// Linux only; elsewhere the error wraps ErrNotSupported.
func CPUProgram(n int) ([]Instruction, error) {
	if n < 1 || n > MaxGroup {
		return nil, fmt.Errorf("%w: group size %d not in 1..%d", ErrInvalidConfig, n, MaxGroup)
	}
	return cpuProgram(uint32(n))
}
