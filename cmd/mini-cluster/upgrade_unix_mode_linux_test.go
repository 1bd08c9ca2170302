//go:build linux

package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestUpgradeHandoffUnixNonblock: in handoff mode the master itself
// accepts on a unix socket it bound for a worker, which is non-blocking
// for that. Taking its socket file over after a SIGUSR2 upgrade leaves
// O_NONBLOCK as it was: the old adoption cleared it on the description
// every copy shares, and the master's next wake-up set it again with a
// "presumably by a worker" warning (meanwhile a raw accept4 could sleep).
func TestUpgradeHandoffUnixNonblock(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	worker := filepath.Join(t.TempDir(), "w")
	m := startMaster(t, pc, []string{"SRV_TRY_LISTEN=" + worker},
		append([]string{"-mode", "handoff", "-n", "1", "-shutdown-timeout", "2s", "-log-format", "json",
			"-listen", "127.0.0.1:0", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	askListen(t, addr, worker)
	mpid := m.cmd.Process.Pid
	sock := listeningUnixInode(t, worker)
	if sock == 0 {
		t.Fatalf("no listening socket bound to %s", worker)
	}
	if fl, err := socketFlags(t, mpid, sock); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Fatalf("before the upgrade, %s: flags %#o, %v; want non-blocking (handoff mode)", worker, fl, err)
	}
	upgradeOnce(t, m, 1)
	if fl, err := socketFlags(t, mpid, sock); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("after the upgrade, %s: flags %#o, %v; want still non-blocking", worker, fl, err)
	}
	if got := lockState(t, mpid, worker); got != "held by the master" {
		t.Errorf("after the upgrade, lock of %s: %s, want held by the master", worker, got)
	}
	// The new worker asks again, and connections are handed to it: the
	// master's accept loop wakes up on the adopted socket.
	askListen(t, addr, worker)
	for i := range 3 {
		c, err := net.DialTimeout("unix", worker, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c.Close()
	}
	stopClean(t, m)
	// The dials woke the master's accept loop on the adopted socket: a
	// flag changed under it would have been logged by now.
	for _, line := range strings.Split(m.log.String(), "\n") {
		if strings.Contains(line, "made blocking") || strings.Contains(line, "not restored") {
			t.Errorf("master's log: %s", line)
		}
	}
	if _, err := os.Lstat(worker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after the stop, %s: %v, want it removed", worker, err)
	}
}

// TestUpgradeUnixLockNotRegular: a symlink planted at a unix listener's
// PATH.lock before a SIGUSR2 upgrade (the master's lock was on the file it
// replaced) is neither followed nor locked by the new image, which, as a
// fresh start refusing such a lock path would, does not take the socket
// file over: the socket keeps serving, the warning names the cause, and
// the file is left at exit. (The old image warned that the lock was "held
// by another process", and removed the file without its lock.)
func TestUpgradeUnixLockNotRegular(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "l")
	m := startMaster(t, pc, nil,
		append([]string{"-n", "1", "-shutdown-timeout", "2s", "-log-format", "json",
			"-listen", "127.0.0.1:0", "-listen", "unix://" + path, "--"}, fakeSrvCmd(t)...)...)
	m.waitReady()
	mpid := m.cmd.Process.Pid
	sock := listeningUnixInode(t, path)
	if err := os.Remove(path + ".lock"); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	if err := os.Symlink(target, path+".lock"); err != nil {
		t.Fatal(err)
	}
	upgradeOnce(t, m, 1)
	if !holdsSocket(t, mpid, sock) {
		t.Errorf("after the upgrade the master no longer holds the socket bound to %s", path)
	}
	var warned []string
	for _, line := range strings.Split(m.log.String(), "\n") {
		if strings.Contains(line, `"level":"WARN"`) && strings.Contains(line, `"path":"`+path+`"`) {
			warned = append(warned, line)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "its socket file is not taken over") || !strings.Contains(warned[0], "symlink") {
		t.Errorf("warnings about %s: %q, want one saying the file is not taken over, for its lock is a symlink", path, warned)
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Errorf("dial %s after the upgrade: %v", path, err)
	} else {
		c.Close()
	}
	stopClean(t, m)
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("after the stop, %s: %v, want it left", path, err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lock symlink's target: %v, want never created", err)
	}
}
