//go:build linux

package cluster_test

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/syncbuf"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// drainRaw reads a raw worker channel until nothing arrives for quiet,
// closing every descriptor that came, and returns the messages.
func drainRaw(t *testing.T, c *net.UnixConn, quiet time.Duration) []cluster.HoDecoded {
	t.Helper()
	var out []cluster.HoDecoded
	for i := 0; i < 100000; i++ {
		m, ok := rawRecv(t, c, quiet)
		if !ok {
			break
		}
		closeFDs(m.FDs)
		out = append(out, m)
	}
	return out
}

// TestHandoffUnsubFlood: a worker that sends UNSUBs without reading its
// channel never holds up the master: the DONEs it is owed wait, the other
// worker is served, exit and stop return, and the owed DONE arrives once
// the worker reads. A worker owed DONEs for too many names is a violator.
func TestHandoffUnsubFlood(t *testing.T) {
	fdcensus.Verify(t)
	t.Run("one name", func(t *testing.T) {
		fdcensus.Verify(t)
		r, lns := rig(t, "tcp")
		name := r.Names()[0]
		bad, badPID, err := r.AddRawPeer()
		if err != nil {
			t.Fatal(err)
		}
		defer bad.Close()
		if _, err := bad.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
			t.Fatal(err)
		}
		// Far more DONEs than the channel holds.
		u := cluster.EncodeHandoffName(cluster.HoUnsub, "nosuch")
		deadline := time.Now().Add(2 * time.Second)
		for i := 0; i < 5000 && time.Now().Before(deadline); i++ {
			bad.SetWriteDeadline(deadline)
			if _, err := bad.Write(u); err != nil {
				t.Fatalf("UNSUB %d: %v (the master stopped reading)", i, err)
			}
		}
		bad.SetWriteDeadline(time.Time{})
		lg := workerOn(t, r, name)
		const n = 20
		dialN(t, lns[0].Addr().String(), n)
		if diff := cmp.Diff(seq(n), acceptN(t, lg, n)); diff != "" {
			t.Errorf("the other worker (-want +got):\n%s", diff)
		}
		// Read at last: DONEs, ending with the owed one.
		ms := drainRaw(t, bad, 500*time.Millisecond)
		if len(ms) == 0 || ms[len(ms)-1].Type != cluster.HoDone || ms[len(ms)-1].Name != "nosuch" {
			t.Errorf("flooding worker read %d messages, want DONEs ending with the owed one", len(ms))
		}
		ex := make(chan struct{})
		go func() { r.Exited(badPID); close(ex) }()
		select {
		case <-ex:
		case <-time.After(5 * time.Second):
			t.Fatal("the exit report of the flooding worker blocks")
		}
		st := make(chan struct{})
		go func() { r.Stop(); close(st) }()
		select {
		case <-st:
		case <-time.After(5 * time.Second):
			t.Fatal("Stop blocks")
		}
	})
	t.Run("many names", func(t *testing.T) {
		fdcensus.Verify(t)
		log := &hoLog{}
		r, _ := rigLog(t, slog.New(slog.NewJSONHandler(log, nil)), "tcp")
		bad, err := r.AddRaw()
		if err != nil {
			t.Fatal(err)
		}
		defer bad.Close()
		deadline := time.Now().Add(5 * time.Second)
		for i := 0; i < 5000 && len(log.find("handoff: worker broke the connection protocol; restarting it")) == 0; i++ {
			bad.SetWriteDeadline(deadline)
			if _, err := bad.Write(cluster.EncodeHandoffName(cluster.HoUnsub, "n"+strconv.Itoa(i))); err != nil {
				break // closed by the master
			}
		}
		waitUntil(t, "violation logged", 5*time.Second, func() bool {
			return len(log.find("handoff: worker broke the connection protocol; restarting it")) == 1
		})
		if rec := log.find("handoff: worker broke the connection protocol; restarting it")[0]; !strings.Contains(fmt.Sprint(rec["err"]), "without reading") {
			t.Errorf("violation %v, want one about UNSUBs without reading", rec)
		}
		waitUntil(t, "flooding worker dropped", 5*time.Second, func() bool { return r.Workers() == 0 })
	})
}

// TestHandoffCloseRelisten: a worker that closes its listener and listens
// again, the only one serving it, gets back what it gave back, and what
// came since; an upgrade's pause succeeds then.
func TestHandoffCloseRelisten(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	a, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	la, err := a.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	const n = 10
	dialN(t, lns[0].Addr().String(), n)
	waitUntil(t, "delivered", 5*time.Second, func() bool { return cmp.Equal([]int{n}, r.Outstanding()) })
	if err := la.Close(); err != nil {
		t.Fatal(err)
	}
	la2, err := a.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	defer la2.Close()
	addr := lns[0].Addr().String()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%04d", n)
	if diff := cmp.Diff(seq(n+1), acceptN(t, la2, n+1)); diff != "" {
		t.Errorf("accepted after listening again (-want +got):\n%s", diff)
	}
	if err := r.Pause(time.Second); err != nil {
		t.Errorf("pause: %v", err)
	}
	r.Resume()
}

// TestHandoffGiveBackKeepsReading: a worker closes one of its two
// listeners, which nobody else serves; the master holds what it gave back
// and goes on reading the worker: its acks of the other listener's
// connections still count.
func TestHandoffGiveBackKeepsReading(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp", "tcp")
	names := r.Names()
	a, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var ls []net.Listener
	for _, name := range names {
		l, err := a.Listen(name)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ls = append(ls, l)
	}
	dialN(t, lns[0].Addr().String(), 3)
	waitUntil(t, "delivered", 5*time.Second, func() bool { return cmp.Equal([]int{3}, r.Outstanding()) })
	if err := ls[0].Close(); err != nil {
		t.Fatal(err)
	}
	const n = 40
	dialN(t, lns[1].Addr().String(), n)
	if diff := cmp.Diff(seq(n), acceptN(t, ls[1], n)); diff != "" {
		t.Errorf("other listener (-want +got):\n%s", diff)
	}
	waitUntil(t, "acks read", 5*time.Second, func() bool { return cmp.Equal([]int{0}, r.Outstanding()) })
	// The connections given back wait for a worker of their listener.
	lb := workerOn(t, r, names[0])
	if diff := cmp.Diff(seq(3), acceptN(t, lb, 3)); diff != "" {
		t.Errorf("given back (-want +got):\n%s", diff)
	}
}

// TestHandoffAckNeverBlocksAccept: a worker's Accept returns even when its
// channel has no room for the ack (a master that does not read, for the
// moment); the ack follows once there is room.
func TestHandoffAckNeverBlocksAccept(t *testing.T) {
	fdcensus.Verify(t)
	masterEnd, remote, err := scmrights.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		t.Fatal(err)
	}
	defer masterEnd.Close()
	fd, err := scmrights.Dup(remote)
	remote.Close()
	if err != nil {
		t.Fatal(err)
	}
	uc, err := scmrights.UnixConn(fd)
	if err != nil {
		t.Fatal(err)
	}
	w, err := cluster.NewHandoffWorker(uc)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	l, err := w.Listen("x")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Fill the worker's side of the channel (with grants: any message).
	fill, err := scmrights.Dup(uc)
	if err != nil {
		t.Fatal(err)
	}
	filled := 0
	for ; filled < 100000; filled++ {
		if err := unix.Sendto(fill, cluster.EncodeHandoffGrant(cluster.HoNoLimit), unix.MSG_DONTWAIT, nil); err != nil {
			break
		}
	}
	unix.Close(fill)
	const n = 4
	var fds, peers []int
	defer func() { closeFDs(fds); closeFDs(peers) }()
	names, addrs := make([]string, n), make([]string, n)
	for i := range n {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds, peers = append(fds, p[0]), append(peers, p[1])
		names[i], addrs[i] = "x", "a"
	}
	if _, _, err := masterEnd.WriteMsgUnix(cluster.EncodeHandoffConns(cluster.HoConns, names, addrs), unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
	closeFDs(fds)
	fds = nil
	// Gone before the listener closes: no DONE to wait for.
	defer w.Close()
	accepted := make(chan error, n)
	go func() {
		for range n {
			c, err := l.Accept()
			if err == nil {
				c.Close()
			}
			accepted <- err
		}
	}()
	for i := range n {
		select {
		case err := <-accepted:
			if err != nil {
				t.Fatalf("Accept %d: %v", i, err)
			}
		case <-time.After(5 * time.Second):
			w.Close() // unblocks it
			t.Fatalf("Accept %d blocked with the channel full", i)
		}
	}
	// Room at last: the ack arrives, after the filler and the SUB.
	acked := 0
	for _, m := range drainRaw(t, masterEnd, 500*time.Millisecond) {
		if m.Type == cluster.HoAck {
			acked += m.N
		}
	}
	if acked != n {
		t.Errorf("acked %d after the channel drained (%d fillers), want %d", acked, filled, n)
	}
}

// TestHandoffUnservedListener: the master does not accept on a listener no
// ready worker serves (the kernel's backlog keeps the connections), so an
// upgrade's pause succeeds; the first worker to serve it gets them.
func TestHandoffUnservedListener(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp", "tcp")
	names := r.Names()
	workerOn(t, r, names[0])
	dialN(t, lns[1].Addr().String(), 2)
	time.Sleep(100 * time.Millisecond) // an accept would have happened
	if b := r.Busy(); b != 0 {
		t.Errorf("master holds connections of %d listeners no worker serves", b)
	}
	if err := r.Pause(time.Second); err != nil {
		t.Errorf("pause: %v", err)
	}
	r.Resume()
	// A worker not yet ready does not count either.
	r.GateOnReady()
	l := workerOn(t, r, names[1])
	time.Sleep(50 * time.Millisecond)
	if b := r.Busy(); b != 0 {
		t.Errorf("master holds connections for a worker that is not ready (%d)", b)
	}
	if err := r.Pause(time.Second); err != nil {
		t.Errorf("pause with a worker not ready: %v", err)
	}
	r.Resume()
	r.MarkReady(-2) // AddWorker's made-up pids: -1, -2
	if diff := cmp.Diff(seq(2), acceptN(t, l, 2)); diff != "" {
		t.Errorf("connections from the backlog (-want +got):\n%s", diff)
	}
}

// TestHandoffUnservedWarning: ready workers that leave a listener unserved
// for hoUnservedAfter get one warning naming that listener (not the one
// they serve; a worker not ready does not count), and a note once a
// worker serves it, which then gets the connections that waited.
func TestHandoffUnservedWarning(t *testing.T) {
	fdcensus.Verify(t)
	const warning = "no worker takes connections from this listener"
	cluster.SetHoUnservedAfter(t, 200*time.Millisecond)
	var buf syncbuf.Buffer
	r, lns := rigLog(t, slog.New(slog.NewTextHandler(&buf, nil)), "tcp", "tcp")
	names := r.Names()
	r.GateOnReady()
	workerOn(t, r, names[0])
	time.Sleep(600 * time.Millisecond)
	if strings.Contains(buf.String(), warning) {
		t.Fatalf("warned with no worker ready:\n%s", buf.String())
	}
	r.MarkReady(-1) // AddWorker's made-up pid
	waitUntil(t, "the warning", 5*time.Second, func() bool { return strings.Contains(buf.String(), warning) })
	time.Sleep(600 * time.Millisecond) // a second warning would have come
	var warned []string
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.Contains(line, warning) {
			warned = append(warned, line)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], names[1]) || strings.Contains(warned[0], names[0]) || !strings.Contains(warned[0], "ready_workers=1") {
		t.Fatalf("warnings %q, want one for %s with ready_workers=1", warned, names[1])
	}
	dialN(t, lns[1].Addr().String(), 2)
	l := workerOn(t, r, names[1])
	r.MarkReady(-2)
	if diff := cmp.Diff(seq(2), acceptN(t, l, 2)); diff != "" {
		t.Errorf("connections that waited (-want +got):\n%s", diff)
	}
	waitUntil(t, "the note", 5*time.Second, func() bool { return strings.Contains(buf.String(), "a worker serves the listener again") })
}

// TestHandoffBadWorkerUnreadRescued: a worker killed for breaking the
// protocol loses nothing it was sent and never read: once its exit is
// reported, that goes to another worker, as for any worker that dies.
func TestHandoffBadWorkerUnreadRescued(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []struct {
		name    string
		garbage []byte
	}{
		{"unknown type", []byte{'Z'}},
		{"ack beyond delivered", cluster.EncodeHandoffAck(100)},
		{"empty", []byte{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			r, lns := rig(t, "tcp")
			name := r.Names()[0]
			raw, pid, err := r.AddRawPeer()
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			if _, err := raw.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // the SUB is read
			const n = 5
			dialN(t, lns[0].Addr().String(), n)
			waitUntil(t, "delivered", 5*time.Second, func() bool { return cmp.Equal([]int{n}, r.Outstanding()) })
			if _, err := raw.Write(tc.garbage); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "violator out of the rotation", 5*time.Second, func() bool { return r.Workers() == 0 })
			raw.Close() // killed
			r.Exited(pid)
			lb := workerOn(t, r, name)
			if diff := cmp.Diff(seq(n), acceptN(t, lb, n)); diff != "" {
				t.Errorf("connections the violator never read (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHandoffMasterOutOfDescriptors: connections a worker gives back while
// the master has no free descriptor wait in the channel (the worker is not
// blamed) and are passed on once the master has room.
func TestHandoffMasterOutOfDescriptors(t *testing.T) {
	fdcensus.Verify(t)
	log := &hoLog{}
	r, lns := rigLog(t, slog.New(slog.NewJSONHandler(log, nil)), "tcp")
	name := r.Names()[0]
	const n = 3
	raw, fds := rawHolding(t, r, lns[0], name, n)
	if _, err := raw.Write(cluster.EncodeHandoffName(cluster.HoUnsub, name)); err != nil {
		t.Fatal(err)
	}
	if m, ok := rawRecv(t, raw, 5*time.Second); !ok || m.Type != cluster.HoDone {
		t.Fatalf("after UNSUB: %+v, want DONE", m)
	}
	lb := workerOn(t, r, name)
	time.Sleep(20 * time.Millisecond) // the SUB is read
	restore := squeezeFDs(t, fds[0])
	defer restore()
	names := []string{name, name, name}
	if _, _, err := raw.WriteMsgUnix(cluster.EncodeHandoffConns(cluster.HoReturn, names, []string{"a", "b", "c"}), unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "shortage warning", 5*time.Second, func() bool {
		return len(log.find("handoff: out of descriptors for connections a worker gave back; retrying")) > 0
	})
	time.Sleep(50 * time.Millisecond) // a few tries
	restore()
	if diff := cmp.Diff(seq(n), acceptN(t, lb, n)); diff != "" {
		t.Errorf("connections given back while the master was short (-want +got):\n%s", diff)
	}
	if got := log.find("handoff: worker broke the connection protocol; restarting it"); len(got) != 0 || r.Workers() != 2 {
		t.Errorf("workers %d, violations %v; want 2 and none", r.Workers(), got)
	}
}

// TestHandoffMasterCutWhole: a give-back from a worker that never
// unsubscribed is read whole, in one recvmsg; cut because the master had
// no free descriptor (and had not noticed), its connections are lost, but
// they count as acknowledged and the worker is not blamed. The next
// messages are peeked first.
func TestHandoffMasterCutWhole(t *testing.T) {
	fdcensus.Verify(t)
	log := &hoLog{}
	r, lns := rigLog(t, slog.New(slog.NewJSONHandler(log, nil)), "tcp")
	name := r.Names()[0]
	raw, fds := rawHolding(t, r, lns[0], name, 3)
	restore := squeezeFDs(t, fds[0])
	defer restore()
	names := []string{name, name, name}
	if _, _, err := raw.WriteMsgUnix(cluster.EncodeHandoffConns(cluster.HoReturn, names, []string{"a", "b", "c"}), unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "loss logged", 5*time.Second, func() bool {
		return len(log.find("handoff: out of descriptors: connections a worker gave back were lost; reading with a peek first for now")) > 0
	})
	restore()
	waitUntil(t, "none outstanding", 5*time.Second, func() bool { return cmp.Equal([]int{0}, r.Outstanding()) })
	if got := log.find("handoff: worker broke the connection protocol; restarting it"); len(got) != 0 || r.Workers() != 1 {
		t.Errorf("workers %d, violations %v; want 1 and none", r.Workers(), got)
	}
}

// TestHandoffAckWhenQueueEmpties: a worker whose queue ran empty
// acknowledges every connection it accepted, however few.
func TestHandoffAckWhenQueueEmpties(t *testing.T) {
	fdcensus.Verify(t)
	for _, n := range []int{1, 3, 4, 17} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			fdcensus.Verify(t)
			r, lns := rig(t, "tcp")
			l := workerOn(t, r, r.Names()[0])
			dialN(t, lns[0].Addr().String(), n)
			acceptN(t, l, n)
			waitUntil(t, "all acknowledged", 2*time.Second, func() bool { return cmp.Equal([]int{0}, r.Outstanding()) })
		})
	}
}

// TestHandoffSendErrors: a send that fails for lack of kernel memory, or
// of in-flight descriptors allowed to a master that is not root, is
// retried (the connection is delivered); any other failure restarts the
// worker with a logged reason, and the connection goes to another.
func TestHandoffSendErrors(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []struct {
		errno  syscall.Errno
		failed bool
	}{
		{unix.ENOMEM, false},
		{unix.ETOOMANYREFS, false},
		{unix.EINVAL, true},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			fdcensus.Verify(t)
			var faults atomic.Int32
			faults.Store(3)
			if tc.failed {
				faults.Store(1)
			}
			restore := cluster.SetHandoffSendFault(func() syscall.Errno {
				if faults.Add(-1) >= 0 {
					return tc.errno
				}
				return 0
			})
			t.Cleanup(restore) // after the rig stops
			log := &hoLog{}
			r, lns := rigLog(t, slog.New(slog.NewJSONHandler(log, nil)), "tcp")
			name := r.Names()[0]
			aw, err := r.AddWorker()
			if err != nil {
				t.Fatal(err)
			}
			a, err := aw.Listen(name)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			defer aw.Close()
			dialN(t, lns[0].Addr().String(), 1)
			if !tc.failed {
				if diff := cmp.Diff(seq(1), acceptN(t, a, 1)); diff != "" {
					t.Errorf("after %v (-want +got):\n%s", tc.errno, diff)
				}
				if got := log.find("handoff: cannot send to worker; restarting it"); len(got) != 0 || r.Workers() != 1 {
					t.Errorf("workers %d, failures logged %v; want 1, none", r.Workers(), got)
				}
				return
			}
			waitUntil(t, "failure logged", 5*time.Second, func() bool {
				return len(log.find("handoff: cannot send to worker; restarting it")) == 1
			})
			if rec := log.find("handoff: cannot send to worker; restarting it")[0]; !strings.Contains(fmt.Sprint(rec["err"]), tc.errno.Error()) {
				t.Errorf("failure %v, want one naming %v", rec, tc.errno)
			}
			waitUntil(t, "worker out of the rotation", 5*time.Second, func() bool { return r.Workers() == 0 })
			// Its channel is useless: no DONE to wait for when a closes.
			aw.Close()
			b := workerOn(t, r, name)
			if diff := cmp.Diff(seq(1), acceptN(t, b, 1)); diff != "" {
				t.Errorf("the next worker (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHandoffDualStackAddress: an IPv4 client of a listener bound to [::]
// is reported as plain IPv4, as its RemoteAddr is.
func TestHandoffDualStackAddress(t *testing.T) {
	fdcensus.Verify(t)
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skipf("no IPv6: %v", err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+port, 5*time.Second)
	if err != nil {
		t.Skipf("listener not dual-stack: %v", err)
	}
	defer c.Close()
	r, err := cluster.NewHandoffRig(nil, ln)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	defer r.Stop()
	l := workerOn(t, r, r.Names()[0])
	sc, remote, err := cluster.AcceptMeta(l)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	want := []string{c.LocalAddr().String(), c.LocalAddr().String()}
	if diff := cmp.Diff(want, []string{remote, sc.RemoteAddr().String()}); diff != "" {
		t.Errorf("reported address, RemoteAddr (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(remote, "127.0.0.1:") {
		t.Errorf("reported %q, want 127.0.0.1:port", remote)
	}
}

// squeezeFDs lowers RLIMIT_NOFILE so that no descriptor is free: the
// lowest free one, found by duplicating fd, becomes the limit. restore puts
// the limit back; it is safe to call twice.
func squeezeFDs(t *testing.T, fd int) (restore func()) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lowest, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(lowest)
	low := lim
	low.Cur = uint64(lowest) // no descriptor is free below it
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	restored := false
	return func() {
		if !restored {
			restored = true
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// rawHolding adds a raw worker subscribed to name and returns it with the n
// connections it was sent, dialled to ln; both are closed at cleanup.
func rawHolding(t *testing.T, r *cluster.HandoffRig, ln net.Listener, name string, n int) (*net.UnixConn, []int) {
	t.Helper()
	raw, err := r.AddRaw()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if _, err := raw.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the SUB is read
	dialN(t, ln.Addr().String(), n)
	fds := recvConns(t, raw, n)
	t.Cleanup(func() { closeFDs(fds) })
	return raw, fds
}
