package supervise

import (
	"errors"
	"fmt"
	"sync"
)

var (
	// ErrPIDFileLocked is returned by CreatePIDFile when a live process
	// holds the pid file's lock.
	ErrPIDFileLocked = errors.New("supervise: pid file locked by a running process")
	// ErrUnsafePIDFile is returned for a pid file (or its lock file, or a
	// directory on the way to them) that another user could replace or
	// that could be another file in disguise: a symlink, not a regular
	// file, a file with more than one hard link, owned by another user,
	// writable by others, or (run as root) reached through another user's
	// directory or symlink (CVE-2018-16888 class). CreatePIDFile and
	// ReadPIDFile return it as an *UnsafePIDFileError naming the path.
	ErrUnsafePIDFile = errors.New("supervise: unsafe pid file")
	// ErrBadPIDFile is returned by ReadPIDFile for content that is not one
	// decimal pid.
	ErrBadPIDFile = errors.New("supervise: malformed pid file")
)

// UnsafePIDFileError is the error for a refused pid file, lock file or
// directory. It matches ErrUnsafePIDFile with errors.Is.
type UnsafePIDFileError struct {
	Path   string // the refused file or directory
	Reason string // why, e.g. "has 2 hard links"
}

func (e *UnsafePIDFileError) Error() string {
	return ErrUnsafePIDFile.Error() + ": " + e.Path + " " + e.Reason
}

// Unwrap returns ErrUnsafePIDFile.
func (e *UnsafePIDFileError) Unwrap() error { return ErrUnsafePIDFile }

// maxPID bounds a parsed pid: Linux's PID_MAX_LIMIT is 2^22.
const maxPID = 1 << 22

// PIDFile is a pid file whose owner holds a lock (fcntl F_OFD_SETLK) on a
// companion lock file (path + ".lock") for its whole lifetime, so a reader
// can tell a live owner from a stale file left by a SIGKILLed one without
// trusting, or signalling, the pid it contains. The lock file is left in place on Close:
// removing it would let two owners lock different inodes.
//
// Methods are safe for concurrent use; Close is idempotent.
type PIDFile struct {
	path string
	mu   sync.Mutex
	lock lockFile // nil after Close
	warn error    // see Warning; set once, by AdoptPIDFile
}

// Warning returns why CreatePIDFile would refuse the pid file's path now
// (an *UnsafePIDFileError), when AdoptPIDFile kept the lock this process
// already held anyway, or nil. Log it: the directory should be fixed
// before the service is next started afresh.
func (p *PIDFile) Warning() error { return p.warn }

// parsePID accepts one decimal pid, optionally followed by a newline.
func parsePID(b []byte) (int, error) {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	if len(b) == 0 || len(b) > 7 {
		return 0, fmt.Errorf("%w: %q", ErrBadPIDFile, b)
	}
	pid := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: %q", ErrBadPIDFile, b)
		}
		pid = pid*10 + int(c-'0')
	}
	if pid < 1 || pid > maxPID || b[0] == '0' {
		return 0, fmt.Errorf("%w: %q", ErrBadPIDFile, b)
	}
	return pid, nil
}

// Path returns the pid file's path.
func (p *PIDFile) Path() string { return p.path }
