//go:build !linux

package reuseport

import (
	"fmt"
	"syscall"
)

func cpuProgram(uint32) ([]Instruction, error) {
	return nil, fmt.Errorf("reuseport: CPU steering: %w", ErrNotSupported)
}

func attachProgram(syscall.RawConn, []Instruction) error {
	return fmt.Errorf("reuseport: SO_ATTACH_REUSEPORT_CBPF: %w", ErrNotSupported)
}

func migrateReq() bool { return false }
