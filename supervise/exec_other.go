//go:build !linux

package supervise

import "os"

// Exec returns ErrNotSupported on this platform.
func (s *Supervisor) Exec(spec *ExecSpec) error { return ErrNotSupported }

// LockFile returns ErrNotSupported on this platform.
func (p *PIDFile) LockFile() (*os.File, error) { return nil, ErrNotSupported }

// AdoptPIDFile returns ErrNotSupported on this platform.
func AdoptPIDFile(path string, lock *os.File) (*PIDFile, error) { return nil, ErrNotSupported }
