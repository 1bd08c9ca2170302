//go:build linux

package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	// The master re-executes this binary as its exec shim.
	if len(os.Args) > 1 && os.Args[1] == cluster.ShimArg {
		if os.Getenv("TEST_SHIM_OFF_MAIN") == "1" {
			// As a Go shim may: execve from a thread fork did not
			// set the parent-death signal on.
			os.Exit(runShimOffMainThread(os.Args[2:]))
		}
		err := cluster.RunShim(os.Args[2:])
		fmt.Fprintln(os.Stderr, err)
		os.Exit(cluster.ShimExitCode(err))
	}
	// Remote groups run this binary over ssh as their agent.
	if len(os.Args) > 1 && os.Args[1] == cluster.AgentArg {
		os.Exit(runTestAgent())
	}
	helperproc.Main(m, map[string]func() int{
		"shim-off-main-thread": shimOffMainThread,
		"report-pdeathsig":     reportPdeathsig,
		"embedded-master":      embeddedMaster,
		"restart-after-delete": restartAfterDelete,
		"control-intruder":     controlIntruder,
		"control-adopt":        controlAdopt,
		"go-worker":            goWorker,
		"raw-worker":           rawWorker,
		"ho-worker":            hoWorker,
		"ho-notify-worker":     hoNotifyWorker,
		"ho-hold-worker":       hoHoldWorker,
		"ho-short-worker":      hoShortWorker,
		"group-worker":         groupWorker,
		"agent-worker":         agentWorker,
		"fake-agent":           fakeAgent,
		"a19-worker":           a19Worker,
		"port-policy":          portPolicy,
	})
}

// runMaster runs m in the background for at most limit. The returned stop
// stops it gracefully, waits for Run and fails the test on an error of
// either; it runs once, at the latest at cleanup.
func runMaster(t testing.TB, m *cluster.Master, limit time.Duration) (stop func()) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			defer cancel()
			if err := m.Stop(); err != nil {
				t.Errorf("Stop: %v", err)
			}
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestMasterArmsShimParentDeath: the master names itself to the exec shim,
// so a shim that executes the worker from another thread than the one fork
// armed still gives the worker SIGKILL on the master's death (TESTPLAN C8;
// without it a worker outlived a SIGKILLed master under load).
func TestMasterArmsShimParentDeath(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	m, err := cluster.New(&cluster.Config{
		Program: exe,
		Args:    []string{"-test.run=^$"},
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Shim:    exe,
		Env:     append(os.Environ(), pc.Env(), "TEST_SHIM_OFF_MAIN=1", helperproc.RoleVar+"=report-pdeathsig"),
		Stdout:  &out,
		Stderr:  &out,
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := runMaster(t, m, 30*time.Second)
	want := fmt.Sprintf("pdeathsig=%d ppid=%d", unix.SIGKILL, os.Getpid())
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "pdeathsig=") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if !strings.Contains(out.String(), want) {
		t.Errorf("worker output %q lacks %q", out.String(), want)
	}
}

// shimOffMainThread runs RunShim on a goroutine locked to a thread other
// than the main one, where Pdeathsig is not armed: the shim must re-arm it.
func shimOffMainThread() int {
	os.Setenv(helperproc.RoleVar, "report-pdeathsig")
	return runShimOffMainThread(helperproc.Args())
}

func runShimOffMainThread(args []string) int {
	errc := make(chan error, 1)
	for range 64 {
		onOther := make(chan bool)
		go func() {
			runtime.LockOSThread()
			if unix.Gettid() == unix.Getpid() {
				onOther <- false
				select {} // keep the main thread taken so the next try gets another
			}
			onOther <- true
			errc <- cluster.RunShim(args)
		}()
		if <-onOther {
			fmt.Fprintln(os.Stderr, <-errc)
			return 127
		}
	}
	fmt.Fprintln(os.Stderr, "no goroutine off the main thread")
	return 2
}

// reportPdeathsig prints the parent-death signal and parent of the program
// the shim executed.
func reportPdeathsig() int {
	var sig int32
	if err := unix.Prctl(unix.PR_GET_PDEATHSIG, uintptr(unsafe.Pointer(&sig)), 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("pdeathsig=%d ppid=%d\n", sig, unix.Getppid())
	return 0
}

// TestShimRearmsPdeathsig: a shim whose execve runs on a thread the
// supervisor did not fork from still leaves the program with
// Pdeathsig=SIGKILL, and a shim whose master is gone never runs the program.
func TestShimRearmsPdeathsig(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	self := os.Getpid()
	for _, tc := range []struct {
		name    string
		master  int
		want    string
		wantErr bool
	}{
		{"master alive", self, fmt.Sprintf("pdeathsig=%d ppid=%d\n", unix.SIGKILL, self), false},
		{"master gone", 1, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := helperproc.Command(t, "shim-off-main-thread", &helperproc.Options{
				Env:  []string{pc.Env()},
				Args: []string{cluster.ShimParentArg + strconv.Itoa(tc.master), bin, bin, "-test.run=^$"},
			})
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			runtime.LockOSThread()
			err := cmd.Run()
			runtime.UnlockOSThread()
			if (err != nil) != tc.wantErr {
				t.Fatalf("shim: %v, want error %v; stderr:\n%s", err, tc.wantErr, stderr.String())
			}
			if diff := cmp.Diff(tc.want, stdout.String()); diff != "" {
				t.Errorf("program output (-want +got):\n%s", diff)
			}
			if tc.wantErr && !strings.Contains(stderr.String(), "master gone") {
				t.Errorf("stderr %q does not say the master is gone", stderr.String())
			}
		})
	}
}

// TestMasterLifecycle runs a cluster in process: port 0 resolved once,
// Ready after every worker started, scaling, a clean stop that closes every
// listener.
func TestMasterLifecycle(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m, err := cluster.New(&cluster.Config{
		Program: "sh",
		Args:    []string{"-c", `test "$LISTEN_PID" = "$$" && test "$LISTEN_FDS" = 2 && exec sleep 60`},
		Workers: 2,
		Listen:  []string{"127.0.0.1:0", "udp://127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Env:     append(os.Environ(), pc.Env()),
	})
	if err != nil {
		t.Fatal(err)
	}
	addrs := m.Addrs()
	if len(addrs) != 2 || addrs[0].(*net.TCPAddr).Port == 0 || addrs[1].(*net.UDPAddr).Port == 0 {
		t.Fatalf("Addrs() = %v, want two resolved ports", addrs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("cluster not ready")
	}
	if err := m.ScaleBy(1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for m.Status().ReadyWorkers != 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// The sh workers exit at once if LISTEN_PID or LISTEN_FDS is wrong, and
	// then would not be counted ready for long.
	time.Sleep(200 * time.Millisecond)
	st := m.Status()
	if diff := cmp.Diff([2]int{3, 3}, [2]int{st.Workers, st.ReadyWorkers}); diff != "" {
		t.Errorf("workers, ready (-want +got):\n%s", diff)
	}
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The port is free again: the master closed its listener.
	ln, err := net.Listen("tcp", addrs[0].String())
	if err != nil {
		t.Fatalf("port still held after Run returned: %v", err)
	}
	ln.Close()
}

// TestWorkerEnvStripsMasterOwn: variables that describe the master's own
// descriptors or activation (a master nested in another cluster, or
// re-executed in place) never reach its workers; the master sets its own.
func TestWorkerEnvStripsMasterOwn(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	out := t.TempDir()
	// HANDOFF_CONN_VERSION is handoff mode's (this one is shared), and
	// HANDOFF_EXEC_STATUS_FD the exec shim's.
	stale := []string{"HANDOFF_CONN_FD=9", "HANDOFF_CONN_VERSION=9", "HANDOFF_EXEC_STATUS_FD=6", "HANDOFF_CONTROL_FD=8", "HANDOFF_MODE=handoff", "HANDOFF_CONTROL_LISTEN=7:1:2",
		"HANDOFF_UPGRADE_STATE=x", "HANDOFF_WORKER_ID=5", "HANDOFF_WORKERS=9", "WATCHDOG_USEC=5", "LISTEN_FDNAMES=a:b"}
	m, err := cluster.New(&cluster.Config{
		Program: "sh",
		Args:    []string{"-c", `env > "$OUT/$$.tmp" && mv "$OUT/$$.tmp" "$OUT/$$.env" && exec sleep 60`},
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Env:     append(append(os.Environ(), pc.Env(), "OUT="+out), stale...),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := runMaster(t, m, 30*time.Second)
	var env []string
	deadline := time.Now().Add(10 * time.Second)
	for env == nil && time.Now().Before(deadline) {
		if files, _ := filepath.Glob(filepath.Join(out, "*.env")); len(files) > 0 {
			b, err := os.ReadFile(files[0])
			if err != nil {
				t.Fatal(err)
			}
			env = strings.Split(string(b), "\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if env == nil {
		t.Fatal("the worker wrote no environment")
	}
	got := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && (strings.HasPrefix(k, "HANDOFF_") || strings.HasPrefix(k, "WATCHDOG_") || strings.HasPrefix(k, "LISTEN_FD")) {
			got[k] = v
		}
	}
	delete(got, "HANDOFF_CONTROL_FD") // the master's own channel for this worker
	want := map[string]string{"HANDOFF_MODE": "shared", "HANDOFF_WORKER_ID": "0", "HANDOFF_WORKER_GENERATION": "1",
		"HANDOFF_WORKERS": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": got["LISTEN_FDNAMES"]}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("worker environment (-want +got):\n%s", diff)
	}
	if got["LISTEN_FDNAMES"] == "a:b" {
		t.Errorf("LISTEN_FDNAMES is the stale one")
	}
}

// TestNewFailsCleanly: a bind failure in the second address releases the
// first, and Close releases everything when Run is never called.
func TestNewFailsCleanly(t *testing.T) {
	fdcensus.Verify(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name string
		cfg  cluster.Config
		want error
	}{
		{"port in use", cluster.Config{Program: "sh", Listen: []string{"127.0.0.1:0", busy.Addr().String()}}, cluster.ErrListen},
		{"bad address", cluster.Config{Program: "sh", Listen: []string{"tcp://nohost"}}, cluster.ErrListen},
		{"no program", cluster.Config{Program: "/nonexistent/x", Listen: []string{"127.0.0.1:0"}}, os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cluster.New(&tc.cfg)
			if !errors.Is(err, tc.want) {
				t.Errorf("New: %v, want %v", err, tc.want)
			}
		})
	}
	m, err := cluster.New(&cluster.Config{Program: "sh", Listen: []string{"127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// lineWaiter collects output and reports when a line containing want was
// written.
type lineWaiter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

// embeddedMaster runs one worker that lists the targets of its descriptors,
// prints them on stdout, and stops.
func embeddedMaster() int {
	out := &lineWaiter{want: "END", seen: make(chan struct{})}
	m, err := cluster.New(&cluster.Config{
		Program: "sh",
		Args:    []string{"-c", `for f in /proc/$$/fd/*; do echo "fd ${f##*/} $(readlink $f)"; done; echo END; exec sleep 60`},
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Stdout:  out,
		Stderr:  os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-out.seen:
	case <-time.After(10 * time.Second):
		fmt.Fprintln(os.Stderr, "worker printed nothing")
	}
	m.Stop()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	os.Stdout.Write(out.buf.Bytes())
	return 0
}

// TestInheritedFDsDoNotReachWorkers: a descriptor the master inherited
// without close-on-exec (beyond the activation ones) is not passed on to
// workers; the listener is.
func TestInheritedFDsDoNotReachWorkers(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	marker, err := os.Create(filepath.Join(t.TempDir(), "inherited-marker"))
	if err != nil {
		t.Fatal(err)
	}
	defer marker.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	// fd 3 would be overwritten by the worker's listener anyway; the marker
	// is fd 4 in the master.
	cmd := helperproc.Command(t, "embedded-master", &helperproc.Options{
		Env:        []string{pc.Env()},
		ExtraFiles: []*os.File{devnull, marker},
	})
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Run(); err != nil {
		t.Fatalf("master: %v", err)
	}
	got := stdout.String()
	if !strings.Contains(got, "END") || !strings.Contains(got, "fd 3 socket:") {
		t.Fatalf("worker output lacks its listener at fd 3:\n%s", got)
	}
	if strings.Contains(got, "inherited-marker") {
		t.Errorf("the master's inherited descriptor reached the worker:\n%s", got)
	}
}

// TestNotifySocketPrivate: workers' NOTIFY_SOCKET is a 0600 socket in a
// 0700 directory, removed when Run returns; a READY=1 whose sender
// credentials name another user is ignored, the worker's own counts.
func TestNotifySocketPrivate(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to send credentials of another user")
	}
	fdcensus.Verify(t)
	m, f, stop := startShellMaster(t, 1, `echo "ns $(stat -c %a "${NOTIFY_SOCKET%/*}") $(stat -c %a "$NOTIFY_SOCKET") $NOTIFY_SOCKET END"; exec sleep 60`)
	if len(f) < 3 {
		t.Fatalf("worker output %q", f)
	}
	if diff := cmp.Diff([]string{"700", "600"}, f[:2]); diff != "" {
		t.Errorf("notify directory and socket modes (-want +got):\n%s", diff)
	}
	path := f[2]
	pid := slotZeroPID(t, m, 1)
	sendReadyAs(t, path, pid, 65534)
	select {
	case <-m.Ready():
		t.Fatal("READY=1 from another user's credentials counted")
	case <-time.After(300 * time.Millisecond):
	}
	sendReadyAs(t, path, pid, 0)
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("READY=1 with the worker's credentials not counted")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("notify directory left behind: %v", err)
	}
}

// restartAfterDelete deletes its own binary, then restarts the cluster:
// the new generation is spawned through the shim all the same.
func restartAfterDelete() int {
	m, err := cluster.New(&cluster.Config{
		Program: "sleep",
		Args:    []string{"60"},
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Stdout:  os.Stderr,
		Stderr:  os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { m.Stop(); <-done }()
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		fmt.Fprintln(os.Stderr, "cluster not ready")
		return 1
	}
	self, err := os.Executable()
	if err == nil {
		err = os.Remove(self)
	}
	if err == nil {
		err = m.Restart()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if st := m.Status(); st.Generation == 2 && !st.Restarting {
			fmt.Println("generation 2")
			return 0
		}
	}
	fmt.Fprintln(os.Stderr, "restart did not complete")
	return 1
}

// TestShimSurvivesBinaryDeletion: the master spawns its shim through
// /proc/self/exe, so deleting (or replacing) its binary on disk does not
// break respawns.
func TestShimSurvivesBinaryDeletion(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "m.test")
	if err := os.WriteFile(cp, b, 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cp, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperproc.RoleVar+"=restart-after-delete", pc.Env(), "GORACE=atexit_sleep_ms=0")
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("master: %v", err)
	}
	if diff := cmp.Diff("generation 2\n", stdout.String()); diff != "" {
		t.Errorf("master output (-want +got):\n%s", diff)
	}
}

// socketInode finds the socket bound at path in /proc/net/unix.
func socketInode(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 8 && f[7] == path {
			return f[6]
		}
	}
	t.Fatalf("no socket bound at %s", path)
	return ""
}

// TestUnixListenerNotPolled: the master keeps one descriptor of a unix
// listener (the copy workers get), not a Go listener registered with the
// runtime poller that would wake it for every connection; the path stays
// while the master holds it and is removed by Close.
func TestUnixListenerNotPolled(t *testing.T) {
	fdcensus.Verify(t)
	path := filepath.Join(t.TempDir(), "s")
	m, err := cluster.New(&cluster.Config{Program: "sh", Listen: []string{"unix://" + path}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	target := "socket:[" + socketInode(t, path) + "]"
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var holders int
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == target {
			holders++
		}
	}
	if holders != 1 {
		t.Errorf("%d descriptors hold the unix listener, want 1 (the workers' copy)", holders)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Close: %v, want removed", err)
	}
}

// TestStopBeforeRun: a stop requested between New and Run (a TERM that
// arrived early) makes Run return without starting any worker.
func TestStopBeforeRun(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	marker := filepath.Join(t.TempDir(), "started")
	m, err := cluster.New(&cluster.Config{
		Program: "sh",
		Args:    []string{"-c", `: > "$0"; exec sleep 60`, marker},
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Env:     append(os.Environ(), pc.Env()),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a worker was started after Stop: %v", err)
	}
	if st := m.Status(); st.Processes != 0 || st.Running {
		t.Errorf("status after Run: %+v, want nothing running", st)
	}
}

// TestReadyAfterScaleDown: the cluster becomes ready when scaling down
// leaves only ready workers, not only on a worker's READY=1.
func TestReadyAfterScaleDown(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to send READY=1 with a worker's credentials")
	}
	fdcensus.Verify(t)
	m, f, _ := startShellMaster(t, 2, `[ "$HANDOFF_WORKER_ID" = 0 ] && echo "ns $NOTIFY_SOCKET END"; exec sleep 60`)
	sendReadyAs(t, f[0], slotZeroPID(t, m, 2), 0)
	for deadline := time.Now().Add(10 * time.Second); m.Status().ReadyWorkers != 1 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-m.Ready():
		t.Fatal("ready with one of two workers ready")
	default:
	}
	if err := m.ScaleBy(-1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready after scaling down to the ready worker")
	}
}

// startShellMaster runs a master over `sh -c script` with n workers (ready
// by notification) and waits until a worker printed a line with "ns ... END".
// It returns the master, the fields between "ns" and "END", and stop, which
// stops the master and returns Run's error; stop also runs at cleanup.
func startShellMaster(t *testing.T, n int, script string) (*cluster.Master, []string, func() error) {
	t.Helper()
	pc := proccensus.New(t)
	out := &lineWaiter{want: "END", seen: make(chan struct{})}
	m, err := cluster.New(&cluster.Config{
		Program: "sh",
		Args:    []string{"-c", script},
		Workers: n,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyNotify,
		Env:     append(os.Environ(), pc.Env()),
		Stdout:  out,
		Stderr:  out,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			m.Stop()
			runErr = <-done
			cancel()
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-out.seen:
	case <-time.After(10 * time.Second):
		t.Fatal("worker printed nothing")
	}
	out.mu.Lock()
	line := out.buf.String()
	out.mu.Unlock()
	i := strings.Index(line, "ns ")
	if i < 0 {
		t.Fatalf("worker output %q", line)
	}
	f := strings.Fields(line[i+len("ns "):])
	for j, s := range f {
		if s == "END" {
			return m, f[:j], stop
		}
	}
	t.Fatalf("worker output %q", line)
	return nil, nil, nil
}

// slotZeroPID waits until the master runs `slots` workers and returns the
// pid of slot 0.
func slotZeroPID(t *testing.T, m *cluster.Master, slots int) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if sl := m.Status().Slots; len(sl) == slots && sl[0].PID != 0 {
			return sl[0].PID
		}
	}
	t.Fatalf("%d workers not running", slots)
	return 0
}

// sendReadyAs sends READY=1 to the notify socket at path with explicit
// credentials (pid, uid): root may claim any, as a worker's child could not.
func sendReadyAs(t *testing.T, path string, pid, uid int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	oob := unix.UnixCredentials(&unix.Ucred{Pid: int32(pid), Uid: uint32(uid), Gid: uint32(uid)})
	if err := unix.Sendmsg(fd, []byte("READY=1"), oob, &unix.SockaddrUnix{Name: path}, 0); err != nil {
		t.Fatal(err)
	}
}

// TestKillBeforeRunKeepsState: a Kill that fails (before Run) does not mark
// the cluster stopping, so systemd still hears READY=1 after a restart and
// STOPPING=1 at the real stop.
func TestKillBeforeRunKeepsState(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	nsPath := filepath.Join(t.TempDir(), "sd")
	sd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: nsPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	t.Setenv("NOTIFY_SOCKET", nsPath)
	m, err := cluster.New(&cluster.Config{
		Program: "sleep",
		Args:    []string{"60"},
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Env:     append(os.Environ(), pc.Env()),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Kill(); err == nil {
		t.Fatal("Kill before Run succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var got []string
	next := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		sd.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := sd.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		s, _, _ := strings.Cut(string(buf[:n]), "\n")
		got = append(got, s)
		return s
	}
	next() // READY=1 of the first generation
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	next() // RELOADING=1
	next() // READY=1 after the restart
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	next()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if diff := cmp.Diff([]string{"READY=1", "RELOADING=1", "READY=1", "STOPPING=1"}, got); diff != "" {
		t.Errorf("states sent to systemd (-want +got):\n%s", diff)
	}
}
