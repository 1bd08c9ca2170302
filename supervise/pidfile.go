package supervise

import (
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
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
// trusting, or signalling, the pid it contains. The owner also keeps in
// the lock file a record of the pid it wrote, so a reader can tell its pid
// file from one of an earlier run put back by the directory's owner. The
// lock file is left in place on Close: removing it would let two owners
// lock different inodes.
//
// Methods are safe for concurrent use; Close is idempotent.
type PIDFile struct {
	path string
	mu   sync.Mutex
	lock lockFile // nil after Close
	warn error    // see Warning; set once, by AdoptPIDFile
	// record: lock holds recordByte, so readers check the pid file
	// against the lock record. False only after an AdoptPIDFile that
	// could not take it; Write tries again.
	record bool
	// written is the pid the lock record names (0: none), which the pid
	// file holds unless its directory's owner renamed it.
	written int
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

// The lock record is the content of the lock file, written by the owner
// (CreatePIDFile, AdoptPIDFile, Write) to name the pid its pid file
// holds, and during a Write also the pid it held until the rename, so that
// a reader accepts either while the owner is between its record and its
// rename (a reader cannot outwait an owner descheduled there). It also
// names the pid file, by a tag of its base name, so that a lock file
// renamed in from another pid file of the same user (two root services'
// pid files in one directory of the service user's, swapped with their
// lock files by that directory's owner) does not vouch for the pid file
// it is put next to. The format: recordPrefix, then the pid and the
// previous pid, each as 7 zero-padded digits followed by a space (0: none;
// the pid is 0 before the first Write), the tag (the CRC-32 of the base
// name) as 8 lowercase hex digits and a space, then the CRC-32 (IEEE) of
// all that as 8 lowercase hex digits, and a newline. The size is fixed, so
// every rewrite is one pwrite of the whole record at offset 0; a reader
// racing it can still see a mix of two records (read(2) does not exclude
// write(2) on a regular file), which the checksum refuses.
const (
	recordPrefix = "handoff-pid-lock 1 "
	recordSize   = len(recordPrefix) + 2*(7+1) + 8 + 1 + 8 + 1
)

// appendHex appends v as 8 lowercase hex digits.
func appendHex(dst []byte, v uint32) []byte {
	const hex = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		dst = append(dst, hex[v>>uint(shift)&0xf])
	}
	return dst
}

// appendLockRecord appends the lock record of the pid file whose base
// name is name, naming pid and prev (each 0 to maxPID), to dst.
func appendLockRecord(dst []byte, name string, pid, prev int) []byte {
	start := len(dst)
	dst = append(dst, recordPrefix...)
	for _, n := range []int{pid, prev} {
		s := strconv.Itoa(n)
		for range 7 - len(s) {
			dst = append(dst, '0')
		}
		dst = append(dst, s...)
		dst = append(dst, ' ')
	}
	dst = append(appendHex(dst, crc32.ChecksumIEEE([]byte(name))), ' ')
	return append(appendHex(dst, crc32.ChecksumIEEE(dst[start:])), '\n')
}

// parseLockRecord parses a whole lock record of the pid file whose base
// name is name, as appendLockRecord writes it, and returns its pid and
// previous pid (0: none). Anything else, including a record torn by a
// concurrent rewrite or one of another pid file, is an error matching
// ErrBadPIDFile.
func parseLockRecord(b []byte, name string) (pid, prev int, err error) {
	if len(b) != recordSize || string(b[:len(recordPrefix)]) != recordPrefix {
		return 0, 0, fmt.Errorf("%w: lock record %q", ErrBadPIDFile, b)
	}
	var pids [2]int
	for i := range pids {
		at := len(recordPrefix) + i*8
		for _, c := range b[at : at+7] {
			if c < '0' || c > '9' {
				return 0, 0, fmt.Errorf("%w: lock record %q", ErrBadPIDFile, b)
			}
			pids[i] = pids[i]*10 + int(c-'0')
		}
		if pids[i] > maxPID {
			return 0, 0, fmt.Errorf("%w: lock record %q", ErrBadPIDFile, b)
		}
	}
	// Only the exact bytes appendLockRecord writes (the checksum, the
	// separators): a reader needs nothing else.
	var want [recordSize]byte
	if string(appendLockRecord(want[:0], name, pids[0], pids[1])) != string(b) {
		return 0, 0, fmt.Errorf("%w: lock record %q", ErrBadPIDFile, b)
	}
	return pids[0], pids[1], nil
}

// Path returns the pid file's path.
func (p *PIDFile) Path() string { return p.path }
