//go:build linux

package cluster_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
)

// lockedBuffer is a log sink the dispatcher's goroutines may share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestHandoffWindowSeveralListeners: a worker that reads nothing, fed by
// the accept loops of three listeners at once, never has more than a
// window outstanding. The old code checked the window before taking the
// worker's send lock, so dispatchers that sized their sends at once could
// each fill it (three batches of 64 here): out went past the window, and
// an upgrade carried more than the new image took acknowledgements for.
func TestHandoffWindowSeveralListeners(t *testing.T) {
	fdcensus.Verify(t)
	const listeners, perListener = 3, 64 // a batch each (hoMaxBatch)
	// The first sends of the three dispatchers wait for each other
	// (bounded), each sized before any is made.
	var mu sync.Mutex
	arrived, all := 0, make(chan struct{})
	defer cluster.SetHandoffBeforeSend(func() {
		mu.Lock()
		arrived++
		n := arrived
		if n == listeners {
			close(all)
		}
		mu.Unlock()
		if n <= listeners {
			select {
			case <-all:
			case <-time.After(2 * time.Second):
			}
		}
	})()
	r, lns := rig(t, "tcp", "tcp", "tcp")
	// Gated: subscribed but not ready, so nothing is accepted yet; once
	// ready, each loop finds a full batch.
	r.GateOnReady()
	uc, pid, err := r.AddRawPID()
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	for _, n := range r.Names() {
		if _, err := uc.Write(cluster.EncodeHandoffName(cluster.HoSub, n)); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range lns {
		dialN(t, l.Addr().String(), perListener)
	}
	// The SUBs are read in order: once the last one counts, all do.
	waitUntil(t, "the worker subscribed", 5*time.Second, func() bool { return r.Subscribed(pid, r.Names()[listeners-1]) })
	r.MarkReady(pid)
	waitUntil(t, "the worker's window filled", 5*time.Second, func() bool {
		o := r.Outstanding()
		return len(o) == 1 && o[0] >= cluster.HoWindow
	})
	select {
	case <-all:
	case <-time.After(5 * time.Second):
		t.Fatal("the three dispatchers never sent")
	}
	// The waiting sends are made by now, or skipped; give them a moment.
	time.Sleep(50 * time.Millisecond)
	if o := r.Outstanding(); len(o) != 1 || o[0] > cluster.HoWindow {
		t.Errorf("%v connections outstanding at the worker, more than the window of %d", o, cluster.HoWindow)
	}
}

// TestHandoffCarriedOutAboveWindow: an old worker whose carried count of
// unacknowledged connections is above the window (an image that let it
// get there) acknowledges them all without being taken for a protocol
// violator: the new image keeps the count it is given. The old code cut
// it to the window and killed the worker for the acks past it.
func TestHandoffCarriedOutAboveWindow(t *testing.T) {
	fdcensus.Verify(t)
	var logs lockedBuffer
	r, lns := rigLog(t, slog.New(slog.NewTextHandler(&logs, nil)), "tcp")
	name := r.Names()[0]
	const n = cluster.HoWindow + 12
	clients, fds := oldImageConns(t, r, lns[0], n)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	ow := oldWorkerOn(t, name, fds)
	lo := ow.ln
	// The old image delivered n connections, ten a message.
	for i := 0; i < n; i += 10 {
		k := min(10, n-i)
		names, addrs := make([]string, k), make([]string, k)
		for j := range k {
			names[j], addrs[j] = name, "a"
		}
		p := cluster.EncodeHandoffConns(cluster.HoConns, names, addrs)
		if _, err := unix.SendmsgN(ow.masterFD, p, unix.UnixRights(fds[i:i+k]...), nil, 0); err != nil {
			closeFDs(fds)
			t.Fatal(err)
		}
	}
	closeFDs(fds)
	if _, err := r.AdoptOldCarried(ow.takeMaster(), -1, cluster.HandoffCarry{Out: n, Sent: n, Ready: true, Subs: []string{name}}); err != nil {
		t.Fatal(err)
	}
	acceptN(t, lo, n)
	waitUntil(t, "every connection acknowledged", 5*time.Second, func() bool {
		o := r.Outstanding()
		return len(o) == 1 && o[0] == 0 || strings.Contains(logs.String(), "protocol")
	})
	if s := logs.String(); strings.Contains(s, "protocol") {
		t.Errorf("the old worker was taken for a protocol violator:\n%s", s)
	}
}

// TestHandoffCarriedHeld: once an exec's state recorded what a worker was
// sent, the master sends it nothing more: connections go to the other
// workers (the old code went on sending it connections the state did not
// count, so the new image's count fell behind the worker's and its grants
// could be exceeded). A failed exec (Resume) lets it be sent again.
func TestHandoffCarriedHeld(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	addr := lns[0].Addr().String()
	var pids []int
	for range 2 {
		uc, pid, err := r.AddRawPID()
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		if _, err := uc.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	waitUntil(t, "both workers subscribed", 5*time.Second, func() bool { return r.Workers() == 2 })
	got, ok := r.Carried(pids[0])
	if !ok {
		t.Fatal("nothing carried of the first worker")
	}
	for _, c := range dialN(t, addr, 4) {
		defer c.Close()
	}
	waitUntil(t, "four connections delivered", 5*time.Second, func() bool {
		o := r.Outstanding()
		return len(o) == 2 && o[0]+o[1] == 4
	})
	if again, _ := r.Carried(pids[0]); again.Sent != got.Sent {
		t.Errorf("the worker recorded for the exec was sent %d connections after the record", again.Sent-got.Sent)
	}
	r.Resume()
	for _, c := range dialN(t, addr, 6) {
		defer c.Close()
	}
	waitUntil(t, "the first worker served again after a failed exec", 5*time.Second, func() bool {
		c, _ := r.Carried(pids[0])
		r.Resume()
		return c.Sent > got.Sent
	})
}
