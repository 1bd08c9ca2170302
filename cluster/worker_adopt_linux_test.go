//go:build linux

package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

func init() {
	workerVariants["ownfd"] = ownFDWorker
	workerVariants["samefd"] = sameFDWorker
	workerVariants["cloexecfirst"] = cloexecFirstWorker
}

// ownFDWorker opens a listener of its own, then sets LISTEN_PID to itself
// and LISTEN_FDS to cover that listener's descriptor (as a garbled
// environment could), and asks the API for an inherited socket. It prints
// "empty <ErrNoListener?> addr <EADDRINUSE?> own <its listener still
// accepts after Ready?>".
func ownFDWorker() int {
	own, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "ownfd-worker:", err)
		return 3
	}
	defer own.Close()
	rc, err := own.(*net.TCPListener).SyscallConn()
	if err != nil {
		return 3
	}
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	os.Setenv("LISTEN_FDS", strconv.Itoa(fd-2)) // 3..fd
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, errEmpty := cluster.Listen(ctx, "tcp", "")
	if ln != nil {
		ln.Close()
	}
	ln, errAddr := cluster.Listen(ctx, "tcp", own.Addr().String())
	if ln != nil {
		ln.Close()
	}
	if err := cluster.Ready(); err != nil {
		return 3
	}
	c, err := net.Dial("tcp", own.Addr().String())
	if err == nil {
		defer c.Close()
		own.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
		var sc net.Conn
		if sc, err = own.Accept(); err == nil {
			sc.Close()
		}
	}
	fmt.Printf("empty %v addr %v own %v\n", errors.Is(errEmpty, cluster.ErrNoListener), errors.Is(errAddr, unix.EADDRINUSE), err == nil)
	return 0
}

// TestWorkerListenSkipsOwnSocket (TESTPLAN A20): a LISTEN_FDS descriptor
// the process opened itself (close-on-exec) is not adopted, so Listen
// never hands out the program's own socket: "" finds nothing
// (ErrNoListener), its address is bound anew (and is in use), and Ready
// leaves it open. Listen used to return a duplicate of it.
func TestWorkerListenSkipsOwnSocket(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	cmd := helperproc.Command(t, "go-worker", &helperproc.Options{Env: []string{pc.Env(), "W_VARIANT=ownfd"}})
	cmd.Stderr = nil // the ignored descriptors' warnings
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("worker: %v", err)
	}
	if got, want := strings.TrimSpace(string(out)), "empty true addr true own true"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// cloexecFirstWorker inherits a listener as descriptor 3 and marks it
// close-on-exec before its first call of the API, as a program that ran
// go-systemd's activation.Files first would. It prints "empty
// <ErrNoListener?>".
func cloexecFirstWorker() int {
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	if _, err := unix.FcntlInt(3, unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return 3
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := cluster.Listen(ctx, "tcp", "")
	if ln != nil {
		ln.Close()
	}
	fmt.Printf("empty %v\n", errors.Is(err, cluster.ErrNoListener))
	return 0
}

// TestWorkerListenCloexecFirst (TESTPLAN A20): an inherited socket marked
// close-on-exec before the API's first call cannot be told from one the
// process opened, so it stays unclaimed; the message on standard error
// says it is close-on-exec and how to avoid that, instead of claiming the
// process opened it.
func TestWorkerListenCloexecFirst(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := helperproc.Command(t, "go-worker", &helperproc.Options{
		Env:        []string{pc.Env(), "W_VARIANT=cloexecfirst", "LISTEN_FDS=1", "LISTEN_FDNAMES=web"},
		ExtraFiles: []*os.File{f},
	})
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("worker: %v; stderr %q", err, stderr.String())
	}
	if got, want := strings.TrimSpace(string(out)), "empty true"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, want := range []string{"descriptor 3 (web) ignored: it is close-on-exec", "make the first call of the worker API before anything that marks LISTEN_FDS close-on-exec (that call removes LISTEN_FDS from the environment unless it is HandoffListener)"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q lacks %q", stderr.String(), want)
		}
	}
}

// sameFDWorker is started with HANDOFF_CONTROL_FD and HANDOFF_CONN_FD
// naming the same descriptor. After the API's set-up it opens a socket
// pair of its own, which may get that number, and calls HandoffListener.
// It prints "handoff <ErrNoHandoff?> own <its pair still open?>".
func sameFDWorker() int {
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	cluster.IsWorker()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 3
	}
	_, err = cluster.HandoffListener("x")
	open := true
	for _, fd := range p {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			open = false
		}
	}
	fmt.Printf("handoff %v own %v\n", errors.Is(err, cluster.ErrNoHandoff), open)
	return 0
}

// TestWorkerConnFDIsControlFD: HANDOFF_CONN_FD equal to HANDOFF_CONTROL_FD
// is refused (ErrNoHandoff) and the program's descriptors are left alone.
// HandoffListener used to take the number again after the control channel
// had taken it, closing whatever the program had opened under it since.
func TestWorkerConnFDIsControlFD(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	local, remote := socketpairFiles(t)
	defer local.Close()
	cmd := helperproc.Command(t, "go-worker", &helperproc.Options{
		Env:        []string{pc.Env(), "W_VARIANT=samefd", "LISTEN_FDS=0", "HANDOFF_CONTROL_FD=3", "HANDOFF_CONN_FD=3", "HANDOFF_MODE=handoff"},
		ExtraFiles: []*os.File{remote},
	})
	cmd.Stderr = nil
	out, err := cmd.Output()
	remote.Close()
	if err != nil {
		t.Fatalf("worker: %v", err)
	}
	if got, want := strings.TrimSpace(string(out)), "handoff true own true"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
