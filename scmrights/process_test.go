//go:build linux

package scmrights_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// run starts cmd, waits for it and fails the test with its output on error.
func run(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper %v: %v\nstdout:\n%s", cmd.Args, err, out.String())
	}
	return out.String()
}

// A11: the receiver's RLIMIT_NOFILE leaves room for two descriptors and the
// peer sends five. The kernel installs what fits and reports MSG_CTRUNC;
// Recv must close what arrived, and the next message succeeds once the limit
// is restored.
func TestRlimitTruncation(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	for _, st := range sotypes {
		local, remote, err := scmrights.Socketpair(st.typ)
		if err != nil {
			t.Fatal(err)
		}
		c, err := scmrights.NewConn(local)
		if err != nil {
			t.Fatal(err)
		}
		cmd := helperproc.Command(t, "rlimit-recv", &helperproc.Options{ExtraFiles: []*os.File{remote}, Env: []string{pc.Env()}})
		var out strings.Builder
		cmd.Stdout = &out
		helperproc.Start(t, cmd)
		remote.Close()
		if err := c.Send([]byte("five"), distinctFDs(t, 5)...); err != nil {
			t.Fatal(err)
		}
		if err := c.Send([]byte("one"), distinctFDs(t, 1)...); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		c.Close()
		if err != nil {
			t.Fatalf("%s: helper failed: %v\n%s", st.name, err, out.String())
		}
		if !strings.Contains(out.String(), "ok") {
			t.Fatalf("%s: helper output %q", st.name, out.String())
		}
	}
}

func roleRlimitRecv() int {
	c, err := childConn()
	if err != nil {
		return fatalf("%v", err)
	}
	defer c.Close()
	before, err := fdcensus.Take(0)
	if err != nil {
		return fatalf("%v", err)
	}
	// Find the descriptor number below which exactly two slots are free.
	free, limit := 0, 0
	for fd := 0; free < 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			free++
		}
		limit = fd + 1
	}
	var orig unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &orig); err != nil {
		return fatalf("%v", err)
	}
	lim := orig
	lim.Cur = uint64(limit)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fatalf("%v", err)
	}
	buf := make([]byte, 16)
	fds := make([]int, 8)
	_, k, err := c.Recv(buf, fds)
	if restore := unix.Setrlimit(unix.RLIMIT_NOFILE, &orig); restore != nil {
		return fatalf("%v", restore)
	}
	if !errors.Is(err, scmrights.ErrTruncated) || k != 0 {
		return fatalf("Recv at the limit = %d, %v; want ErrTruncated", k, err)
	}
	if err := fdcensus.Compare(0, before); err != nil {
		return fatalf("after the truncated message: %v", err)
	}
	n, k, err := c.Recv(buf, fds)
	if err != nil || k != 1 || string(buf[:n]) != "one" {
		return fatalf("next Recv = %q, %d, %v", buf[:n], k, err)
	}
	unix.Close(fds[0])
	fmt.Println("ok")
	return 0
}

// A12: a sender running as nobody hits its in-flight descriptor limit
// (ETOOMANYREFS) against a receiver that never reads. The error is reported
// to the sender, its own descriptors stay flat, and another connection of
// the same sender keeps working.
func TestTooManyRefs(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	stuckLocal, stuckRemote, err := scmrights.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		t.Fatal(err)
	}
	defer stuckLocal.Close()
	okLocal, okRemote, err := scmrights.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		t.Fatal(err)
	}
	defer okLocal.Close()
	cmd := helperproc.Command(t, "nobody-sender", &helperproc.Options{
		AsNobody:   true,
		ExtraFiles: []*os.File{stuckRemote, okRemote},
		Env:        []string{pc.Env()},
	})
	var out strings.Builder
	cmd.Stdout = &out
	helperproc.Start(t, cmd)
	stuckRemote.Close()
	okRemote.Close()
	ok, err := scmrights.NewConn(okLocal)
	if err != nil {
		t.Fatal(err)
	}
	stuck, err := scmrights.NewConn(stuckLocal)
	if err != nil {
		t.Fatal(err)
	}
	ok.SetReadDeadline(time.Now().Add(20 * time.Second))
	stuck.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 64)
	fds := make([]int, 1)
	recv := func(c *scmrights.Conn) string {
		t.Helper()
		n, k, err := c.Recv(buf, fds)
		if err != nil {
			t.Fatalf("Recv: %v (helper said %q)", err, out.String())
		}
		closeAll(fds[:k])
		return fmt.Sprintf("%s/%d", buf[:n], k)
	}
	// While the sender is at its limit, its other connection still works.
	if got := recv(ok); got != "still here/0" {
		t.Fatalf("unrelated connection got %q", got)
	}
	// Drain the stuck peer: every queued message arrives whole.
	queued := 0
	for got := ""; got != "plain/0"; queued++ {
		if got = recv(stuck); got != "x/1" && got != "plain/0" {
			t.Fatalf("stuck connection got %q", got)
		}
	}
	if err := ok.Send([]byte("drained")); err != nil {
		t.Fatal(err)
	}
	// With the descriptors released, the sender passes descriptors again.
	if got := recv(ok); got != "with fd/1" {
		t.Fatalf("after draining, unrelated connection got %q", got)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out.String())
	}
	if want := fmt.Sprintf("ETOOMANYREFS after %d messages\n", queued-1); out.String() != want {
		t.Errorf("helper said %q, want %q", out.String(), want)
	}
}

func roleNobodySender() int {
	lim := unix.Rlimit{Cur: 64, Max: 64}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fatalf("setrlimit: %v", err)
	}
	uc, err := scmrights.UnixConn(3)
	if err != nil {
		return fatalf("%v", err)
	}
	stuck, _ := scmrights.NewConn(uc)
	uc, err = scmrights.UnixConn(4)
	if err != nil {
		return fatalf("%v", err)
	}
	other, _ := scmrights.NewConn(uc)
	devnull, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fatalf("%v", err)
	}
	before, _ := fdcensus.Take(0)
	stuck.SetWriteDeadline(time.Now().Add(10 * time.Second))
	var sendErr error
	sent := 0
	for ; sent < 10000; sent++ {
		if sendErr = stuck.Send([]byte("x"), devnull); sendErr != nil {
			break
		}
	}
	if !errors.Is(sendErr, syscall.ETOOMANYREFS) {
		return fatalf("after %d sends: %v, want ETOOMANYREFS", sent, sendErr)
	}
	if err := fdcensus.Compare(0, before); err != nil {
		return fatalf("sender descriptors changed: %v", err)
	}
	// The stuck connection itself still carries plain messages.
	if err := stuck.Send([]byte("plain")); err != nil {
		return fatalf("plain message after ETOOMANYREFS: %v", err)
	}
	if err := other.Send([]byte("still here")); err != nil {
		return fatalf("plain message on another connection: %v", err)
	}
	fmt.Printf("ETOOMANYREFS after %d messages\n", sent)
	buf := make([]byte, 16)
	other.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, _, err := other.Recv(buf, nil); err != nil || string(buf[:n]) != "drained" {
		return fatalf("waiting for the drain: %q, %v", buf[:n], err)
	}
	if err := other.Send([]byte("with fd"), devnull); err != nil {
		return fatalf("descriptor after the drain: %v", err)
	}
	return 0
}

// A17: one goroutine forks children in a loop while another receives
// descriptors; no received descriptor may ever appear in a child.
func TestReceivedNotInherited(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	a, b := connPair(t, unix.SOCK_SEQPACKET)
	src := distinctFDs(t, 4)
	passed := map[uint64]bool{}
	for _, id := range idents(t, src) {
		passed[id.Ino] = true
	}
	const maxMessages, children = 100000, 100
	var wg sync.WaitGroup
	wg.Add(1)
	recvErr := make(chan error, 1)
	stop := make(chan struct{})
	received := 0
	go func() {
		defer wg.Done()
		buf := make([]byte, 8)
		fds := make([]int, 4)
		for ; received < maxMessages; received++ {
			select {
			case <-stop:
				recvErr <- nil
				return
			default:
			}
			if err := a.Send([]byte("m"), src...); err != nil {
				recvErr <- err
				return
			}
			_, k, err := b.Recv(buf, fds)
			if err != nil {
				recvErr <- err
				return
			}
			time.Sleep(100 * time.Microsecond) // hold them open while children fork
			closeAll(fds[:k])
		}
		recvErr <- nil
	}()
	// ls is the child: it starts in milliseconds even under the race
	// detector, and -iL prints the inode behind each of its descriptors.
	ls, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	leaked, listed := 0, 0
	for i := 0; i < children; i++ {
		cmd := exec.Command(ls, "-iL", "/proc/self/fd/")
		cmd.Env = append(os.Environ(), pc.Env())
		out := run(t, cmd)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) != 2 {
				continue
			}
			ino, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				continue
			}
			listed++
			if passed[ino] {
				leaked++
			}
		}
	}
	if listed < children*3 {
		t.Fatalf("children listed only %d descriptors in all; the scan is not working", listed)
	}
	close(stop)
	wg.Wait()
	if err := <-recvErr; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d children listed %d descriptors while %d messages were received", children, listed, received)
	if received == 0 {
		t.Fatal("no message was received while the children forked")
	}
	if leaked > 0 {
		t.Errorf("received descriptors appeared in children %d times", leaked)
	}
}

// The socketpair helper hands a working end to a child.
func TestSocketpairChild(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	for _, st := range sotypes {
		local, remote, err := scmrights.Socketpair(st.typ)
		if err != nil {
			t.Fatal(err)
		}
		c, err := scmrights.NewConn(local)
		if err != nil {
			t.Fatal(err)
		}
		cmd := helperproc.Command(t, "echo", &helperproc.Options{ExtraFiles: []*os.File{remote}, Env: []string{pc.Env()}})
		helperproc.Start(t, cmd)
		remote.Close()
		sent := distinctFDs(t, 2)
		if err := c.Send([]byte("ping"), sent...); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 16)
		fds := make([]int, 4)
		n, k, err := c.Recv(buf, fds)
		if err != nil || string(buf[:n]) != "pong" || k != 2 {
			t.Fatalf("%s: echo = %q, %d, %v", st.name, buf[:n], k, err)
		}
		for i := range sent {
			if identOf(t, fds[i]) != identOf(t, sent[i]) {
				t.Errorf("%s: descriptor %d came back different", st.name, i)
			}
		}
		closeAll(fds[:k])
		c.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
}

// roleEcho answers one message with "pong" and the same descriptors.
func roleEcho() int {
	c, err := childConn()
	if err != nil {
		return fatalf("%v", err)
	}
	defer c.Close()
	buf := make([]byte, 16)
	fds := make([]int, 8)
	_, k, err := c.Recv(buf, fds)
	if err != nil {
		return fatalf("%v", err)
	}
	defer closeAll(fds[:k])
	if err := c.Send([]byte("pong"), fds[:k]...); err != nil {
		return fatalf("%v", err)
	}
	return 0
}
