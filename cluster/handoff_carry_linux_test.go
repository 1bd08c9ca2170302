//go:build linux

package cluster_test

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
)

// TestHandoffCarried: what an in-place upgrade carries of a worker's
// connection channel for the new image to go on sending it connections:
// its subscriptions, its readiness, what it has not acknowledged, what was
// sent (the sequence its grants refer to) and its grant.
func TestHandoffCarried(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	uc, pid, err := r.AddRawPID()
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	// The grant first: read in order, it is in force before the SUB
	// lets anything be sent.
	for _, p := range [][]byte{cluster.EncodeHandoffGrant(2), cluster.EncodeHandoffName(cluster.HoSub, name)} {
		if _, err := uc.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	// The grant lets two of the three through; the worker reads none.
	dialN(t, lns[0].Addr().String(), 3)
	waitUntil(t, "two connections delivered", 5*time.Second, func() bool {
		o := r.Outstanding()
		return len(o) == 1 && o[0] == 2
	})
	got, ok := r.Carried(pid)
	if !ok {
		t.Fatal("nothing carried of the worker")
	}
	want := cluster.HandoffCarry{Out: 2, Sent: 2, Limited: true, Limit: 2, Ready: true, Subs: []string{name}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("carried (-want +got):\n%s", diff)
	}
}

// TestHandoffAdoptOldWorkerCarried: after an in-place upgrade, an old
// worker the old image described stays in the rotation until the new
// image's workers are ready: new connections reach it (the old code sent
// it nothing, so nothing was served until a new worker was ready). Its
// acknowledgements are counted against what the old image recorded. Once
// retired it is sent nothing more, and its Close gets its DONE at once.
func TestHandoffAdoptOldWorkerCarried(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	addr := lns[0].Addr().String()
	_, fds := oldImageConns(t, r, lns[0], 2)
	ow := oldWorkerOn(t, name, fds)
	lo := ow.ln
	// The old image read the worker's SUB, delivered two connections,
	// recorded them, and executed the new image.
	p := cluster.EncodeHandoffConns(cluster.HoConns, []string{name, name}, []string{"a", "b"})
	_, err := unix.SendmsgN(ow.masterFD, p, unix.UnixRights(fds...), nil, 0)
	closeFDs(fds)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.AdoptOldCarried(ow.takeMaster(), -1, cluster.HandoffCarry{Out: 2, Sent: 2, Ready: true, Subs: []string{name}}); err != nil {
		t.Fatal(err)
	}
	// No worker of the new image yet: the old one serves.
	dialN(t, addr, 3)
	if diff := cmp.Diff([]int{0, 0, 1, 1, 2}, acceptN(t, lo, 5)); diff != "" {
		t.Errorf("connections the old worker accepted (-want +got):\n%s", diff)
	}
	waitUntil(t, "the old worker's acknowledgements counted, the worker kept", 5*time.Second, func() bool {
		o := r.Outstanding()
		return len(o) == 1 && o[0] == 0
	})
	// The new image's worker is ready: the old one is retired first.
	lb := workerOn(t, r, name)
	r.RetireOld()
	dialN(t, addr, 4)
	if diff := cmp.Diff(seq(4), acceptN(t, lb, 4)); diff != "" {
		t.Errorf("connections after the old worker was retired (-want +got):\n%s", diff)
	}
	closed := make(chan error, 1)
	go func() { closed <- lo.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("the retired worker's Close got no DONE")
	}
	// Both acknowledged everything (acks may wait a moment for company).
	waitUntil(t, "every connection acknowledged, nothing outstanding at the retired worker", 5*time.Second, func() bool {
		return cmp.Equal([]int{0, 0}, r.Outstanding())
	})
}

// oldWorker is a worker of the old image on a connection channel of its
// own: masterFD is the old master's end, the worker listens on one name,
// and its SUB has been read off the channel.
type oldWorker struct {
	masterFD  int
	masterEnd *os.File // closed at cleanup unless taken
	w         *cluster.HandoffWorker
	ln        net.Listener
}

// oldWorkerOn sets up an oldWorker subscribed to name; fds (connections
// the test holds for it) are closed if that fails.
func oldWorkerOn(t *testing.T, name string, fds []int) *oldWorker {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		closeFDs(fds)
		t.Fatalf(format, args...)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail("%v", err)
	}
	ow := &oldWorker{masterFD: pair[0], masterEnd: os.NewFile(uintptr(pair[0]), "old-master")}
	t.Cleanup(func() {
		if ow.masterEnd != nil {
			ow.masterEnd.Close()
		}
	})
	uc, err := scmrights.UnixConn(pair[1])
	if err != nil {
		fail("%v", err)
	}
	w, err := cluster.NewHandoffWorker(uc)
	if err != nil {
		fail("%v", err)
	}
	t.Cleanup(func() { w.Close() })
	ow.w = w
	if ow.ln, err = w.Listen(name); err != nil {
		fail("%v", err)
	}
	buf := make([]byte, cluster.HoMaxMsg)
	n, _, _, _, err := unix.Recvmsg(pair[0], buf, nil, unix.MSG_DONTWAIT)
	if err != nil {
		fail("the old worker's SUB: %v", err)
	}
	if d, err := cluster.DecodeHandoff(buf[:n], nil); err != nil || d.Type != cluster.HoSub || d.Name != name {
		fail("the old worker's first message: %+v, %v; want its SUB of %q", d, err, name)
	}
	return ow
}

// takeMaster hands the old master's end over (to the new image).
func (ow *oldWorker) takeMaster() *os.File {
	f := ow.masterEnd
	ow.masterEnd = nil
	return f
}

// TestHandoffCarriedOwedDones: the DONEs a worker is owed (its channel was
// full) when an upgrade records its channel go with the record, and the
// old image sends none of them while the worker is held, so that none is
// sent twice; an exec that failed (resume) sends them after all. The
// worker here sends UNSUBs without reading. They used to be left out, and
// lost by the exec.
func TestHandoffCarriedOwedDones(t *testing.T) {
	fdcensus.Verify(t)
	r, _ := rig(t, "tcp")
	c, pid, err := r.AddRawPeer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Far more than the channel holds: the master reads each before the
	// next is written, so most are owed once the writes return.
	const flood = 3000
	u := cluster.EncodeHandoffName(cluster.HoUnsub, "nosuch")
	for range flood {
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(u); err != nil {
			t.Fatalf("write: %v (the master stopped reading)", err)
		}
	}
	carry, ok := r.Carried(pid)
	if !ok {
		t.Fatal("nothing carried of the worker")
	}
	carried := 0
	for _, o := range carry.Owed {
		if o.Name != "nosuch" {
			t.Errorf("carried a DONE of %q", o.Name)
		}
		carried += o.N
	}
	if carried == 0 {
		t.Fatalf("carried %+v: no DONE owed, although %d UNSUBs were not read", carry.Owed, flood)
	}
	count := func(ms []cluster.HoDecoded) int {
		n := 0
		for _, m := range ms {
			if m.Type != cluster.HoDone || m.Name != "nosuch" {
				t.Errorf("message %q %q", m.Type, m.Name)
			}
			n++
		}
		return n
	}
	held := count(drainRaw(t, c, 300*time.Millisecond))
	if held+carried > flood {
		t.Errorf("%d DONEs came while held and %d were carried: more than the %d UNSUBs", held, carried, flood)
	}
	r.Resume()
	if total := held + count(drainRaw(t, c, 500*time.Millisecond)); total != flood {
		t.Errorf("%d DONEs for %d UNSUBs once the exec failed", total, flood)
	}
}

// TestHandoffAdoptOwedDones: the new image sends an adopted worker the
// DONEs the old image owed it before anything else. Here the old worker's
// Close sent UNSUB and the old image owed the DONE; the new image has no
// listener of the name, so the worker's next Listen of it is refused:
// with the DONE lost, the refusal was taken for it and Accept waited
// forever.
func TestHandoffAdoptOwedDones(t *testing.T) {
	fdcensus.Verify(t)
	r, _ := rig(t, "tcp")
	const name = "tcp-gone"
	ow := oldWorkerOn(t, name, nil)
	closed := make(chan error, 1)
	go func() { closed <- ow.ln.Close() }()
	buf := make([]byte, cluster.HoMaxMsg)
	if err := unix.SetNonblock(ow.masterFD, false); err != nil {
		t.Fatal(err)
	}
	n, _, _, _, err := unix.Recvmsg(ow.masterFD, buf, nil, 0)
	if d, derr := cluster.DecodeHandoff(buf[:n], nil); err != nil || derr != nil || d.Type != cluster.HoUnsub || d.Name != name {
		t.Fatalf("want the UNSUB of %s: %+v %v %v", name, d, err, derr)
	}
	if _, err := r.AdoptOldCarried(ow.takeMaster(), -1, cluster.HandoffCarry{Ready: true, Owed: []cluster.HandoffOwed{{Name: name, N: 1}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return")
	}
	l, err := ow.w.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := acceptWithin(t, l); !errors.Is(err, cluster.ErrNoHandoff) {
		t.Fatalf("Accept of a name the new image lacks: %v, want ErrNoHandoff", err)
	}
}

// TestHandoffHeldWorkerUnread: once an upgrade recorded a worker's channel
// (held), the old image reads nothing more from it until the exec failed:
// an UNSUB the worker sends meanwhile stays queued for the new image,
// whose record still has the subscription. The old image used to read it
// and answer DONE, and the new image then subscribed the worker to a
// listener it no longer had: the connections sent to it were lost.
func TestHandoffHeldWorkerUnread(t *testing.T) {
	fdcensus.Verify(t)
	r, _ := rig(t, "tcp")
	name := r.Names()[0]
	uc, pid := rawSubscribed(t, r, name)
	carry, ok := r.Carried(pid)
	if !ok || !cmp.Equal(carry.Subs, []string{name}) {
		t.Fatalf("carried %+v, %v; want a subscription to %s", carry, ok, name)
	}
	if _, err := uc.Write(cluster.EncodeHandoffName(cluster.HoUnsub, name)); err != nil {
		t.Fatal(err)
	}
	// Nothing to wait for: the master must not read it. A while long
	// enough that the old code had read it.
	for range 30 {
		time.Sleep(10 * time.Millisecond)
		if !r.Subscribed(pid, name) {
			t.Fatal("the master read an UNSUB sent after the record of the worker's subscriptions")
		}
	}
	if ms := drainRaw(t, uc, 100*time.Millisecond); len(ms) != 0 {
		t.Fatalf("sent to a held worker: %+v", ms)
	}
	// The exec failed: this image reads it after all.
	r.Resume()
	m, ok := rawRecv(t, uc, 5*time.Second)
	if !ok || m.Type != cluster.HoDone || m.Name != name {
		t.Fatalf("after resume: %+v, %v; want the DONE of %s", m, ok, name)
	}
	if ms := drainRaw(t, uc, 100*time.Millisecond); len(ms) != 0 {
		t.Errorf("more after the DONE: %+v", ms)
	}
	if r.Subscribed(pid, name) {
		t.Error("still subscribed after the UNSUB")
	}
}

// TestHandoffHeldGoneResumed: a worker held by an upgrade's snapshot and
// reported gone before the exec fails gets its hold ended by the resume
// like the others, so its reader drains and closes its channel (the
// worker's end reads end of file). Off every list once gone, it used to be
// missed by the resume, its reader waiting for the master's stop with the
// channel open.
func TestHandoffHeldGoneResumed(t *testing.T) {
	fdcensus.Verify(t)
	r, _ := rig(t, "tcp")
	name := r.Names()[0]
	uc, pid := rawSubscribed(t, r, name)
	if _, ok := r.Carried(pid); !ok {
		t.Fatal("the worker is not in the upgrade's state")
	}
	r.Exited(pid) // gone while held
	r.Resume()    // the exec failed
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [512]byte
	for i := 0; ; i++ {
		_, err := uc.Read(b[:])
		if err == nil && i < 100 {
			continue
		}
		if !errors.Is(err, io.EOF) {
			t.Fatalf("the gone worker's channel after the resume: %v, want end of file", err)
		}
		break
	}
	waitUntil(t, "the worker forgotten", 5*time.Second, func() bool { return r.Workers() == 0 })
}

// rawSubscribed adds a raw worker to r subscribed to name, closed when the
// test ends, and returns its end of the channel and its made-up pid.
func rawSubscribed(t *testing.T, r *cluster.HandoffRig, name string) (*net.UnixConn, int) {
	t.Helper()
	uc, pid, err := r.AddRawPID()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	if _, err := uc.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "subscribed", 5*time.Second, func() bool { return r.Subscribed(pid, name) })
	return uc, pid
}
