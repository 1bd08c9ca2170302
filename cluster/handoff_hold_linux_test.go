//go:build linux

package cluster_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
)

// TestHandoffAckWithoutSendLock: the master reads a worker's messages
// (an ack here) without taking the worker's send lock, which every
// delivery to it holds, so acks do not contend with deliveries; also
// when it peeks at messages first (after the worker's UNSUB). The lock is
// taken only while an upgrade holds the worker. The old code took it two
// or three times for every message received: with the lock held here, the
// ack was never read.
func TestHandoffAckWithoutSendLock(t *testing.T) {
	fdcensus.Verify(t)
	for _, peek := range []bool{false, true} {
		name := "whole"
		if peek {
			name = "peek"
		}
		t.Run(name, func(t *testing.T) {
			fdcensus.Verify(t)
			r, lns := rig(t, "tcp")
			ln := r.Names()[0]
			uc, pid := rawSubscribed(t, r, ln)
			if peek {
				// An UNSUB (of a name the master lacks: the
				// subscription stays) makes the master peek from now
				// on.
				if _, err := uc.Write(cluster.EncodeHandoffName(cluster.HoUnsub, "nosuch")); err != nil {
					t.Fatal(err)
				}
				if m, ok := rawRecv(t, uc, 5*time.Second); !ok || m.Type != cluster.HoDone {
					t.Fatalf("after UNSUB: %+v, %v; want DONE", m, ok)
				}
			}
			dialN(t, lns[0].Addr().String(), 1)
			waitUntil(t, "delivered", 5*time.Second, func() bool { return cmp.Equal([]int{1}, r.Outstanding()) })
			m, ok := rawRecv(t, uc, 5*time.Second)
			if !ok || m.Type != cluster.HoConns {
				t.Fatalf("want the connection: %+v, %v", m, ok)
			}
			closeFDs(m.FDs)
			unlock, ok := r.LockWorker(pid)
			if !ok {
				t.Fatal("no such worker")
			}
			defer unlock()
			if _, err := uc.Write(cluster.EncodeHandoffAck(1)); err != nil {
				t.Fatal(err)
			}
			// Not a measure of speed: with the lock held, the old code
			// never read the ack at all.
			waitUntil(t, "the ack read while the worker's send lock is held", 10*time.Second, func() bool {
				return cmp.Equal([]int{0}, r.Outstanding())
			})
		})
	}
}

// TestHandoffHeldWorkerUnpeeked: a worker held by an upgrade's snapshot
// is not read from also while the master peeks at its messages first (it
// sent an UNSUB once): a malformed message it sends meanwhile stays
// queued for the new image (or for this one, once the exec failed),
// rather than getting the worker killed right after the state handed it
// over. The old code peeked at it, and killed the worker.
func TestHandoffHeldWorkerUnpeeked(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []struct {
		name    string
		garbage []byte
	}{
		{"empty", []byte{}},
		{"too long", make([]byte, cluster.HoMaxMsg+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			r, _ := rig(t, "tcp")
			// A peer copy: an empty message is then the worker's, not
			// the end of the channel.
			uc, pid, err := r.AddRawPeer()
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			if _, err := uc.Write(cluster.EncodeHandoffName(cluster.HoUnsub, "nosuch")); err != nil {
				t.Fatal(err)
			}
			if m, ok := rawRecv(t, uc, 5*time.Second); !ok || m.Type != cluster.HoDone {
				t.Fatalf("after UNSUB: %+v, %v; want DONE", m, ok)
			}
			if _, ok := r.Carried(pid); !ok {
				t.Fatal("the worker is not in the upgrade's state")
			}
			if _, err := uc.Write(tc.garbage); err != nil {
				t.Fatal(err)
			}
			// Nothing to wait for: the master must not read it. A while
			// long enough that the old code had read it.
			for range 30 {
				time.Sleep(10 * time.Millisecond)
				if r.Workers() != 1 {
					t.Fatal("the master read a held worker's message, and killed it")
				}
			}
			r.Resume() // the exec failed: read after all
			waitUntil(t, "the violator out of the rotation after the hold", 5*time.Second, func() bool { return r.Workers() == 0 })
			uc.Close() // killed
			r.Exited(pid)
		})
	}
}
