//go:build linux

package cluster_test

import (
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
