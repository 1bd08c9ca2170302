//go:build linux

// Package proccensus finds the processes a test started, including orphans
// that re-parented away from it, so tests can prove none are left behind.
//
// A test gets a Census with New; every process it starts carries the
// census's marker in its environment (Env). Processes inherit their
// environment, so grandchildren and double-forked daemons carry it too.
//
// A census is responsible for:
//   - live processes that carry its marker;
//   - live processes without any test marker that descend, by the parent
//     chain, from one of its marked processes (a descendant started with
//     "env -i" or an empty environment);
//   - at the end of the test only, also live processes without any test
//     marker that descend from a child this process started after New,
//     unless a process on that chain carries another census's marker. Not
//     in WaitGone: a process that rewrites its command line over its
//     environment (sshd's setproctitle) hides its marker from
//     /proc/<pid>/environ, so while the test runs another census's such
//     process would be taken for this one's;
//   - zombie children of this process that were not its children at New.
//
// After the test, none may be left. Whatever is left is reported, then
// killed (SIGKILL, through a pidfd checked against the process's start time
// so a reused pid is never hit) and this census's zombies are reaped, so one
// failing test does not fail every later one.
//
// Limits: an unmarked process whose parent chain no longer leads to a
// marked process or to this process (its parents exited and it re-parented
// to init) cannot be attributed and is not seen. Two censuses alive at once
// in the same process each claim the unmarked zombies and unmarked children
// started after both were created; tests that start processes do not run in
// parallel in this repository.
//
// Linux only (it reads /proc).
package proccensus

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// MarkerVar is the environment variable that tags a test's processes.
const MarkerVar = "MC_TEST_ID"

// Census tracks the processes of one test. Its methods may be called
// concurrently.
type Census struct {
	id   string
	self int
	// before holds the children (any state) of this process at New; they
	// and their descendants belong to whoever started them.
	before map[procKey]bool
	// inherited are the markers this process itself carries (it may be a
	// child of another test): its children carry them too, so they do not
	// make a process another census's.
	inherited map[string]bool
}

// procKey names one process for its lifetime: a pid is reused, a pid with
// its start time (clock ticks after boot) is not.
type procKey struct {
	pid   int
	start uint64
}

// goneTimeout is how long the cleanup waits for processes to exit by
// themselves; a variable so the package's tests can shorten it.
var goneTimeout = 5 * time.Second

// clearTimeout bounds how long a failed census spends killing leftovers
// and reaping zombies.
const clearTimeout = 3 * time.Second

// New returns a census with a fresh marker and registers a cleanup that fails
// t if, once later cleanups have run, any process the census is responsible
// for is left (see the package documentation). It then kills those left and
// reaps its zombies. Call it before starting processes.
func New(t testing.TB) *Census {
	t.Helper()
	var b [12]byte
	_, _ = rand.Read(b[:])
	c := &Census{
		id:        hex.EncodeToString(b[:]),
		self:      os.Getpid(),
		before:    map[procKey]bool{},
		inherited: map[string]bool{},
	}
	for _, p := range scan(false) {
		if p.PPID == c.self {
			c.before[p.key()] = true
		}
	}
	if env, err := os.ReadFile("/proc/self/environ"); err == nil {
		for _, m := range markers(env) {
			c.inherited[m] = true
		}
	}
	t.Cleanup(func() {
		// Reported at the test's call to New.
		t.Helper()
		err := c.waitGone(goneTimeout, true)
		if err == nil {
			return
		}
		t.Error(err)
		if left := c.clear(clearTimeout); len(left) > 0 {
			var b strings.Builder
			fmt.Fprintf(&b, "process census: still left after SIGKILL and %v:", clearTimeout)
			for _, p := range left {
				b.WriteString("\n  " + p.String())
			}
			t.Error(b.String())
		}
	})
	return c
}

// Env returns the "MC_TEST_ID=<id>" entry to add to a child's environment.
func (c *Census) Env() string { return MarkerVar + "=" + c.id }

// Proc is a process found by a scan.
type Proc struct {
	PID     int
	PPID    int
	State   byte // as in /proc/<pid>/stat: R, S, Z, ...
	Cmdline string
}

func (p Proc) String() string {
	return fmt.Sprintf("pid %d (ppid %d, state %c): %s", p.PID, p.PPID, p.State, p.Cmdline)
}

// Marked returns the live processes whose environment carries the marker.
// Zombies have no readable environment and are reported by Zombies instead.
func (c *Census) Marked() []Proc {
	var out []Proc
	for _, p := range scan(true) {
		if p.State != 'Z' && p.markers[c.id] {
			out = append(out, p.withCmdline())
		}
	}
	return out
}

// Zombies returns the zombie children of process ppid.
func Zombies(ppid int) []Proc {
	var out []Proc
	for _, p := range scan(false) {
		if p.PPID == ppid && p.State == 'Z' {
			out = append(out, p.withCmdline())
		}
	}
	return out
}

// WaitGone waits up to d until no process the census is responsible for is
// left (see the package documentation), and describes what is left
// otherwise. It neither kills nor reaps.
func (c *Census) WaitGone(d time.Duration) error {
	return c.waitGone(d, false)
}

// waitGone is WaitGone; final adds the unmarked descendants of children
// started after New, for the end of the test.
func (c *Census) waitGone(d time.Duration, final bool) error {
	deadline := time.Now().Add(d)
	for {
		live, zombies := c.left(final)
		if len(live) == 0 && len(zombies) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			b.WriteString("process census: left behind:")
			for _, p := range live {
				if p.markers[c.id] {
					b.WriteString("\n  " + p.withCmdline().String())
				} else {
					b.WriteString("\n  unmarked descendant " + p.withCmdline().String())
				}
			}
			for _, p := range zombies {
				b.WriteString("\n  zombie " + p.withCmdline().String())
			}
			return errors.New(b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// left returns the live processes and the zombie children of this process
// that the census is responsible for; final as in waitGone.
func (c *Census) left(final bool) (live, zombies []proc) {
	all := scan(true)
	for _, p := range all {
		switch {
		case p.PID == c.self:
		case p.State == 'Z':
			if p.PPID == c.self && !c.before[p.key()] {
				zombies = append(zombies, p)
			}
		case p.markers[c.id] || c.owns(p, all, final):
			live = append(live, p)
		}
	}
	return live, zombies
}

// owns reports whether an unmarked live process belongs to the census by its
// parent chain; final as in waitGone. The depth bound guards against a chain
// that changes while it is read.
func (c *Census) owns(p proc, all map[int]proc, final bool) bool {
	for range 64 {
		if p.markers[c.id] {
			return true
		}
		for m := range p.markers {
			if !c.inherited[m] {
				return false // another census's process or subtree
			}
		}
		if p.PPID == c.self {
			return final && !c.before[p.key()]
		}
		parent, ok := all[p.PPID]
		if !ok {
			return false
		}
		p = parent
	}
	return false
}

// clear kills the live processes the census is responsible for and reaps its
// zombies, until none is left or timeout passes; it returns what is left.
func (c *Census) clear(timeout time.Duration) []Proc {
	deadline := time.Now().Add(timeout)
	for {
		live, zombies := c.left(true)
		for _, p := range live {
			kill(p)
		}
		for _, p := range zombies {
			// A zombie child keeps its pid until reaped, so the pid
			// cannot name another process here.
			var ws unix.WaitStatus
			_, _ = unix.Wait4(p.PID, &ws, unix.WNOHANG, nil)
		}
		if len(live) == 0 && len(zombies) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			out := make([]Proc, 0, len(live)+len(zombies))
			for _, p := range append(live, zombies...) {
				out = append(out, p.withCmdline())
			}
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL to p through a pidfd, after checking that the pidfd's
// process has p's start time: between the scan and the signal p may have
// exited and its pid been reused.
func kill(p proc) {
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil {
		return // gone already
	}
	defer unix.Close(fd)
	if now, ok := stat(p.PID); !ok || now.start != p.start {
		return
	}
	_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
}

// proc is a scanned process with what attribution needs.
type proc struct {
	Proc
	start   uint64
	markers map[string]bool // values of MarkerVar in its environment
}

func (p proc) key() procKey { return procKey{p.PID, p.start} }

// scan reads every process; withEnv also reads their markers.
func scan(withEnv bool) map[int]proc {
	out := map[int]proc{}
	for _, pid := range pids() {
		p, ok := stat(pid)
		if !ok {
			continue
		}
		if withEnv && p.State != 'Z' {
			if env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ"); err == nil {
				for _, m := range markers(env) {
					if p.markers == nil {
						p.markers = map[string]bool{}
					}
					p.markers[m] = true
				}
			}
		}
		out[pid] = p
	}
	return out
}

// markers returns the values of MarkerVar in a NUL-separated environment.
func markers(env []byte) []string {
	var out []string
	prefix := []byte(MarkerVar + "=")
	for _, kv := range bytes.Split(env, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, prefix); ok {
			out = append(out, string(v))
		}
	}
	return out
}

// Stat reads the pid, parent, state and command line of a process.
func Stat(pid int) (Proc, bool) {
	p, ok := stat(pid)
	if !ok {
		return Proc{}, false
	}
	return p.withCmdline(), true
}

// stat reads /proc/<pid>/stat.
func stat(pid int) (proc, bool) {
	ps := strconv.Itoa(pid)
	b, err := os.ReadFile("/proc/" + ps + "/stat")
	if err != nil {
		return proc{}, false
	}
	// The command name is parenthesised and may contain spaces or ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return proc{}, false
	}
	// Fields 3 (state) onwards; starttime is field 22. The command line is
	// left to withCmdline.
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return proc{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	start, _ := strconv.ParseUint(f[19], 10, 64)
	return proc{Proc: Proc{PID: pid, PPID: ppid, State: f[0][0]}, start: start}, true
}

// withCmdline returns p with its command line, read only for reports since
// scans read every process on the machine.
func (p proc) withCmdline() Proc {
	cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	p.Cmdline = strings.TrimSpace(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
	return p.Proc
}

func pids() []int {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	out := make([]int, 0, len(names))
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil {
			out = append(out, pid)
		}
	}
	return out
}
