//go:build linux

package cluster_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// a19Worker is a worker for TESTPLAN A19. Before the package adopts
// anything it notes the inodes of its descriptors 3..3+LISTEN_FDS-1 and of
// HANDOFF_CONTROL_FD. It claims what A19_CLAIM lists ("NET ADDR;...", an
// empty ADDR meaning the first inherited socket of that kind), calls
// Ready and says "ready <pid>", then answers commands "listen NET ADDR"
// with "ok <inode>" or "err <errors.Is ErrNoListener> <error>". Every stream
// listener it holds answers a connection with "a19 <pid>". With
// A19_IO=master it first says "inherited <inodes...> <control inode>" and
// talks through Send and Messages until Done; otherwise it talks on
// stdout and stdin and exits at EOF.
func a19Worker() int {
	inherited := a19Inodes()
	// The test is the activator, and os/exec cannot set a child's own pid
	// (under a master the exec shim already did).
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	master := os.Getenv("A19_IO") == "master"
	say := func(s string) {
		if master {
			cluster.Send([]byte(s))
		} else {
			fmt.Println(s)
		}
	}
	if master {
		say("inherited " + inherited)
	}
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	listen := func(network, address string) (uint64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if strings.HasPrefix(network, "udp") {
			pc, err := cluster.ListenPacket(ctx, network, address)
			if err != nil {
				return 0, err
			}
			closers = append(closers, pc)
			return connInode(pc.(syscall.Conn)), nil
		}
		ln, err := cluster.Listen(ctx, network, address)
		if err != nil {
			return 0, err
		}
		closers = append(closers, ln)
		go a19Serve(ln)
		return listenerInode(ln), nil
	}
	for _, spec := range strings.Split(os.Getenv("A19_CLAIM"), ";") {
		if spec == "" {
			continue
		}
		network, address, _ := strings.Cut(spec, " ")
		if _, err := listen(network, address); err != nil {
			fmt.Fprintln(os.Stderr, "a19-worker: claim:", err)
			return 3
		}
	}
	if err := cluster.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "a19-worker: ready:", err)
		return 3
	}
	say(fmt.Sprint("ready ", os.Getpid()))
	lines := make(chan string)
	if !master {
		go func() {
			sc := bufio.NewScanner(os.Stdin)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
	}
	for {
		var cmd string
		select {
		case <-cluster.Done():
			return 0
		case b := <-cluster.Messages():
			cmd = string(b)
		case l, ok := <-lines:
			if !ok {
				return 0
			}
			cmd = l
		}
		f := strings.Fields(cmd)
		if len(f) != 3 || f[0] != "listen" {
			say("bad command " + cmd)
			continue
		}
		ino, err := listen(f[1], f[2])
		if err != nil {
			say(fmt.Sprintf("err %v %v", errors.Is(err, cluster.ErrNoListener), err))
		} else {
			say(fmt.Sprint("ok ", ino))
		}
	}
}

// a19Inodes returns the inodes of descriptors 3..3+LISTEN_FDS-1 and of
// HANDOFF_CONTROL_FD (0 for none), space-separated.
func a19Inodes() string {
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	ino := func(fd int) string {
		var st unix.Stat_t
		if fd < 0 || unix.Fstat(fd, &st) != nil {
			return "0"
		}
		return strconv.FormatUint(st.Ino, 10)
	}
	var out []string
	for fd := 3; fd < 3+n && fd < 64; fd++ {
		out = append(out, ino(fd))
	}
	ctl, err := strconv.Atoi(os.Getenv("HANDOFF_CONTROL_FD"))
	if err != nil {
		ctl = -1
	}
	return strings.Join(append(out, ino(ctl)), " ")
}

func a19Serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Fprintf(c, "a19 %d\n", os.Getpid())
		c.Close()
	}
}

func connInode(sc syscall.Conn) uint64 {
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var st unix.Stat_t
	rc.Control(func(fd uintptr) { unix.Fstat(int(fd), &st) })
	return st.Ino
}

func fileInode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	ino := connInode(f)
	if ino == 0 {
		t.Fatalf("no inode for %s", f.Name())
	}
	return ino
}

// socketInodes returns the distinct inodes of pid's sockets, sorted: a
// socket held twice (an inherited descriptor and the listener's duplicate)
// is one socket.
func socketInodes(t *testing.T, pid int) []uint64 {
	t.Helper()
	snap, err := fdcensus.Take(pid)
	if err != nil {
		t.Fatalf("census of %d: %v", pid, err)
	}
	return slices.Compact(snap.Inodes("socket:"))
}

// a19Sock is one descriptor the test hands a worker as 3, 4, ...
type a19Sock struct {
	kind  string // tcp, udp (listening sockets), pipe, ctl (stream pair), conn (seqpacket pair)
	claim bool   // A19_CLAIM lists its address
	kept  bool   // open in the worker after Ready
	later string // after Ready, "listen" for its address must answer with this prefix ("ok", "err true")
}

// TestReadyClosesUnclaimed (TESTPLAN A19): after Ready a worker holds
// exactly the inherited sockets it claimed and the package's own channels:
// an unknown name, a descriptor beyond LISTEN_FDNAMES and an unclaimed
// datagram socket are closed, a non-socket beyond the names is left alone.
// The closed sockets still accept in the parent, which holds them too
// (close, not shutdown). Without a master, a later Listen for a closed
// address fails with ErrNoListener, and one for a claimed address gets
// the same socket again.
func TestReadyClosesUnclaimed(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	for _, tc := range []struct {
		name  string
		socks []a19Sock
		n     int    // LISTEN_FDS
		names string // LISTEN_FDNAMES
	}{
		{
			name: "unknown name and unnamed extras",
			socks: []a19Sock{
				{kind: "tcp", claim: true, kept: true, later: "ok"}, // web
				{kind: "tcp", later: "err true"},                    // newer: a name this worker does not know
				{kind: "udp", claim: true, kept: true, later: "ok"}, // dns
				{kind: "udp", later: "err true"},                    // stats: known, not used
				{kind: "tcp", later: "err true"},                    // beyond the names
				{kind: "pipe", kept: true},                          // beyond the names, no socket: not ours to close
			},
			n: 6, names: "web:newer:dns:stats",
		},
		{
			name: "no names, nothing claimed",
			socks: []a19Sock{
				{kind: "tcp", later: "err true"},
				{kind: "udp", later: "err true"},
			},
			n: 2,
		},
		{
			name: "LISTEN_FDS covers the channels",
			// A later Listen would ask the control channel's master
			// (here nobody); TestReadyReleasesUnderMaster covers it.
			socks: []a19Sock{
				{kind: "tcp"},
				{kind: "ctl", kept: true},
				{kind: "conn", kept: true},
			},
			n: 3, names: "web:ctl:conn",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				files  []*os.File // handed to the worker
				inodes []uint64
				addrs  []string
				lns    = map[int]*net.TCPListener{}
				env    = []string{pc.Env(), "LISTEN_FDS=" + strconv.Itoa(tc.n), "LISTEN_FDNAMES=" + tc.names}
				claims []string
			)
			defer func() {
				for _, f := range files {
					f.Close()
				}
			}()
			for i, s := range tc.socks {
				var f *os.File
				var addr string
				switch s.kind {
				case "tcp":
					ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
					if err != nil {
						t.Fatal(err)
					}
					defer ln.Close()
					lns[i] = ln
					if f, err = ln.File(); err != nil {
						t.Fatal(err)
					}
					addr = ln.Addr().String()
				case "udp":
					c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					if f, err = c.File(); err != nil {
						t.Fatal(err)
					}
					addr = c.LocalAddr().String()
				case "pipe":
					r, w, err := os.Pipe()
					if err != nil {
						t.Fatal(err)
					}
					defer w.Close()
					f = r
				case "ctl", "conn":
					typ, v := unix.SOCK_STREAM, "HANDOFF_CONTROL_FD"
					if s.kind == "conn" {
						typ, v = unix.SOCK_SEQPACKET, "HANDOFF_CONN_FD"
					}
					fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						t.Fatal(err)
					}
					local := os.NewFile(uintptr(fds[0]), "local")
					defer local.Close()
					f = os.NewFile(uintptr(fds[1]), s.kind)
					env = append(env, v+"="+strconv.Itoa(3+i))
				default:
					t.Fatalf("kind %q", s.kind)
				}
				files = append(files, f)
				inodes = append(inodes, fileInode(t, f))
				addrs = append(addrs, addr)
				if s.claim {
					claims = append(claims, s.kind+" "+addr)
				}
			}
			env = append(env, "A19_CLAIM="+strings.Join(claims, ";"))
			cmd := helperproc.Command(t, "a19-worker", &helperproc.Options{Env: env, ExtraFiles: files})
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			helperproc.Start(t, cmd)
			for _, f := range files {
				f.Close()
			}
			files = nil
			// Start made the shared open file descriptions blocking
			// ((*os.File).Fd); the parent's listeners accept with a
			// deadline, which needs O_NONBLOCK back.
			for _, ln := range lns {
				rc, err := ln.SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				rc.Control(func(fd uintptr) { err = unix.SetNonblock(int(fd), true) })
				if err != nil {
					t.Fatal(err)
				}
			}
			lines := make(chan string)
			go func() {
				defer close(lines)
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					lines <- sc.Text()
				}
			}()
			read := func() string {
				t.Helper()
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatal("worker closed its stdout")
					}
					return l
				case <-time.After(10 * time.Second):
					cmd.Process.Signal(syscall.SIGQUIT)
					time.Sleep(time.Second)
					t.Fatal("worker silent for 10 s")
				}
				return ""
			}
			if l := read(); l != fmt.Sprint("ready ", cmd.Process.Pid) {
				t.Fatalf("worker said %q, want ready", l)
			}

			var wantSockets, wantOther []uint64
			for i, s := range tc.socks {
				if !s.kept {
					continue
				}
				if s.kind == "pipe" {
					wantOther = append(wantOther, inodes[i])
				} else {
					wantSockets = append(wantSockets, inodes[i])
				}
			}
			slices.Sort(wantSockets)
			if diff := cmp.Diff(wantSockets, socketInodes(t, cmd.Process.Pid)); diff != "" {
				t.Errorf("worker's sockets after Ready, by inode (-want +got):\n%s", diff)
			}
			snap, err := fdcensus.Take(cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			for _, ino := range wantOther {
				if !slices.Contains(snap.Inodes("pipe:"), ino) {
					t.Errorf("pipe %d closed; a descriptor that is no socket must be left alone", ino)
				}
			}

			for i, s := range tc.socks {
				if s.later == "" {
					continue
				}
				fmt.Fprintf(stdin, "listen %s %s\n", s.kind, addrs[i])
				got := read()
				want := s.later
				if want == "ok" {
					want = fmt.Sprint("ok ", inodes[i])
				}
				if !strings.HasPrefix(got, want) {
					t.Errorf("listen %s %s after Ready: %q, want %q...", s.kind, addrs[i], got, want)
				}
			}
			// The worker serves what it claimed.
			for i, s := range tc.socks {
				if s.kind == "tcp" && s.claim {
					if got, err := a19Get(addrs[i]); err != nil || got != fmt.Sprint("a19 ", cmd.Process.Pid) {
						t.Errorf("claimed %s: %q, %v", addrs[i], got, err)
					}
				}
			}
			// Closed, not shut down: the parent's copies still accept.
			for i, ln := range lns {
				if tc.socks[i].claim {
					continue
				}
				if err := acceptOne(ln); err != nil {
					t.Errorf("socket %d (%s) in the parent after the worker's Ready: %v", i, addrs[i], err)
				}
			}
			stdin.Close()
			waitExit(t, cmd, "at EOF on stdin")
		})
	}
}

// a19Get reads the greeting of the server at addr.
func a19Get(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	s, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(s, "\n"), err
}

// acceptOne connects to ln and accepts the connection on it.
func acceptOne(ln *net.TCPListener) error {
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	defer ln.SetDeadline(time.Time{})
	a, err := ln.Accept()
	if err != nil {
		return err
	}
	return a.Close()
}

// TestReadyReleasesUnderMaster (TESTPLAN A19): under a master, each worker
// claims the first listener; Ready closes its copy of the second, so its
// sockets are that one and its control channel. A later Listen for the
// second address asks the master, which returns the very socket the worker
// had inherited (in reuseport mode, the worker's slot's), and the worker
// serves it. In handoff mode the master accepts, so Ready closes both
// inherited listeners, claimed or not, and the later Listen yields the
// connections the master hands over.
func TestReadyReleasesUnderMaster(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []cluster.Mode{cluster.ModeShared, cluster.ModeReuseport, cluster.ModeHandoff} {
		t.Run(mode.String(), func(t *testing.T) {
			const workers = 2
			msgs := make(chan cluster.Message, 64)
			log := &syncBuffer{}
			m, err := cluster.New(&cluster.Config{
				Program: bin,
				Args:    []string{"-test.run=^$"},
				Workers: workers,
				Mode:    mode,
				Listen:  []string{"127.0.0.1:0", "127.0.0.1:0"},
				Env: append(os.Environ(), pc.Env(), "GORACE=atexit_sleep_ms=0", helperproc.RoleVar+"=a19-worker",
					"A19_IO=master", "A19_CLAIM=tcp "),
				Logger:  slog.New(slog.NewJSONHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
				Backoff: supervise.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond},
				OnMessage: func(msg cluster.Message) {
					select {
					case msgs <- msg:
					default:
						t.Errorf("OnMessage queue full: %q", msg.Payload)
					}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			runMaster(t, m, 60*time.Second)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("master log:\n%s", log.String())
				}
			})
			second := m.Addrs()[1].String()
			// Per slot: the inodes of fds 3 and 4 and the control
			// channel, and the pid once ready.
			inh := map[int][]uint64{}
			ready := map[int]int{}
			timeout := time.After(15 * time.Second)
			for len(ready) < workers {
				select {
				case msg := <-msgs:
					f := strings.Fields(string(msg.Payload))
					switch {
					case len(f) == 4 && f[0] == "inherited":
						for _, s := range f[1:] {
							n, _ := strconv.ParseUint(s, 10, 64)
							inh[msg.Slot] = append(inh[msg.Slot], n)
						}
					case len(f) == 2 && f[0] == "ready":
						ready[msg.Slot] = msg.PID
					default:
						t.Fatalf("slot %d said %q", msg.Slot, msg.Payload)
					}
				case <-timeout:
					t.Fatalf("%d of %d workers ready", len(ready), workers)
				}
			}
			for slot, pid := range ready {
				in := inh[slot]
				if len(in) != 3 {
					t.Fatalf("slot %d reported inodes %v", slot, in)
				}
				got := socketInodes(t, pid)
				if mode == cluster.ModeHandoff {
					// The control and connection channels only.
					if len(got) != 2 || !slices.Contains(got, in[2]) || slices.Contains(got, in[0]) || slices.Contains(got, in[1]) {
						t.Errorf("slot %d: sockets after Ready %v; want the control channel %d and the connection channel, no inherited listener (%d, %d)",
							slot, got, in[2], in[0], in[1])
					}
				} else {
					want := []uint64{in[0], in[2]}
					slices.Sort(want)
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("slot %d: sockets after Ready, by inode (-want +got):\n%s", slot, diff)
					}
				}
				if err := m.Send(slot, []byte("listen tcp "+second)); err != nil {
					t.Fatal(err)
				}
				select {
				case msg := <-msgs:
					want := fmt.Sprint("ok ", in[1])
					if mode == cluster.ModeHandoff {
						want = "ok 0" // a listener of handed-over connections
					}
					if got := string(msg.Payload); msg.Slot != slot || got != want {
						t.Errorf("slot %d: listen %s after Ready: slot %d said %q, want %q (the inherited socket)", slot, second, msg.Slot, got, want)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("slot %d did not answer", slot)
				}
			}
			for _, a := range m.Addrs() {
				if got, err := a19Get(a.String()); err != nil || !strings.HasPrefix(got, "a19 ") {
					t.Errorf("%s: %q, %v", a, got, err)
				}
			}
		})
	}
}
