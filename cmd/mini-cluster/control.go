package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/handoff-go/handoff/cluster"
)

// controlCommands are the subcommands that talk to a running master over
// its control socket; run dispatches on them.
var controlCommands = map[string]bool{"status": true, "restart": true, "stop": true, "scale": true, "send": true, "broadcast": true, "suspend": true, "resume": true, "max-running-time": true}

// runControl runs "mini-cluster CMD [OPERANDS] -control PATH [-group NAME]
// [-json]": status, restart, stop, scale N, send SLOT MESSAGE, broadcast
// MESSAGE, suspend GROUP, resume GROUP, max-running-time D. Flags may come
// before or after the
// operands.
func runControl(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mini-cluster "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	operand := map[string]string{"scale": " N", "send": " SLOT MESSAGE", "broadcast": " MESSAGE", "suspend": " GROUP", "resume": " GROUP", "max-running-time": " D"}[cmd]
	groupFlag := ""
	if cmd == "restart" || cmd == "scale" || cmd == "send" || cmd == "broadcast" || cmd == "max-running-time" {
		groupFlag = " [-group NAME]"
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mini-cluster %s%s -control PATH%s [-json] [-timeout D]\n\nflags:\n", cmd, operand, groupFlag)
		fs.PrintDefaults()
	}
	path := fs.String("control", "", "path of the master's control socket (the master's -control)")
	// What an absent -group means differs: restart and broadcast act on
	// every group, the others need one and take the only one if there is.
	groupHelp := "the group of a -config master to act on (default: the only group; required when there are several)"
	switch cmd {
	case "restart", "broadcast":
		groupHelp = "the group of a -config master to act on (default: every group)"
	case "suspend", "resume":
		groupHelp = "the group to act on, as the GROUP operand names it"
	case "stop", "status":
		groupHelp = "not supported: " + cmd + " acts on every group"
	}
	group := fs.String("group", "", groupHelp)
	asJSON := fs.Bool("json", false, "print the answer as JSON")
	timeout := fs.Duration("timeout", 0, "give up on the master after this long (default "+defaultTimeoutText(cmd)+")")
	var pos []string
	rest := args
	// flag stops at the first operand; parse again after each one, so that
	// "scale 4 -control P" works. Each pass consumes at least one argument.
	for range len(args) + 1 {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return &usageError{err: err, printed: true}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *path == "" {
		fs.Usage()
		return &usageError{err: fmt.Errorf("%s: -control PATH is required", cmd)}
	}
	if *timeout < 0 {
		return &usageError{err: fmt.Errorf("-timeout %v: want a positive duration (0: the default)", *timeout)}
	}
	dialTimeout := *timeout
	if *timeout == 0 {
		*timeout, dialTimeout = defaultTimeout(cmd), controlTimeout
	}
	if *group != "" && (cmd == "stop" || cmd == "status") {
		// Ignored, -group would turn "stop one group" into a stop of every
		// group, and "status of one group" into all of them.
		hint := "stop acts on every group; use suspend GROUP to stop one"
		if cmd == "status" {
			hint = "status shows every group"
		}
		return &usageError{err: fmt.Errorf("%s: -group is not supported (%s)", cmd, hint)}
	}
	n := 0
	var maxRun time.Duration
	switch {
	case cmd == "max-running-time" && len(pos) != 1:
		fs.Usage()
		return &usageError{err: errors.New("max-running-time: want exactly one duration (0 for none)")}
	case cmd == "max-running-time":
		var err error
		if maxRun, err = time.ParseDuration(pos[0]); err != nil || maxRun != 0 && (maxRun < time.Second || maxRun > 366*24*time.Hour) {
			return &usageError{err: fmt.Errorf("max-running-time %q: want 0 (none) or a duration from 1s to 8784h", pos[0])}
		}
	case cmd == "scale" && len(pos) != 1:
		fs.Usage()
		return &usageError{err: errors.New("scale: want exactly one worker count")}
	case cmd == "scale":
		var err error
		if n, err = strconv.Atoi(pos[0]); err != nil || n < 0 || n > 4096 {
			return &usageError{err: fmt.Errorf("scale %q: want a number of workers from 0 to 4096", pos[0])}
		}
	case cmd == "send" && len(pos) != 2, cmd == "broadcast" && len(pos) != 1:
		fs.Usage()
		return &usageError{err: fmt.Errorf("%s: want%s", cmd, operand)}
	case cmd == "send":
		var err error
		if n, err = strconv.Atoi(pos[0]); err != nil || n < 0 || n >= 4096 {
			return &usageError{err: fmt.Errorf("send %q: want a slot number from 0 to 4095", pos[0])}
		}
	case cmd == "broadcast":
	case (cmd == "suspend" || cmd == "resume") && len(pos) != 1:
		fs.Usage()
		return &usageError{err: fmt.Errorf("%s: want exactly one group name", cmd)}
	case cmd == "suspend" || cmd == "resume":
		if *group != "" && *group != pos[0] {
			return &usageError{err: fmt.Errorf("%s %s: -group names another group (%s)", cmd, pos[0], *group)}
		}
		*group = pos[0]
	case len(pos) != 0:
		fs.Usage()
		return &usageError{err: fmt.Errorf("%s: unexpected argument %q", cmd, pos[0])}
	}
	if (cmd == "send" || cmd == "broadcast") && len(pos[len(pos)-1]) > cluster.MaxMessage {
		// An operand error like the others (exit 2), found before dialling.
		return &usageError{err: fmt.Errorf("%s: message of %d bytes; at most %d", cmd, len(pos[len(pos)-1]), cluster.MaxMessage)}
	}

	err := callControl(ctx, cmd, *path, *group, dialTimeout, *timeout, n, maxRun, pos, *asJSON, stdout)
	if err != nil && *asJSON {
		// Scripts read stdout: the failure is there too, classified.
		writeJSONError(stdout, err)
	}
	return err
}

// controlTimeout is the client's default -timeout, and bounds its connect
// when -timeout is not given.
const controlTimeout = 10 * time.Second

// waitsOnWorkers are the requests the master answers only once workers
// stopped, or remote hosts' agents answered: on a -config master, each
// remote host may take its group's shutdown_timeout plus 10 s (the
// master's wait for an agent's ack), more than any fixed client timeout.
var waitsOnWorkers = map[string]bool{"suspend": true, "resume": true, "restart": true, "max-running-time": true}

// workersTimeout is the default request timeout of the requests that wait
// on workers: longer than the master's own bound with default settings
// (shutdown_timeout 10 s + 10 s per remote host, one host after the other,
// for dozens of hosts), yet finite, since a master that stands still
// (SIGSTOP, a frozen VM, a deadlock) bounds nothing, and a unix socket's
// connect succeeds from its backlog whether or not anyone accepts.
const workersTimeout = 15 * time.Minute

// defaultTimeout is cmd's request timeout without -timeout. A request that
// waits on workers gets workersTimeout: a client that gave up before the
// master would report a timeout for a request the master then carries
// out, or undoes (a suspend a host's agent did not acknowledge in time is
// undone and that host's session restarted), leaving the operator to
// guess.
func defaultTimeout(cmd string) time.Duration {
	if waitsOnWorkers[cmd] {
		return workersTimeout
	}
	return controlTimeout
}

func defaultTimeoutText(cmd string) string {
	if waitsOnWorkers[cmd] {
		return workersTimeout.String()
	}
	return controlTimeout.String()
}

// callControl dials the master (giving up after dialTimeout), sends cmd
// and prints the answer (giving up after timeout).
func callControl(ctx context.Context, cmd, path, group string, dialTimeout, timeout time.Duration, n int, maxRun time.Duration, pos []string, asJSON bool, stdout io.Writer) error {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	c, err := cluster.DialControl(dctx, path, &cluster.ControlOptions{Timeout: timeout})
	if err != nil {
		return explainDial(path, err)
	}
	defer c.Close()
	// A request without a deadline still ends with ctx.
	defer context.AfterFunc(ctx, func() { c.Close() })()
	switch cmd {
	case "status":
		st, err := c.Status()
		if err != nil {
			return explainControl(path, err)
		}
		if asJSON {
			_, err = stdout.Write(append(st.AppendJSON(nil), '\n'))
			return err
		}
		return printStatus(stdout, st, time.Now())
	case "restart":
		err = c.RestartGroup(group)
	case "stop":
		err = c.Stop()
	case "scale":
		err = c.ScaleGroup(group, n)
	case "send":
		err = c.SendGroup(group, n, []byte(pos[1]))
	case "broadcast":
		err = c.BroadcastGroup(group, []byte(pos[0]))
	case "suspend":
		err = c.Suspend(group)
	case "resume":
		err = c.Resume(group)
	case "max-running-time":
		err = c.SetMaxRunningTime(group, maxRun)
	}
	if err != nil {
		return explainControl(path, err)
	}
	if asJSON {
		_, err = io.WriteString(stdout, `{"type":"ok"}`+"\n")
		return err
	}
	switch cmd {
	case "restart":
		_, err = fmt.Fprintln(stdout, "restart begun")
	case "stop":
		_, err = fmt.Fprintln(stdout, "stop begun")
	case "scale":
		_, err = fmt.Fprintf(stdout, "scaling to %d workers\n", n)
	case "send":
		_, err = fmt.Fprintf(stdout, "queued for slot %d\n", n)
	case "broadcast":
		_, err = fmt.Fprintln(stdout, "queued for every worker")
	case "suspend":
		_, err = fmt.Fprintf(stdout, "group %s suspending\n", group)
	case "resume":
		_, err = fmt.Fprintf(stdout, "group %s resuming\n", group)
	case "max-running-time":
		what := "maximum running time"
		if group != "" {
			what = "group " + group + ": " + what
		}
		if maxRun == 0 {
			_, err = fmt.Fprintf(stdout, "%s: none\n", what)
		} else {
			_, err = fmt.Fprintf(stdout, "%s: %v\n", what, maxRun)
		}
	}
	return err
}

// explainDial turns a failed connect into a message that says what to do.
func explainDial(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("no control socket at %s (is a master running with -control %s?): %w", path, path, err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("control socket %s refuses connections (the master is not running; the file is stale): %w", path, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("permission denied on %s (run as the master's user or root): %w", path, err)
	}
	return err
}

// writeJSONError prints err as {"type":"error","code":C,"error":TEXT}: C
// is the master's code for an error answer, else what went wrong on the way
// (no_socket, refused, permission, closed, timeout, failed).
func writeJSONError(w io.Writer, err error) {
	code := "failed"
	var ce *cluster.ControlError
	switch {
	case errors.As(err, &ce):
		code = ce.Code
	case errors.Is(err, fs.ErrNotExist):
		code = "no_socket"
	case errors.Is(err, syscall.ECONNREFUSED):
		code = "refused"
	case errors.Is(err, fs.ErrPermission):
		code = "permission"
	case errors.Is(err, cluster.ErrControlClosed):
		code = "closed"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		code = "timeout"
	}
	// json.Marshal of a string cannot fail; the code may come from the
	// master, so it is escaped like the text.
	c, _ := json.Marshal(code)
	text, _ := json.Marshal(err.Error())
	fmt.Fprintf(w, `{"type":"error","code":%s,"error":%s}`+"\n", c, text)
}

func explainControl(path string, err error) error {
	if errors.Is(err, cluster.ErrControlClosed) {
		return fmt.Errorf("the master closed %s without answering (only root and the master's user may use it): %w", path, err)
	}
	return err
}

// printStatus writes the human table of st: one for a single-command
// master, one per group for a -config master.
func printStatus(w io.Writer, st *cluster.ControlStatus, now time.Time) error {
	if len(st.Groups) > 0 {
		return printGroups(w, st, now)
	}
	restarting := ""
	if st.Restarting {
		restarting = ", restarting"
	}
	if st.MaxRunningTime > 0 {
		restarting += ", max running time " + st.MaxRunningTime.String()
	}
	if _, err := fmt.Fprintf(w, "master %d: generation %d, %d/%d workers ready%s\n", st.PID, st.Generation, st.ReadyWorkers, st.Workers, restarting); err != nil {
		return err
	}
	// The workers' STATUS= texts, when any sent one, in a last column.
	withStatus := slices.ContainsFunc(st.Slots, func(s cluster.ControlSlot) bool { return s.Status != "" })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "SLOT\tPID\tGEN\tSTATE\tUPTIME\tRESTARTS\tLAST EXIT"
	if withStatus {
		head += "\tSTATUS"
	}
	fmt.Fprintln(tw, head)
	for _, s := range st.Slots {
		pid, gen, up := "-", "-", "-"
		if s.PID != 0 {
			pid, gen, up = strconv.Itoa(s.PID), strconv.Itoa(s.Generation), s.Uptime.Round(time.Second).String()
		}
		row := fmt.Sprintf("%d\t%s\t%s\t%s\t%s\t%d\t%s", s.Slot, pid, gen, s.StateText(), up, s.Restarts, describeExit(s.LastExit, now))
		if withStatus {
			row += "\t" + printable(s.Status)
		}
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}

// printGroups writes a -config master's status: per group, its local
// slots, then each remote host and the slots its agent reported.
func printGroups(w io.Writer, st *cluster.ControlStatus, now time.Time) error {
	if _, err := fmt.Fprintf(w, "master %d: %s, %d/%d local workers ready\n", st.PID, plural(len(st.Groups), "group"), st.ReadyWorkers, st.Workers); err != nil {
		return err
	}
	for _, g := range st.Groups {
		state := ""
		if g.Suspended {
			state += ", suspended"
		}
		if g.MaxRunningTime > 0 {
			state += ", max running time " + g.MaxRunningTime.String()
		}
		if g.Restarting {
			state += ", restarting"
		}
		if _, err := fmt.Fprintf(w, "\ngroup %s: generation %d, %d/%d workers ready%s\n", g.Name, g.Generation, g.ReadyWorkers, g.Workers, state); err != nil {
			return err
		}
		// Each host's state first, then one table: a line without a tab
		// would end tabwriter's column block, and the hosts' rows would no
		// longer line up under the header.
		hosts := make([]string, len(g.Remote))
		for i, r := range g.Remote {
			host := printable(r.Host)
			if r.Port != 0 && r.Port != 22 {
				host += ":" + strconv.Itoa(r.Port)
			}
			hosts[i] = host
			conn := "disconnected"
			if r.Connected {
				conn = "connected, agent pid " + strconv.Itoa(r.AgentPID)
			}
			line := fmt.Sprintf("%s: %s, %d/%d ready, %s", host, conn, r.ReadyWorkers, r.Workers, plural(r.Sessions, "session"))
			if r.LastError != "" {
				line += ", last error: " + printable(r.LastError)
			}
			if _, err := fmt.Fprintf(w, "%s\n", line); err != nil {
				return err
			}
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "HOST\tSLOT\tID\tINDEX\tPID\tGEN\tSTATE\tUPTIME\tRESTARTS\tLAST EXIT")
		slotRows(tw, "local", g.Slots, now)
		for i, r := range g.Remote {
			slotRows(tw, hosts[i], r.Slots, now)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// printable replaces control characters with '?': a remote host's agent
// chooses the text of its errors, and a terminal would obey escape
// sequences in it (and a newline would forge a row).
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

func slotRows(tw io.Writer, host string, slots []cluster.ControlSlot, now time.Time) {
	for _, s := range slots {
		pid, gen, up := "-", "-", "-"
		if s.PID != 0 {
			pid, gen, up = strconv.Itoa(s.PID), strconv.Itoa(s.Generation), s.Uptime.Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n", host, s.Slot, s.ID, s.Index, pid, gen, s.StateText(), up, s.Restarts, describeExit(s.LastExit, now))
	}
}

// describeExit is the LAST EXIT column: "-", or e.g. "pid 42 killed by
// SIGKILL 3s ago" / "pid 42 exit 1 3s ago (requested)".
func describeExit(x *cluster.ControlExit, now time.Time) string {
	if x == nil {
		return "-"
	}
	how := "exit " + strconv.Itoa(x.Code)
	if x.Signal != 0 {
		how = "killed by " + signalName(x.Signal)
	}
	s := fmt.Sprintf("pid %d %s %s ago", x.PID, how, now.Sub(x.Time).Round(time.Second))
	if x.Requested {
		s += " (requested)"
	}
	return s
}

func signalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return "signal " + strconv.Itoa(int(sig))
}

// plural is "1 group", "2 groups".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
