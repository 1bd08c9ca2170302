package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/supervise"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // start-up failed (bind, pid file, program) or supervision failed
	exitUsage   = 2 // bad flags or arguments
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == cluster.ShimArg {
		err := cluster.RunShim(os.Args[2:])
		fmt.Fprintf(os.Stderr, "mini-cluster: %v\n", err)
		// 125 for a program that cannot be executed: the slot fails
		// rather than respawn in a loop.
		os.Exit(cluster.ShimExitCode(err))
	}
	if args, ok := cluster.UpgradeProbeArgs(os.Args[1:]); ok {
		// A running master checks this binary, with the arguments it
		// would get, before it executes it in place (SIGUSR2).
		os.Exit(runProbe(args, os.Stdout, os.Stderr))
	}
	os.Exit(runMain(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// runMain is main past the hidden modes: it runs, prints the error and
// returns the exit code. A master's stdout and stderr are outputs
// (output.go): no write to them blocks the master for long, whoever reads
// them. The agent's stdout is its session and a subcommand's output is
// the answer: those are written as they are.
func runMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == cluster.AgentArg || controlCommands[args[0]]) {
		return exitCode(run(ctx, args, stdin, stdout, stderr), stderr)
	}
	out, errOut := newOutputs(stdout, stderr)
	code := exitCode(run(ctx, args, stdin, out, errOut), errOut)
	closeOutputs(outputFlush, out, errOut)
	return code
}

// usageError marks errors in the command line (exit code 2); printed says
// the message is already out (the flag package prints its own).
type usageError struct {
	err     error
	printed bool
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// exitCode prints err once and maps it to an exit code.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		// Help asked for and printed: a success, as for fdsend and fdrecv.
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		if !ue.printed {
			fmt.Fprintf(stderr, "mini-cluster: %v\n", err)
		}
		return exitUsage
	}
	fmt.Fprintf(stderr, "mini-cluster: %v\n", err)
	return exitFailure
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// runProbe is the upgrade probe (cluster.UpgradeProbeArgs): args are
// parsed and checked, the -config file included, exactly as run would
// before binding, and the state versions printed only if they pass; else
// the error is printed (the running master logs it when it refuses the
// upgrade). Nothing is bound or started. The bare probe, without
// arguments, only prints the versions. It returns the exit code.
func runProbe(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		// The flag package's own output (the error, then the whole
		// usage) is dropped: the master logs the last 256 bytes.
		if _, err := parseStart(args, io.Discard, io.Discard); err != nil {
			fmt.Fprintf(stderr, "mini-cluster: %v\n", err)
			return exitUsage
		}
	}
	if err := cluster.RunUpgradeProbe(stdout); err != nil {
		fmt.Fprintf(stderr, "mini-cluster: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// start is what the command line asks a master for, parsed and checked,
// with nothing bound or started: cfg for PROGRAM, or fc and fleet for
// -config FILE.
type start struct {
	cfg   *cluster.Config
	fc    *cluster.FileConfig
	fleet *cluster.FleetOptions
}

// run is mini-cluster without the process around it: it parses args, binds,
// runs the cluster until a stop signal or ctx is done, and returns nil after
// a clean stop.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == cluster.AgentArg {
		// The remote side of a -config group, started by the master over
		// ssh: stdin and stdout are the session, stderr ssh's diagnostics.
		return cluster.RunAgent(ctx, stdin, stdout)
	}
	if len(args) > 0 && controlCommands[args[0]] {
		// A subcommand talking to a running master (control.go); a
		// program of that name runs after "--".
		return runControl(ctx, args[0], args[1:], stdout, stderr)
	}
	st, err := parseStart(args, stdout, stderr)
	if err != nil {
		return err
	}
	if st.fc != nil {
		f, err := cluster.NewFleet(st.fc, st.fleet)
		if err != nil {
			return err
		}
		stop, err := f.HandleSignals()
		if err != nil {
			f.Close()
			return err
		}
		defer stop()
		return f.Run(ctx)
	}
	m, err := cluster.New(st.cfg)
	if err != nil {
		return err
	}
	stop, err := m.HandleSignals()
	if err != nil {
		m.Close()
		return err
	}
	defer stop()
	return m.Run(ctx)
}

// parseStart parses and checks a master's command line, reading the
// -config file if there is one, without side effects: the upgrade probe
// runs it too. stdout and stderr are the workers' (text logs) and the
// log's.
func parseStart(args []string, stdout, stderr io.Writer) (*start, error) {
	fs := flag.NewFlagSet("mini-cluster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mini-cluster [flags] [--] PROGRAM [ARGS...]\n       mini-cluster -config FILE [-control PATH] [-pid-file PATH] [-user USER[:GROUP]] [-log-format F]\n       mini-cluster status|restart|stop|scale N|send SLOT MSG|broadcast MSG|suspend GROUP|resume GROUP|max-running-time D -control PATH [-group NAME] [-json] [-timeout D]\n\nflags:\n")
		fs.PrintDefaults()
	}
	var listen listFlag
	n := fs.Int("n", 0, "number of workers, 1 to 4096 (0 or omitted: one per usable CPU)")
	fs.Var(&listen, "listen", "address to bind, repeatable: tcp://host:port, udp://host:port, unix:///path, or host:port (tcp)")
	mode := fs.String("mode", "shared", "how workers get connections: shared (one socket per address for all), reuseport (one SO_REUSEPORT socket per worker slot) or handoff (the master accepts and passes each connection)")
	strategy := fs.String("restart-strategy", "rolling", "graceful restart strategy: rolling or parallel")
	shutdown := fs.Duration("shutdown-timeout", 10*time.Second, "grace period before SIGKILL of a worker's process group")
	startTimeout := fs.Duration("start-timeout", 30*time.Second, "how long a worker may take to send READY=1 (-ready notify) before its process group is killed, 100ms to 24h")
	ready := fs.String("ready", "notify", "readiness: notify (wait for READY=1 on NOTIFY_SOCKET) or started")
	pidFile := fs.String("pid-file", "", "write the master's pid here once the cluster is ready")
	control := fs.String("control", "", "serve the control socket at this path (in a 0700 directory; see mini-cluster status)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	heartbeat := fs.Duration("heartbeat", 0, "kill and replace a ready worker silent for 3 times this interval (control-channel heartbeats or WATCHDOG=1); 0 = off")
	configPath := fs.String("config", "", "run the groups of this JSON configuration file (instead of PROGRAM and the worker flags)")
	userSpec := fs.String("user", "", "run every worker as USER[:GROUP] (a name or number each; default group: the user's primary one; supplementary groups: the user's); the master must run as root")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		// The flag package has printed the error and the usage.
		return nil, &usageError{err: err, printed: true}
	}
	// Resolved here, so an unknown user is a command-line error (exit 2)
	// that the upgrade probe sees too; New refuses a master that is not
	// root (exit 1).
	var cred *supervise.Credential
	if *userSpec != "" {
		var err error
		if cred, err = cluster.LookupUser(*userSpec); err != nil {
			return nil, &usageError{err: fmt.Errorf("-user: %w", err)}
		}
	}
	if *configPath != "" {
		return parseConfig(fs, *configPath, *control, *pidFile, *logFormat, *userSpec, cred, stdout, stderr)
	}
	cmode, err := cluster.ParseMode(*mode)
	if err != nil {
		return nil, &usageError{err: err}
	}
	strat, err := supervise.ParseStrategy(*strategy)
	if err != nil {
		return nil, &usageError{err: err}
	}
	rm, err := cluster.ParseReadyMode(*ready)
	if err != nil {
		return nil, &usageError{err: err}
	}
	if *n < 0 || *n > 4096 {
		return nil, &usageError{err: fmt.Errorf("-n %d: want 1 to 4096, or 0 for one per usable CPU", *n)}
	}
	// The configuration file's bounds (cluster/config_parse.go): a shorter
	// grace kills every worker before it could drain, a shorter heartbeat
	// kills healthy workers merely descheduled for a moment (and below
	// 1 µs WATCHDOG_USEC would read 0, "off", to the worker).
	if *shutdown < 100*time.Millisecond || *shutdown > 24*time.Hour {
		return nil, &usageError{err: fmt.Errorf("-shutdown-timeout %v: want 100ms to 24h", *shutdown)}
	}
	if *startTimeout < 100*time.Millisecond || *startTimeout > 24*time.Hour {
		return nil, &usageError{err: fmt.Errorf("-start-timeout %v: want 100ms to 24h", *startTimeout)}
	}
	if *heartbeat != 0 && (*heartbeat < 10*time.Millisecond || *heartbeat > time.Hour) {
		return nil, &usageError{err: fmt.Errorf("-heartbeat %v: want 10ms to 1h, or 0 for none", *heartbeat)}
	}
	handler, err := logHandler(*logFormat, stderr)
	if err != nil {
		return nil, err
	}
	setLogFormat(stderr, *logFormat)
	for _, l := range listen {
		if _, err := cluster.ParseAddr(l); err != nil {
			return nil, &usageError{err: err}
		}
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return nil, &usageError{err: errors.New("no program to run")}
	}
	cfg := &cluster.Config{
		Program:         fs.Arg(0),
		Args:            fs.Args()[1:],
		Workers:         *n,
		Listen:          listen,
		Ready:           rm,
		Mode:            cmode,
		Strategy:        strat,
		ShutdownTimeout: *shutdown,
		StartTimeout:    *startTimeout,
		Heartbeat:       *heartbeat,
		PIDFile:         *pidFile,
		Control:         *control,
		Credential:      cred,
		Logger:          slog.New(handler),
	}
	if *logFormat == "text" {
		cfg.Stdout, cfg.Stderr = stdout, stderr
	}
	// An in-place upgrade's execve discards what the outputs queued.
	var outs []*output
	for _, w := range []io.Writer{stdout, stderr} {
		if o, ok := w.(*output); ok {
			outs = append(outs, o)
		}
	}
	if len(outs) > 0 {
		cfg.FlushOutput = func(d time.Duration) uint64 { return flushOutputs(d, outs...) }
	}
	return &start{cfg: cfg}, nil
}

// logHandler is the handler of -log-format: text or json, on stderr.
func logHandler(format string, stderr io.Writer) (slog.Handler, error) {
	switch format {
	case "text":
		return slog.NewTextHandler(stderr, nil), nil
	case "json":
		return slog.NewJSONHandler(stderr, nil), nil
	}
	return nil, &usageError{err: fmt.Errorf("-log-format %q: want text or json", format)}
}

// configFlags are the flags a -config file replaces.
var configFlags = map[string]bool{"n": true, "listen": true, "mode": true, "restart-strategy": true, "shutdown-timeout": true, "start-timeout": true, "ready": true, "heartbeat": true}

// parseConfig checks "mini-cluster -config FILE" (every group of the file
// in one process, cluster.Fleet) and reads the file.
// A -user (userSpec, cred) replaces the file's "user".
func parseConfig(fs *flag.FlagSet, path, control, pidFile, logFormat, userSpec string, cred *supervise.Credential, stdout, stderr io.Writer) (*start, error) {
	var clash []string
	fs.Visit(func(f *flag.Flag) {
		if configFlags[f.Name] {
			clash = append(clash, "-"+f.Name)
		}
	})
	if len(clash) > 0 {
		return nil, &usageError{err: fmt.Errorf("-config: %s cannot be combined with a configuration file (set them per group in %s)", strings.Join(clash, ", "), path)}
	}
	if fs.NArg() > 0 {
		return nil, &usageError{err: fmt.Errorf("-config: unexpected program %q (the file's groups name their commands)", fs.Arg(0))}
	}
	handler, err := logHandler(logFormat, stderr)
	if err != nil {
		return nil, err
	}
	setLogFormat(stderr, logFormat)
	fc, err := cluster.LoadConfig(path)
	if err != nil {
		// FILE:LINE:COL: path: message, as compilers print, exit 2.
		return nil, &usageError{err: err}
	}
	if cred != nil {
		fc.User, fc.Credential = userSpec, cred
	}
	opts := &cluster.FleetOptions{Logger: slog.New(handler), Control: control, PIDFile: pidFile}
	if logFormat == "text" {
		opts.Stdout, opts.Stderr = stdout, stderr
	}
	return &start{fc: fc, fleet: opts}, nil
}
