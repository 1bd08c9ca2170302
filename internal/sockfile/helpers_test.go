//go:build linux

package sockfile_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sockfile"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{
		"starter": roleStarter,
		"adopt":   roleAdopt,
		"dial":    roleDial,
	})
}

// childEnv is the environment added to every helper: the census marker,
// and no 1 s sleep at exit under the race detector (its atexit_sleep_ms
// default), which would dominate tests that start many helpers.
func childEnv(pc *proccensus.Census) []string {
	return []string{pc.Env(), "GORACE=" + strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0")}
}

// exitInUse is the starter's exit status when Listen reports ErrInUse.
const exitInUse = 3

// roleStarter creates the socket at its argument like a supervisor starting
// up, prints "won <pid>", and answers each connection with its pid until
// stdin reaches EOF.
func roleStarter() int {
	args := helperproc.Args()
	l, err := sockfile.Listen(args[0], nil)
	if errors.Is(err, sockfile.ErrInUse) {
		fmt.Println("inuse")
		return exitInUse
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("won %d\n", os.Getpid())
	go servePID(l)
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := l.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// roleAdopt serves the listening socket inherited as fd 3, the way an exec'd
// successor would, until stdin reaches EOF.
func roleAdopt() int {
	f := os.NewFile(3, "inherited")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("adopted %d\n", os.Getpid())
	go servePID(ln)
	_, _ = io.Copy(io.Discard, os.Stdin)
	ln.Close()
	return 0
}

// roleDial connects to its argument and prints "ok" or the errno.
func roleDial() int {
	c, err := net.Dial("unix", helperproc.Args()[0])
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			fmt.Println(errnoName(errno))
			return 0
		}
		fmt.Println(err)
		return 0
	}
	c.Close()
	fmt.Println("ok")
	return 0
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EACCES:
		return "EACCES"
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	case syscall.ENOENT:
		return "ENOENT"
	}
	return e.Error()
}

// acceptOne checks that l serves: a client dialled to path on network is
// accepted.
func acceptOne(t *testing.T, l net.Listener, network, path string) {
	t.Helper()
	c, err := net.Dial(network, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
}

func servePID(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = fmt.Fprintf(c, "%d\n", os.Getpid())
		c.Close()
	}
}

// dialPID connects to path and returns the pid the server answers with.
func dialPID(t *testing.T, path string) int {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", path, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("answer %q: %v", line, err)
	}
	return pid
}

// staleSocket leaves a socket file at path that nobody listens on, as a
// SIGKILLed owner would.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
}

// inode returns the inode number of path (not following symlinks).
func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// readLine reads one line from r within d.
func readLine(r *bufio.Reader, d time.Duration) (string, error) {
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := r.ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case x := <-ch:
		return x.s, x.err
	case <-time.After(d):
		return "", errors.New("timed out waiting for a line")
	}
}
