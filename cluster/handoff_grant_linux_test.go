//go:build linux

package cluster_test

import (
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// rawRecv reads one message from a raw end of a connection channel within
// 5 s and decodes it; a timeout returns ok false.
func rawRecv(t *testing.T, c *net.UnixConn, d time.Duration) (m cluster.HoDecoded, ok bool) {
	t.Helper()
	buf := make([]byte, cluster.HoMaxMsg)
	fds := make([]int, cluster.HoMaxBatch)
	c.SetReadDeadline(time.Now().Add(d))
	n, nfd, err := scmrights.Recv(c, buf, fds)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return m, false
	}
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	m, err = cluster.DecodeHandoff(buf[:n], fds[:nfd])
	if err != nil {
		t.Fatalf("message % x: %v", buf[:n], err)
	}
	return m, true
}

// TestHandoffGrant: the master never sends a worker more connections than
// its last grant allows (counted from the first one sent), waits with the
// rest without dropping any, and sends them when a grant makes room; a
// grant without a limit lifts it, and one behind what was sent is no room.
func TestHandoffGrant(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	c, err := r.AddRaw()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	write := func(p []byte) {
		t.Helper()
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	write(cluster.EncodeHandoffGrant(3))
	write(cluster.EncodeHandoffName(cluster.HoSub, name))
	addr := lns[0].Addr().String()
	dialN(t, addr, 5)
	// take receives connections until want arrived, then checks that no
	// more come while the master has more to send.
	var got []int
	take := func(want int) {
		t.Helper()
		for n := 0; n < want; {
			m, ok := rawRecv(t, c, 5*time.Second)
			if !ok {
				t.Fatalf("received %d connections of %d", n, want)
			}
			for _, fd := range m.FDs {
				got = append(got, readIndex(t, fd))
			}
			n += len(m.FDs)
			if n > want {
				t.Fatalf("received %d connections, want %d", n, want)
			}
		}
		if m, ok := rawRecv(t, c, 200*time.Millisecond); ok {
			closeFDs(m.FDs)
			t.Fatalf("received %q with %d descriptors beyond the grant", m.Type, len(m.FDs))
		}
	}
	take(3)
	write(cluster.EncodeHandoffAck(3))
	// The window has room; the grant has none.
	waitUntil(t, "ack counted", 5*time.Second, func() bool { return cmp.Equal([]int{0}, r.Outstanding()) })
	take(0)
	write(cluster.EncodeHandoffGrant(1)) // behind the 3 sent
	take(0)
	write(cluster.EncodeHandoffGrant(5))
	take(2)
	write(cluster.EncodeHandoffGrant(cluster.HoNoLimit))
	dialN(t, addr, 3)
	take(3)
	// dialN numbers each call's connections from 0.
	if diff := cmp.Diff([]int{0, 0, 1, 1, 2, 2, 3, 4}, sortedInts(got)); diff != "" {
		t.Errorf("connections received (-want +got):\n%s", diff)
	}
}

// readIndex reads the index a dialN connection sent on fd and closes it.
func readIndex(t *testing.T, fd int) int {
	t.Helper()
	f := os.NewFile(uintptr(fd), "conn")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading a handed-off connection: %v", err)
	}
	i, err := strconv.Atoi(string(buf))
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func sortedInts(s []int) []int {
	out := append([]int(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// shortWorker is a worker channel whose far end the test plays master on,
// in this process with its soft RLIMIT_NOFILE lowered so that room free
// descriptors remain; conns are n connected pairs made before that, each
// client having sent its index.
type shortWorker struct {
	master  *net.UnixConn
	l       net.Listener
	clients []net.Conn
	servers []int // the accepted ends, sent to the worker by send
}

func newShortWorker(t *testing.T, room, n int) *shortWorker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &shortWorker{}
	for i := range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write([]byte(strconv.Itoa(1000 + i))); err != nil {
			t.Fatal(err)
		}
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		fd, err := scmrights.Dup(sc.(*net.TCPConn))
		sc.Close()
		if err != nil {
			t.Fatal(err)
		}
		s.clients = append(s.clients, c)
		s.servers = append(s.servers, fd)
	}
	ln.Close()
	t.Cleanup(func() { closeFDs(s.servers) })
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mc, err := scmrights.UnixConn(pair[0])
	if err != nil {
		unix.Close(pair[1])
		t.Fatal(err)
	}
	s.master = mc
	t.Cleanup(func() { mc.Close() })
	uc, err := scmrights.UnixConn(pair[1])
	if err != nil {
		t.Fatal(err)
	}
	setRoom(t, room)
	w, err := cluster.NewHandoffWorker(uc)
	if err != nil {
		t.Fatal(err)
	}
	if s.l, err = w.Listen("tcp-x"); err != nil {
		w.Close()
		t.Fatal(err)
	}
	// The worker's end first: Close then waits for no DONE.
	t.Cleanup(func() {
		w.Close()
		s.l.Close()
	})
	if m, ok := rawRecv(t, s.master, 5*time.Second); !ok || m.Type != cluster.HoSub {
		t.Fatalf("first message %+v, want a SUB", m)
	}
	return s
}

// setRoom lowers the soft RLIMIT_NOFILE so that about room descriptors
// are free, until restored: when the test ends, at the latest.
func setRoom(t *testing.T, room int) (restore func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = uint64(len(ents) - 1 + room) // ReadDir's own was one
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	restore = func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(restore)
	return restore
}

// send hands the worker the accepted ends i..j-1 in one batch. The real
// master closes its copies at once, in its own process; here they are in
// the worker's and would free room, so they stay open until drop.
func (s *shortWorker) send(t *testing.T, i, j int) {
	t.Helper()
	names, addrs := make([]string, j-i), make([]string, j-i)
	for k := range names {
		names[k], addrs[k] = "tcp-x", "x"
	}
	if err := scmrights.Send(s.master, cluster.EncodeHandoffConns(cluster.HoConns, names, addrs), s.servers[i:j]...); err != nil {
		t.Fatal(err)
	}
}

// drop closes the master's copies of the accepted ends i..j-1.
func (s *shortWorker) drop(i, j int) {
	closeFDs(s.servers[i:j])
	for k := i; k < j; k++ {
		s.servers[k] = -1
	}
}

// accept is one Accept within 10 s; it returns the index the client sent
// (-1 for none) and the error.
func (s *shortWorker) accept(t *testing.T) (int, error) {
	t.Helper()
	c, err := acceptWithin(t, s.l)
	if err != nil {
		return -1, err
	}
	defer c.Close()
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading an accepted connection: %v", err)
	}
	i, _ := strconv.Atoi(string(buf))
	return i - 1000, nil
}

// messages collects what the worker sent until pred is satisfied, within
// 5 s.
func (s *shortWorker) messages(t *testing.T, what string, pred func([]cluster.HoDecoded) bool) []cluster.HoDecoded {
	t.Helper()
	var ms []cluster.HoDecoded
	deadline := time.Now().Add(5 * time.Second)
	for !pred(ms) {
		m, ok := rawRecv(t, s.master, time.Until(deadline))
		if !ok {
			t.Fatalf("no %s from the worker; it sent %+v", what, ms)
		}
		ms = append(ms, m)
	}
	return ms
}

func lastGrant(ms []cluster.HoDecoded) (int64, bool) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Type == cluster.HoGrant {
			return ms[i].Limit, true
		}
	}
	return 0, false
}

func acked(ms []cluster.HoDecoded) int {
	n := 0
	for _, m := range ms {
		if m.Type == cluster.HoAck {
			n += m.N
		}
	}
	return n
}

// TestHandoffWorkerShortOfDescriptors: a worker near RLIMIT_NOFILE grants
// the master room for its free descriptors less a reserve; a batch that
// would not fit stays in the socket (nothing is lost) while Accept fails
// with a temporary EMFILE, as accept(2) does; once descriptors are free
// again the worker takes the batch, serves every connection of it and
// lifts its limit.
func TestHandoffWorkerShortOfDescriptors(t *testing.T) {
	fdcensus.Verify(t)
	const room, n = 24, 40
	s := newShortWorker(t, room, n)
	type res struct {
		i   int
		err error
	}
	first := make(chan res, 1)
	go func() { i, err := s.accept(t); first <- res{i, err} }()
	ms := s.messages(t, "grant", func(ms []cluster.HoDecoded) bool { _, ok := lastGrant(ms); return ok })
	g, _ := lastGrant(ms)
	// The receiver and Accept hold a few descriptors of their own.
	if g < room/2 || g > room-cluster.HoReserve {
		t.Fatalf("first grant %d connections with %d descriptors free, want %d to %d", g, room, room/2, room-cluster.HoReserve)
	}
	s.send(t, 0, 2)
	select {
	case rs := <-first:
		if rs.err != nil || rs.i != 0 {
			t.Fatalf("first Accept: %d, %v; want connection 0", rs.i, rs.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("first Accept did not return")
	}
	if i, err := s.accept(t); err != nil || i != 1 {
		t.Fatalf("second Accept: %d, %v; want connection 1", i, err)
	}
	// More than fit: the server opened descriptors since its grant, say.
	s.send(t, 2, n)
	for range 2 {
		_, err := s.accept(t)
		var ne net.Error
		//lint:ignore SA1019 net/http's Server.Serve backs off on exactly this.
		if !errors.Is(err, unix.EMFILE) || !errors.As(err, &ne) || !ne.Temporary() {
			t.Fatalf("Accept with a batch of %d queued and %d descriptors free: %v; want a temporary EMFILE", n-2, room, err)
		}
	}
	// Every client of the waiting batch is still connected.
	for _, c := range s.clients[2:] {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("client of a waiting connection: %v, want it still open", err)
		}
	}
	setRoom(t, 10*(cluster.HoWindow+cluster.HoMaxBatch))
	s.drop(0, n)
	var got []int
	for range n - 2 {
		i, err := s.accept(t)
		if err != nil {
			t.Fatalf("Accept with room again, after %d: %v", len(got), err)
		}
		got = append(got, i)
	}
	want := make([]int, n-2)
	for i := range want {
		want[i] = i + 2
	}
	if diff := cmp.Diff(want, sortedInts(got)); diff != "" {
		t.Errorf("connections of the batch that waited (-want +got):\n%s", diff)
	}
	ms = s.messages(t, "ack of every connection and a lifted limit", func(ms []cluster.HoDecoded) bool {
		g, ok := lastGrant(ms)
		return ok && g == cluster.HoNoLimit && acked(ms) >= n-4
	})
	if a := acked(ms); a > n {
		t.Errorf("acknowledged %d connections of %d", a, n)
	}
}

// TestHandoffWorkerLostBatchAcked: a batch that arrives when the process
// has no descriptor left for it (the server opened them after the count)
// is lost, but acknowledged, so the master's window for the worker does
// not shrink for good; the worker counts before every read from then on
// and serves the next batch once descriptors are free.
func TestHandoffWorkerLostBatchAcked(t *testing.T) {
	fdcensus.Verify(t)
	const room, n = 24, 6
	s := newShortWorker(t, room, n)
	var filler []int
	restore := cluster.SetHandoffBeforeRecv(func() {
		// Exhaust the table between the count and the recvmsg, once.
		if filler != nil {
			return
		}
		for range 4 * room {
			fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				break
			}
			filler = append(filler, fd)
		}
	})
	defer restore()
	defer func() { closeFDs(filler) }()
	// Queued before the worker reads: its count finds room for it.
	s.send(t, 0, 5)
	done := make(chan error, 1)
	go func() { _, err := s.accept(t); done <- err }()
	ms := s.messages(t, "ack of the lost batch", func(ms []cluster.HoDecoded) bool { return acked(ms) > 0 })
	if a := acked(ms); a != 5 {
		t.Errorf("acknowledged %d connections of a lost batch of 5", a)
	}
	select {
	case err := <-done:
		if !errors.Is(err, unix.EMFILE) {
			t.Errorf("Accept out of descriptors: %v, want EMFILE", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Accept out of descriptors did not return")
	}
	s.drop(0, 5)
	for _, c := range s.clients[:5] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("client of a lost connection read a byte, want end of file or a reset")
		}
	}
	closeFDs(filler)
	filler = filler[:0]
	s.send(t, 5, 6)
	s.drop(5, 6)
	if i, err := s.accept(t); err != nil || i != 5 {
		t.Errorf("Accept once descriptors are free: %d, %v; want connection 5", i, err)
	}
}
