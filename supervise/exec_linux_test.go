//go:build linux

package supervise_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// execWorkerScript is a worker that announces itself on stdout and says
// BYE there when it gets SIGTERM: the new image must still read its pipe.
const execWorkerScript = `echo READY; trap 'echo BYE; exit 7' TERM; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done`

// execerRole runs a Supervisor of two shell workers, then tries Exec with
// a missing binary (nothing may change), then Execs itself for real. The
// new image (EXEC_WORKERS set) checks that the workers are still its
// children, reads the kept descriptor and the workers' output pipes,
// stops the workers and reaps them. Everything is printed on stdout, one
// fact a line, for TestExecKeepsWorkers.
func execerRole() int {
	if ws := os.Getenv("EXEC_WORKERS"); ws != "" {
		return execerAfter(ws)
	}
	// Start again with a soft RLIMIT_NOFILE below the hard one, so the
	// runtime raises it and syscall.Exec lowers it, as for most masters.
	if os.Getenv("EXEC_LOW") == "" {
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Max < 512 {
			fmt.Println("ERROR rlimit", lim.Max, err)
			return 1
		}
		lim.Cur = 256
		self, _ := os.Executable()
		err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		if err == nil {
			err = unix.Exec(self, os.Args, append(os.Environ(), "EXEC_LOW=1"))
		}
		fmt.Println("ERROR re-exec", err)
		return 1
	}
	sup, err := supervise.New(supervise.Spec{Path: "/bin/sh", Args: []string{"-c", execWorkerScript}},
		&supervise.Options{Workers: 2, ReadyOnStart: true, CaptureOutput: true, StopTimeout: time.Second})
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		for range sup.Events() {
		}
	}()
	ready := make(chan struct{})
	go func() {
		n := 0
		for l := range sup.Lines() {
			if l.Text == "READY" {
				if n++; n == 2 {
					close(ready)
				}
			}
		}
	}()
	go func() {
		select {
		case <-ready:
		case <-ctx.Done():
			fmt.Println("ERROR workers not ready")
			return
		}
		r, w, err := os.Pipe()
		if err != nil {
			fmt.Println("ERROR", err)
			cancel()
			return
		}
		w.WriteString("kept")
		w.Close()
		var pids []int
		for _, sl := range sup.Status().Slots {
			pids = append(pids, sl.PID)
		}
		fmt.Println("PIDS", pids[0], pids[1])
		self, _ := os.Executable()
		var before, after unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_NOFILE, &before)
		err = sup.Exec(&supervise.ExecSpec{Path: self + ".missing", Argv: []string{self}, Files: []*os.File{r}})
		flags, _ := unix.FcntlInt(uintptr(rawFD(r)), unix.F_GETFD, 0)
		unix.Getrlimit(unix.RLIMIT_NOFILE, &after)
		fmt.Println("FAILED", errors.Is(err, fs.ErrNotExist), flags&unix.FD_CLOEXEC != 0, sup.Status().ReadyWorkers, before == after)
		// Both at once are refused.
		err = sup.Exec(&supervise.ExecSpec{Path: self, Argv: []string{self}, Env: func([]supervise.ExecWorker) ([]string, error) { return nil, nil },
			Prepare: func([]supervise.ExecWorker) ([]string, []*os.File, error) { return nil, nil, nil }})
		fmt.Println("BOTH", errors.Is(err, supervise.ErrInvalid))
		err = sup.Exec(&supervise.ExecSpec{Path: self, Argv: []string{self, "-test.run=^$"}, Files: []*os.File{r},
			Prepare: func(ws []supervise.ExecWorker) ([]string, []*os.File, error) {
				var b strings.Builder
				for _, w := range ws {
					fmt.Fprintf(&b, "%d:%d:%d,", w.PID, w.Stdout, w.Stderr)
				}
				// A file made on the spawner thread, kept like Files.
				pr, pw, err := os.Pipe()
				if err != nil {
					return nil, nil, err
				}
				pw.WriteString("prepared")
				pw.Close()
				return append(os.Environ(), "EXEC_WORKERS="+b.String(), "EXEC_KEPT="+strconv.Itoa(rawFD(r)), "EXEC_PREPARED="+strconv.Itoa(rawFD(pr))),
					[]*os.File{pr}, nil
			}})
		fmt.Println("ERROR exec:", err)
		cancel()
	}()
	if err := sup.Run(ctx); err != nil {
		fmt.Println("ERROR", err)
	}
	return 1
}

func rawFD(f *os.File) int {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	rc.Control(func(x uintptr) { fd = int(x) })
	return fd
}

func execerAfter(ws string) int {
	fmt.Println("NEW IMAGE", os.Getpid())
	// The new image started with the soft limit the first one started
	// with, even after a failed exec, so its children get it.
	nofile, err := exec.Command("/bin/sh", "-c", "ulimit -Sn").Output()
	fmt.Println("CHILD NOFILE", strings.TrimSpace(string(nofile)), err)
	kept, _ := strconv.Atoi(os.Getenv("EXEC_KEPT"))
	b := make([]byte, 16)
	n, _ := unix.Read(kept, b)
	fmt.Println("KEPT", string(b[:max(n, 0)]))
	prepared, _ := strconv.Atoi(os.Getenv("EXEC_PREPARED"))
	n, _ = unix.Read(prepared, b)
	fmt.Println("PREPARED", string(b[:max(n, 0)]))
	for _, w := range strings.Split(strings.TrimSuffix(ws, ","), ",") {
		f := strings.Split(w, ":")
		pid, _ := strconv.Atoi(f[0])
		out, _ := strconv.Atoi(f[1])
		p, ok := proccensus.Stat(pid)
		fmt.Println("CHILD", ok && p.PPID == os.Getpid() && p.State != 'Z', out >= 3)
		proc, err := os.FindProcess(pid) // pidfd-backed: Wait works for our child
		if err != nil {
			fmt.Println("ERROR", err)
			continue
		}
		proc.Signal(syscall.SIGTERM)
		if out >= 3 {
			sc := bufio.NewScanner(io.LimitReader(os.NewFile(uintptr(out), "out"), 4096))
			for sc.Scan() {
				fmt.Println("OUTPUT", sc.Text())
			}
		}
		st, err := proc.Wait()
		if err != nil {
			fmt.Println("ERROR", err)
			continue
		}
		fmt.Println("EXIT", st.ExitCode())
	}
	return 0
}

// TestExecKeepsWorkers: Exec from the spawner thread keeps the workers
// alive as children of the same pid, with their captured output readable
// by the new image and the files asked for kept, those Prepare made on
// the spawner thread too; a failed Exec (missing
// binary) changes nothing: the kept file is close-on-exec again, the
// workers are still ready and the soft RLIMIT_NOFILE that syscall.Exec
// lowered is raised again. (An execve from any other thread would SIGKILL
// every worker through Pdeathsig.)
func TestExecKeepsWorkers(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	cmd := helperproc.Command(t, "execer", &helperproc.Options{Env: []string{pc.Env()}})
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.Output(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("execer did not finish within 30 s:\n%s", out)
	}
	if err != nil {
		t.Fatalf("execer: %v\n%s", err, out)
	}
	var got []string
	pid := ""
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch {
		case strings.HasPrefix(l, "PIDS "):
			got = append(got, "PIDS")
		case strings.HasPrefix(l, "NEW IMAGE "):
			pid = strings.TrimPrefix(l, "NEW IMAGE ")
			got = append(got, "NEW IMAGE")
		default:
			got = append(got, l)
		}
	}
	want := []string{
		"PIDS",
		"FAILED true true 2 true",
		"BOTH true",
		"NEW IMAGE",
		"CHILD NOFILE 256 <nil>",
		"KEPT kept",
		"PREPARED prepared",
		"CHILD true true", "OUTPUT BYE", "EXIT 7",
		"CHILD true true", "OUTPUT BYE", "EXIT 7",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("execer (-want +got):\n%s\n%s", diff, out)
	}
	if pid != strconv.Itoa(cmd.Process.Pid) {
		t.Errorf("new image pid %s, want the same pid %d", pid, cmd.Process.Pid)
	}
}

// TestAdoptPIDFile: AdoptPIDFile takes over a pid file only through its
// very lock file, refuses one whose lock another open file description
// holds or that is not the lock file at all, and, when the lock it takes
// was free (the descriptor is not the one that held it), never lets a
// pid the file names from before be read as live (TESTPLAN D2, D3).
func TestAdoptPIDFile(t *testing.T) {
	fdcensus.Verify(t)
	dup := func(t *testing.T, f *os.File) *os.File {
		t.Helper()
		fd, err := unix.FcntlInt(uintptr(rawFD(f)), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(fd), f.Name())
	}
	open := func(t *testing.T, path string) *os.File {
		t.Helper()
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	type result struct {
		Err  string // sentinel the error wraps, or ""
		PID  int    // ReadPIDFile after adopting
		Live bool
	}
	for _, tc := range []struct {
		name string
		// setup returns the descriptor to adopt and what holds the
		// original lock, if anything.
		setup func(t *testing.T, path string) (*os.File, *supervise.PIDFile)
		want  result
	}{
		{"inherited lock", func(t *testing.T, path string) (*os.File, *supervise.PIDFile) {
			pf, err := supervise.CreatePIDFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := pf.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			lock, err := pf.LockFile()
			if err != nil {
				t.Fatal(err)
			}
			return dup(t, lock), pf
		}, result{PID: os.Getpid(), Live: true}},
		{"locked by another open", func(t *testing.T, path string) (*os.File, *supervise.PIDFile) {
			pf, err := supervise.CreatePIDFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := pf.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			return open(t, path+".lock"), pf
		}, result{Err: "locked", PID: os.Getpid(), Live: true}},
		{"stale file of a dead owner", func(t *testing.T, path string) (*os.File, *supervise.PIDFile) {
			// pid 1 is alive, and not ours: it must not be reported live.
			if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			return open(t, path+".lock"), nil
		}, result{}},
		{"not the lock file", func(t *testing.T, path string) (*os.File, *supervise.PIDFile) {
			pf, err := supervise.CreatePIDFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := pf.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			return open(t, path+".other"), pf
		}, result{Err: "unsafe", PID: os.Getpid(), Live: true}},
		{"lock path is a symlink", func(t *testing.T, path string) (*os.File, *supervise.PIDFile) {
			f := open(t, path+".real")
			if err := os.Symlink(path+".real", path+".lock"); err != nil {
				t.Fatal(err)
			}
			return f, nil
		}, result{Err: "unsafe"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := pidPath(t)
			lock, orig := tc.setup(t, path)
			pf, err := supervise.AdoptPIDFile(path, lock)
			var got result
			switch {
			case err == nil:
			case errors.Is(err, supervise.ErrPIDFileLocked):
				got.Err = "locked"
			case errors.Is(err, supervise.ErrUnsafePIDFile):
				got.Err = "unsafe"
			default:
				got.Err = err.Error()
			}
			if err != nil {
				lock.Close() // left to the caller on error
			}
			got.PID, got.Live, _ = supervise.ReadPIDFile(path)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if pf != nil {
				if err := pf.Close(); err != nil {
					t.Error(err)
				}
			}
			if orig != nil {
				orig.Close()
			}
		})
	}
	t.Run("bad arguments", func(t *testing.T) {
		if _, err := supervise.AdoptPIDFile(pidPath(t), nil); !errors.Is(err, supervise.ErrInvalid) {
			t.Errorf("nil lock: %v, want ErrInvalid", err)
		}
		pf, err := supervise.CreatePIDFile(pidPath(t))
		if err != nil {
			t.Fatal(err)
		}
		pf.Close()
		if _, err := pf.LockFile(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("LockFile after Close: %v, want os.ErrClosed", err)
		}
	})
}

// TestExecOutputOutlivesReader: the output descriptors Exec hands to the
// new image stay open when the worker exits right before execve and its
// reader closes the pipe's read end (they are duplicates), and a failed
// Exec closes them again.
func TestExecOutputOutlivesReader(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	sup, err := supervise.New(supervise.Spec{Path: "/bin/sh", Args: []string{"-c", "echo READY; exec sleep 30"}, Env: append(os.Environ(), pc.Env())},
		&supervise.Options{Workers: 1, ReadyOnStart: true, CaptureOutput: true, StopTimeout: time.Second, Restart: supervise.RestartNever})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		for range sup.Events() {
		}
	}()
	ready := make(chan struct{})
	go func() {
		once := false
		for l := range sup.Lines() {
			if l.Text == "READY" && !once {
				once = true
				close(ready)
			}
		}
	}()
	runDone := make(chan error, 1)
	go func() { runDone <- sup.Run(ctx) }()
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatal("worker not ready")
	}
	errAbort := errors.New("abort")
	var facts []string
	err = sup.Exec(&supervise.ExecSpec{Path: "/bin/true", Argv: []string{"true"}, Env: func(ws []supervise.ExecWorker) ([]string, error) {
		if len(ws) != 1 || ws[0].Stdout < 0 {
			facts = append(facts, fmt.Sprintf("workers %+v", ws))
			return nil, errAbort
		}
		link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(ws[0].Stdout))
		holders := pipeHolders(link)
		unix.Kill(ws[0].PID, unix.SIGKILL)
		// Wait until the reader closed its own read end.
		for deadline := time.Now().Add(5 * time.Second); pipeHolders(link) >= holders; {
			if time.Now().After(deadline) {
				facts = append(facts, "reader never closed its end")
				return nil, errAbort
			}
			time.Sleep(10 * time.Millisecond)
		}
		got, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(ws[0].Stdout))
		facts = append(facts, fmt.Sprintf("open %v same %v", err == nil, got == link && link != ""))
		return nil, errAbort
	}})
	if !errors.Is(err, errAbort) {
		t.Errorf("Exec = %v, want the Env error", err)
	}
	if diff := cmp.Diff([]string{"open true same true"}, facts); diff != "" {
		t.Errorf("output descriptor at execve (-want +got):\n%s", diff)
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Error(err)
	}
}

// pipeHolders counts this process's descriptors naming link ("pipe:[N]").
func pipeHolders(link string) int {
	ents, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range ents {
		if t, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && t == link {
			n++
		}
	}
	return n
}

// TestExecReapsPostedExit: a worker whose exit was posted but whose
// watcher has not reaped it yet is no worker for a new image: Exec reaps it
// right before execve instead of listing it (the new image would take the
// zombie for a live worker of an unknown slot), and its watcher then leaves
// the reap done. The execve fails with ENOEXEC, which Exec cannot tell
// beforehand.
func TestExecReapsPostedExit(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	garbage := filepath.Join(t.TempDir(), "garbage")
	if err := os.WriteFile(garbage, []byte("\x00\x01 no known format\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	held := make(chan int, 1)
	reaped := make(chan error, 1)
	supervise.SetHookBeforeReap(func(pid int) {
		held <- pid
		<-hold
	})
	supervise.SetHookAfterReap(func(pid int, err error) { reaped <- err })
	t.Cleanup(func() {
		supervise.SetHookBeforeReap(nil)
		supervise.SetHookAfterReap(nil)
	})
	spec := workerSpec(t, c, "EXIT_AFTER_READY=1", "EXIT_CODE=0")
	sup, err := supervise.New(spec, testOptions(supervise.Options{Restart: supervise.RestartNever, ReadyOnStart: true}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- sup.Run(ctx) }()
	go func() {
		for range sup.Lines() {
		}
	}()
	go func() {
		for range sup.Events() {
		}
	}()
	released := false
	release := func() {
		if !released {
			released = true
			close(hold)
		}
	}
	defer release()
	var pid int
	select {
	case pid = <-held: // exit posted, not reaped
	case <-ctx.Done():
		t.Fatal("worker exit not seen")
	}
	var listed []int
	err = sup.Exec(&supervise.ExecSpec{Path: garbage, Argv: []string{"garbage"}, Env: func(ws []supervise.ExecWorker) ([]string, error) {
		for _, w := range ws {
			listed = append(listed, w.PID)
		}
		return os.Environ(), nil
	}})
	if !errors.Is(err, unix.ENOEXEC) {
		t.Errorf("Exec = %v, want ENOEXEC", err)
	}
	if len(listed) != 0 {
		t.Errorf("Exec listed %v as workers; %d had exited", listed, pid)
	}
	if p, ok := proccensus.Stat(pid); ok {
		t.Errorf("exited worker %d not reaped by Exec: %+v", pid, p)
	}
	release()
	select {
	case err := <-reaped:
		if err != nil {
			t.Errorf("watcher after Exec reaped the worker: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("watcher did not finish")
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Error(err)
	}
}

// TestExecWaitsForLaunchDone: a worker forked right before an Exec is
// handed over only once its Launch.Done returned, so the state Env builds
// from what Done records (the parent's end of a per-worker socket, say)
// names it. Done is held while the Exec is requested.
func TestExecWaitsForLaunchDone(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	forked := make(chan struct{})
	var recorded atomic.Bool
	sup, err := supervise.New(supervise.Spec{Path: "/bin/sh", Args: []string{"-c", "exec sleep 30"}, Env: append(os.Environ(), pc.Env()),
		Prepare: func(supervise.ID) (supervise.Launch, error) {
			return supervise.Launch{Done: func(pid int, err error) {
				if err != nil {
					return
				}
				close(forked)
				time.Sleep(300 * time.Millisecond)
				recorded.Store(true)
			}}, nil
		}},
		&supervise.Options{Workers: 1, ReadyOnStart: true, StopTimeout: time.Second, Restart: supervise.RestartNever})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		for range sup.Events() {
		}
	}()
	go func() {
		for range sup.Lines() {
		}
	}()
	runDone := make(chan error, 1)
	go func() { runDone <- sup.Run(ctx) }()
	select {
	case <-forked:
	case <-ctx.Done():
		t.Fatal("no worker forked")
	}
	errAbort := errors.New("abort")
	var got []string
	err = sup.Exec(&supervise.ExecSpec{Path: "/bin/true", Argv: []string{"true"}, Env: func(ws []supervise.ExecWorker) ([]string, error) {
		got = append(got, fmt.Sprintf("workers %d recorded %v", len(ws), recorded.Load()))
		return nil, errAbort
	}})
	if !errors.Is(err, errAbort) {
		t.Errorf("Exec = %v, want the Env error", err)
	}
	if diff := cmp.Diff([]string{"workers 1 recorded true"}, got); diff != "" {
		t.Errorf("Env saw (-want +got):\n%s", diff)
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Error(err)
	}
}

// TestExecFailureKeepsGrace: an Exec that fails for a reason known before
// execve (missing, not executable, a directory, a script whose interpreter
// is missing or not executable), or that Env cancels, changes nothing, as
// documented: the group of a stopped worker that is being given the rest
// of its grace keeps it (here a wrapped drainer finishes its drain), where
// Exec used to SIGKILL such groups before anything else.
func TestExecFailureKeepsGrace(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := write("plain", "#!/bin/sh\n", 0o644)
	targets := []struct {
		path string
		want unix.Errno
	}{
		{filepath.Join(dir, "missing"), unix.ENOENT},
		{plain, unix.EACCES},
		{dir, unix.EACCES},
		{write("no-interp", "#!"+filepath.Join(dir, "missing")+" -x\necho\n", 0o755), unix.ENOENT},
		{write("plain-interp", "#! "+plain+"\n", 0o755), unix.EACCES},
	}
	r := start(t, drainerSpec(t, c, 2*time.Second), testOptions(supervise.Options{ReadyOnStart: true, StopTimeout: time.Minute}))
	r.waitLine("UP", 10*time.Second)
	// The wrapper dies of the SIGTERM at once; the drainer drains 2 s.
	if err := r.sup.Scale(0); err != nil {
		t.Fatal(err)
	}
	if ex := r.waitKind(supervise.Exited, 10*time.Second); !ex.Requested {
		t.Fatalf("Exited not Requested: %+v", ex)
	}
	for _, tc := range targets {
		err := r.sup.Exec(&supervise.ExecSpec{Path: tc.path, Argv: []string{"x"}})
		var pe *os.PathError
		if !errors.Is(err, tc.want) || !errors.As(err, &pe) || pe.Op != "execve" || pe.Path != tc.path {
			t.Errorf("Exec(%s) = %v, want an execve *os.PathError of %v", tc.path, err, tc.want)
		}
	}
	// Nor does an exec that Env gives up (the execve would fail too).
	errAbort := errors.New("abort")
	garbage := write("garbage", "\x00\x01 no known format\n", 0o755)
	abort := func([]supervise.ExecWorker) ([]string, error) { return nil, errAbort }
	if err := r.sup.Exec(&supervise.ExecSpec{Path: garbage, Argv: []string{"x"}, Env: abort}); !errors.Is(err, errAbort) {
		t.Errorf("Exec = %v, want the Env error", err)
	}
	r.waitLine("DRAINED", 15*time.Second)
	if err := c.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}
