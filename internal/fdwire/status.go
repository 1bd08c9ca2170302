package fdwire

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// Statuses are the exit codes of fdsend and fdrecv, documented in
// docs/fdcli.md. They are one table because they cross the wire: a reply's
// status is fdrecv's exit class, and fdsend exits with it.
const (
	StatusOK         = 0
	StatusFailure    = 1  // anything not classified below
	StatusUsage      = 2  // bad flags or arguments
	StatusTimeout    = 3  // nothing arrived before -timeout
	StatusCount      = 4  // descriptor count differs from -n or from the names
	StatusTruncated  = 5  // control data truncated (MSG_CTRUNC); descriptors closed
	StatusPermission = 6  // peer uid not allowed, or EACCES on the socket path
	StatusSocket     = 7  // socket path problem: in use, missing, not a socket, too long
	StatusProtocol   = 8  // malformed message or reply, unknown version, bad names
	StatusSource     = 9  // fdsend: an -fd, -file or -listen could not be used
	StatusExec       = 10 // fdrecv's PROGRAM could not be executed
)

// ExitError carries a status with an error. Printed marks errors already
// shown to the user (by the flag package).
type ExitError struct {
	Code    int
	Err     error
	Printed bool
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Fail returns an *ExitError with code and a formatted error.
func Fail(code int, format string, args ...any) error {
	return &ExitError{Code: code, Err: fmt.Errorf(format, args...)}
}

// ExitCode prints err once to stderr, prefixed with prog, and returns the
// process exit status.
func ExitCode(prog string, err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return StatusOK
	}
	code := StatusFailure
	var ee *ExitError
	if errors.As(err, &ee) {
		code = ee.Code
		if ee.Printed {
			return code
		}
	}
	fmt.Fprintf(stderr, "%s: %v\n", prog, err)
	return code
}
