//go:build linux

package proccensus_test

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// fakeTB records what a census reports instead of failing the real test.
type fakeTB struct {
	testing.TB
	cleanups []func()
	mu       sync.Mutex
	errs     []string
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Error(a ...any)    { f.record(fmt.Sprint(a...)) }
func (f *fakeTB) Errorf(format string, a ...any) {
	f.record(fmt.Sprintf(format, a...))
}

func (f *fakeTB) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, s)
}

func (f *fakeTB) finish() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// start starts a command with env (nil: the test's own) and makes sure it is
// gone and reaped when t ends, whatever a census did to it.
func start(t *testing.T, env []string, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			// The census may have reaped it already (ECHILD); Release
			// closes the pidfd either way.
			_ = cmd.Wait()
			_ = cmd.Process.Release()
		}
	})
	return cmd
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isZombie(pid int) bool {
	p, ok := proccensus.Stat(pid)
	return ok && p.State == 'Z'
}

func TestCleanupReportsKillsAndReaps(t *testing.T) {
	defer proccensus.SetGoneTimeout(300 * time.Millisecond)()
	tests := []struct {
		name string
		// body starts processes; it returns pids that must be gone (not
		// even zombies of this process) after the cleanup.
		body func(t *testing.T, c *proccensus.Census) []int
		want []string // substrings of the report; nil: no report
	}{
		{"nothing left", func(*testing.T, *proccensus.Census) []int { return nil }, nil},
		{"marked orphan", func(t *testing.T, c *proccensus.Census) []int {
			sh := start(t, append(os.Environ(), c.Env()), "sh", "-c", "sleep 30 &")
			if err := sh.Wait(); err != nil {
				t.Fatal(err)
			}
			return nil
		}, []string{"left behind", "sleep 30"}},
		{"unmarked child", func(t *testing.T, c *proccensus.Census) []int {
			pid := start(t, []string{}, "sleep", "30").Process.Pid
			// Only the end-of-test check claims unmarked children of the
			// test process (see the package documentation).
			if err := c.WaitGone(0); err != nil {
				t.Errorf("WaitGone claimed an unmarked child: %v", err)
			}
			return []int{pid}
		}, []string{"unmarked descendant", "sleep 30"}},
		{"unmarked grandchild of a marked child", func(t *testing.T, c *proccensus.Census) []int {
			sh := start(t, append(os.Environ(), c.Env()), "sh", "-c", "env -i sleep 31 & wait")
			kids := waitChildren(t, sh.Process.Pid)
			return append(kids, sh.Process.Pid)
		}, []string{"unmarked descendant", "sleep 31", "sh -c"}},
		{"zombie", func(t *testing.T, c *proccensus.Census) []int {
			cmd := start(t, append(os.Environ(), c.Env()), "true")
			waitUntil(t, "the child is a zombie", func() bool { return isZombie(cmd.Process.Pid) })
			return []int{cmd.Process.Pid}
		}, []string{"zombie", "ppid"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fdcensus.Verify(t)
			ft := &fakeTB{}
			c := proccensus.New(ft)
			gone := tt.body(t, c)
			ft.finish()
			report := strings.Join(ft.errs, "\n")
			if tt.want == nil && len(ft.errs) != 0 {
				t.Errorf("census reported %q, want nothing", ft.errs)
			}
			for _, w := range tt.want {
				if !strings.Contains(report, w) {
					t.Errorf("census report lacks %q:\n%s", w, report)
				}
			}
			if strings.Contains(report, "still left") {
				t.Errorf("census could not clear its processes:\n%s", report)
			}
			if m := c.Marked(); len(m) != 0 {
				t.Errorf("marked processes alive after the cleanup: %v", m)
			}
			// A killed grandchild may be a zombie of init for a moment.
			for _, pid := range gone {
				if p, ok := proccensus.Stat(pid); ok && (p.State != 'Z' || p.PPID == os.Getpid()) {
					t.Errorf("pid %d still there after the cleanup: %v", pid, p)
				}
			}
			if err := c.WaitGone(0); err != nil {
				t.Errorf("after the cleanup: %v", err)
			}
		})
	}
}

// waitChildren waits until process ppid has a child and returns their pids.
func waitChildren(t *testing.T, ppid int) []int {
	t.Helper()
	var kids []int
	waitUntil(t, fmt.Sprintf("pid %d has a child", ppid), func() bool {
		kids = kids[:0]
		dir, err := os.ReadDir("/proc")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range dir {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if p, ok := proccensus.Stat(pid); ok && p.PPID == ppid {
				kids = append(kids, pid)
			}
		}
		return len(kids) > 0
	})
	return kids
}

// A zombie left by an earlier test (or by the test's own earlier census)
// is not a later census's failure.
func TestZombieFromBeforeNewNotClaimed(t *testing.T) {
	fdcensus.Verify(t)
	defer proccensus.SetGoneTimeout(300 * time.Millisecond)()
	cmd := start(t, nil, "true")
	waitUntil(t, "the child is a zombie", func() bool { return isZombie(cmd.Process.Pid) })
	ft := &fakeTB{}
	proccensus.New(ft)
	ft.finish()
	if len(ft.errs) != 0 {
		t.Errorf("census reported %q, want nothing", ft.errs)
	}
	if !isZombie(cmd.Process.Pid) {
		t.Errorf("census reaped pid %d, a zombie from before it", cmd.Process.Pid)
	}
	if err := cmd.Wait(); err != nil {
		t.Error(err)
	}
}

// Processes of another census, and unmarked processes below them, are not
// this census's, even when they start after it.
func TestOtherCensusNotClaimed(t *testing.T) {
	fdcensus.Verify(t)
	defer proccensus.SetGoneTimeout(300 * time.Millisecond)()
	other := proccensus.New(t)
	ft := &fakeTB{}
	proccensus.New(ft)
	sh := start(t, append(os.Environ(), other.Env()), "sh", "-c", "env -i sleep 32 & wait")
	kids := waitChildren(t, sh.Process.Pid)
	ft.finish()
	if len(ft.errs) != 0 {
		t.Errorf("census reported %q, want nothing", ft.errs)
	}
	// The unmarked grandchild would re-parent to init, out of every
	// census's sight, if the shell died first.
	for _, pid := range kids {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
			_ = p.Release()
		}
	}
	_ = sh.Wait()
}
