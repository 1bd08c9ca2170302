package supervise_test

import (
	"bytes"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

func init() {
	// The main goroutine must be on the main thread for mainExitRole to
	// end that thread alone; only LockOSThread in init guarantees it.
	if os.Getenv(helperproc.RoleVar) == "mainexit" {
		runtime.LockOSThread()
	}
}

// mainExitRole is drainerRole in a process whose main thread exits first,
// as a C server's main calling pthread_exit while a thread drains: the
// process then shows state Z in /proc/<pid>/stat until its last thread
// exits. It prints UP once its main thread is such a zombie, and DRAINED
// once it drained for DRAIN after SIGTERM.
func mainExitRole() int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		for i := 0; !mainThreadZombie(); i++ {
			if i == 1000 {
				fmt.Println("ERROR main thread never showed Z")
				os.Exit(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
		fmt.Println("UP")
		select {
		case <-term:
		case <-time.After(time.Minute):
			os.Exit(3)
		}
		time.Sleep(envDuration("DRAIN"))
		fmt.Println("DRAINED")
		os.Exit(0)
	}()
	// exit(2), not exit_group(2): only this thread ends. Go itself never
	// ends the main thread (it wedges it), so the raw system call; through
	// syscall.Syscall the runtime sees a goroutine blocked in a system call
	// and goes on without this thread.
	_, _, errno := syscall.Syscall(unix.SYS_EXIT, 0, 0, 0)
	fmt.Println("ERROR exit:", errno)
	return 1
}

// mainThreadZombie reports whether this process's main thread has exited
// while others run: /proc/self/stat shows the main thread's state.
func mainThreadZombie() bool {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && bytes.HasPrefix(b[i+1:], []byte(" Z"))
}

// TestStopGraceThreadedMember: a member of a stopped worker's group whose
// main thread exited (pthread_exit) while another thread drains shows state
// Z in /proc/<pid>/stat, yet it is live: the group keeps the rest of
// StopTimeout for it, as for any other draining member, and is not
// SIGKILLed at the first scan of /proc.
func TestStopGraceThreadedMember(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	cmd := helperproc.Command(t, "mainexit", &helperproc.Options{Env: []string{c.Env(), noRaceExitSleep, "DRAIN=500ms"}})
	// Under a shell that does not exec it, as a wrapper script would: the
	// shell dies of SIGTERM at once, and the helper is a member, not the
	// leader, of the worker's group.
	env := append(cmd.Env, "MAINEXIT_BIN="+cmd.Path)
	spec := supervise.Spec{Path: "/bin/sh", Args: []string{"-c", `"$MAINEXIT_BIN" -test.run='^$'; echo wrapper-done`}, Env: env}
	r := start(t, spec, testOptions(supervise.Options{ReadyOnStart: true, StopTimeout: time.Minute}))
	r.waitLine("UP", 10*time.Second)
	if err := r.sup.Stop(); err != nil {
		t.Fatal(err)
	}
	r.waitLine("DRAINED", 10*time.Second)
	if !r.waitRun(15 * time.Second) {
		t.Fatalf("Run did not return after the drain; events:\n%s", r.dump())
	}
	if err := c.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}
