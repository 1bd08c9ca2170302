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
