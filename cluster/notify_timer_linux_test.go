//go:build linux

package cluster

import (
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// TestStopTimerIdentity: the shutdown timer armed at a worker's STOPPING=1
// kills that worker only. With its pid now a later worker's (the earlier
// one's phase left behind, its exit never forgotten), the timer kills
// nothing; armed for the worker that has the pid, it kills it.
func TestStopTimerIdentity(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	cmd := exec.Command("sleep", "30")
	cmd.Env = append(os.Environ(), pc.Env())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	pid := cmd.Process.Pid
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		cmd.Process.Kill()
		<-exited
		t.Fatalf("pidfd_open: %v", err)
	}
	var buf syncBuf
	m := &master{
		cfg: Config{ShutdownTimeout: 10 * time.Millisecond},
		log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	m.ctl.procs = map[int]*wproc{pid: {id: id2, pidfd: os.NewFile(uintptr(pidfd), "pidfd")}}
	defer func() {
		m.nstate.close()
		cmd.Process.Kill()
		<-exited
		m.ctl.procs[pid].pidfd.Close()
	}()
	waitLog := func(what string) {
		t.Helper()
		for i := 0; i < 500 && !strings.Contains(buf.String(), what); i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if !strings.Contains(buf.String(), what) {
			t.Fatalf("no %q logged:\n%s", what, buf.String())
		}
	}

	// The earlier worker id1 had this pid and said STOPPING=1.
	m.notePhase(Notification{Stopping: true}, pid, id1)
	waitLog("worker not killed")
	select {
	case <-exited:
		t.Fatal("the timer of an earlier worker killed the later one with its pid")
	default:
	}

	// Its own STOPPING=1: killed once the timeout has passed.
	m.notePhase(Notification{Stopping: true}, pid, id2)
	waitLog("worker killed to be replaced")
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("a worker that said STOPPING=1 was not killed")
	}
}

// TestReloadTimeout: a RELOADING=1 is bounded as a start is
// (Config.StartTimeout): the default for 0, and no limit at all for a
// negative StartTimeout, which supervise takes as no limit to a start.
func TestReloadTimeout(t *testing.T) {
	type res struct {
		D  time.Duration
		OK bool
	}
	for _, tc := range []struct {
		start time.Duration
		want  res
	}{
		{0, res{defaultStartTimeout, true}},
		{2 * time.Second, res{2 * time.Second, true}},
		{-1, res{0, false}},
		{-time.Hour, res{0, false}},
	} {
		var got res
		got.D, got.OK = reloadTimeout(tc.start)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("reloadTimeout(%v) (-want +got):\n%s", tc.start, diff)
		}
	}
}
