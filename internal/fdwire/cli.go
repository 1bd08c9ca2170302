package fdwire

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// UIDs is the repeatable -allow-uid flag both commands take: the peer's uid
// (SO_PEERCRED) must be this process's own or one of these.
type UIDs []int

func (u *UIDs) String() string { return fmt.Sprint(*u) }

// Set adds one uid.
func (u *UIDs) Set(s string) error {
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return fmt.Errorf("not a uid: %q", s)
	}
	*u = append(*u, v)
	return nil
}

// Allows reports whether a peer running as uid may be talked to.
func (u UIDs) Allows(uid int) bool {
	if uid == os.Getuid() {
		return true
	}
	for _, a := range u {
		if uid == a {
			return true
		}
	}
	return false
}

// Allowed names who Allows admits, for refusal messages: an operator told
// only part of the list would add a flag that is already set. For example
// "own uid 1000 and -allow-uid 33, 65534", or "own uid 1000 only".
func (u UIDs) Allowed() string {
	own := fmt.Sprintf("own uid %d", os.Getuid())
	if len(u) == 0 {
		return own + " only"
	}
	list := make([]string, len(u))
	for i, uid := range u {
		list[i] = strconv.Itoa(uid)
	}
	return own + " and -allow-uid " + strings.Join(list, ", ")
}

// CheckSocketPath refuses a unix socket path with a leading '@', which
// package net and x/sys read as a name in Linux's abstract namespace: it
// has no file, so neither the file mode nor the stale-file handling of
// internal/sockfile applies, and sockfile rules such names out. A file
// whose name starts with '@' is reached as "./@name".
func CheckSocketPath(path string) error {
	if strings.HasPrefix(path, "@") {
		return fmt.Errorf("%q: abstract socket names are not supported; for a file of that name write ./%s", path, path)
	}
	return nil
}

// ParseFlags parses args with fs, printing usage (a format with one %s for
// the flag defaults) on -h or a bad flag. A bad flag is a StatusUsage
// *ExitError already printed; -h returns flag.ErrHelp.
func ParseFlags(fs *flag.FlagSet, args []string, usage string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		var b strings.Builder
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
		fmt.Fprintf(stderr, usage, b.String())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &ExitError{Code: StatusUsage, Err: err, Printed: true}
	}
	return nil
}
