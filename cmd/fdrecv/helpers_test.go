//go:build linux

package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	fdrecv "github.com/handoff-go/handoff/cmd/fdrecv"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/fdwire"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{
		"fdrecv":    roleFdrecv,
		"listenfds": roleListenFDs,
		"server1":   roleServer1,
		"server2":   roleServer2,
		"sendmsg":   roleSendMsg,
		"refused":   roleRefused,
	})
}

// Environment knobs of the fdrecv role.
const (
	// execRoleVar names the helper role PROGRAM (this test binary) runs as
	// once fdrecv execs it.
	execRoleVar = "FDRECV_TEST_EXEC_ROLE"
	// rlimitVar sets the role's RLIMIT_NOFILE before receiving.
	rlimitVar = "FDRECV_TEST_RLIMIT"
	// censusVar makes the role print "census ok" if fdrecv left its
	// descriptors as they were.
	censusVar = "FDRECV_TEST_CENSUS"
	// nonblockVar lists standard descriptors ("0,2") the role puts in
	// non-blocking mode, as Node.js does to its stdio.
	nonblockVar = "FDRECV_TEST_NONBLOCK"
	// stackVar sets the role's RLIMIT_STACK before receiving; the kernel
	// derives execve's argument and environment limit from it.
	stackVar = "FDRECV_TEST_RLIMIT_STACK"
)

// roleFdrecv runs the command in a child, as a user would.
func roleFdrecv() int {
	if next := os.Getenv(execRoleVar); next != "" {
		os.Setenv(helperproc.RoleVar, next)
	}
	for _, l := range []struct {
		env      string
		resource int
	}{{rlimitVar, unix.RLIMIT_NOFILE}, {stackVar, unix.RLIMIT_STACK}} {
		s := os.Getenv(l.env)
		if s == "" {
			continue
		}
		n, _ := strconv.ParseUint(s, 10, 64)
		var lim unix.Rlimit
		if err := unix.Getrlimit(l.resource, &lim); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		lim.Cur = n
		if err := unix.Setrlimit(l.resource, &lim); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if s := os.Getenv(nonblockVar); s != "" {
		for _, f := range strings.Split(s, ",") {
			fd, _ := strconv.Atoi(f)
			if err := unix.SetNonblock(fd, true); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
	}
	before, err := fdcensus.Take(0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := fdrecv.ExitCode(fdrecv.Run(context.Background(), helperproc.Args(), os.Stdin, os.Stdout, os.Stderr), os.Stderr)
	if os.Getenv(censusVar) != "" {
		if err := fdcensus.Compare(0, before); err != nil {
			fmt.Println(err)
		} else {
			fmt.Println("census ok")
		}
	}
	return code
}

// execReport is what the listenfds role prints: what a socket-activated
// program sees.
type execReport struct {
	PID           int
	ListenPID     string
	ListenFDs     string
	ListenFDNames string
	// FDs maps every inherited descriptor above 2 to its inode.
	FDs map[int]fdState
	// Stdio describes descriptors 0, 1 and 2.
	Stdio [3]stdioState
	// Hidden lists fdrecv's own environment variables that reached
	// PROGRAM.
	Hidden []string
}

type fdState struct {
	Ino uint64
}

// stdioState identifies a standard descriptor's open file description by
// its inode and its O_NONBLOCK flag (a file status flag, stored in the
// description: a placeholder, or another description of the same pipe,
// would not have the caller's).
type stdioState struct {
	Ino      uint64
	Nonblock bool
}

func roleListenFDs() int {
	snap, err := fdcensus.Take(0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r := execReport{
		PID:           os.Getpid(),
		ListenPID:     os.Getenv("LISTEN_PID"),
		ListenFDs:     os.Getenv("LISTEN_FDS"),
		ListenFDNames: os.Getenv("LISTEN_FDNAMES"),
		FDs:           map[int]fdState{},
	}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "HANDOFF_FDRECV_") {
			r.Hidden = append(r.Hidden, kv)
		}
	}
	for fd, st := range snap {
		if fd <= 2 {
			fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			r.Stdio[fd] = stdioState{Ino: st.Ino, Nonblock: fl&unix.O_NONBLOCK != 0}
			continue
		}
		// A close-on-exec descriptor cannot have come through exec: this
		// image's runtime opened it (the cgroup CPU-limit files, say).
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		r.FDs[fd] = fdState{Ino: st.Ino}
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return 1
	}
	return 0
}

// roleSendMsg connects to the fdrecv socket at its argument, sends a valid
// message without descriptors, and prints each reply status it reads, up
// to a failure status or "eof" (or the error that ended it).
func roleSendMsg() int {
	path := helperproc.Args()[0]
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		fmt.Println("dial:", err)
		return 1
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	_ = uc.SetDeadline(time.Now().Add(10 * time.Second))
	msg, _ := fdwire.EncodeMessage(nil, []byte("x"))
	// A refused sender may find the connection closed already (EPIPE):
	// the reply read below says why.
	_, _ = uc.Write(msg)
	buf := make([]byte, 2048)
	for range 3 {
		n, err := uc.Read(buf)
		if err == io.EOF {
			fmt.Println("eof")
			return 0
		}
		if err != nil {
			fmt.Println("read:", err)
			return 1
		}
		st, _, err := fdwire.DecodeReply(buf[:n])
		if err != nil {
			fmt.Println("reply:", err)
			return 1
		}
		fmt.Println("status", st)
		if st != 0 {
			// A failure status is final.
			return 0
		}
	}
	return 0
}

// serve answers every connection on ln with "<who> <pid>", so the client
// can tell which server answered.
func serve(ln net.Listener, who string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = fmt.Fprintf(c, "%s %d\n", who, os.Getpid())
		}()
	}
}

// roleServer1 serves a TCP listener on 127.0.0.1 until it reads "handoff"
// on stdin; then it runs fdsend (its argument 0) to hand the listener to
// the fdrecv at its argument 1, and stops accepting if that worked. It
// exits at EOF on stdin.
func roleServer1() int {
	args := helperproc.Args()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("addr %s\n", ln.Addr())
	go serve(ln, "server1")
	in := bufio.NewReader(os.Stdin)
	if line, _ := in.ReadString('\n'); strings.TrimSpace(line) != "handoff" {
		ln.Close()
		return 0
	}
	code, err := runFdsend(ln, args[0], args[1])
	switch {
	case err != nil:
		fmt.Fprintln(os.Stderr, err)
		fmt.Println("kept error")
	case code != 0:
		fmt.Printf("kept %d\n", code)
	default:
		// fdrecv holds the socket now: closing our copy (never
		// shutdown(2)) leaves the accept queue intact for the successor.
		ln.Close()
		fmt.Println("handed")
	}
	_, _ = io.Copy(io.Discard, in)
	ln.Close()
	return 0
}

// runFdsend runs "fdsend -socket sock -fd 3 -name web" with the listener at
// descriptor 3. syscall.StartProcess takes raw descriptors; os/exec would
// call (*os.File).Fd, which switches the shared socket to blocking mode.
func runFdsend(ln net.Listener, bin, sock string) (int, error) {
	fd, err := scmrights.Dup(ln.(syscall.Conn))
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	pid, err := syscall.ForkExec(bin, []string{"fdsend", "-socket", sock, "-fd", "3", "-name", "web", "-payload", "from server1"}, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 2, 2, uintptr(fd)},
	})
	if err != nil {
		return 0, err
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Wait()
	if err != nil {
		return 0, err
	}
	return st.ExitCode(), nil
}

// roleServer2 is the socket-activated successor: it adopts LISTEN_FDS and
// serves until EOF on stdin.
func roleServer2() int {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") != "1" || os.Getenv("LISTEN_FDNAMES") != "web" {
		fmt.Fprintf(os.Stderr, "server2: bad environment: LISTEN_PID=%q (pid %d) LISTEN_FDS=%q LISTEN_FDNAMES=%q\n",
			os.Getenv("LISTEN_PID"), os.Getpid(), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"))
		return 1
	}
	ln, err := scmrights.Listener(3)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("serving %d\n", os.Getpid())
	go serve(ln, "server2")
	_, _ = io.Copy(io.Discard, os.Stdin)
	ln.Close()
	return 0
}

// childEnv is added to every helper's environment: the census marker, and
// no 1 s sleep at exit under the race detector (atexit_sleep_ms).
func childEnv(pc *proccensus.Census, extra ...string) []string {
	return append([]string{pc.Env(), "GORACE=" + strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0")}, extra...)
}

// shortDir returns a fresh directory with a short path, for socket files.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fdr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// dial connects to fdrecv's socket, waiting for it to appear.
func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unixpacket", path)
		if err == nil {
			return c.(*net.UnixConn)
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial %s: %v", path, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readReply reads fdrecv's reply and returns its status byte, or -1 at EOF.
func readReply(t *testing.T, c *net.UnixConn) int {
	t.Helper()
	return readReplyVersion(t, c, fdwire.Version)
}

// readReplyVersion is readReply for a reply stamped with version v.
func readReplyVersion(t *testing.T, c *net.UnixConn, v byte) int {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := scmrights.Recv(c, buf, nil)
	if err == io.EOF {
		return -1
	}
	if err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	if n < 8 || string(buf[:4]) != "HFDR" || buf[4] != v {
		t.Fatalf("reply %q is not a version %d reply", buf[:n], v)
	}
	return int(buf[5])
}

// inodeOf returns the inode of the descriptor behind c.
func inodeOf(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return st.Ino
}

// dupFDs returns n close-on-exec duplicates of c's descriptor, closed at
// the end of the test.
func dupFDs(t *testing.T, c syscall.Conn, n int) []int {
	t.Helper()
	var fds []int
	for range n {
		fd, err := scmrights.Dup(c)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	return fds
}

// exitStatus returns a finished command's exit status.
func exitStatus(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// buildFdsend builds the fdsend command into a temporary directory.
func buildFdsend(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building fdsend needs the go command: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "fdsend")
	cmd := exec.Command(gobin, "build", "-o", bin, "github.com/handoff-go/handoff/cmd/fdsend")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build fdsend: %v\n%s", err, out)
	}
	return bin
}
