package supervise_test

import (
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestReapOrphansPastOwnedZombie: the orphan reaper reaps an unowned zombie
// child that exited after an owned one that is still unreaped (a stopped
// worker whose zombie pins its group id through the rest of the grace).
// waitid(P_ALL) reports the first zombie on the calling thread's list of
// children, oldest first, so a reaper that stops at an owned one left the
// orphan a zombie until the owner reaped (TESTPLAN C6).
func TestReapOrphansPastOwnedZombie(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	// Both children are on this thread's list, in fork order, and the
	// reaper's pass runs on this thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fork := func() int {
		t.Helper()
		cmd := helperproc.Command(t, "sleeper", &helperproc.Options{Env: []string{c.Env(), noRaceExitSleep, "SLEEP=1ms"}})
		pid, err := syscall.ForkExec(cmd.Path, cmd.Args, &syscall.ProcAttr{Env: cmd.Env})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Exited already; nothing but this test and the reaper waits for it.
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		})
		// Until it exited, without reaping it.
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	owned := fork()
	orphan := fork()
	supervise.ReapOrphans(func(pid int) bool { return pid == owned })
	zombie := func(pid int) bool {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		return err == nil
	}
	if zombie(orphan) {
		t.Errorf("orphan %d still a zombie after a reaper pass (the owned zombie %d came first)", orphan, owned)
	}
	if !zombie(owned) {
		t.Errorf("owned child %d was reaped by the orphan reaper", owned)
	}
}

// TestReapOrphansBehindManyWorkers: an orphan re-parented behind more than a
// thousand running workers is still reaped in one pass. The pass used to
// list only the first 1024 children, workers included, and nudge itself to
// list the same ones again: the orphan stayed a zombie and the reaper spun.
func TestReapOrphansBehindManyWorkers(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	const running = 1030
	workers := map[int]bool{}
	t.Cleanup(func() {
		for pid := range workers {
			unix.Kill(pid, unix.SIGKILL)
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, 0, nil)
		}
	})
	env := []string{c.Env()}
	for range running {
		pid, err := syscall.ForkExec("/bin/sleep", []string{"sleep", "60"}, &syscall.ProcAttr{Env: env})
		if err != nil {
			t.Fatal(err)
		}
		workers[pid] = true
	}
	orphan, err := syscall.ForkExec("/bin/true", []string{"true"}, &syscall.ProcAttr{Env: env})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var ws unix.WaitStatus
		_, _ = unix.Wait4(orphan, &ws, unix.WNOHANG, nil)
	})
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, orphan, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	supervise.ReapOrphans(func(pid int) bool { return workers[pid] })
	if err := unix.Waitid(unix.P_PID, orphan, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err == nil {
		t.Errorf("orphan %d still a zombie behind %d running workers", orphan, running)
	}
}
