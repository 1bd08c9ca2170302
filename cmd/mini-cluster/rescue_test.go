//go:build linux

package main

import (
	"context"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// rescuedRE finds the master's record of connections it took back from a
// dead worker's channel.
var rescuedRE = regexp.MustCompile(`"msg":"handoff: passed on the connections a gone worker never read".*"connections":(\d+)`)

// rescued sums the connections the master's log says it passed on from
// gone workers' channels (a -log-format json master).
func (m *master) rescued() int {
	total := 0
	for _, s := range rescuedRE.FindAllStringSubmatch(m.log.String(), -1) {
		n, _ := strconv.Atoi(s[1])
		total += n
	}
	return total
}

// TestHandoffHungWorkerRescued: in handoff mode a hung worker (SIGSTOP,
// before any load, so it holds no request) is still sent connections
// until its unacknowledged count makes the other worker the less loaded;
// they wait unread on its channel. The heartbeat deadline (900 ms) kills
// it, and the master, which kept its own copy of the worker's end, takes
// them back and passes them to the live worker: every request succeeds,
// none reset, and the master says how many it passed on. Without the
// rescue those connections die with the worker's channel, reset.
func TestHandoffHungWorkerRescued(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m := startMaster(t, pc, nil, append([]string{"-mode", "handoff", "-n", "2", "-heartbeat", "300ms", "-listen", "127.0.0.1:0", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	w := m.workers()
	if len(w) != 2 {
		t.Fatalf("workers %v, want 2", w)
	}
	hung := w[0]
	if err := m.signalWorker(hung, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// New connections only, spread over the heartbeat deadline and past
	// it; each may wait for the kill and the rescue.
	res := loadclient.Run(context.Background(), loadclient.Options{Addr: addr, NewConn: 8, Requests: 2000, Duration: 2500 * time.Millisecond,
		Timeout: 10 * time.Second, Pause: 20 * time.Millisecond, Header: "X-Worker"})
	t.Logf("%v", res)
	if res.Sent == 0 || res.OK != res.Sent || res.Failed() != 0 {
		t.Errorf("requests lost to the hung worker: %v; errors %q", res, res.Errors)
	}
	if n := count(m.records(), "worker killed to be replaced"); n != 1 {
		t.Errorf("%d heartbeat kills, want 1", n)
	}
	rescued := m.rescued()
	if rescued == 0 {
		t.Errorf("the master passed on no connection of the hung worker: the test did not strand any\n%s", m.log.String())
	}
	t.Logf("%d connections passed on from the hung worker", rescued)
	if !waitFor(10*time.Second, func() bool {
		now := m.workers()
		return len(now) == 2 && !slices.Contains(now, hung)
	}) {
		t.Errorf("workers %v, want 2 without the hung %d", m.workers(), hung)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}
