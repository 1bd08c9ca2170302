package supervise_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{
		"worker":     workerRole,
		"sleeper":    sleeperRole,
		"supervisor": supervisorRole,
		"pidfile":    pidfileRole,
		"pidreuse":   pidReuseRole,
		"disownrace": disownRaceRole,
		"execer":     execerRole,
		"drainer":    drainerRole,
		"hopper":     hopperRole,
		"pidread":    pidReadRole,
		"mainexit":   mainExitRole,
		"rename":     renameRole,
	})
}

func envDuration(name string) time.Duration {
	d, _ := time.ParseDuration(os.Getenv(name))
	return d
}

// workerRole is the fake worker of TESTPLAN §1.0. It prints READY on stdout
// when ready (the tests' readiness protocol) and otherwise sleeps until
// signalled. Knobs: EXIT_CODE (alone: exit before ready), EXIT_AFTER,
// EXIT_AFTER_READY, EXIT_AT (unix ns), HANG_ON_TERM, NEVER_READY,
// READY_DELAY, FORK_GRANDCHILD=stdout|daemon|setsid-stdout, LINES=n,
// LINE_BYTES=n (pad each of the LINES to n bytes).
func workerRole() int {
	if os.Getenv("HANG_ON_TERM") == "1" {
		signal.Ignore(syscall.SIGTERM)
	}
	if mode := os.Getenv("FORK_GRANDCHILD"); mode != "" {
		forkGrandchild(mode)
	}
	code, _ := strconv.Atoi(os.Getenv("EXIT_CODE"))
	if at := os.Getenv("EXIT_AT"); at != "" {
		ns, _ := strconv.ParseInt(at, 10, 64)
		time.Sleep(time.Until(time.Unix(0, ns)))
		return code
	}
	if os.Getenv("EXIT_CODE") != "" && os.Getenv("EXIT_AFTER") == "" && os.Getenv("EXIT_AFTER_READY") == "" {
		return code
	}
	time.Sleep(envDuration("READY_DELAY"))
	if n, _ := strconv.Atoi(os.Getenv("LINES")); n > 0 {
		pad, _ := strconv.Atoi(os.Getenv("LINE_BYTES"))
		for i := range n {
			l := fmt.Sprintf("line %d", i)
			if len(l) < pad {
				l += strings.Repeat("x", pad-len(l))
			}
			os.Stdout.WriteString(l + "\n")
		}
	}
	if os.Getenv("NEVER_READY") != "1" {
		fmt.Println("READY")
	}
	if os.Getenv("EXIT_AFTER_READY") == "1" {
		return code
	}
	if d := envDuration("EXIT_AFTER"); d > 0 {
		time.Sleep(d)
		return code
	}
	time.Sleep(time.Hour)
	return 0
}

func forkGrandchild(mode string) {
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperproc.RoleVar+"=sleeper")
	switch mode {
	case "stdout":
		cmd.Stdout = os.Stdout
	case "daemon":
		cmd.Env = append(cmd.Env, "SLEEP=500ms")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	case "setsid-stdout":
		cmd.Stdout = os.Stdout
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "grandchild:", err)
		os.Exit(99)
	}
	fmt.Printf("GRANDCHILD %d\n", cmd.Process.Pid)
}

func sleeperRole() int {
	d := envDuration("SLEEP")
	if d == 0 {
		d = time.Hour
	}
	time.Sleep(d)
	return 0
}

// supervisorRole runs a Supervisor in a child process, for what cannot be
// tested inside the test process: its death (C8), its inherited signal
// dispositions (C18) and subreaping (C6). It prints "PID slot pid" per
// start and "EXIT slot code signal" per exit, and "ZOMBIES n" at the end.
// Knobs: SUP_WORKERS, SUP_PATH+SUP_ARGS (default: the worker role),
// SUP_SUBREAPER=1, SUP_DURATION (then stop; default: until SIGTERM, at most
// a minute), SUP_STOP_AFTER_EXITS=n (stop 1 s after n exits), SUP_SIGNALS=1
// (HandleSignals), SUP_LINGER=1 (after Run returned, print RETURNED and
// sleep 30 s with the signal handler still installed), SUP_HOLD_REAP=d
// (each watcher waits d between posting its worker's exit and reaping it,
// as a slow reap would), SUP_TWO=1 (two supervisors in this process).
func supervisorRole() int {
	n, _ := strconv.Atoi(os.Getenv("SUP_WORKERS"))
	spec := supervise.Spec{Path: os.Getenv("SUP_PATH"), Args: strings.Fields(os.Getenv("SUP_ARGS"))}
	env := os.Environ()
	if spec.Path == "" {
		spec.Path, _ = os.Executable()
		spec.Args = []string{"-test.run=^$"}
		env = append(env, helperproc.RoleVar+"=worker")
	}
	spec.Env = env
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// SUP_OWN_CHILD=1: a child of our own, not a worker, that exits 7 while
	// the subreaper runs and is waited for here, through OwnChild.
	var own *exec.Cmd
	ownDone := make(chan string, 1)
	if os.Getenv("SUP_OWN_CHILD") == "1" {
		own = exec.Command("/bin/sh", "-c", "sleep 0.3; exit 7")
		if err := own.Start(); err != nil {
			fmt.Println("ERROR", err)
			return 1
		}
		go func() {
			// Wait only once the child has long exited, so the orphan
			// reaper has had every chance to take it.
			time.Sleep(700 * time.Millisecond)
			err := own.Wait()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				ownDone <- strconv.Itoa(ee.ExitCode())
				return
			}
			ownDone <- fmt.Sprint(err)
		}()
	}
	if d := envDuration("SUP_HOLD_REAP"); d > 0 {
		supervise.SetHookBeforeReap(func(int) { time.Sleep(d) })
	}
	// SUP_TWO=1: two supervisors in this process, each with SUP_WORKERS
	// workers, as cluster runs one per group; SUP_STOP_AFTER_EXITS counts
	// the exits of both.
	count := 1
	if os.Getenv("SUP_TWO") == "1" {
		count = 2
	}
	var sups []*supervise.Supervisor
	for range count {
		sup, err := supervise.New(spec, &supervise.Options{
			OwnChild:           func(pid int) bool { return own != nil && pid == own.Process.Pid },
			Workers:            n,
			Restart:            supervise.RestartNever,
			ReadyOnStart:       true,
			Subreaper:          os.Getenv("SUP_SUBREAPER") == "1",
			KeepIgnoredSignals: os.Getenv("SUP_KEEP_IGNORED") == "1",
			StopTimeout:        time.Second,
			Logger:             logger,
		})
		if err != nil {
			fmt.Println("ERROR", err)
			return 1
		}
		sups = append(sups, sup)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		d := envDuration("SUP_DURATION")
		if d == 0 {
			d = time.Minute
		}
		select {
		case <-term:
		case <-time.After(d):
		}
		cancel()
	}()
	if os.Getenv("SUP_SIGNALS") == "1" {
		stop, err := supervise.HandleSignals(sups[0], supervise.Rolling)
		if err != nil {
			fmt.Println("ERROR", err)
			return 1
		}
		defer stop()
	}
	stopAfter, _ := strconv.Atoi(os.Getenv("SUP_STOP_AFTER_EXITS"))
	var exits atomic.Int32
	var out sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, len(sups))
	for _, sup := range sups {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for ev := range sup.Events() {
				if ev.Kind == supervise.Exited {
					if int(exits.Add(1)) == stopAfter {
						// Orphans of the workers outlive them by 500 ms.
						time.AfterFunc(time.Second, cancel)
					}
				}
				out.Lock()
				switch ev.Kind {
				case supervise.Started:
					fmt.Printf("PID %d %d\n", ev.ID.Slot, ev.PID)
				case supervise.Exited:
					fmt.Printf("EXIT %d %d %d\n", ev.ID.Slot, ev.Code, int(ev.Signal))
				}
				out.Unlock()
			}
		}()
		go func() {
			defer wg.Done()
			errs <- sup.Run(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			fmt.Println("ERROR", err)
			return 1
		}
	}
	if os.Getenv("SUP_LINGER") == "1" {
		fmt.Println("RETURNED")
		time.Sleep(30 * time.Second)
	}
	if own != nil {
		fmt.Printf("OWNCHILD %s\n", <-ownDone)
	}
	fmt.Printf("ZOMBIES %d\n", len(proccensus.Zombies(os.Getpid())))
	return 0
}

// run is a Supervisor under test with its events recorded.
type run struct {
	t     *testing.T
	sup   *supervise.Supervisor
	mu    sync.Mutex
	evs   []supervise.Event
	pos   int
	wake  chan struct{}
	lines chan supervise.Line
	done  chan error
}

// noRaceExitSleep stops a -race helper from sleeping a second at exit, which
// would skew the timings the tests configure.
const noRaceExitSleep = "GORACE=atexit_sleep_ms=0"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// workerSpec runs the worker role with the census marker and knobs.
func workerSpec(t *testing.T, c *proccensus.Census, env ...string) supervise.Spec {
	t.Helper()
	cmd := helperproc.Command(t, "worker", &helperproc.Options{Env: append([]string{c.Env(), noRaceExitSleep}, env...)})
	return supervise.Spec{Path: cmd.Path, Args: cmd.Args[1:], Env: cmd.Env}
}

// testOptions are short timings for tests; fields set in o override them.
func testOptions(o supervise.Options) *supervise.Options {
	if o.Backoff == (supervise.Backoff{}) {
		o.Backoff = supervise.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond}
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 3 * time.Second
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 10 * time.Second
	}
	o.CaptureOutput = true
	o.Logger = quiet
	return &o
}

// start runs a Supervisor. Lines "READY" mark their worker ready; other
// lines go to r.lines. Cleanup stops it and waits for Run.
func start(t *testing.T, spec supervise.Spec, opts *supervise.Options) *run {
	t.Helper()
	sup, err := supervise.New(spec, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r := &run{t: t, sup: sup, wake: make(chan struct{}), lines: make(chan supervise.Line, 4096), done: make(chan error, 1)}
	go func() {
		for ev := range sup.Events() {
			r.mu.Lock()
			r.evs = append(r.evs, ev)
			close(r.wake)
			r.wake = make(chan struct{})
			r.mu.Unlock()
		}
	}()
	go func() {
		for l := range sup.Lines() {
			if l.Text == "READY" {
				_ = sup.MarkReady(l.ID)
				continue
			}
			select {
			case r.lines <- l:
			default:
			}
		}
	}()
	go func() { r.done <- sup.Run(context.Background()) }()
	t.Cleanup(func() { r.shutdown() })
	return r
}

// shutdown stops the supervisor and waits for Run, killing after a bound.
func (r *run) shutdown() {
	r.t.Helper()
	_ = r.sup.Stop()
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("Run: %v", err)
		}
		r.done <- err
	case <-time.After(15 * time.Second):
		r.t.Errorf("Run did not return 15 s after Stop; killing")
		_ = r.sup.Kill()
		<-r.done
	}
}

// wait returns the next event (after the cursor) that matches, moving the
// cursor past it, or fails the test after timeout.
func (r *run) wait(what string, timeout time.Duration, match func(supervise.Event) bool) supervise.Event {
	r.t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		for r.pos < len(r.evs) {
			ev := r.evs[r.pos]
			r.pos++
			if match(ev) {
				r.mu.Unlock()
				return ev
			}
		}
		wake := r.wake
		r.mu.Unlock()
		select {
		case <-wake:
		case <-deadline:
			r.t.Fatalf("no %s event within %v; events:\n%s", what, timeout, r.dump())
		}
	}
}

func (r *run) waitKind(k supervise.EventKind, timeout time.Duration) supervise.Event {
	r.t.Helper()
	return r.wait(k.String(), timeout, func(ev supervise.Event) bool { return ev.Kind == k })
}

// all returns every event so far.
func (r *run) all() []supervise.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]supervise.Event(nil), r.evs...)
}

func (r *run) dump() string {
	var b strings.Builder
	for _, ev := range r.all() {
		fmt.Fprintf(&b, "  %v slot=%d gen=%d inc=%d pid=%d code=%d sig=%d req=%v gen=%d err=%v\n", ev.Kind, ev.ID.Slot,
			ev.ID.Generation, ev.ID.Incarnation, ev.PID, ev.Code, int(ev.Signal), ev.Requested, ev.Generation, ev.Err)
	}
	return b.String()
}

// waitReady waits until n slots are ready.
func (r *run) waitReady(n int, timeout time.Duration) supervise.Status {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := r.sup.Status()
		if st.ReadyWorkers == n {
			return st
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%d of %d workers ready after %v: %+v\nevents:\n%s", st.ReadyWorkers, n, timeout, st, r.dump())
		}
		select {
		case <-r.wakeChan():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (r *run) wakeChan() chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wake
}

// ev is the part of an Event the sequence assertions compare.
type ev struct {
	Kind      string
	Slot      int
	Gen       int
	Code      int
	Signal    syscall.Signal
	Requested bool
}

func project(evs []supervise.Event, kinds ...supervise.EventKind) []ev {
	var out []ev
	for _, e := range evs {
		keep := len(kinds) == 0
		for _, k := range kinds {
			keep = keep || e.Kind == k
		}
		if !keep {
			continue
		}
		g := e.ID.Generation
		if e.Generation != 0 {
			g = e.Generation
		}
		out = append(out, ev{Kind: e.Kind.String(), Slot: e.ID.Slot, Gen: g, Code: e.Code, Signal: e.Signal, Requested: e.Requested})
	}
	return out
}

func pids(st supervise.Status) []int {
	var out []int
	for _, s := range st.Slots {
		out = append(out, s.PID)
	}
	return out
}

// procAlive reports whether pid exists and is not a zombie.
func procAlive(pid int) bool {
	p, ok := proccensus.Stat(pid)
	return ok && p.State != 'Z'
}

func lockOSThread() { runtime.LockOSThread() }

func execLookPath(name string) (string, error) { return exec.LookPath(name) }

// ignoreForChildren ignores sigs in this process, as nohup would, so that
// children inherit SIG_IGN, until the test ends.
func ignoreForChildren(t *testing.T, sigs ...os.Signal) {
	signal.Ignore(sigs...)
	t.Cleanup(func() { signal.Reset(sigs...) })
}

func helperCommand(t *testing.T, role string, env []string) *exec.Cmd {
	t.Helper()
	return helperproc.Command(t, role, &helperproc.Options{Env: env})
}

// pidReuseRole runs as pid 1 of a fresh pid namespace (TESTPLAN C7). When
// its worker has exited and its exit is not posted yet, it reaps the worker
// itself (the watcher reaps only after posting, so this is how the pid can
// be recycled before the event loop knows) and makes a decoy take the pid
// (through ns_last_pid) as a process group leader, then stops the
// supervisor, whose stop signals and SIGKILL escalation must not reach the
// decoy. It prints "DECOY want got alive". PIDREUSE_EARLY=1: the worker is
// reaped and its pid recycled before its watcher even saw the exit, and the
// watcher's kill of what is left of the worker's group must not reach the
// decoy (the stop then follows the exit). PIDREUSE_EARLY=stop: the same,
// with the supervisor stopped before its watcher saw the exit, so its stop
// signals and SIGKILL escalation must not reach the decoy either.
func pidReuseRole() int {
	self, _ := os.Executable()
	reaped := make(chan struct{})
	release := make(chan struct{})
	var decoy *exec.Cmd
	var target int
	hook := supervise.SetHookBeforePost
	early := os.Getenv("PIDREUSE_EARLY") == "1"
	earlyStop := os.Getenv("PIDREUSE_EARLY") == "stop"
	early = early || earlyStop
	if early {
		hook = supervise.SetHookWatch
	}
	hook(func(pid int) {
		target = pid
		var ws unix.WaitStatus
		// Blocks until the worker exits (SetHookWatch runs before that).
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
			fmt.Println("ERROR wait4", err)
		}
		for range 20 {
			// Threads take pids too, so retry until the decoy lands on it.
			_ = os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0)
			decoy = exec.Command(self, "-test.run=^$")
			decoy.Env = append(os.Environ(), helperproc.RoleVar+"=sleeper")
			decoy.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := decoy.Start(); err != nil {
				fmt.Println("ERROR", err)
				break
			}
			if decoy.Process.Pid == pid {
				break
			}
			_ = decoy.Process.Kill()
			_ = decoy.Wait()
		}
		close(reaped)
		<-release
	})
	sup, err := supervise.New(supervise.Spec{Path: self, Args: []string{"-test.run=^$"},
		Env: append(os.Environ(), helperproc.RoleVar+"=worker", "EXIT_AFTER=100ms")},
		&supervise.Options{ReadyOnStart: true, Restart: supervise.RestartNever,
			StopTimeout: 100 * time.Millisecond, Logger: quiet})
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- sup.Run(context.Background()) }()
	exited := make(chan struct{})
	go func() {
		for ev := range sup.Events() {
			if ev.Kind == supervise.Exited {
				close(exited)
			}
		}
	}()
	<-reaped
	if early && !earlyStop {
		// The supervisor cannot tell its unseen worker from the decoy
		// until the watcher runs: a stop now would signal the decoy's
		// group, so the exit goes first.
		close(release)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			fmt.Println("ERROR no Exited event")
		}
		// A SIGKILL sent to the decoy has had the time to end it.
		time.Sleep(300 * time.Millisecond)
		_ = sup.Stop()
	} else {
		_ = sup.Stop()
		time.Sleep(300 * time.Millisecond) // past StopTimeout: the SIGKILL escalation ran
		close(release)
	}
	<-done
	// /proc here is the parent namespace's, so ask the kernel whether the
	// decoy has exited (without reaping it) before we kill it ourselves: a
	// SIGKILL from the supervisor would show here as an exit.
	var info unix.Siginfo
	err = unix.Waitid(unix.P_PID, decoy.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	alive := err == nil && info.Signo == 0
	_ = decoy.Process.Kill()
	_ = decoy.Wait()
	fmt.Printf("DECOY %d %d %v\n", target, decoy.Process.Pid, alive)
	return 0
}

// disownRaceRole runs as pid 1 of a fresh pid namespace, as a subreaper
// supervisor (TESTPLAN C6 with C7's pid control). Worker A exits; after its
// watcher reaped it and before it disowns the pid, a new slot's worker B is
// spawned with A's pid (through ns_last_pid). B then exits with code 3 while
// its watcher is held long enough for the orphan reaper to steal B's status
// if B is not owned. It prints "RESULT A B code reaped" with B's reported
// code and whether B's own watcher reaped it.
func disownRaceRole() int {
	self, _ := os.Executable()
	// Threads take pids too: a runtime thread created between the write
	// to ns_last_pid and the fork would take A's pid for good. Make the
	// runtime create its threads now; idle ones are kept and reused.
	var warm sync.WaitGroup
	for range 16 {
		warm.Add(1)
		go func() {
			defer warm.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			time.Sleep(50 * time.Millisecond)
		}()
	}
	warm.Wait()
	started := make(chan supervise.Event, 64)
	var sup *supervise.Supervisor
	var mu sync.Mutex
	var target, bpid int
	breaped := false
	supervise.SetHookAfterReap(func(pid int, err error) {
		mu.Lock()
		if pid == bpid && target != 0 {
			breaped = err == nil
		}
		first := target == 0
		if first {
			target = pid
		}
		mu.Unlock()
		if !first {
			return
		}
		for range 20 {
			_ = os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0)
			if err := sup.ScaleBy(1); err != nil {
				fmt.Println("ERROR", err)
				return
			}
			e := <-started
			if e.PID == pid {
				mu.Lock()
				bpid = pid
				mu.Unlock()
				return
			}
			_ = sup.ScaleBy(-1)
		}
		_ = sup.Stop() // inconclusive: do not wait for the deadline
	})
	supervise.SetHookExited(func(pid int) {
		mu.Lock()
		isB := pid == bpid
		mu.Unlock()
		if isB {
			// B has exited and is unreaped: give the orphan reaper,
			// woken by SIGCHLD, ample time to reap it if B is not owned.
			time.Sleep(300 * time.Millisecond)
		}
	})
	spec := supervise.Spec{Path: self, Args: []string{"-test.run=^$"},
		Env: append(os.Environ(), helperproc.RoleVar+"=worker"),
		Prepare: func(id supervise.ID) (supervise.Launch, error) {
			if id.Slot == 0 {
				return supervise.Launch{Env: []string{"EXIT_AFTER=100ms"}}, nil
			}
			return supervise.Launch{Env: []string{"EXIT_AFTER=500ms", "EXIT_CODE=3"}}, nil
		}}
	var err error
	sup, err = supervise.New(spec, &supervise.Options{ReadyOnStart: true, Restart: supervise.RestartNever,
		Subreaper: true, StopTimeout: time.Second, Logger: quiet})
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	code := -2
	for e := range sup.Events() {
		switch e.Kind {
		case supervise.Started:
			if e.ID.Slot > 0 {
				started <- e
			}
		case supervise.Exited:
			mu.Lock()
			isB := bpid != 0 && e.PID == bpid && e.ID.Slot > 0
			mu.Unlock()
			if isB {
				code = e.Code
				cancel()
			}
		}
	}
	<-done
	mu.Lock()
	defer mu.Unlock()
	fmt.Printf("RESULT %d %d %d %v\n", target, bpid, code, breaped)
	return 0
}
