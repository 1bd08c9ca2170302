package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// embedderSignalsVar makes roleMaster play a program embedding the master
// that has signal.Notify channels of its own (embedderSignals).
const embedderSignalsVar = "EMBEDDER_SIGNALS"

// embedderSignals registers a channel of the program's own for the
// signals an upgrade ignores across its exec, and prints "EMBEDDER GOT
// <signal>" on stderr for each one received.
func embedderSignals() {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGTTIN, syscall.SIGTTOU)
	go func() {
		for sig := range ch {
			fmt.Fprintf(os.Stderr, "EMBEDDER GOT %v\n", sig)
		}
	}()
}

// TestUpgradeFailedKeepsEmbedderSignals: an upgrade that fails in execve
// (ETXTBSY, after the signals were set ignored for the exec) leaves a
// program's own signal.Notify channels as they were. signal.Ignore, which
// the old code used, strips a signal from every channel in the process
// for good; the master re-registered only its own. The binary turns busy
// while the upgrade is held at its handoff pause (startHeldUpgrade), after
// the probe: only execve fails.
func TestUpgradeFailedKeepsEmbedderSignals(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	t.Setenv(embedderSignalsVar, "1")
	h := startHeldUpgrade(t, pc, 200)
	m := h.m
	h.upgradeToPause(t)
	copyBinary(t, h.bin+".new")
	busy, err := os.OpenFile(h.bin+".new", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := os.Rename(h.bin+".new", h.bin); err != nil {
		t.Fatal(err)
	}
	if err := m.signalWorker(h.old, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool {
		return count(m.records(), "upgrade failed; this master keeps running and serving") == 1
	}) {
		t.Fatalf("no upgrade failure logged within 10 s")
	}
	busy.Close()
	if !strings.Contains(m.log.String(), "execve") || !strings.Contains(m.log.String(), "text file busy") {
		t.Fatalf("the upgrade did not fail in execve")
	}
	m.signal(syscall.SIGHUP)
	if !waitFor(10*time.Second, func() bool {
		return strings.Contains(m.log.String(), "EMBEDDER GOT hangup") && count(m.records(), "restart signal") == 1
	}) {
		t.Errorf("SIGHUP after a failed upgrade: the program's channel got it: %v; the master's: %v",
			strings.Contains(m.log.String(), "EMBEDDER GOT hangup"), count(m.records(), "restart signal") == 1)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestUpgradeStopBehindRestart: a SIGTERM that arrives during an
// upgrade's handoff pause, just after a SIGHUP, is honoured: the upgrade
// is given up and the master stops. The old code handled every signal on
// one goroutine, which waited in the restart for the lock the upgrade
// holds until its exec; the SIGTERM queued behind it was lost by the
// exec. The pause is held by a stopped worker (startHeldUpgrade), and
// ends when it is continued.
func TestUpgradeStopBehindRestart(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	h := startHeldUpgrade(t, pc, 200)
	m := h.m
	h.upgradeToPause(t)
	m.signal(syscall.SIGHUP)
	if !waitFor(2*time.Second, func() bool { return count(m.records(), "restart signal") == 1 }) {
		t.Fatalf("SIGHUP not seen")
	}
	m.signal(syscall.SIGTERM)
	// Seen at once now; the old code never saw it before the exec.
	waitFor(300*time.Millisecond, func() bool { return count(m.records(), "stop signal: stopping workers gracefully") == 1 })
	// Ends the pause; the stop may have ended the worker already.
	_ = m.signalWorker(h.old, syscall.SIGCONT)
	if code := m.wait(20 * time.Second); code != 0 {
		t.Errorf("exit code %d after the stop, want 0", code)
	}
	// Seen while the upgrade held the lock, not once it gave up.
	recs := m.records()
	stopAt := slices.IndexFunc(recs, func(r logRec) bool { return r.Msg == "stop signal: stopping workers gracefully" })
	failAt := slices.IndexFunc(recs, func(r logRec) bool { return r.Msg == "upgrade failed; this master keeps running and serving" })
	if stopAt < 0 || failAt < 0 || stopAt > failAt {
		t.Errorf("stop signal logged at record %d, the upgrade's failure at %d: want the stop seen during the upgrade", stopAt, failAt)
	}
	if n := count(m.records(), "upgrade: executing the new image", "upgrade: took over from the previous image"); n != 0 {
		t.Errorf("the upgrade went on after a stop signal")
	}
	if n := count(m.records(), "stop signal: stopping workers gracefully"); n != 1 {
		t.Errorf("%d stop signals logged, want 1", n)
	}
}

// TestUpgradeSecondStopKillsRetiring: a second stop signal kills the
// previous image's workers still being retired after an upgrade, as it
// kills the master's own: workers that ignore SIGTERM, a 30 s grace, and
// the master exits within seconds leaving no process. The old code let
// retiring workers have their whole grace.
func TestUpgradeSecondStopKillsRetiring(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	_, bin, _ := upgradeDir(t)
	m := startMasterFrom(t, pc, bin, nil, "-n", "2", "-ready", "started", "-listen", "127.0.0.1:0", "-shutdown-timeout", "30s", "-log-format", "json",
		"--", "/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done")
	m.waitReady()
	old := m.workers()
	// Ready means started here: under load a shell may not have run its
	// trap yet when the upgrade retires it, and the first SIGTERM would
	// end it before any kill was needed.
	for _, pid := range old {
		if !waitFor(10*time.Second, func() bool { return sigIgnMask(t, pid)&(1<<(syscall.SIGTERM-1)) != 0 }) {
			t.Fatalf("worker %d does not ignore SIGTERM within 10 s", pid)
		}
	}
	copyBinary(t, bin)
	m.signal(syscall.SIGUSR2)
	if !waitFor(15*time.Second, func() bool {
		return count(m.records(), "upgrade: new workers ready; stopping the previous image's workers") == 1
	}) {
		t.Fatalf("the new image did not start retiring the old workers within 15 s")
	}
	m.signal(syscall.SIGTERM)
	if !waitFor(5*time.Second, func() bool { return count(m.records(), "stop signal: stopping workers gracefully") == 1 }) {
		t.Fatalf("first SIGTERM not seen")
	}
	m.signal(syscall.SIGTERM)
	// Well within the 30 s grace the old code gave the old workers.
	m.wait(15 * time.Second)
	for _, pid := range old {
		if p, ok := proccensus.Stat(pid); ok {
			t.Errorf("old worker %d still there (state %c)", pid, p.State)
		}
	}
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Errorf("processes left after the master exited: %v", err)
	}
	if !slices.ContainsFunc(m.records(), func(r logRec) bool {
		return r.Msg == "upgrade: kill requested; killing the previous worker's process group"
	}) {
		t.Errorf("the old workers were not killed on the kill request")
	}
}

// TestUpgradeUserCannotExecute: with -user, an upgrade to a binary that
// user cannot execute (mode 0700) is refused, and the master keeps
// serving with the same workers: the new image would start every worker
// by executing it as that user, checks that first, and exits if it
// cannot, taking every worker with it; the probe runs as root and passes.
// The binary back at 0755, the next upgrade works.
func TestUpgradeUserCannotExecute(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workers as nobody")
	}
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	tmp := nobodyTemp(t)
	bin := filepath.Join(tmp, "mini-cluster")
	copyBinary(t, bin)
	cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{
		Env:  []string{pc.Env()},
		Args: []string{"-n", "1", "-user", "nobody", "-start-timeout", "10s", "-listen", "127.0.0.1:0", "-shutdown-timeout", "2s", "-log-format", "json", "--", "/proc/self/exe", fakeSrvArg},
	})
	cmd.Path, cmd.Args[0] = bin, bin
	m := startCmdIn(t, cmd, tmp)
	m.waitReady()
	old := m.workers()
	copyBinary(t, bin)
	if err := os.Chmod(bin, 0o700); err != nil {
		t.Fatal(err)
	}
	m.signal(syscall.SIGUSR2)
	if !waitFor(10*time.Second, func() bool {
		return count(m.records(), "upgrade failed; this master keeps running and serving") == 1
	}) {
		t.Fatalf("no upgrade failure logged within 10 s")
	}
	if !strings.Contains(m.log.String(), "cannot execute "+bin) {
		t.Errorf("the failure does not say uid nobody cannot execute %s", bin)
	}
	if now := m.workers(); !slices.Equal(old, now) {
		t.Errorf("workers %v after the refused upgrade, want %v", now, old)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	m.signal(syscall.SIGUSR2)
	if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 1 }) {
		t.Fatalf("upgrade with the binary executable by nobody not done within 15 s")
	}
	stopClean(t, m)
}
