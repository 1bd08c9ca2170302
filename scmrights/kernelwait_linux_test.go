//go:build linux

package scmrights_test

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
	"unsafe"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// The tests here check that no call waits in the kernel while holding its P,
// which would stall every stop-the-world (and so the whole process at the
// next collection) until the call returned.

// holdOffCollector keeps stop-the-world pauses away while a test may have a
// call stuck in the kernel on a P, and makes sure a second P exists, so
// that a failing run reaches its watchdog instead of freezing the process.
func holdOffCollector(t *testing.T) (release func()) {
	t.Helper()
	procs := runtime.GOMAXPROCS(0)
	if procs < 2 {
		runtime.GOMAXPROCS(2)
	}
	percent := debug.SetGCPercent(-1)
	return func() {
		debug.SetGCPercent(percent)
		if procs < 2 {
			runtime.GOMAXPROCS(procs)
		}
	}
}

// setBlocking clears O_NONBLOCK on c's open file description, as
// (*os.File).Fd on a File() copy or exec.Cmd.ExtraFiles does: the flag
// belongs to the description, which every copy of the socket shares.
func setBlocking(t *testing.T, c *scmrights.Conn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetNonblock(int(fd), false) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
}

// fill sends 1 KiB messages until a send fails, and returns that error.
func fill(send func([]byte) error) error {
	msg := make([]byte, 1024)
	for range 100000 {
		if err := send(msg); err != nil {
			return err
		}
	}
	return errors.New("100000 messages of 1 KiB sent without filling the socket")
}

// A Conn whose description another holder made blocking still waits on the
// runtime poller: the calls pass MSG_DONTWAIT, so deadlines apply and no
// call sits in the kernel holding its P.
func TestBlockingDescription(t *testing.T) {
	fdcensus.Verify(t)
	msgs := func(n int) []scmrights.Message {
		ms := make([]scmrights.Message, n)
		for i := range ms {
			ms[i] = scmrights.Message{Payload: make([]byte, 1024), FDs: make([]int, 2)}
		}
		return ms
	}
	for _, tc := range []struct {
		name string
		// send is true when the blocking side sends into a full socket,
		// false when it receives from an empty one.
		send bool
		op   func(c *scmrights.Conn) error
	}{
		{"Conn.Recv", false, func(c *scmrights.Conn) error {
			_, _, err := c.Recv(make([]byte, 8), make([]int, 1))
			return err
		}},
		{"Conn.RecvMsg", false, func(c *scmrights.Conn) error {
			return c.RecvMsg(&scmrights.Message{Payload: make([]byte, 8), FDs: make([]int, scmrights.MaxFDs)})
		}},
		{"Conn.RecvBatch", false, func(c *scmrights.Conn) error {
			_, err := c.RecvBatch(msgs(4))
			return err
		}},
		{"Recv", false, func(c *scmrights.Conn) error {
			_, _, err := scmrights.Recv(c.UnixConn(), make([]byte, 8), make([]int, 1))
			return err
		}},
		{"Conn.Send", true, func(c *scmrights.Conn) error {
			return fill(func(p []byte) error { return c.Send(p) })
		}},
		{"Conn.SendBatch", true, func(c *scmrights.Conn) error {
			ms := msgs(4)
			return fill(func(p []byte) error { _, err := c.SendBatch(ms); return err })
		}},
		{"Send", true, func(c *scmrights.Conn) error {
			return fill(func(p []byte) error { return scmrights.Send(c.UnixConn(), p) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := connPair(t, unix.SOCK_SEQPACKET)
			setBlocking(t, b)
			if tc.send {
				b.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			} else {
				b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			}
			release := holdOffCollector(t)
			defer release()
			done := make(chan error, 1)
			go func() { done <- tc.op(b) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				// Closing the peer ends a call blocked in the kernel
				// (end of stream, EPIPE).
				a.Close()
				err = <-done
				t.Fatalf("%s ignored its deadline, blocked in the kernel until the peer closed: %v", tc.name, err)
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s on a blocking description = %v, want a deadline error", tc.name, err)
			}
		})
	}
}

// userfaultfd(2) ABI (linux/userfaultfd.h), which x/sys does not export.
const (
	uffdAPI             = 0xaa
	uffdioAPI           = 0xc018aa3f // _IOWR(0xaa, 0x3f, struct uffdio_api)
	uffdioRegister      = 0xc020aa00 // _IOWR(0xaa, 0x00, struct uffdio_register)
	uffdioZeropage      = 0xc020aa04 // _IOWR(0xaa, 0x04, struct uffdio_zeropage)
	uffdRegisterMissing = 1
	uffdEventPagefault  = 0x12
)

// faultPage returns a page whose first touch, by user code or by the kernel
// copying into it, waits until resolve is called: the receive that copies
// into it stays in the kernel for as long as the test wants. It skips the
// test where userfaultfd is not available to this process.
func faultPage(t *testing.T) (page []byte, uffd int, resolve func()) {
	t.Helper()
	r, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if e != 0 {
		t.Skipf("userfaultfd: %v", e)
	}
	uffd = int(r)
	t.Cleanup(func() { unix.Close(uffd) })
	api := [3]uint64{uffdAPI, 0, 0} // struct uffdio_api: api, features, ioctls
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(uffd), uffdioAPI, uintptr(unsafe.Pointer(&api))); e != 0 {
		t.Skipf("UFFDIO_API: %v", e)
	}
	size := os.Getpagesize()
	page, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(page) })
	start := uint64(uintptr(unsafe.Pointer(&page[0])))
	reg := [4]uint64{start, uint64(size), uffdRegisterMissing, 0} // range, mode, ioctls
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(uffd), uffdioRegister, uintptr(unsafe.Pointer(&reg))); e != 0 {
		t.Skipf("UFFDIO_REGISTER: %v", e)
	}
	resolve = func() {
		zp := [4]uint64{start, uint64(size), 0, 0} // range, mode, zeropage
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(uffd), uffdioZeropage, uintptr(unsafe.Pointer(&zp))); e != 0 {
			t.Errorf("UFFDIO_ZEROPAGE: %v", e)
		}
	}
	return page, uffd, resolve
}

// waitFault waits, up to 10 s, until a thread faults on the page of uffd.
func waitFault(uffd int) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		pfd := []unix.PollFd{{Fd: int32(uffd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 100); err != nil && err != unix.EINTR {
			return err
		}
		var msg [32]byte // struct uffd_msg
		n, err := unix.Read(uffd, msg[:])
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == len(msg) && msg[0] == uffdEventPagefault {
			return nil
		}
	}
	return errors.New("no page fault within 10 s")
}

// notInGo is the runtime's count of goroutines in a system call.
func notInGo() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines/not-in-go:goroutines"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// A receive with room for many descriptors, and every batch receive, can
// wait in the kernel: installing descriptors may grow the descriptor table,
// which waits for an RCU grace period (measured: 100 ms for 70 messages of
// 253 descriptors). Such a receive must be a system call the scheduler knows
// about (Syscall, not RawSyscall), so that its goroutine gives up its P and
// a stop-the-world does not wait for it. A receive buffer on a userfaultfd
// page holds the call in the kernel, deterministically; the runtime's
// metrics then show whether it counts as in a system call.
func TestLargeReceiveReleasesP(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []struct {
		name string
		recv func(c *scmrights.Conn, buf []byte) (payload string, nfds int, err error)
	}{
		{"Recv with room for 253", func(c *scmrights.Conn, buf []byte) (string, int, error) {
			fds := make([]int, scmrights.MaxFDs)
			n, nfds, err := c.Recv(buf, fds)
			closeAll(fds[:nfds])
			return string(buf[:n]), nfds, err
		}},
		{"RecvBatch of 1 with room for 1", func(c *scmrights.Conn, buf []byte) (string, int, error) {
			ms := []scmrights.Message{{Payload: buf, FDs: make([]int, 1)}}
			k, err := c.RecvBatch(ms)
			if err != nil || k != 1 || ms[0].Err != nil {
				return "", 0, fmt.Errorf("RecvBatch = %d, %v, %v", k, err, ms[0].Err)
			}
			closeAll(ms[0].FDs[:ms[0].NFDs])
			return string(buf[:ms[0].N]), ms[0].NFDs, nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := connPair(t, unix.SOCK_SEQPACKET)
			page, uffd, resolve := faultPage(t)
			if err := a.Send([]byte("x"), distinctFDs(t, 1)...); err != nil {
				t.Fatal(err)
			}
			release := holdOffCollector(t)
			defer release()
			type result struct {
				payload string
				nfds    int
				err     error
			}
			done := make(chan result, 1)
			go func() {
				p, nfds, err := tc.recv(b, page[:64])
				done <- result{p, nfds, err}
			}()
			if err := waitFault(uffd); err != nil {
				resolve()
				t.Fatalf("receive never touched its buffer: %v; then returned %+v", err, <-done)
			}
			// The receive is now inside the kernel, copying into the page.
			inSyscall := false
			for i := 0; i < 100 && !inSyscall; i++ {
				inSyscall = notInGo() > 0
				select {
				case r := <-done:
					// A RawSyscall counts as running Go code, so sysmon
					// preempts it with a signal, which fails the copy.
					t.Fatalf("receive returned before its page fault was resolved: %+v", r)
				default:
				}
				time.Sleep(time.Millisecond)
			}
			resolve()
			r := <-done
			if !inSyscall {
				t.Errorf("receive waiting in the kernel is not counted as in a system call: it holds its P (RawSyscall)")
			}
			if r.err != nil || r.payload != "x" || r.nfds != 1 {
				t.Errorf("receive = %q, %d descriptors, %v; want \"x\", 1, nil", r.payload, r.nfds, r.err)
			}
		})
	}
}
