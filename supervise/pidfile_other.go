//go:build !linux

package supervise

import "os"

type lockFile = *os.File

// CreatePIDFile returns ErrNotSupported on this platform.
func CreatePIDFile(path string) (*PIDFile, error) { return nil, ErrNotSupported }

// Write returns ErrNotSupported on this platform.
func (p *PIDFile) Write(pid int) error { return ErrNotSupported }

// Close returns ErrNotSupported on this platform.
func (p *PIDFile) Close() error { return ErrNotSupported }

// ReadPIDFile returns ErrNotSupported on this platform.
func ReadPIDFile(path string) (pid int, live bool, err error) { return 0, false, ErrNotSupported }
