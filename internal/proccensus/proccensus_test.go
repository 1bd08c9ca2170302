//go:build linux

package proccensus_test

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proccensus"
)

func TestFindsMarkedProcessAndZombie(t *testing.T) {
	c := proccensus.New(t)
	cmd := exec.Command("sleep", "30")
	cmd.Env = append(os.Environ(), c.Env())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range c.Marked() {
		found = found || p.PID == cmd.Process.Pid
	}
	if !found {
		t.Fatalf("marked child %d not found", cmd.Process.Pid)
	}
	if err := c.WaitGone(100 * time.Millisecond); err == nil {
		t.Fatal("WaitGone succeeded with a live marked child")
	}
	cmd.Process.Kill()
	// Killed but not reaped: a zombie of this process.
	deadline := time.Now().Add(5 * time.Second)
	for len(proccensus.Zombies(os.Getpid())) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if len(proccensus.Zombies(os.Getpid())) == 0 {
		t.Fatal("unreaped child not reported as a zombie")
	}
	if err := c.WaitGone(50 * time.Millisecond); err == nil {
		t.Fatal("WaitGone succeeded with a zombie child")
	}
	cmd.Wait()
	if err := c.WaitGone(time.Second); err != nil {
		t.Fatal(err)
	}
}
