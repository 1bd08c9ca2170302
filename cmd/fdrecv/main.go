package main

import (
	"context"
	"flag"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/fdwire"
)

// Exit codes, one per failure class; docs/fdcli.md lists the same table,
// and fdsend uses the same numbers.

const usageText = `usage: fdrecv -socket PATH [-n N] [-timeout D] [-json] [-allow-uid UID]... [-- PROGRAM ARGS...]

Creates a unix socket at PATH (mode 0600; 0666 with -allow-uid, the uid
check deciding), accepts an fdsend whose uid is fdrecv's own or allowed with
-allow-uid (others are refused and the next connection accepted), and
receives its descriptors, their names and a payload. Without PROGRAM, prints what each descriptor is and the
payload. With PROGRAM, execs it in place with the descriptors at 3, 4, ...
and LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set (socket activation).

Flags:
%s
Exit codes:
  0   success
  1   other failure (I/O error, interrupted, the sender hung up before "placed")
  2   usage: bad flags or arguments
  3   timeout: nothing received before -timeout
  4   count: fewer or more descriptors than -n, or than names sent
  7   socket: PATH in use by a live socket, not a socket, too long, or not creatable
  8   protocol: malformed message, unknown wire version, invalid names
  10  exec: PROGRAM not found or not executable
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// connReadTimeout bounds how long one connection may take to send its
// message before fdrecv drops it and frees its reading slot (see
// maxPending): fdsend sends right after connecting, so only a stray or
// stuck client waits this long.
var connReadTimeout = 5 * time.Second

// config is the parsed command line.
type config struct {
	socket    string
	n         int
	timeout   time.Duration
	json      bool
	allowUIDs fdwire.UIDs
	program   []string // PROGRAM ARGS...; empty means print
}

func parse(args []string, stderr io.Writer) (*config, error) {
	var cfg config
	fs := flag.NewFlagSet("fdrecv", flag.ContinueOnError)
	fs.StringVar(&cfg.socket, "socket", "", "`PATH` of the unix socket to create (required)")
	fs.IntVar(&cfg.n, "n", 0, "expect exactly `N` descriptors (0: any number up to 253)")
	fs.DurationVar(&cfg.timeout, "timeout", 0, "give up if nothing is received within `D` (0: wait forever)")
	fs.BoolVar(&cfg.json, "json", false, "print JSON instead of text (without PROGRAM)")
	fs.Var(&cfg.allowUIDs, "allow-uid", "also accept a sender running as `UID` (repeatable)")
	if err := fdwire.ParseFlags(fs, args, usageText, stderr); err != nil {
		return nil, err
	}
	cfg.program = fs.Args()
	switch {
	case cfg.socket == "":
		return nil, fail(fdwire.StatusUsage, "-socket is required")
	case fdwire.CheckSocketPath(cfg.socket) != nil:
		return nil, fail(fdwire.StatusUsage, "-socket %v", fdwire.CheckSocketPath(cfg.socket))
	case cfg.n < 0 || cfg.n > fdwire.MaxNames:
		return nil, fail(fdwire.StatusUsage, "-n %d: want 0 to %d", cfg.n, fdwire.MaxNames)
	case cfg.timeout < 0:
		return nil, fail(fdwire.StatusUsage, "-timeout %v: want a positive duration or 0", cfg.timeout)
	case cfg.json && len(cfg.program) > 0:
		return nil, fail(fdwire.StatusUsage, "-json applies only without PROGRAM")
	}
	return &cfg, nil
}

// run is the whole command: parse args, receive, then print or exec. With
// PROGRAM it does not return on success (the process image is replaced).
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cfg, err := parse(args, stderr)
	if err != nil {
		return err
	}
	return receive(ctx, cfg, stdout, stderr)
}

func fail(code int, format string, args ...any) error { return fdwire.Fail(code, format, args...) }

// exitCode prints err once to stderr and returns the process exit status.
func exitCode(err error, stderr io.Writer) int { return fdwire.ExitCode("fdrecv", err, stderr) }
