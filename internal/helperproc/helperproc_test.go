//go:build linux

package helperproc_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{
		"whoami": func() int {
			fmt.Println(os.Getuid(), strings.Join(helperproc.Args(), " "))
			return 0
		},
		// parent starts a sleep in its own process group, prints its pid,
		// and waits.
		"parent": func() int {
			cmd := exec.Command("sleep", "30")
			if err := cmd.Start(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			fmt.Println(cmd.Process.Pid)
			_ = cmd.Wait()
			return 0
		},
	})
}

// fakeTB collects cleanups so a test can run them when it chooses.
type fakeTB struct {
	testing.TB
	cleanups []func()
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Fatalf(format string, a ...any) {
	panic(fmt.Sprintf(format, a...))
}

func (f *fakeTB) finish() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// startParent starts the parent role through Start on a fake TB and returns
// the grandchild's pid.
func startParent(t *testing.T, c *proccensus.Census, attr *syscall.SysProcAttr) (*fakeTB, *exec.Cmd, int) {
	t.Helper()
	cmd := helperproc.Command(t, "parent", &helperproc.Options{Env: []string{c.Env()}})
	cmd.SysProcAttr = attr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	ft := &fakeTB{}
	helperproc.Start(ft, cmd)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		ft.finish()
		t.Fatalf("reading the grandchild's pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		ft.finish()
		t.Fatal(err)
	}
	return ft, cmd, pid
}

func TestStartKillsOwnProcessGroup(t *testing.T) {
	tests := []struct {
		name string
		attr *syscall.SysProcAttr
	}{
		{"setpgid", &syscall.SysProcAttr{Setpgid: true}},
		{"setsid", &syscall.SysProcAttr{Setsid: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fdcensus.Verify(t)
			c := proccensus.New(t)
			ft, cmd, grandchild := startParent(t, c, tt.attr)
			ft.finish()
			if cmd.ProcessState == nil {
				t.Error("Start's cleanup did not reap the child")
			}
			if err := c.WaitGone(2 * time.Second); err != nil {
				t.Errorf("grandchild %d in the child's group outlived the cleanup: %v", grandchild, err)
			}
		})
	}
}

// A child in the test's own process group is killed alone: killing its
// group would kill the test.
func TestStartKillsOnlyChildInSharedGroup(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	ft, cmd, grandchild := startParent(t, c, nil)
	ft.finish()
	if cmd.ProcessState == nil {
		t.Error("Start's cleanup did not reap the child")
	}
	p, ok := proccensus.Stat(grandchild)
	if !ok || p.State == 'Z' {
		t.Errorf("grandchild %d in the test's group was killed (%v)", grandchild, p)
	}
	// The census's cleanup kills the re-parented grandchild; do it here so
	// the test passes.
	if proc, err := os.FindProcess(grandchild); err == nil {
		_ = proc.Kill()
		_ = proc.Release()
	}
}

func TestAsNobodyCopiesOnceOutsidePrivateTMPDIR(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	fdcensus.Verify(t)
	c := proccensus.New(t)
	private := t.TempDir()
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", private)
	var paths []string
	for i := range 2 {
		cmd := helperproc.Command(t, "whoami", &helperproc.Options{AsNobody: true, Env: []string{c.Env()}, Args: []string{strconv.Itoa(i)}})
		cmd.Stderr = nil
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper as nobody: %v", err)
		}
		if got, want := string(out), fmt.Sprintf("65534 %d\n", i); got != want {
			t.Errorf("helper printed %q, want %q", got, want)
		}
		paths = append(paths, cmd.Path)
	}
	if paths[0] != paths[1] {
		t.Errorf("binary copied per command: %q, %q", paths[0], paths[1])
	}
	if strings.HasPrefix(paths[0], private+string(filepath.Separator)) {
		t.Errorf("copy %q is under the 0700 TMPDIR", paths[0])
	}
}
