package supervise_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// pidfileRole takes the pid file given as its argument, writes its pid,
// prints READY and sleeps until killed.
func pidfileRole() int {
	p, err := supervise.CreatePIDFile(helperproc.Args()[0])
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	if err := p.Write(os.Getpid()); err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	fmt.Println("READY")
	time.Sleep(time.Hour)
	return 0
}

func pidPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "mc.pid")
}

// TestPIDFileAtomicWrites: a reader polling the pid file while it is
// rewritten always parses a pid that was written, never an empty or partial
// file (TESTPLAN D1).
func TestPIDFileAtomicWrites(t *testing.T) {
	fdcensus.Verify(t)
	path := pidPath(t)
	p, err := supervise.CreatePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Write(1000); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := p.Write(1000 + i%2); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	bad := 0
	for range 10000 {
		pid, live, err := supervise.ReadPIDFile(path)
		if err != nil || !live || (pid != 1000 && pid != 1001) {
			bad++
			if bad < 5 {
				t.Errorf("read pid %d live %v err %v", pid, live, err)
			}
		}
	}
	close(stop)
	wg.Wait()
	if bad > 0 {
		t.Errorf("%d of 10000 reads bad", bad)
	}
}

// TestPIDFileStaleAndLocked: a stale file naming a live decoy is taken over
// without touching the decoy; a live owner's file is refused (TESTPLAN D2).
func TestPIDFileStaleAndLocked(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	decoy := helperproc.Command(t, "sleeper", &helperproc.Options{Env: []string{c.Env()}})
	if err := decoy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = decoy.Process.Kill()
		_ = decoy.Wait()
	})
	path := pidPath(t)
	if err := os.WriteFile(path, []byte(strconv.Itoa(decoy.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pid, live, err := supervise.ReadPIDFile(path)
	if err != nil || live || pid != decoy.Process.Pid {
		t.Fatalf("stale file read as pid %d live %v err %v", pid, live, err)
	}
	p, err := supervise.CreatePIDFile(path)
	if err != nil {
		t.Fatalf("taking over a stale pid file: %v", err)
	}
	defer p.Close()
	if err := p.Write(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if _, err := supervise.CreatePIDFile(path); !errors.Is(err, supervise.ErrPIDFileLocked) {
		t.Errorf("second owner: %v, want ErrPIDFileLocked", err)
	}
	if pid, live, err := supervise.ReadPIDFile(path); err != nil || !live || pid != os.Getpid() {
		t.Errorf("read pid %d live %v err %v", pid, live, err)
	}
	if !procAlive(decoy.Process.Pid) {
		t.Error("decoy died")
	}
}

// TestPIDFileUnsafe refuses symlinks, foreign owners and world-writable
// files and directories (TESTPLAN D3).
func TestPIDFileUnsafe(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name  string
		root  bool
		setup func(t *testing.T, path string)
	}{
		{"symlink", false, func(t *testing.T, path string) {
			target := filepath.Join(filepath.Dir(path), "victim")
			if err := os.WriteFile(target, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"lock file symlink", false, func(t *testing.T, path string) {
			if err := os.Symlink("/etc/passwd", path+".lock"); err != nil {
				t.Fatal(err)
			}
		}},
		{"world-writable", false, func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, 0o666); err != nil {
				t.Fatal(err)
			}
		}},
		{"world-writable directory", false, func(t *testing.T, path string) {
			if err := os.Chmod(filepath.Dir(path), 0o777); err != nil {
				t.Fatal(err)
			}
		}},
		{"owned by another user", true, func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(path, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}},
		{"not a regular file", false, func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Getuid() != 0 {
				t.Skip("needs root")
			}
			path := pidPath(t)
			tc.setup(t, path)
			p, err := supervise.CreatePIDFile(path)
			if !errors.Is(err, supervise.ErrUnsafePIDFile) {
				t.Errorf("CreatePIDFile: %v, want ErrUnsafePIDFile", err)
			}
			if p != nil {
				p.Close()
			}
		})
	}
}

// TestPIDFileLifecycle: a clean Close removes the file; an owner killed by
// SIGKILL leaves a file recognised as stale, and the next start succeeds
// (TESTPLAN D4).
func TestPIDFileLifecycle(t *testing.T) {
	fdcensus.Verify(t)
	path := pidPath(t)
	p, err := supervise.CreatePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file after clean Close: %v", err)
	}
	if err := p.Write(1); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}

	c := proccensus.New(t)
	cmd := helperproc.Command(t, "pidfile", &helperproc.Options{Env: []string{c.Env(), noRaceExitSleep}, Args: []string{path}})
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := out.Read(buf)
	if string(buf[:n]) != "READY\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper said %q", buf[:n])
	}
	if pid, live, err := supervise.ReadPIDFile(path); err != nil || !live || pid != cmd.Process.Pid {
		t.Errorf("live owner read as pid %d live %v err %v", pid, live, err)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	pid, live, err := supervise.ReadPIDFile(path)
	if d := cmp.Diff([]any{cmd.Process.Pid, false}, []any{pid, live}); d != "" || err != nil {
		t.Errorf("after SIGKILL (-want +got):\n%s err %v", d, err)
	}
	p, err = supervise.CreatePIDFile(path)
	if err != nil {
		t.Fatalf("start after a SIGKILLed owner: %v", err)
	}
	defer p.Close()
	// The new owner holds the lock but has not written yet: the dead
	// owner's pid must not be reported as live.
	if pid, live, err := supervise.ReadPIDFile(path); live || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after takeover, before Write: pid %d live %v err %v; want the stale file gone", pid, live, err)
	}
	if err := p.Write(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if pid, live, err := supervise.ReadPIDFile(path); err != nil || !live || pid != os.Getpid() {
		t.Errorf("after Write: pid %d live %v err %v", pid, live, err)
	}
}

// TestPIDFileTakeoverWhileReading: a reader that read a dead owner's pid
// just before a new owner took the lock over never reports that pid live
// (TESTPLAN D4).
func TestPIDFileTakeoverWhileReading(t *testing.T) {
	fdcensus.Verify(t)
	path := pidPath(t)
	// A dead owner's leftovers: its pid file and an unlocked lock file.
	const deadPID = 4000000
	if err := os.WriteFile(path, []byte(strconv.Itoa(deadPID)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var owner *supervise.PIDFile
	var once sync.Once
	supervise.SetHookPIDFileRead(func() {
		once.Do(func() {
			var err error
			if owner, err = supervise.CreatePIDFile(path); err != nil {
				t.Errorf("takeover: %v", err)
			}
		})
	})
	t.Cleanup(func() {
		supervise.SetHookPIDFileRead(nil)
		if owner != nil {
			owner.Close()
		}
	})
	pid, live, err := supervise.ReadPIDFile(path)
	if live {
		t.Errorf("dead owner's pid %d reported live (err %v)", pid, err)
	}
	if owner == nil {
		t.Fatal("hook did not run")
	}
}

func TestParsePID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int
	}{
		{"1\n", 1}, {"4194304", 4194304}, {"123", 123},
		{"", 0}, {"\n", 0}, {"0\n", 0}, {"-5\n", 0}, {" 12\n", 0}, {"12 \n", 0}, {"012\n", 0},
		{"4194305\n", 0}, {"99999999\n", 0}, {"12\n\n", 0}, {"1a\n", 0},
	}
	for _, tc := range tests {
		got, err := supervise.ParsePID([]byte(tc.in))
		if got != tc.want || (err == nil) != (tc.want != 0) {
			t.Errorf("ParsePID(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
		if err != nil && !errors.Is(err, supervise.ErrBadPIDFile) {
			t.Errorf("ParsePID(%q) error %v is not ErrBadPIDFile", tc.in, err)
		}
	}
}

// FuzzParsePID: the pid file parser never panics, accepts only what it
// would write itself, and round-trips.
func FuzzParsePID(f *testing.F) {
	for _, s := range []string{"1\n", "4194304\n", "", "0", "-1", "12 \n", "1\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pid, err := supervise.ParsePID(b)
		if err != nil {
			if !errors.Is(err, supervise.ErrBadPIDFile) {
				t.Fatalf("error %v is not ErrBadPIDFile", err)
			}
			return
		}
		if pid < 1 || pid > 1<<22 {
			t.Fatalf("pid %d out of range", pid)
		}
		if s := strconv.Itoa(pid); string(b) != s && string(b) != s+"\n" {
			t.Fatalf("accepted %q as %d", b, pid)
		}
	})
}
