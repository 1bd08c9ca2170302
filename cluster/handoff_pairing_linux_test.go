//go:build linux

package cluster_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// The master answers every UNSUB, and an SUB of a name it does not have,
// with one DONE, in order; the worker pairs each DONE with its oldest
// UNSUB of the name still unanswered. These tests pin that pairing.

// fakeMaster returns the master's end of a connection channel and the
// worker on the other end; both are closed when the test ends.
func fakeMaster(t *testing.T) (*net.UnixConn, *cluster.HandoffWorker) {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := scmrights.UnixConn(pair[0])
	if err != nil {
		unix.Close(pair[1])
		t.Fatal(err)
	}
	uc, err := scmrights.UnixConn(pair[1])
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	w, err := cluster.NewHandoffWorker(uc)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.Close()
		m.Close()
	})
	return m, w
}

// expectMsg reads the worker's next message other than an ack or a grant
// and checks its type and name; ok false if none came within d.
func expectMsg(t *testing.T, m *net.UnixConn, typ byte, name string, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for i := 0; i < 1000 && time.Now().Before(deadline); i++ {
		msg, ok := rawRecv(t, m, time.Until(deadline))
		if !ok {
			return false
		}
		closeFDs(msg.FDs)
		if msg.Type == cluster.HoAck || msg.Type == cluster.HoGrant {
			continue
		}
		if msg.Type != typ || msg.Name != name {
			t.Fatalf("the worker sent %q %q, want %q %q", msg.Type, msg.Name, typ, name)
		}
		return true
	}
	return false
}

// sendConn sends the worker one connection of name: an end of a stream
// socket pair, whose other end is returned.
func sendConn(t *testing.T, m *net.UnixConn, name string) *net.UnixConn {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	client, err := scmrights.UnixConn(sp[0])
	if err != nil {
		unix.Close(sp[1])
		t.Fatal(err)
	}
	p := cluster.EncodeHandoffConns(cluster.HoConns, []string{name}, []string{""})
	_, _, err = m.WriteMsgUnix(p, unix.UnixRights(sp[1]), nil)
	unix.Close(sp[1])
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	return client
}

// closeAnswered closes l, answering its UNSUB with a DONE as the master
// does, and fails if Close sends no UNSUB or does not return.
func closeAnswered(t *testing.T, m *net.UnixConn, l net.Listener, name string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- l.Close() }()
	unsub := expectMsg(t, m, cluster.HoUnsub, name, 2*time.Second)
	if unsub {
		if _, err := m.Write(cluster.EncodeHandoffName(cluster.HoDone, name)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close does not return")
	}
	if !unsub {
		t.Fatal("the last Close sent no UNSUB: the master would stay subscribed")
	}
}

// TestHandoffLateDoneIsNotARefusal: a DONE that arrives after its Close
// stopped waiting (the reader was late) answers that Close's UNSUB, not
// the SUB of the next listener of the name. It used to be taken for a
// refusal ("the master has no listener"): Accept failed while the master
// had the name subscribed, and the connections it sent went back and forth
// between master and worker.
func TestHandoffLateDoneIsNotARefusal(t *testing.T) {
	fdcensus.Verify(t)
	defer cluster.SetHandoffCloseWait(100 * time.Millisecond)()
	m, w := fakeMaster(t)
	const name = "tcp-x"
	l1, err := w.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	if !expectMsg(t, m, cluster.HoSub, name, 5*time.Second) {
		t.Fatal("no SUB")
	}
	// Not answered in time: Close gives up.
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	if !expectMsg(t, m, cluster.HoUnsub, name, 5*time.Second) {
		t.Fatal("no UNSUB")
	}
	l2, err := w.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	if !expectMsg(t, m, cluster.HoSub, name, 5*time.Second) {
		t.Fatal("no second SUB")
	}
	// The master answers in order: DONE for the UNSUB, nothing for the SUB
	// of a listener it has; then a connection for l2.
	if _, err := m.Write(cluster.EncodeHandoffName(cluster.HoDone, name)); err != nil {
		t.Fatal(err)
	}
	client := sendConn(t, m, name)
	defer client.Close()
	c, err := acceptWithin(t, l2)
	if err != nil {
		t.Fatalf("the next listener of the name: %v", err)
	}
	c.Close()
	closeAnswered(t, m, l2, name)
}

// TestHandoffRefusedCloseUnsubscribes: the last Close of a listener the
// master refused (no such name) still sends UNSUB, so that if the DONE
// taken for the refusal was meant for something else, the master does not
// stay subscribed with connections going back and forth. It used to send
// none.
func TestHandoffRefusedCloseUnsubscribes(t *testing.T) {
	fdcensus.Verify(t)
	m, w := fakeMaster(t)
	const name = "tcp-nosuch"
	l, err := w.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	if !expectMsg(t, m, cluster.HoSub, name, 5*time.Second) {
		t.Fatal("no SUB")
	}
	if _, err := m.Write(cluster.EncodeHandoffName(cluster.HoDone, name)); err != nil {
		t.Fatal(err)
	}
	if _, err := acceptWithin(t, l); !errors.Is(err, cluster.ErrNoHandoff) {
		t.Fatalf("Accept of a refused name: %v, want ErrNoHandoff", err)
	}
	closeAnswered(t, m, l, name)
}

// TestHandoffRefusedCloseSparesNewer: a listener refused (the master had no
// such name) is still open when the name becomes known (the master binds it
// for a worker's Listen) and the worker listens again. The refused one's
// last Close must not send UNSUB: the master's subscription is the newer
// listener's. It used to, and the newer listener was never served.
func TestHandoffRefusedCloseSparesNewer(t *testing.T) {
	fdcensus.Verify(t)
	r, _ := rig(t, "tcp")
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	name := cluster.ListenerName(ln2)
	w, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	l1, err := w.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acceptWithin(t, l1); !errors.Is(err, cluster.ErrNoHandoff) {
		t.Fatalf("Accept of a name the master lacks: %v, want ErrNoHandoff", err)
	}
	if err := r.AddListener(ln2); err != nil {
		t.Fatal(err)
	}
	l2, err := w.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", ln2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := acceptWithin(t, l2)
	if err != nil {
		t.Fatalf("the newer listener of the name, after the refused one closed: %v (outstanding %v)", err, r.Outstanding())
	}
	got.Close()
}

// TestHandoffListenRacingLastClose: a Listen that comes while the last
// Close of its name has not sent UNSUB yet sends its SUB after it, so the
// master reads UNSUB then SUB and the new listener is served. The hook
// runs that Listen at the worst moment; it used to send its SUB first, the
// master then unsubscribed the worker for good, and the new listener's
// Accept waited forever.
func TestHandoffListenRacingLastClose(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	w, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	l1, err := w.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	type res struct {
		l   net.Listener
		err error
	}
	ch := make(chan res, 1)
	defer cluster.SetHandoffBeforeUnsub(func(string) {
		go func() { l, err := w.Listen(name); ch <- res{l, err} }()
		// A Listen that does not wait for the UNSUB is done by then.
		select {
		case rs := <-ch:
			ch <- rs
		case <-time.After(300 * time.Millisecond):
		}
	})()
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	var rs res
	select {
	case rs = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("Listen does not return")
	}
	if rs.err != nil {
		t.Fatal(rs.err)
	}
	defer rs.l.Close()
	dialN(t, lns[0].Addr().String(), 1)
	c, err := acceptWithin(t, rs.l)
	if err != nil {
		t.Fatalf("the new listener: %v (outstanding %v)", err, r.Outstanding())
	}
	c.Close()
}

// TestHandoffOwedDones: every UNSUB gets its DONE, also when the worker's
// channel is full and the DONEs are owed, however many of one name, and
// an SUB of the name meanwhile drops none: the worker pairs them in order.
// The master used to owe at most one per name and to drop it on an SUB,
// so a DONE was missing and the next one was taken for a refusal.
func TestHandoffOwedDones(t *testing.T) {
	fdcensus.Verify(t)
	r, _ := rig(t, "tcp")
	name := r.Names()[0]
	c, err := r.AddRaw()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	write := func(p []byte) {
		t.Helper()
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(p); err != nil {
			t.Fatalf("write: %v (the master stopped reading)", err)
		}
	}
	write(cluster.EncodeHandoffName(cluster.HoSub, name))
	// Far more DONEs than the channel holds: the rest are owed.
	const flood = 3000
	u := cluster.EncodeHandoffName(cluster.HoUnsub, "nosuch")
	for range flood {
		write(u)
	}
	write(cluster.EncodeHandoffName(cluster.HoUnsub, name))
	write(cluster.EncodeHandoffName(cluster.HoSub, name))
	write(cluster.EncodeHandoffName(cluster.HoUnsub, name))
	write(cluster.EncodeHandoffName(cluster.HoSub, name))
	ms := drainRaw(t, c, 500*time.Millisecond)
	var got []string
	nosuch := 0
	for _, m := range ms {
		switch {
		case m.Type != cluster.HoDone:
			t.Errorf("message %q", m.Type)
		case m.Name == "nosuch":
			nosuch++
			if len(got) > 0 {
				t.Errorf("a DONE of nosuch after one of %s", name)
			}
		default:
			got = append(got, m.Name)
		}
	}
	if nosuch != flood || len(got) != 2 {
		t.Errorf("DONEs: %d of nosuch, %d of %s; want %d and 2", nosuch, len(got), name, flood)
	}
}
