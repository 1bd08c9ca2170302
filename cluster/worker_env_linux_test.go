//go:build linux

package cluster_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
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
	"golang.org/x/sys/unix"
)

// workerVariants are go-worker's other workers, chosen by W_VARIANT.
var workerVariants = map[string]func() int{
	"wildcard":  wildcardWorker,
	"activated": activatedWorker,
	"spawn":     spawnWorker,
	"report":    reportChild,
	"drain":     drainWorker,
	"ctlcheck":  ctlCheckWorker,
}

// protocolVars are the variables the worker API takes from the
// environment at its first call.
var protocolVars = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
	"HANDOFF_CONTROL_FD", "HANDOFF_CONN_FD", "HANDOFF_CONN_VERSION", "HANDOFF_MODE"}

// presentVars returns which of protocolVars the environment has.
func presentVars() []string {
	var out []string
	for _, k := range protocolVars {
		if _, ok := os.LookupEnv(k); ok {
			out = append(out, k)
		}
	}
	return out
}

// listenEach listens on W_ADDRS ("network,host" pairs) at port, each
// compared with the socket of inode ino: "network host: same", "other"
// (a socket of its own) or the error.
func listenEach(port string, ino uint64) string {
	var out []string
	for _, pair := range strings.Fields(os.Getenv("W_ADDRS")) {
		network, host, _ := strings.Cut(pair, ",")
		ln, err := cluster.Listen(cluster.Context(), network, net.JoinHostPort(host, port))
		res := "other"
		switch {
		case errors.Is(err, syscall.EADDRINUSE):
			res = "EADDRINUSE"
		case err != nil:
			res = err.Error()
		case listenerInode(ln) == ino:
			res = "same"
		}
		if ln != nil {
			ln.Close()
		}
		out = append(out, fmt.Sprintf("%s %q: %s", network, host, res))
	}
	return strings.Join(out, "; ")
}

// wildcardWorker, under a master with one wildcard -listen address,
// listens on that port with W_ADDRS and sends "wildcard <listenEach>".
func wildcardWorker() int {
	ln, err := cluster.Listen(cluster.Context(), "tcp", "")
	if err != nil {
		fmt.Fprintln(os.Stderr, "wildcard-worker:", err)
		return 3
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	cluster.Send([]byte("wildcard " + listenEach(port, listenerInode(ln))))
	ln.Close()
	if err := cluster.Ready(); err != nil {
		return 3
	}
	<-cluster.Done()
	return 0
}

// activatedWorker is socket-activated as systemd does it: LISTEN_PID (set
// here, now that the pid is known), LISTEN_FDS and LISTEN_FDNAMES, one
// listener on descriptor 3 at port W_PORT. It prints "wildcard
// <listenEach>", then "env <protocol variables left>" and "cloexec <is
// each of descriptors 3..3+LISTEN_FDS-1 close-on-exec>".
func activatedWorker() int {
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	var st unix.Stat_t
	if err := unix.Fstat(3, &st); err != nil {
		fmt.Fprintln(os.Stderr, "activated-worker:", err)
		return 3
	}
	fmt.Printf("wildcard %s\n", listenEach(os.Getenv("W_PORT"), st.Ino))
	fmt.Printf("env %v\n", presentVars())
	var cloexec []bool
	for fd := 3; fd < 3+n; fd++ {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		cloexec = append(cloexec, err == nil && flags&unix.FD_CLOEXEC != 0)
	}
	fmt.Printf("cloexec %v\n", cloexec)
	return 0
}

// ctlCheckWorker is started with LISTEN_PID naming it (set here) and
// HANDOFF_CONTROL_FD=3, or with W_CTL=own naming a unix socket it opened
// itself. It prints "worker <IsWorker> cloexec <is the descriptor
// close-on-exec>".
func ctlCheckWorker() int {
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	fd := 3
	if os.Getenv("W_CTL") == "own" {
		// Go opens everything close-on-exec, as this does.
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return 3
		}
		defer unix.Close(p[1])
		fd = p[0]
		os.Setenv("HANDOFF_CONTROL_FD", strconv.Itoa(fd))
	}
	w := cluster.IsWorker()
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	fmt.Printf("worker %v cloexec %v\n", w, err == nil && flags&unix.FD_CLOEXEC != 0)
	return 0
}

// spawnWorker calls the API once, then starts a child (reportChild)
// before anything else, as a program may, and sends "spawn <child's
// report>"; then it serves as a worker.
func spawnWorker() int {
	cluster.IsWorker()
	bin, err := os.Executable()
	if err != nil {
		return 3
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), "W_VARIANT=report")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		out = []byte(err.Error())
	}
	ln, err := cluster.Listen(cluster.Context(), "tcp", "")
	if err != nil {
		fmt.Fprintln(os.Stderr, "spawn-worker:", err)
		return 3
	}
	defer ln.Close()
	cluster.Send(append([]byte("spawn "), bytes.TrimSpace(out)...))
	if err := cluster.Ready(); err != nil {
		return 3
	}
	<-cluster.Done()
	return 0
}

// reportChild prints the sockets among its descriptors, the protocol
// variables it inherited, and what the API says it is.
func reportChild() int {
	var socks []string
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			socks = append(socks, e.Name())
		}
	}
	vars := presentVars()
	fmt.Printf("sockets %v env %v id %d worker %v\n", socks, vars, cluster.ID(), cluster.IsWorker())
	return 0
}

// drainWorker serves, and on Done sends "draining", drains for W_DRAIN
// and sends "drained" before it exits.
func drainWorker() int {
	ln, err := cluster.Listen(cluster.Context(), "tcp", "")
	if err != nil {
		return 3
	}
	defer ln.Close()
	if err := cluster.Ready(); err != nil {
		return 3
	}
	<-cluster.Done()
	cluster.Send([]byte("draining"))
	d, _ := time.ParseDuration(os.Getenv("W_DRAIN"))
	time.Sleep(d)
	cluster.Send([]byte("drained"))
	// Until the master has it.
	time.Sleep(100 * time.Millisecond)
	return 0
}

// TestWorkerListenWildcard: Listen(":port") under a master whose -listen
// address is a wildcard returns the inherited socket, as 0.0.0.0 and :: do
// for "tcp" (net.Listen binds all three as one dual-stack socket). It used
// to find no match (a nil IP is not 0.0.0.0) and ask the master, which
// refuses an empty host.
func TestWorkerListenWildcard(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []struct {
		listen string
		want   string
	}{
		{"[::]:0", `tcp "": same; tcp "0.0.0.0": same; tcp "::": same; tcp6 "": same`},
		// The master binds it as net.Listen does: [::], dual-stack.
		{"0.0.0.0:0", `tcp "": same; tcp "0.0.0.0": same; tcp "::": same; tcp6 "": same`},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			pc := proccensus.New(t)
			const addrs = "tcp, tcp,0.0.0.0 tcp,:: tcp6,"
			bin, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			c := startClusterWith(t, pc, 1, 0, nil, func(cfg *cluster.Config) { cfg.Listen = []string{tc.listen} },
				bin, []string{"-test.run=^$"}, helperproc.RoleVar+"=go-worker", "W_VARIANT=wildcard", "W_ADDRS="+addrs)
			got := strings.TrimPrefix(string(c.collect(1, "wildcard ")[0].Payload), "wildcard ")
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Listen at the -listen port (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWorkerListenWildcardActivated: under systemd (ListenStream=PORT
// binds a dual-stack [::]:PORT) and without a master, Listen(":PORT")
// returns the inherited socket instead of binding one of its own, which
// failed with EADDRINUSE; "tcp4" never takes a :: socket. The first call
// of the API removes the activation variables from the environment and
// leaves every activation descriptor close-on-exec, also when
// LISTEN_FDNAMES is garbage and when one beyond the names is not a socket.
func TestWorkerListenWildcardActivated(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	for _, tc := range []struct {
		name, fds, names string
		want             []string
	}{
		{"named", "1", "web", []string{
			`wildcard tcp "": same; tcp "0.0.0.0": same; tcp "::": same; tcp6 "": same; tcp4 "": EADDRINUSE`,
			"env []", "cloexec [true]"}},
		{"bad names", "1", "web:extra", []string{
			`wildcard tcp "": EADDRINUSE`,
			"env []", "cloexec [true]"}},
		// Descriptor 4, beyond the names, is a pipe: never adopted, but
		// not left to the worker's children either.
		{"unnamed pipe", "2", "web", []string{
			`wildcard tcp "": same`,
			"env []", "cloexec [true true]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addrs := "tcp, tcp,0.0.0.0 tcp,:: tcp6, tcp4,"
			if tc.name != "named" {
				addrs = "tcp,"
			}
			cmd := helperproc.Command(t, "go-worker", &helperproc.Options{
				Env: []string{pc.Env(), "W_VARIANT=activated", "W_PORT=" + port, "W_ADDRS=" + addrs,
					"LISTEN_FDS=" + tc.fds, "LISTEN_FDNAMES=" + tc.names},
				ExtraFiles: []*os.File{f, pr},
			})
			cmd.Stderr = nil // the ignored activation's warning
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("activated worker: %v", err)
			}
			got := strings.Split(strings.TrimSpace(string(out)), "\n")
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("activated worker (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWorkerControlFDChecked: the worker adopts as its control channel
// only a unix socket it inherited (it used to take any stream socket, a
// TCP connection or one of its own), and marks the descriptor
// close-on-exec even when it is not one (it used to leave a pipe
// inheritable by its children).
func TestWorkerControlFDChecked(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tcpFile, err := conn.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer tcpFile.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	for _, tc := range []struct {
		name string
		fd3  *os.File
		env  string
		want string
	}{
		{"tcp", tcpFile, "HANDOFF_CONTROL_FD=3", "worker false cloexec true"},
		{"pipe", pr, "HANDOFF_CONTROL_FD=3", "worker false cloexec true"},
		{"own", nil, "W_CTL=own", "worker false cloexec true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := &helperproc.Options{Env: []string{pc.Env(), "W_VARIANT=ctlcheck", "LISTEN_FDS=0", tc.env}}
			if tc.fd3 != nil {
				opts.ExtraFiles = []*os.File{tc.fd3}
			}
			cmd := helperproc.Command(t, "go-worker", opts)
			cmd.Stderr = nil // the ignored channel's warning
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("worker: %v", err)
			}
			if got := strings.TrimSpace(string(out)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestWorkerChildInheritsNothing: a child a worker starts right after its
// first call of the API (before any Listen) inherits none of the worker's
// sockets, in handoff mode the connection channel included (it used to
// get HANDOFF_CONN_FD's socket), and none of its protocol variables, so
// it cannot report ready or heartbeat for the worker; ID is 0 in it, not
// its parent's slot.
func TestWorkerChildInheritsNothing(t *testing.T) {
	fdcensus.Verify(t)
	for _, mode := range []cluster.Mode{cluster.ModeShared, cluster.ModeHandoff} {
		t.Run(mode.String(), func(t *testing.T) {
			pc := proccensus.New(t)
			bin, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			c := startClusterWith(t, pc, 2, time.Second, nil, func(cfg *cluster.Config) { cfg.Mode = mode },
				bin, []string{"-test.run=^$"}, helperproc.RoleVar+"=go-worker", "W_VARIANT=spawn")
			var got []string
			for _, m := range c.collect(2, "spawn ") {
				got = append(got, fmt.Sprintf("slot %d: %s", m.Slot, m.Payload))
			}
			slices.Sort(got)
			want := []string{
				"slot 0: spawn sockets [] env [] id 0 worker false",
				"slot 1: spawn sockets [] env [] id 0 worker false",
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("what a worker's child inherited (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWorkerHeartbeatsWhileDraining: a worker that got SIGTERM from
// someone other than the master keeps sending heartbeats while it drains,
// so the master does not kill it for silence (it used to stop them as Done
// closed, and was killed within 3 heartbeat intervals).
func TestWorkerHeartbeatsWhileDraining(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	const hb = 100 * time.Millisecond
	// 5 times the deadline of HeartbeatFactor intervals.
	c := startGoCluster(t, pc, 1, "go-worker", hb, "W_VARIANT=drain", "W_DRAIN="+(5*cluster.HeartbeatFactor*hb).String())
	pid := c.slotPIDs(1)[0]
	if err := unix.Kill(pid, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	c.collect(1, "draining")
	c.collect(1, "drained")
	for _, r := range c.log.records() {
		if s, _ := r["reason"].(string); strings.Contains(s, "heartbeat") {
			t.Errorf("master: %v", r)
		}
	}
}
