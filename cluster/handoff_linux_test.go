//go:build linux

package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// rig starts a handoff dispatcher on fresh loopback listeners, stopped at
// cleanup.
func rig(t *testing.T, networks ...string) (*cluster.HandoffRig, []net.Listener) {
	t.Helper()
	return rigLog(t, nil, networks...)
}

// rigLog is rig with the dispatcher's log going to log (nil: discarded).
func rigLog(t *testing.T, log *slog.Logger, networks ...string) (*cluster.HandoffRig, []net.Listener) {
	t.Helper()
	var lns []net.Listener
	for _, nw := range networks {
		var ln net.Listener
		var err error
		if nw == "unix" {
			ln, err = net.Listen("unix", filepath.Join(shortTemp(t), "s"))
		} else {
			ln, err = net.Listen("tcp", "127.0.0.1:0")
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		lns = append(lns, ln)
	}
	r, err := cluster.NewHandoffRig(log, lns...)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(r.Stop)
	return r, lns
}

// shortTemp is a temporary directory with a path short enough for a unix
// socket.
func shortTemp(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ho")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitExit waits up to 10 s for cmd, a helper told to stop (what it was
// told, for the message), to exit 0; past that it is killed and reaped.
func waitExit(t *testing.T, cmd *exec.Cmd, what string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("worker: %v", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Errorf("worker did not exit %s within 10 s", what)
	}
}

// TestHandoffMetadata: a handed-off connection arrives on the listener of
// its name, as the right connection type, with the remote address the
// master saw, and carries the client's bytes both ways.
func TestHandoffMetadata(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp", "unix")
	w, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	names := r.Names()
	var hls []net.Listener
	for _, name := range names {
		hl, err := w.Listen(name)
		if err != nil {
			t.Fatal(err)
		}
		defer hl.Close()
		hls = append(hls, hl)
	}
	for i, tc := range []struct {
		network string
		connT   string
	}{
		{"tcp", "*net.TCPConn"},
		{"unix", "*net.UnixConn"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			c, err := net.Dial(tc.network, lns[i].Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			sc, remote, err := cluster.AcceptMeta(hls[i])
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			buf := make([]byte, 4)
			if _, err := io.ReadFull(sc, buf); err != nil {
				t.Fatal(err)
			}
			sc.Write([]byte("pong"))
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatal(err)
			}
			wantRemote := c.LocalAddr().String()
			if tc.network == "unix" {
				wantRemote = "" // an unbound client has no name
			}
			want := []string{tc.connT, wantRemote, sc.LocalAddr().String(), "pong"}
			got := []string{fmt.Sprintf("%T", sc), remote, lns[i].Addr().String(), string(buf)}
			if tc.network == "tcp" {
				want = append(want, sc.RemoteAddr().String())
				got = append(got, remote)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("conn type, remote, local, reply (-want +got):\n%s", diff)
			}
		})
	}
}

// workerOn adds a worker to r and returns its listener on name; both are
// closed when the test ends.
func workerOn(t *testing.T, r *cluster.HandoffRig, name string) net.Listener {
	t.Helper()
	w, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	l, err := w.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// dialN opens n connections that each send their index.
func dialN(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var cs []net.Conn
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "%04d", i)
		cs = append(cs, c)
	}
	return cs
}

// acceptN accepts n connections from l and returns the indexes they sent.
func acceptN(t *testing.T, l net.Listener, n int) []int {
	t.Helper()
	var got []int
	for range n {
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() { c, err := l.Accept(); ch <- res{c, err} }()
		var rs res
		select {
		case rs = <-ch:
		case <-time.After(10 * time.Second):
			l.Close()
			<-ch
			t.Fatalf("accepted %d of %d", len(got), n)
		}
		if rs.err != nil {
			t.Fatalf("accepted %d of %d: %v", len(got), n, rs.err)
		}
		buf := make([]byte, 4)
		rs.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(rs.c, buf); err != nil {
			t.Fatal(err)
		}
		rs.c.Close()
		i, _ := strconv.Atoi(string(buf))
		got = append(got, i)
	}
	sort.Ints(got)
	return got
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// TestHandoffCloseGivesBack: connections a worker received but did not
// accept go back to the master when it closes its listener, and reach
// another worker; none is lost (the graceful path of every restart).
func TestHandoffCloseGivesBack(t *testing.T) {
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
	const n = 40
	dialN(t, lns[0].Addr().String(), n)
	waitUntil(t, "connections delivered to worker A", 5*time.Second, func() bool {
		o := r.Outstanding()
		return len(o) == 1 && o[0] == n
	})
	lb := workerOn(t, r, name)
	if err := la.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := la.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if diff := cmp.Diff(seq(n), acceptN(t, lb, n)); diff != "" {
		t.Errorf("connections worker B accepted (-want +got):\n%s", diff)
	}
}

// TestHandoffHeldUntilWorker: connections that come while no worker
// serves their listener wait (in the kernel's backlog: the master does not
// accept them) and are delivered to the first worker that listens, also
// when the only worker died first.
func TestHandoffHeldUntilWorker(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	dead, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	dead.Close()
	waitUntil(t, "dead worker removed", 5*time.Second, func() bool { return r.Workers() == 0 })
	const n = 100
	dialN(t, lns[0].Addr().String(), n)
	time.Sleep(50 * time.Millisecond)
	l := workerOn(t, r, name)
	if diff := cmp.Diff(seq(n), acceptN(t, l, n)); diff != "" {
		t.Errorf("connections accepted (-want +got):\n%s", diff)
	}
}

// TestHandoffStuckWorkerDoesNotBlock: a worker that subscribes and never
// reads gets at most its window of connections; every other connection
// goes to the worker that accepts. A worker that listens on another name
// gets none.
func TestHandoffStuckWorkerDoesNotBlock(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	stuck, err := r.AddRaw()
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	if _, err := stuck.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
		t.Fatal(err)
	}
	other, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	lo, err := other.Listen("tcp-elsewhere")
	if err == nil {
		defer lo.Close()
		// The master has no such listener: Accept fails.
		if _, err := lo.Accept(); !errors.Is(err, cluster.ErrNoHandoff) {
			t.Errorf("Accept on an unknown name: %v, want ErrNoHandoff", err)
		}
	}
	waitUntil(t, "subscription", 5*time.Second, func() bool { return r.Workers() == 2 })
	time.Sleep(20 * time.Millisecond) // the SUB is read
	const n = 300
	dialN(t, lns[0].Addr().String(), n)
	waitUntil(t, "stuck worker's window filled", 10*time.Second, func() bool {
		o := r.Outstanding()
		return len(o) == 2 && (o[0] == cluster.HoWindow || o[1] == cluster.HoWindow)
	})
	lg := workerOn(t, r, name)
	got := acceptN(t, lg, n-cluster.HoWindow)
	if len(got) != n-cluster.HoWindow {
		t.Errorf("good worker accepted %d, want %d", len(got), n-cluster.HoWindow)
	}
}

// TestHandoffGarbageFromWorker: whatever a worker sends on its connection
// channel that breaks the protocol, the master drops that worker's channel
// (a real master also kills the process) with the reason logged, closes
// every descriptor that came with it, and keeps serving the other worker.
// The bad worker holds one delivered connection first, so a give-back of
// one passes the count check and reaches the descriptor checks.
func TestHandoffGarbageFromWorker(t *testing.T) {
	fdcensus.Verify(t)
	pipe := func(t *testing.T) int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		unix.Close(p[1])
		return p[0]
	}
	returnFD := func(fd int) func(t *testing.T, c *net.UnixConn, l string) {
		return func(t *testing.T, c *net.UnixConn, l string) {
			c.WriteMsgUnix(cluster.EncodeHandoffConns(cluster.HoReturn, []string{l}, []string{"x"}), unix.UnixRights(fd), nil)
			unix.Close(fd)
		}
	}
	for _, tc := range []struct {
		name   string
		send   func(t *testing.T, c *net.UnixConn, listener string)
		reason string // in the logged error
	}{
		{"bytes", func(t *testing.T, c *net.UnixConn, _ string) { c.Write([]byte("GET / HTTP/1.1\r\n\r\n")) }, "unknown type"},
		{"unknown type", func(t *testing.T, c *net.UnixConn, _ string) { c.Write([]byte{0xff, 1, 2}) }, "unknown type"},
		{"ack beyond delivered", func(t *testing.T, c *net.UnixConn, _ string) { c.Write(cluster.EncodeHandoffAck(5)) }, "ack of 5 connections, 1 outstanding"},
		{"master's type", func(t *testing.T, c *net.UnixConn, l string) {
			fd := pipe(t)
			c.WriteMsgUnix(cluster.EncodeHandoffConns(cluster.HoConns, []string{l}, []string{"x"}), unix.UnixRights(fd), nil)
			unix.Close(fd)
		}, "is the master's"},
		{"more returned than delivered", func(t *testing.T, c *net.UnixConn, l string) {
			fds := []int{pipe(t), pipe(t)}
			c.WriteMsgUnix(cluster.EncodeHandoffConns(cluster.HoReturn, []string{l, l}, []string{"x", "y"}), unix.UnixRights(fds...), nil)
			closeFDs(fds)
		}, "2 connections returned, 1 outstanding"},
		{"returned for unknown listener", func(t *testing.T, c *net.UnixConn, _ string) {
			returnFD(pipe(t))(t, c, "tcp-nowhere")
		}, "unknown listener"},
		{"pipe returned", func(t *testing.T, c *net.UnixConn, l string) { returnFD(pipe(t))(t, c, l) }, "not a socket"},
		{"listening socket returned", func(t *testing.T, c *net.UnixConn, l string) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			fd, err := scmrights.Dup(ln.(*net.TCPListener))
			if err != nil {
				t.Fatal(err)
			}
			returnFD(fd)(t, c, l)
		}, "not a connected tcp stream socket"},
		{"unconnected socket returned", func(t *testing.T, c *net.UnixConn, l string) {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			returnFD(fd)(t, c, l)
		}, "getpeername"},
		{"dialled connection returned", func(t *testing.T, c *net.UnixConn, l string) {
			// A connection of the worker's own, to somewhere else: its
			// local port is not the listener's.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			// Open until the master checked it: closing the listener
			// would reset the connection.
			t.Cleanup(func() { ln.Close() })
			dc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dc.Close() })
			fd, err := scmrights.Dup(dc.(*net.TCPConn))
			if err != nil {
				t.Fatal(err)
			}
			returnFD(fd)(t, c, l)
		}, "not a connection of listener"},
		{"descriptor on sub", func(t *testing.T, c *net.UnixConn, l string) {
			fd := pipe(t)
			c.WriteMsgUnix(cluster.EncodeHandoffName(cluster.HoSub, l), unix.UnixRights(fd), nil)
			unix.Close(fd)
		}, "descriptors on a"},
		{"too many descriptors", func(t *testing.T, c *net.UnixConn, l string) {
			fds := make([]int, cluster.HoMaxBatch+1)
			for i := range fds {
				fds[i] = pipe(t)
			}
			c.WriteMsgUnix([]byte{cluster.HoReturn}, unix.UnixRights(fds...), nil)
			closeFDs(fds)
		}, "descriptors"},
		{"oversized", func(t *testing.T, c *net.UnixConn, _ string) { c.Write(make([]byte, cluster.HoMaxMsg+1)) }, "larger than"},
		{"short grant", func(t *testing.T, c *net.UnixConn, _ string) { c.Write([]byte{cluster.HoGrant, 0, 0, 1}) }, "grant of 3 bytes"},
		{"descriptor on grant", func(t *testing.T, c *net.UnixConn, _ string) {
			fd := pipe(t)
			c.WriteMsgUnix(cluster.EncodeHandoffGrant(9), unix.UnixRights(fd), nil)
			unix.Close(fd)
		}, "descriptors on a grant"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			log := &hoLog{}
			r, lns := rigLog(t, slog.New(slog.NewJSONHandler(log, nil)), "tcp")
			name := r.Names()[0]
			bad, err := r.AddRaw()
			if err != nil {
				t.Fatal(err)
			}
			defer bad.Close()
			bad.Write(cluster.EncodeHandoffName(cluster.HoSub, name))
			dialN(t, lns[0].Addr().String(), 1)
			waitUntil(t, "one connection delivered to the bad worker", 5*time.Second, func() bool {
				return cmp.Equal([]int{1}, r.Outstanding())
			})
			lg := workerOn(t, r, name)
			tc.send(t, bad, name)
			waitUntil(t, "bad worker dropped", 5*time.Second, func() bool { return r.Workers() == 1 })
			recs := log.find("handoff: worker broke the connection protocol; restarting it")
			if len(recs) != 1 || !strings.Contains(fmt.Sprint(recs[0]["err"]), tc.reason) {
				t.Errorf("violations logged %v, want one whose error has %q", recs, tc.reason)
			}
			// The master closed its end: the bad worker reads end of file.
			bad.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, cluster.HoMaxMsg)
			oob := make([]byte, 4096)
			for {
				n, oobn, _, _, err := bad.ReadMsgUnix(buf, oob)
				// The connection delivered before the garbage.
				if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
					for _, m := range msgs {
						fds, _ := unix.ParseUnixRights(&m)
						closeFDs(fds)
					}
				}
				if err != nil || n == 0 && oobn == 0 {
					if err != nil && !errors.Is(err, io.EOF) {
						t.Errorf("bad worker's channel: %v, want end of file", err)
					}
					break
				}
			}
			dialN(t, lns[0].Addr().String(), 5)
			if diff := cmp.Diff(seq(5), acceptN(t, lg, 5)); diff != "" {
				t.Errorf("good worker after the garbage (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHandoffSpread: a burst of connections to two accepting workers is
// answered in full and reaches both; connections one at a time are shared
// about evenly (the least loaded worker, ties in turn).
func TestHandoffSpread(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	const n = 400
	var mu sync.Mutex
	per := map[int]int{}
	var wg sync.WaitGroup
	defer wg.Wait() // after the deferred Closes below end the Accepts
	for i := range 2 {
		l := workerOn(t, r, name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				per[i]++
				mu.Unlock()
				c.Write([]byte("k"))
				c.Close()
			}
		}()
		defer l.Close()
	}
	var cwg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			c, err := net.DialTimeout("tcp", lns[0].Addr().String(), 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil {
				errs <- err
			}
		}()
	}
	cwg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	mu.Lock()
	if per[0]+per[1] != n || per[0] == 0 || per[1] == 0 {
		t.Errorf("accepted per worker %v, want %d in all on both", per, n)
	}
	clear(per)
	mu.Unlock()
	// One at a time: each connection once the previous one is
	// acknowledged, so both workers look idle. (Dialled faster, within
	// the 1 ms an idle worker may hold an ack of fewer than 4, the choice
	// follows the timing of the acks: runs of ten to one worker, which has
	// just acknowledged 4 at once, while the other still holds 3.)
	const paced = 100
	for i := range paced {
		waitUntil(t, "every connection acknowledged", 5*time.Second, func() bool {
			return cmp.Equal([]int{0, 0}, r.Outstanding())
		})
		c, err := net.DialTimeout("tcp", lns[0].Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 1)
		_, err = io.ReadFull(c, b)
		c.Close()
		if err != nil {
			t.Fatalf("paced connection %d: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// Ties in turn: both idle at every dial, they alternate.
	if per[0]+per[1] != paced || min(per[0], per[1]) < paced*2/5 {
		t.Errorf("paced connections per worker %v, want %d in all, at least %d each", per, paced, paced*2/5)
	}
}

// hoWorker is a handoff-mode worker process: it serves "pid slot" over
// HTTP on the handed-off connections of its first listener. In slot
// HO_BAD_SLOT, the first time only (marker file HO_MARKER), it first writes
// garbage on its connection channel.
func hoWorker() int {
	fd, err := strconv.Atoi(os.Getenv("HANDOFF_CONN_FD"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "ho-worker: no connection channel")
		return 3
	}
	name, _, _ := strings.Cut(os.Getenv("LISTEN_FDNAMES"), ":")
	if os.Getenv("HANDOFF_WORKER_ID") == os.Getenv("HO_BAD_SLOT") {
		if f, err := os.OpenFile(os.Getenv("HO_MARKER"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			f.Close()
			// A connection "returned" that is a pipe.
			var p [2]int
			unix.Pipe2(p[:], unix.O_CLOEXEC)
			unix.Sendmsg(fd, cluster.EncodeHandoffConns(cluster.HoReturn, []string{name}, []string{"x"}), unix.UnixRights(p[0]), nil, 0)
		}
	}
	ln, err := cluster.HandoffListener(name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ho-worker:", err)
		return 3
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %s\n", os.Getpid(), os.Getenv("HANDOFF_WORKER_ID"))
	})}
	go srv.Serve(ln)
	if err := notifyReady(); err != nil {
		fmt.Fprintln(os.Stderr, "ho-worker:", err)
		return 3
	}
	sig := make(chan os.Signal, 1)
	signalNotify(sig)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	return 0
}

// hoLog collects a master's JSON log.
type hoLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *hoLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// find returns the records with message msg.
func (l *hoLog) find(msg string) []map[string]any {
	l.mu.Lock()
	text := l.buf.String()
	l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(text, "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(line), &r) == nil && r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// TestHandoffGarbageRestartsWorker: a worker process that breaks the
// connection protocol is killed and respawned with a logged reason; the
// other worker keeps its pid, the master's descriptors are unchanged, and
// the cluster keeps answering.
func TestHandoffGarbageRestartsWorker(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	log := &hoLog{}
	m, err := cluster.New(&cluster.Config{
		Program: bin,
		Args:    []string{"-test.run=^$"},
		Workers: 2,
		Mode:    cluster.ModeHandoff,
		Listen:  []string{"127.0.0.1:0"},
		Env: append(os.Environ(), pc.Env(), "GORACE=atexit_sleep_ms=0", helperproc.RoleVar+"=ho-worker",
			"HO_BAD_SLOT=0", "HO_MARKER="+filepath.Join(t.TempDir(), "m")),
		Logger:  slog.New(slog.NewJSONHandler(log, nil)),
		Backoff: supervise.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		m.Stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("master log:\n%s", log.buf.String())
		}
	}()
	var bad []map[string]any
	waitUntil(t, "protocol violation logged", 15*time.Second, func() bool {
		bad = log.find("handoff: worker broke the connection protocol; restarting it")
		return len(bad) > 0
	})
	if len(bad) != 1 || bad[0]["slot"] != float64(0) || !strings.Contains(fmt.Sprint(bad[0]["err"]), "returned") {
		t.Errorf("violation records %v, want one for slot 0 naming the returned connection", bad)
	}
	select {
	case <-m.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("cluster not ready")
	}
	waitUntil(t, "slot 0 respawned", 15*time.Second, func() bool {
		n := 0
		for _, r := range log.find("worker started") {
			if r["slot"] == float64(0) {
				n++
			}
		}
		return n >= 2
	})
	for _, r := range log.find("worker started") {
		if r["slot"] == float64(1) && r["generation"] != float64(1) {
			t.Errorf("slot 1 restarted: %v", r)
		}
	}
	if n := len(log.find("worker started")); n != 3 {
		t.Errorf("%d workers started, want 3 (slot 0 twice)", n)
	}
	addr := m.Addrs()[0].String()
	slots := map[string]bool{}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < 200 && len(slots) < 2; i++ {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		f := strings.Fields(string(b))
		if len(f) == 2 {
			slots[f[1]] = true
		}
	}
	if !slots["0"] || !slots["1"] {
		t.Errorf("slots answering %v, want 0 and 1", slots)
	}
}

// recvConns reads connection messages from a raw worker channel until n
// descriptors arrived, and returns them.
func recvConns(t *testing.T, c *net.UnixConn, n int) []int {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var fds []int
	buf := make([]byte, cluster.HoMaxMsg)
	oob := make([]byte, unix.CmsgSpace(4*cluster.HoMaxBatch))
	for i := 0; i < 2*n && len(fds) < n; i++ {
		_, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			closeFDs(fds)
			t.Fatalf("received %d of %d connections: %v", len(fds), n, err)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			closeFDs(fds)
			t.Fatal(err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err != nil {
				closeFDs(fds)
				t.Fatal(err)
			}
			fds = append(fds, got...)
		}
	}
	if len(fds) != n {
		closeFDs(fds)
		t.Fatalf("received %d connections, want %d", len(fds), n)
	}
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// TestHandoffExitedWorkerGiveBackQueued: connections a worker gave back
// right before it exited are still queued on its channel when the master
// learns of the exit; the master reads them and passes them on instead of
// closing the channel on them. The worker's end stays open (a descendant
// may hold it): the master still reaches the end of the channel.
func TestHandoffExitedWorkerGiveBackQueued(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	a, pid, err := r.AddRawPID()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
		t.Fatal(err)
	}
	const n = 2
	dialN(t, lns[0].Addr().String(), n)
	fds := recvConns(t, a, n)
	// As a closing listener does: unsubscribe, wait for DONE, give back.
	if _, err := a.Write(cluster.EncodeHandoffName(cluster.HoUnsub, name)); err != nil {
		closeFDs(fds)
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, cluster.HoMaxMsg)
	if k, err := a.Read(buf); err != nil || k == 0 || buf[0] != cluster.HoDone {
		closeFDs(fds)
		t.Fatalf("after UNSUB: %q, %v; want DONE", buf[:k], err)
	}
	// Two messages: the master's reader waits in the first give-back (no
	// other worker yet) while the second is still queued.
	for _, fd := range fds {
		if _, _, err := a.WriteMsgUnix(cluster.EncodeHandoffConns(cluster.HoReturn, []string{name}, []string{"x"}), unix.UnixRights(fd), nil); err != nil {
			t.Fatal(err)
		}
	}
	closeFDs(fds)
	r.Exited(pid)
	lb := workerOn(t, r, name)
	if diff := cmp.Diff(seq(n), acceptN(t, lb, n)); diff != "" {
		t.Errorf("connections given back before the exit (-want +got):\n%s", diff)
	}
	waitUntil(t, "exited worker's channel released", 5*time.Second, func() bool { return r.Workers() == 1 })
}

// TestHandoffPause: an upgrade's pause delivers what the master holds and
// then leaves new connections in the kernel's backlog; it fails while no
// worker can take what the master holds; resume accepts again, and no
// connection is lost on the way.
func TestHandoffPause(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	addr := lns[0].Addr().String()
	var cs []net.Conn
	dial := func(from, n int) {
		for i := from; i < from+n; i++ {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			fmt.Fprintf(c, "%04d", i)
			cs = append(cs, c)
		}
	}
	// A subscriber that never reads: its window fills, and the master
	// accepts and holds what follows.
	stuck, err := r.AddRaw()
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	if _, err := stuck.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the SUB is read
	dial(0, cluster.HoWindow+3)
	waitUntil(t, "connections held by the master", 5*time.Second, func() bool {
		return r.Busy() == 1 && cmp.Equal([]int{cluster.HoWindow}, r.Outstanding())
	})
	if err := r.Pause(100 * time.Millisecond); err == nil {
		t.Fatal("Pause with connections no worker can take: nil error")
	}
	l := workerOn(t, r, name)
	if err := r.Pause(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// What the master held is delivered (the rest of the three may still
	// be in the backlog).
	held := r.Outstanding()
	if len(held) != 2 || held[1] < 1 || r.Busy() != 0 {
		t.Fatalf("when Pause returned: delivered %v, busy %d; want at least [%d 1], 0", held, r.Busy(), cluster.HoWindow)
	}
	// Paused: the master accepts nothing.
	dial(cluster.HoWindow+3, 3)
	time.Sleep(100 * time.Millisecond)
	if got := r.Outstanding(); !cmp.Equal(held, got) || r.Busy() != 0 {
		t.Errorf("paused: delivered %v, busy %d; want %v, 0", got, r.Busy(), held)
	}
	r.Resume()
	r.Resume() // idempotent
	// The stuck worker holds the first window's worth.
	want := seq(cluster.HoWindow + 6)[cluster.HoWindow:]
	if diff := cmp.Diff(want, acceptN(t, l, 6)); diff != "" {
		t.Errorf("connections accepted across the pause (-want +got):\n%s", diff)
	}
}

// TestHandoffCloseUnblocksAccept: Close wakes an Accept that is waiting
// for a connection; it returns net.ErrClosed.
func TestHandoffCloseUnblocksAccept(t *testing.T) {
	fdcensus.Verify(t)
	r, _ := rig(t, "tcp")
	w, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	l, err := w.Listen(r.Names()[0])
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if c != nil {
			c.Close()
		}
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // Accept is waiting
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept during Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept still blocked after Close")
	}
	if err := l.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v, want net.ErrClosed", err)
	}
}

// oldImageConns dials n connections to ln and accepts them as the image
// before an upgrade did, with the rig paused so that it takes none: it
// returns the clients and raw descriptors of the accepted ends, the
// caller's to close or send.
func oldImageConns(t *testing.T, r *cluster.HandoffRig, ln net.Listener, n int) ([]net.Conn, []int) {
	t.Helper()
	if err := r.Pause(time.Second); err != nil {
		t.Fatal(err)
	}
	defer r.Resume()
	clients := dialN(t, ln.Addr().String(), n)
	var fds []int
	for range n {
		c, err := ln.Accept()
		if err != nil {
			closeFDs(fds)
			t.Fatal(err)
		}
		fd, err := scmrights.Dup(c.(*net.TCPConn))
		c.Close()
		if err != nil {
			closeFDs(fds)
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	return clients, fds
}

// TestHandoffAdoptOldWorker: after an in-place upgrade the new image serves
// the kept channel of an old worker: the old worker's Close gets its DONE
// at once (not after its 5 s wait), and the connections the old image had
// delivered and the worker gives back reach a worker of the new image.
func TestHandoffAdoptOldWorker(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	const n = 2
	_, fds := oldImageConns(t, r, lns[0], n)
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		closeFDs(fds)
		t.Fatal(err)
	}
	masterEnd := os.NewFile(uintptr(pair[0]), "old-master")
	uc, err := scmrights.UnixConn(pair[1])
	if err != nil {
		masterEnd.Close()
		closeFDs(fds)
		t.Fatal(err)
	}
	old, err := cluster.NewHandoffWorker(uc)
	if err != nil {
		masterEnd.Close()
		closeFDs(fds)
		t.Fatal(err)
	}
	defer old.Close()
	lo, err := old.Listen(name)
	if err != nil {
		masterEnd.Close()
		closeFDs(fds)
		t.Fatal(err)
	}
	// The old image delivered them, then executed the new one.
	p := cluster.EncodeHandoffConns(cluster.HoConns, []string{name, name}, []string{"a", "b"})
	if _, err := unix.SendmsgN(pair[0], p, unix.UnixRights(fds...), nil, 0); err != nil {
		masterEnd.Close()
		closeFDs(fds)
		t.Fatal(err)
	}
	closeFDs(fds)
	if err := r.AdoptOld(masterEnd); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- lo.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("the old worker's Close got no DONE")
	}
	lb := workerOn(t, r, name)
	if diff := cmp.Diff(seq(n), acceptN(t, lb, n)); diff != "" {
		t.Errorf("connections the old worker gave back (-want +got):\n%s", diff)
	}
}

// TestHandoffAdoptOldWorkerDies: an old worker that dies after an in-place
// upgrade without reading what the old image sent it: with the old image's
// copy of its end carried over, the new image passes those connections to
// its own workers when the old worker exits; without it they die with the
// worker's end, reset.
func TestHandoffAdoptOldWorkerDies(t *testing.T) {
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprintf("peer=%v", keep), func(t *testing.T) {
			fdcensus.Verify(t)
			r, lns := rig(t, "tcp")
			name := r.Names()[0]
			lb := workerOn(t, r, name)
			const n = 3
			clients, fds := oldImageConns(t, r, lns[0], n)
			pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				closeFDs(fds)
				t.Fatal(err)
			}
			// The old image delivered them; the worker never read them.
			p := cluster.EncodeHandoffConns(cluster.HoConns, []string{name, name, name}, []string{"a", "b", "c"})
			_, err = unix.SendmsgN(pair[0], p, unix.UnixRights(fds...), nil, 0)
			closeFDs(fds)
			if err != nil {
				unix.Close(pair[0])
				unix.Close(pair[1])
				t.Fatal(err)
			}
			peer := -1
			if keep {
				if peer, err = unix.FcntlInt(uintptr(pair[1]), unix.F_DUPFD_CLOEXEC, 0); err != nil {
					unix.Close(pair[0])
					unix.Close(pair[1])
					t.Fatal(err)
				}
			}
			pid, err := r.AdoptOldPeer(os.NewFile(uintptr(pair[0]), "old-master"), peer)
			if err != nil {
				unix.Close(pair[1])
				t.Fatal(err)
			}
			unix.Close(pair[1]) // the old worker dies
			r.Exited(pid)
			if keep {
				if diff := cmp.Diff(seq(n), acceptN(t, lb, n)); diff != "" {
					t.Errorf("connections the dead old worker never read (-want +got):\n%s", diff)
				}
				return
			}
			// Without the copy the kernel closed them with the worker's
			// end: each client reads end of file or a reset.
			for i, c := range clients {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("client %d: read %v, want end of file or reset", i, err)
				}
			}
		})
	}
}

// TestHandoffWorkerBadMaster: whatever breaks the protocol on the worker's
// side of the channel (surplus, missing or wrong descriptors, oversized or
// unknown messages) is dropped with every descriptor closed, and the
// worker's Accept goes on to the next good connection.
func TestHandoffWorkerBadMaster(t *testing.T) {
	fdcensus.Verify(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	uc, err := scmrights.UnixConn(pair[1])
	if err != nil {
		t.Fatal(err)
	}
	w, err := cluster.NewHandoffWorker(uc)
	if err != nil {
		t.Fatal(err)
	}
	const name = "tcp-x"
	l, err := w.Listen(name)
	if err != nil {
		w.Close()
		t.Fatal(err)
	}
	// The master's end first: Close does not wait for a DONE then.
	defer func() {
		w.Close()
		l.Close()
	}()
	pipe := func() int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		unix.Close(p[1])
		return p[0]
	}
	send := func(p []byte, fds ...int) {
		t.Helper()
		if _, err := unix.SendmsgN(pair[0], p, unix.UnixRights(fds...), nil, 0); err != nil {
			t.Fatal(err)
		}
		closeFDs(fds)
	}
	one := cluster.EncodeHandoffConns(cluster.HoConns, []string{name}, []string{"x"})
	send(one)                                                              // missing descriptor
	send(one, pipe(), pipe())                                              // surplus descriptor
	send([]byte{'Z', 0}, pipe())                                           // unknown type
	send(cluster.EncodeHandoffName(cluster.HoDone, name+"-other"), pipe()) // descriptor on DONE
	many := make([]int, cluster.HoMaxBatch+1)
	for i := range many {
		many[i] = pipe()
	}
	send(one, many...)                             // more than a batch: truncated
	send(make([]byte, cluster.HoMaxMsg+1), pipe()) // oversized
	send(one, pipe())                              // wrong type: a pipe
	// Then a good connection.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := scmrights.Dup(sc.(*net.TCPConn))
	sc.Close()
	if err != nil {
		t.Fatal(err)
	}
	send(cluster.EncodeHandoffConns(cluster.HoConns, []string{name}, []string{c.LocalAddr().String()}), fd)
	type res struct {
		c      net.Conn
		remote string
		err    error
	}
	ch := make(chan res, 1)
	go func() { c, remote, err := cluster.AcceptMeta(l); ch <- res{c, remote, err} }()
	select {
	case got := <-ch:
		if got.err != nil {
			t.Fatal(got.err)
		}
		defer got.c.Close()
		if got.remote != c.LocalAddr().String() || got.c.RemoteAddr().String() != c.LocalAddr().String() {
			t.Errorf("accepted the connection from %v (reported %q), want %v", got.c.RemoteAddr(), got.remote, c.LocalAddr())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the good connection was not accepted")
	}
}

// TestHandoffMasterGone: when the master's end of the channel closes, the
// connections already received are still accepted, then Accept fails with
// ErrMasterGone, and Close returns without waiting for a DONE.
func TestHandoffMasterGone(t *testing.T) {
	fdcensus.Verify(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := scmrights.UnixConn(pair[1])
	if err != nil {
		unix.Close(pair[0])
		t.Fatal(err)
	}
	w, err := cluster.NewHandoffWorker(uc)
	if err != nil {
		unix.Close(pair[0])
		t.Fatal(err)
	}
	defer w.Close()
	const name = "tcp-x"
	l, err := w.Listen(name)
	if err != nil {
		unix.Close(pair[0])
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		unix.Close(pair[0])
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		unix.Close(pair[0])
		t.Fatal(err)
	}
	fd, err := scmrights.Dup(sc.(*net.TCPConn))
	sc.Close()
	if err != nil {
		unix.Close(pair[0])
		t.Fatal(err)
	}
	_, err = unix.SendmsgN(pair[0], cluster.EncodeHandoffConns(cluster.HoConns, []string{name}, []string{"x"}), unix.UnixRights(fd), nil, 0)
	unix.Close(fd)
	unix.Close(pair[0]) // the master is gone
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	go func() {
		for range 2 {
			c, err := l.Accept()
			if c != nil {
				c.Close()
			}
			errc <- err
		}
	}()
	for i, want := range []error{nil, cluster.ErrMasterGone} {
		select {
		case err := <-errc:
			if !errors.Is(err, want) || (want == nil) != (err == nil) {
				t.Errorf("Accept %d: %v, want %v", i, err, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Accept %d blocked", i)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("Close waited for a DONE from a master that is gone")
	}
}

// TestHandoffDeadWorkerGiveBackQueued: a worker gives connections of one
// listener back, which the master holds while nobody else serves it, then
// dies with connections of another unread on its channel (the kernel
// reports ECONNRESET to the master's end); the give-backs still reach the
// next worker of their listener.
func TestHandoffDeadWorkerGiveBackQueued(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp", "tcp")
	names := r.Names()
	a, err := r.AddRaw()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, name := range names {
		if _, err := a.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
			t.Fatal(err)
		}
	}
	const n = 2
	dialN(t, lns[0].Addr().String(), n)
	fds := recvConns(t, a, n)
	if _, err := a.Write(cluster.EncodeHandoffName(cluster.HoUnsub, names[0])); err != nil {
		closeFDs(fds)
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, cluster.HoMaxMsg)
	if k, err := a.Read(buf); err != nil || k == 0 || buf[0] != cluster.HoDone {
		closeFDs(fds)
		t.Fatalf("after UNSUB: %q, %v; want DONE", buf[:k], err)
	}
	// Nobody else serves that listener yet: the master holds them.
	for _, fd := range fds {
		if _, _, err := a.WriteMsgUnix(cluster.EncodeHandoffConns(cluster.HoReturn, []string{names[0]}, []string{"x"}), unix.UnixRights(fd), nil); err != nil {
			t.Fatal(err)
		}
	}
	closeFDs(fds)
	// A connection of the other listener reaches a's channel, unread.
	dialN(t, lns[1].Addr().String(), 1)
	waitUntil(t, "connection of the second listener delivered", 5*time.Second, func() bool {
		return cmp.Equal([]int{1}, r.Outstanding())
	})
	a.Close() // the worker dies, its connection unread: a reset
	lb := workerOn(t, r, names[0])
	if diff := cmp.Diff(seq(n), acceptN(t, lb, n)); diff != "" {
		t.Errorf("connections given back before the death (-want +got):\n%s", diff)
	}
	waitUntil(t, "dead worker's channel released", 5*time.Second, func() bool { return r.Workers() == 1 })
}

// TestHandoffAcceptEMFILE: when the worker cannot make a net.Conn of a
// handed-off connection for lack of descriptors, Accept keeps it and
// returns a temporary error (a server backs off and calls again, as with
// a kernel's accept queue under EMFILE); the next Accept serves it, and a
// Close gives back any still kept.
func TestHandoffAcceptEMFILE(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	l := workerOn(t, r, name)
	fails := 2
	emfile := &net.OpError{Op: "file", Net: "file+net", Err: os.NewSyscallError("dup", unix.EMFILE)}
	restore := cluster.SetHandoffFileConn(func(f *os.File) (net.Conn, error) {
		if fails > 0 {
			fails--
			return nil, emfile
		}
		return net.FileConn(f)
	})
	defer restore()
	dialN(t, lns[0].Addr().String(), 1)
	for range 2 {
		c, err := acceptWithin(t, l)
		var ne net.Error
		//lint:ignore SA1019 net/http's Server.Serve backs off on exactly this.
		if c != nil || !errors.Is(err, unix.EMFILE) || !errors.As(err, &ne) || !ne.Temporary() {
			t.Fatalf("Accept at EMFILE: %v, %v; want a temporary EMFILE error", c, err)
		}
	}
	if diff := cmp.Diff([]int{0}, acceptN(t, l, 1)); diff != "" {
		t.Errorf("connection accepted after EMFILE (-want +got):\n%s", diff)
	}
	// Kept at Close: given back to the master, which hands it to another
	// worker.
	fails = 1
	dialN(t, lns[0].Addr().String(), 1)
	if c, err := acceptWithin(t, l); !errors.Is(err, unix.EMFILE) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Accept at EMFILE: %v", err)
	}
	lb := workerOn(t, r, name)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{0}, acceptN(t, lb, 1)); diff != "" {
		t.Errorf("kept connection given back at Close (-want +got):\n%s", diff)
	}
}

// acceptWithin is one Accept of l, failing the test if it blocks 10 s (the
// listener is closed then).
func acceptWithin(t *testing.T, l net.Listener) (net.Conn, error) {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := l.Accept(); ch <- res{c, err} }()
	select {
	case rs := <-ch:
		return rs.c, rs.err
	case <-time.After(10 * time.Second):
		l.Close()
		if rs := <-ch; rs.c != nil {
			rs.c.Close()
		}
		t.Fatal("Accept blocked for 10 s")
		return nil, nil
	}
}

// The master formats accepted peers' raw addresses itself (x/sys's
// conversion costs a getsockopt per inet connection); every family must
// read as net reports the client's own address.
func TestHandoffPeerAddress(t *testing.T) {
	fdcensus.Verify(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name, network, laddr string
		client               func(addr string) (net.Conn, error)
		want                 func(c net.Conn) string
	}{
		{"inet", "tcp4", "127.0.0.1:0", nil, nil},
		{"inet6", "tcp6", "[::1]:0", nil, nil},
		{"unix unbound", "unix", filepath.Join(dir, "a"), nil, func(net.Conn) string { return "" }},
		{"unix path", "unix", filepath.Join(dir, "b"), func(addr string) (net.Conn, error) {
			return net.DialUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "bc"), Net: "unix"}, &net.UnixAddr{Name: addr, Net: "unix"})
		}, nil},
		{"unix abstract", "unix", filepath.Join(dir, "c"), func(addr string) (net.Conn, error) {
			return net.DialUnix("unix", &net.UnixAddr{Name: "@handoff-peer-test", Net: "unix"}, &net.UnixAddr{Name: addr, Net: "unix"})
		}, nil},
		// The longest names: sun_path full, no terminating NUL.
		{"unix abstract 107 bytes", "unix", filepath.Join(dir, "d"), func(addr string) (net.Conn, error) {
			return net.DialUnix("unix", &net.UnixAddr{Name: "@" + strings.Repeat("a", 107), Net: "unix"}, &net.UnixAddr{Name: addr, Net: "unix"})
		}, nil},
		{"unix path 107 bytes", "unix", filepath.Join(dir, "e"), func(addr string) (net.Conn, error) {
			name := filepath.Join(dir, "f")
			name += strings.Repeat("f", max(0, 107-len(name)))
			return net.DialUnix("unix", &net.UnixAddr{Name: name, Net: "unix"}, &net.UnixAddr{Name: addr, Net: "unix"})
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen(tc.network, tc.laddr)
			if err != nil {
				if tc.network == "tcp6" {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				t.Fatal(err)
			}
			defer ln.Close()
			dial := tc.client
			if dial == nil {
				dial = func(addr string) (net.Conn, error) { return net.Dial(ln.Addr().Network(), addr) }
			}
			c, err := dial(ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			want := c.LocalAddr().String()
			if tc.want != nil {
				want = tc.want(c)
			}
			rc, err := ln.(syscall.Conn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var (
				nfd  int
				got  string
				aerr error
			)
			// Dial returned, so the connection is queued (loopback).
			if err := rc.Control(func(fd uintptr) {
				nfd, got, aerr = cluster.AcceptPeer(int(fd))
			}); err != nil {
				t.Fatal(err)
			}
			if aerr != nil {
				t.Fatal(aerr)
			}
			unix.Close(nfd)
			if got != want {
				t.Errorf("peer address %q, want %q", got, want)
			}
		})
	}
}

// The master's accept4 goes through RawSyscall, so the listener must stay
// non-blocking; but O_NONBLOCK belongs to the open file description every
// worker shares. After one clears it, connections are still delivered at
// once: none waits in a batch behind an accept4 asleep for the next
// connection, holding its P.
func TestHandoffListenerMadeBlocking(t *testing.T) {
	fdcensus.Verify(t)
	// Without a collection there is no stop-the-world, which an accept4
	// asleep in RawSyscall would hold up, freezing the test instead of
	// failing it.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	log := &hoLog{}
	r, lns := rigLog(t, slog.New(slog.NewJSONHandler(log, nil)), "tcp")
	l := workerOn(t, r, r.Names()[0])
	setNonblock := func(on bool) {
		rc, err := lns[0].(*net.TCPListener).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.SetNonblock(int(fd), on) }); err != nil {
			t.Fatal(err)
		}
		if serr != nil {
			t.Fatal(serr)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			// Wake an accept4 asleep on the blocking listener, so the
			// rig can stop.
			setNonblock(true)
			if c, err := net.Dial("tcp", lns[0].Addr().String()); err == nil {
				c.Close()
			}
		}
	})
	// One connection first: once it is delivered, the accept loop has
	// seen EAGAIN and waits on the poller, so the flag changes between
	// its wake-ups, as a worker's would. (Changed between the loop's
	// check and its accept4, it would block there until the next
	// connection; the loop checks once per wake-up.)
	dialN(t, lns[0].Addr().String(), 1)
	acceptN(t, l, 1)
	// As a worker would on its descriptor 3.
	setNonblock(false)
	const n = 3
	dialN(t, lns[0].Addr().String(), n)
	if diff := cmp.Diff(seq(n), acceptN(t, l, n)); diff != "" {
		t.Errorf("connections accepted (-want +got):\n%s", diff)
	}
	if recs := log.find("handoff: a listener was made blocking, presumably by a worker; set non-blocking again"); len(recs) != 1 {
		t.Errorf("%d warnings about the blocking listener, want 1", len(recs))
	}
}

// TESTPLAN E1 in the master: accept4 failing for lack of descriptors
// leaves the connection queued in the kernel; the accept loop warns, backs
// off and takes it once descriptors are free again.
func TestHandoffMasterAcceptEMFILE(t *testing.T) {
	fdcensus.Verify(t)
	log := &hoLog{}
	r, lns := rigLog(t, slog.New(slog.NewJSONHandler(log, nil)), "tcp")
	l := workerOn(t, r, r.Names()[0])
	// The client's socket exists before the limit; connect needs none.
	cfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cfd)
	restore := squeezeFDs(t, cfd)
	defer restore()
	port := lns[0].Addr().(*net.TCPAddr).Port
	if err := unix.Connect(cfd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "accept4's EMFILE warning", 5*time.Second, func() bool {
		for _, rec := range log.find("handoff: accept") {
			if e, _ := rec["err"].(string); strings.Contains(e, "too many open files") {
				return true
			}
		}
		return false
	})
	restore()
	c, err := acceptWithin(t, l)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// Connections with SO_LINGER on (inherited from the listener here) are
// told apart, so they take the master's ordinary close(2), which may wait
// for the peer; they are delivered as any other.
func TestHandoffLingerConnections(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	rc, err := lns[0].(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 1})
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	l := workerOn(t, r, r.Names()[0])
	const n = 8
	dialN(t, lns[0].Addr().String(), n)
	if diff := cmp.Diff(seq(n), acceptN(t, l, n)); diff != "" {
		t.Errorf("connections accepted (-want +got):\n%s", diff)
	}
	// The test itself: a socket with SO_LINGER on lingers, one without
	// does not.
	for _, on := range []int32{0, 1} {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: on, Linger: 1}); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
		if got := cluster.Lingers(fd); got != (on == 1) {
			t.Errorf("SO_LINGER on=%d: Lingers = %v", on, got)
		}
		unix.Close(fd)
	}
}
