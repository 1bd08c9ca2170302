//go:build linux

package cluster_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
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

// shortChild is a handoff worker in a child process (hoShortWorker) whose
// connection channel the test serves as the master: the child's soft
// RLIMIT_NOFILE leaves it about room free descriptors, and conns are n
// connected pairs whose accepted ends the test sends it.
type shortChild struct {
	master  *net.UnixConn
	in      io.WriteCloser
	lines   chan string
	clients []net.Conn
	servers []int
}

func startShortChild(t *testing.T, pc *proccensus.Census, room, n int) *shortChild {
	return startShortChildVersion(t, pc, room, n, "2")
}

// startShortChildVersion is startShortChild with HANDOFF_CONN_VERSION set
// to version (unset if empty).
func startShortChildVersion(t *testing.T, pc *proccensus.Census, room, n int, version string) *shortChild {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &shortChild{lines: make(chan string, 256)}
	t.Cleanup(func() { closeFDs(s.servers) })
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
	mc, child, err := scmrights.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		t.Fatal(err)
	}
	s.master = mc
	t.Cleanup(func() { mc.Close() })
	env := []string{pc.Env(), "HANDOFF_CONN_FD=3", "HO_ROOM=" + strconv.Itoa(room)}
	if version != "" {
		env = append(env, "HANDOFF_CONN_VERSION="+version)
	}
	cmd := helperproc.Command(t, "ho-short-worker", &helperproc.Options{Env: env, ExtraFiles: []*os.File{child}})
	if s.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helperproc.Start(t, cmd)
	child.Close()
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		s.do(t, "quit")
		s.in.Close()
		waitExit(t, cmd, "on quit")
	})
	return s
}

// do sends the child one command.
func (s *shortChild) do(t *testing.T, cmd string) {
	t.Helper()
	if _, err := fmt.Fprintln(s.in, cmd); err != nil {
		t.Errorf("command %q: %v", cmd, err)
	}
}

// until reads the child's lines until pred accepts one, within 10 s, and
// returns them all.
func (s *shortChild) until(t *testing.T, what string, pred func(string) bool) []string {
	t.Helper()
	var got []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("worker gone waiting for %s; it said %q", what, got)
			}
			got = append(got, l)
			if pred(l) {
				return got
			}
		case <-timeout:
			t.Fatalf("no %s from the worker in 10 s; it said %q", what, got)
		}
	}
}

// oks reads the child's lines until it accepted n connections, and returns
// their indexes in order.
func (s *shortChild) oks(t *testing.T, n int) []int {
	t.Helper()
	var got []int
	s.until(t, fmt.Sprintf("%d accepted connections", n), func(l string) bool {
		if i, ok := strings.CutPrefix(l, "ok "); ok {
			k, _ := strconv.Atoi(i)
			got = append(got, k)
		}
		return len(got) == n
	})
	return sortedInts(got)
}

// send hands the child the accepted ends i..j-1 in one batch and closes
// the copies here, as the master does.
func (s *shortChild) send(t *testing.T, i, j int) {
	t.Helper()
	names, addrs := make([]string, j-i), make([]string, j-i)
	for k := range names {
		names[k], addrs[k] = "tcp-x", "x"
	}
	if err := scmrights.Send(s.master, cluster.EncodeHandoffConns(cluster.HoConns, names, addrs), s.servers[i:j]...); err != nil {
		t.Fatal(err)
	}
	closeFDs(s.servers[i:j])
	for k := i; k < j; k++ {
		s.servers[k] = -1
	}
}

// messages collects what the worker sent on the channel until pred is
// satisfied, within 10 s.
func (s *shortChild) messages(t *testing.T, what string, pred func([]cluster.HoDecoded) bool) []cluster.HoDecoded {
	t.Helper()
	var ms []cluster.HoDecoded
	deadline := time.Now().Add(10 * time.Second)
	for !pred(ms) {
		m, ok := rawRecv(t, s.master, time.Until(deadline))
		if !ok {
			t.Fatalf("no %s from the worker; it sent %+v", what, ms)
		}
		ms = append(ms, m)
	}
	return ms
}

// alive checks that the clients are still connected: not reset, no end
// of file.
func alive(t *testing.T, clients []net.Conn) {
	t.Helper()
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("client %d of a waiting connection: %v, want it still connected", i, err)
		}
	}
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

func isSub(ms []cluster.HoDecoded) bool { return len(ms) > 0 && ms[len(ms)-1].Type == cluster.HoSub }

func span(from, to int) []int {
	out := make([]int, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

const emfileLine = "err EMFILE temporary"

// TestHandoffWorkerShortOfDescriptors: a worker near RLIMIT_NOFILE grants
// the master room for its free descriptors less a reserve, before it
// subscribes; a batch that would not fit stays in the channel (none of its
// clients is reset) while Accept fails with a temporary EMFILE, as
// accept(2) does; with room again the worker takes the batch, serves every
// connection of it and lifts its limit.
func TestHandoffWorkerShortOfDescriptors(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	const room, n = 24, 40
	s := startShortChild(t, pc, room, n)
	ms := s.messages(t, "SUB", isSub)
	g, ok := lastGrant(ms)
	// The worker's own descriptors since its limit was set take a few.
	if !ok || g < room/2 || g > room-cluster.HoReserve {
		t.Fatalf("before its SUB the worker sent %+v, want a grant of %d to %d", ms, room/2, room-cluster.HoReserve)
	}
	s.do(t, "accept 2")
	s.send(t, 0, 2)
	if diff := cmp.Diff([]int{0, 1}, s.oks(t, 2)); diff != "" {
		t.Fatalf("connections accepted within the grant (-want +got):\n%s", diff)
	}
	// More than fit, as if the server had opened descriptors since.
	s.send(t, 2, n)
	s.do(t, fmt.Sprintf("accept %d", n-2))
	s.until(t, "EMFILE", func(l string) bool {
		if strings.HasPrefix(l, "ok ") {
			t.Fatalf("accepted %q from a batch of %d with about %d descriptors free", l, n-2, room)
		}
		return l == emfileLine
	})
	alive(t, s.clients[2:])
	s.do(t, "room")
	if diff := cmp.Diff(span(2, n), s.oks(t, n-2)); diff != "" {
		t.Errorf("connections of the batch that waited (-want +got):\n%s", diff)
	}
	ms = s.messages(t, "acks and a lifted limit", func(ms []cluster.HoDecoded) bool {
		g, ok := lastGrant(ms)
		return ok && g == cluster.HoNoLimit && acked(ms) > n-4
	})
	if a := acked(ms); a > n {
		t.Errorf("acknowledged %d connections of %d", a, n)
	}
}

// TestHandoffWorkerServerFillsTable: a worker with room at first, whose
// server then opens descriptors of its own until few are free, notices it
// within hoRecheckIdle, grants the master only what is left and leaves a
// larger batch in the channel until the server closes them.
func TestHandoffWorkerServerFillsTable(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	const room, n = 400, cluster.HoMaxBatch
	s := startShortChild(t, pc, room, n)
	if ms := s.messages(t, "SUB", isSub); len(ms) != 1 {
		t.Fatalf("worker with room sent %+v, want only its SUB", ms)
	}
	s.do(t, fmt.Sprintf("accept %d", n))
	s.do(t, "fill 40")
	s.until(t, "filled", func(l string) bool { return l == "filled" })
	ms := s.messages(t, "grant", func(ms []cluster.HoDecoded) bool { _, ok := lastGrant(ms); return ok })
	if g, _ := lastGrant(ms); g < 20 || g > 40-cluster.HoReserve {
		t.Fatalf("grant %d with 40 descriptors free, want 20 to %d", g, 40-cluster.HoReserve)
	}
	s.send(t, 0, n)
	s.until(t, "EMFILE", func(l string) bool {
		if strings.HasPrefix(l, "ok ") {
			t.Fatalf("accepted %q from a batch of %d with 40 descriptors free", l, n)
		}
		return l == emfileLine
	})
	alive(t, s.clients)
	s.do(t, "free")
	if diff := cmp.Diff(span(0, n), s.oks(t, n)); diff != "" {
		t.Errorf("connections of the batch that waited (-want +got):\n%s", diff)
	}
}

// TestHandoffWorkerOldMaster: under a master that does not announce
// version 2 the worker sends no grant (such a master would kill it for
// one), and still leaves a batch that would not fit in the channel.
func TestHandoffWorkerOldMaster(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	const room, n = 24, 40
	s := startShortChildVersion(t, pc, room, n, "")
	if ms := s.messages(t, "SUB", isSub); len(ms) != 1 {
		t.Fatalf("worker under an old master sent %+v, want only its SUB", ms)
	}
	s.send(t, 0, n)
	s.do(t, fmt.Sprintf("accept %d", n))
	s.until(t, "EMFILE", func(l string) bool {
		if strings.HasPrefix(l, "ok ") {
			t.Fatalf("accepted %q from a batch of %d with about %d descriptors free", l, n, room)
		}
		return l == emfileLine
	})
	alive(t, s.clients)
	s.do(t, "room")
	if diff := cmp.Diff(span(0, n), s.oks(t, n)); diff != "" {
		t.Errorf("connections of the batch that waited (-want +got):\n%s", diff)
	}
	ms := s.messages(t, "acks", func(ms []cluster.HoDecoded) bool { return acked(ms) > n-4 })
	for _, m := range ms {
		if m.Type == cluster.HoGrant {
			t.Errorf("worker under an old master sent a grant: %+v", ms)
			break
		}
	}
}

// TestHandoffWorkerCloseWhileShort: a listener closed while a batch waits
// in the channel for descriptors gives back its queued connections first,
// which makes room for the batch; the batch is then taken and given back
// too, so the master can pass every connection on and none is lost.
func TestHandoffWorkerCloseWhileShort(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	// Eight queued leave about 15 descriptors free: too few for a batch of
	// 17, enough once they are given back.
	const room, n = 24, 26
	s := startShortChild(t, pc, room, n)
	s.messages(t, "SUB", isSub)
	s.do(t, "accept 1")
	s.send(t, 0, 9)
	if diff := cmp.Diff([]int{0}, s.oks(t, 1)); diff != "" {
		t.Fatalf("first connection (-want +got):\n%s", diff)
	}
	s.send(t, 9, n)
	s.do(t, "close")
	var back []int
	doneSent := false
	s.messages(t, "return of every connection", func(ms []cluster.HoDecoded) bool {
		if len(ms) == 0 {
			return false
		}
		switch m := ms[len(ms)-1]; m.Type {
		case cluster.HoUnsub:
			if err := scmrights.Send(s.master, cluster.EncodeHandoffName(cluster.HoDone, "tcp-x")); err != nil {
				t.Fatal(err)
			}
			doneSent = true
		case cluster.HoReturn:
			for _, fd := range m.FDs {
				back = append(back, readIndex(t, fd)-1000)
			}
		}
		return len(back) == n-1
	})
	if !doneSent {
		t.Error("no UNSUB before the connections came back")
	}
	if diff := cmp.Diff(span(1, n), sortedInts(back)); diff != "" {
		t.Errorf("connections given back (-want +got):\n%s", diff)
	}
	s.until(t, "Close", func(l string) bool { return strings.HasPrefix(l, "closed") })
}

// TestHandoffWorkerLostBatchAcked: a batch that arrives when the process
// has no descriptor left for it (the server opened them after the count)
// is lost, but acknowledged, so the master's window for the worker does
// not shrink for good; Accept fails with EMFILE, and the worker serves the
// next batch once descriptors are free.
func TestHandoffWorkerLostBatchAcked(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	const room, n = 24, 6
	s := startShortChild(t, pc, room, n)
	s.messages(t, "SUB", isSub)
	// Queued before the worker reads: its count finds room for it.
	s.send(t, 0, 5)
	s.do(t, "arm")
	s.until(t, "armed", func(l string) bool { return l == "armed" })
	s.do(t, "accept 1")
	ms := s.messages(t, "ack of the lost batch", func(ms []cluster.HoDecoded) bool { return acked(ms) > 0 })
	if a := acked(ms); a != 5 {
		t.Errorf("acknowledged %d connections of a lost batch of 5", a)
	}
	s.until(t, "EMFILE", func(l string) bool { return l == emfileLine })
	for i, c := range s.clients[:5] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("client %d of a lost connection: %v, want end of file or a reset", i, err)
		}
	}
	s.do(t, "free")
	s.send(t, 5, 6)
	if diff := cmp.Diff([]int{5}, s.oks(t, 1)); diff != "" {
		t.Errorf("connection after the lost batch (-want +got):\n%s", diff)
	}
}

// hoShortWorker is the worker of the tests above: a handoff listener
// "tcp-x" on HANDOFF_CONN_FD with the soft RLIMIT_NOFILE set so that
// HO_ROOM descriptors are free, driven by commands on stdin, one a line:
//
//	accept N  accept until N connections, in the background: "ok <index>"
//	          for each, "err <error>" for each failure (then 5 ms back-off)
//	fill K    open /dev/null until K descriptors are free: "filled"
//	free      close what fill and arm opened: "freed"
//	arm       the next recvmsg finds the table full (filled before it): "armed"
//	room      restore the limit Go started with: "roomy"
//	close     close the listener, in the background: "closed <error>"
//	quit      exit 0
func hoShortWorker() int {
	var out sync.Mutex
	say := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	var start unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &start); err != nil {
		say("getrlimit: %v", err)
		return 3
	}
	openNow := func() int {
		ents, _ := os.ReadDir("/proc/self/fd")
		return len(ents) - 1 // ReadDir's own
	}
	room, _ := strconv.Atoi(os.Getenv("HO_ROOM"))
	lim := start
	lim.Cur = uint64(openNow() + room)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		say("setrlimit: %v", err)
		return 3
	}
	ln, err := cluster.HandoffListener("tcp-x")
	if err != nil {
		say("listen: %v", err)
		return 3
	}
	var fmu sync.Mutex
	var filler []int
	fill := func(max int) {
		fmu.Lock()
		defer fmu.Unlock()
		for range max {
			fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return
			}
			filler = append(filler, fd)
		}
	}
	armed := false
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		k, _ := strconv.Atoi(arg)
		switch cmd {
		case "accept":
			go func() {
				deadline := time.Now().Add(20 * time.Second)
				for n := 0; n < k && time.Now().Before(deadline); {
					c, err := ln.Accept()
					var ne net.Error
					switch {
					//lint:ignore SA1019 net/http backs off on exactly this.
					case errors.Is(err, unix.EMFILE) && errors.As(err, &ne) && ne.Temporary():
						say(emfileLine)
						time.Sleep(5 * time.Millisecond)
					case err != nil:
						say("err %v", err)
						time.Sleep(5 * time.Millisecond)
					default:
						buf := make([]byte, 4)
						c.SetReadDeadline(time.Now().Add(5 * time.Second))
						_, err := io.ReadFull(c, buf)
						c.Close()
						i, _ := strconv.Atoi(string(buf))
						if err != nil {
							say("err reading: %v", err)
						} else {
							say("ok %d", i-1000)
						}
						n++
					}
				}
			}()
		case "fill":
			var now unix.Rlimit
			unix.Getrlimit(unix.RLIMIT_NOFILE, &now)
			fill(int(now.Cur) - openNow() - k)
			say("filled")
		case "free":
			fmu.Lock()
			for _, fd := range filler {
				unix.Close(fd)
			}
			filler = filler[:0]
			fmu.Unlock()
			say("freed")
		case "arm":
			cluster.SetHandoffBeforeRecv(func() {
				if !armed {
					armed = true
					fill(1 << 20)
				}
			})
			say("armed")
		case "close":
			go func() { say("closed %v", ln.Close()) }()
		case "room":
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &start); err != nil {
				say("setrlimit: %v", err)
			}
			say("roomy")
		case "quit":
			return 0
		}
	}
	return 0
}
