//go:build linux

// Package proccensus finds the processes a test started, including orphans
// that re-parented away from it, so tests can prove none are left behind.
//
// A test gets a Census with New; every process it starts carries the
// census's marker in its environment (Env). Processes inherit their
// environment, so grandchildren and double-forked daemons carry it too.
// After the test, no live process may carry the marker and this process
// may have no zombie children.
//
// Linux only (it reads /proc).
package proccensus

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// MarkerVar is the environment variable that tags a test's processes.
const MarkerVar = "MC_TEST_ID"

// Census tracks the processes of one test.
type Census struct {
	id string
}

// New returns a census with a fresh marker and registers a cleanup that fails
// t if, once later cleanups have run, any process still carries the marker or
// this process has zombie children. Call it before starting processes.
func New(t testing.TB) *Census {
	t.Helper()
	var b [12]byte
	_, _ = rand.Read(b[:])
	c := &Census{id: hex.EncodeToString(b[:])}
	t.Cleanup(func() {
		if err := c.WaitGone(5 * time.Second); err != nil {
			t.Error(err)
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
	needle := []byte(c.Env())
	var out []Proc
	for _, pid := range pids() {
		env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, needle) {
				if p, ok := Stat(pid); ok && p.State != 'Z' {
					out = append(out, p)
				}
				break
			}
		}
	}
	return out
}

// Zombies returns the zombie children of process ppid.
func Zombies(ppid int) []Proc {
	var out []Proc
	for _, pid := range pids() {
		if p, ok := Stat(pid); ok && p.PPID == ppid && p.State == 'Z' {
			out = append(out, p)
		}
	}
	return out
}

// WaitGone waits up to d for every marked process to exit and for this
// process to have no zombie children, and describes what is left otherwise.
func (c *Census) WaitGone(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		left := c.Marked()
		zombies := Zombies(os.Getpid())
		if len(left) == 0 && len(zombies) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			b.WriteString("process census: left behind:")
			for _, p := range left {
				b.WriteString("\n  " + p.String())
			}
			for _, p := range zombies {
				b.WriteString("\n  zombie " + p.String())
			}
			return fmt.Errorf("%s", b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stat reads the pid, parent, state and command line of a process.
func Stat(pid int) (Proc, bool) {
	ps := strconv.Itoa(pid)
	b, err := os.ReadFile("/proc/" + ps + "/stat")
	if err != nil {
		return Proc{}, false
	}
	// The command name is parenthesised and may contain spaces or ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return Proc{}, false
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return Proc{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	cmd, _ := os.ReadFile("/proc/" + ps + "/cmdline")
	return Proc{PID: pid, PPID: ppid, State: f[0][0], Cmdline: strings.TrimSpace(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))}, true
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
