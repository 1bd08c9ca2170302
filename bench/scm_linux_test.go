//go:build linux

package main_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
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

// scmBatch is how many messages one SendBatch/RecvBatch call carries.
const scmBatch = 64

// scmSockets are the socket types of BenchmarkSCM.
var scmSockets = []struct {
	name string
	typ  int
}{
	{"stream", unix.SOCK_STREAM},
	{"seqpacket", unix.SOCK_SEQPACKET},
}

// scmBaseline holds the ns per message of the C loop per "socket/K/P" in
// this process, so the variants that follow it report xC side by side.
var scmBaseline sync.Map

// BenchmarkSCM measures descriptor passing between two processes. Every
// message carries P payload bytes and K copies of one descriptor; the
// receiver closes each descriptor it gets. Variants, run back to back for
// each case so they share the machine's state, in this order rotated by
// $HANDOFF_BENCH_ROTATE:
//
//	c        blocking sendmsg/recvmsg in C (testdata/cloop.c), sender and
//	         receiver both C processes: the limit
//	naive    WriteMsgUnix+UnixRights / ReadMsgUnix+ParseSocketControlMessage
//	scm      scmrights Conn.Send / Conn.Recv
//	batched  scmrights Conn.SendBatch / Conn.RecvBatch, 64 messages per call
//
// The Go receiver is this process; the Go sender is this binary re-executed.
// Reported: ns/op, MB/s and msgs/s of the timed loop (the C receiver times
// itself, so neither covers process start-up), fds/s, xC (throughput over
// the C loop's in the same process), and allocations per message counted
// exactly around the loops: recv-allocs/op of the receiver, send-allocs/op
// of the sender (testing's allocs/op is rounded down to an integer).
func BenchmarkSCM(b *testing.B) {
	// Once for every sub-benchmark: the parent runs once.
	cbin, whyNot := buildCLoop(b)
	for _, st := range scmSockets {
		for _, k := range []int{1, 8, 64, scmrights.MaxFDs} {
			for _, p := range []int{1, 64, 4096} {
				for _, impl := range inOrder("c", "naive", "scm", "batched") {
					b.Run(fmt.Sprintf("%s/K=%d/P=%d/%s", st.name, k, p, impl), func(b *testing.B) {
						if impl == "c" && cbin == "" {
							b.Skip(whyNot)
						}
						benchSCM(b, cbin, st.typ, k, p, impl)
					})
				}
			}
		}
	}
}

func benchSCM(b *testing.B, cbin string, sotype, k, p int, impl string) {
	fdcensus.Verify(b)
	pc := proccensus.New(b)
	if impl != "c" {
		// This process is the Go receiver. For the C loop it only
		// starts both C processes, whose allocations it cannot count.
		b.ReportAllocs()
	}
	b.SetBytes(int64(p))
	key := fmt.Sprintf("%d/%d/%d", sotype, k, p)
	args := []string{strconv.Itoa(b.N), strconv.Itoa(k), strconv.Itoa(p)}
	var elapsed time.Duration
	if impl == "c" {
		elapsed = runCLoop(b, pc, cbin, sotype, args, k)
		scmBaseline.Store(key, float64(elapsed)/float64(b.N))
	} else {
		var sendAllocs float64
		elapsed, sendAllocs = runGoSCM(b, pc, sotype, args, impl, k, p)
		b.ReportMetric(sendAllocs, "send-allocs/op")
	}
	perMsg := float64(elapsed) / float64(b.N)
	// ns/op and MB/s from the timed loop alone: the benchmark timer of
	// the c variant also covers both C processes' start-up, and benchstat
	// compares these.
	b.ReportMetric(perMsg, "ns/op")
	b.ReportMetric(float64(p)*1e3/perMsg, "MB/s")
	b.ReportMetric(1e9/perMsg, "msgs/s")
	b.ReportMetric(1e9/perMsg*float64(k), "fds/s")
	if c, ok := scmBaseline.Load(key); ok {
		b.ReportMetric(c.(float64)/perMsg, "xC")
	}
}

// runCLoop runs the C sender and receiver and returns the receiver's own
// time for b.N messages after its warm-up message.
func runCLoop(b *testing.B, pc *proccensus.Census, bin string, sotype int, args []string, k int) time.Duration {
	fds, err := unix.Socketpair(unix.AF_UNIX, sotype|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(os.NewSyscallError("socketpair", err))
	}
	sf, rf := os.NewFile(uintptr(fds[0]), "send"), os.NewFile(uintptr(fds[1]), "recv")
	env := append(os.Environ(), pc.Env())
	send := exec.Command(bin, append([]string{"send"}, args...)...)
	send.ExtraFiles, send.Stderr, send.Env = []*os.File{sf}, os.Stderr, env
	recv := exec.Command(bin, append([]string{"recv"}, args...)...)
	recv.ExtraFiles, recv.Stderr, recv.Env = []*os.File{rf}, os.Stderr, env
	dieWithUs(send)
	dieWithUs(recv)
	var out strings.Builder
	recv.Stdout = &out
	b.ResetTimer()
	helperproc.Start(b, send)
	helperproc.Start(b, recv)
	sf.Close()
	rf.Close()
	if err := recv.Wait(); err != nil {
		b.Fatalf("cloop recv: %v", err)
	}
	if err := send.Wait(); err != nil {
		b.Fatalf("cloop send: %v", err)
	}
	b.StopTimer()
	// The receiver times itself from the end of its warm-up message: the
	// benchmark's own timer also counts both processes' start-up.
	var got, ns int64
	if _, err := fmt.Sscanf(out.String(), "fds=%d ns=%d", &got, &ns); err != nil {
		b.Fatalf("cloop recv printed %q: %v", out.String(), err)
	}
	n, _ := strconv.Atoi(args[0])
	if want := int64(n+1) * int64(k); got != want || ns <= 0 {
		b.Fatalf("cloop recv: %d descriptors in %d ns, want %d descriptors", got, ns, want)
	}
	elapsed := time.Duration(ns)
	return elapsed
}

// runGoSCM runs a Go sender child and receives here; it returns the time
// for b.N messages after one warm-up message, and the sender's allocations
// per message.
func runGoSCM(b *testing.B, pc *proccensus.Census, sotype int, args []string, impl string, k, p int) (time.Duration, float64) {
	local, remote, err := scmrights.Socketpair(sotype)
	if err != nil {
		b.Fatal(err)
	}
	defer local.Close()
	cmd := helperproc.Command(b, "scm-send", &helperproc.Options{
		Env:        []string{pc.Env()},
		ExtraFiles: []*os.File{remote},
		Args:       append([]string{impl}, args...),
	})
	var out strings.Builder
	cmd.Stdout = &out
	helperproc.Start(b, cmd)
	remote.Close()
	// A sender that dies must fail the benchmark, not hang it.
	if err := local.SetReadDeadline(time.Now().Add(5 * time.Minute)); err != nil {
		b.Fatal(err)
	}
	recv := scmReceiver(b, local, impl, k, p)
	// Warm-up: the sender is running.
	if err := recv(1); err != nil {
		b.Fatalf("receive: %v", err)
	}
	// testing's allocs/op is rounded down to an integer, which reads 0 up
	// to 0.99 allocations per message: count them exactly as well.
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	b.ResetTimer()
	start := time.Now()
	err = recv(b.N)
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatalf("receive: %v", err)
	}
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(b.N), "recv-allocs/op")
	if err := cmd.Wait(); err != nil {
		b.Fatalf("sender: %v\n%s", err, out.String())
	}
	var sendAllocs float64
	if _, err := fmt.Sscanf(out.String(), "allocs=%g", &sendAllocs); err != nil {
		b.Fatalf("sender output %q: %v", out.String(), err)
	}
	return elapsed, sendAllocs
}

// scmReceiver returns a function that receives msgs messages of p bytes and
// k descriptors each with impl, closing the descriptors. Like the C loop
// (cloop.c), it fails unless exactly msgs·k descriptors arrived and none
// was truncated (MSG_CTRUNC, ErrTruncated): a regression that dropped
// descriptors would otherwise look like a speed-up. The check is a sum and
// a compare, no syscall and no allocation.
func scmReceiver(b testing.TB, uc *net.UnixConn, impl string, k, p int) func(msgs int) error {
	buf := make([]byte, p)
	count := func(msgs, fds int) error {
		if want := msgs * k; fds != want {
			return fmt.Errorf("%d descriptors in %d messages, want %d", fds, msgs, want)
		}
		return nil
	}
	switch impl {
	case "naive":
		oob := make([]byte, syscall.CmsgSpace(4*k))
		return func(msgs int) error {
			got := 0
			for want := msgs * p; want > 0; {
				n, oobn, flags, _, err := uc.ReadMsgUnix(buf, oob)
				if err != nil {
					return err
				}
				cms, err := syscall.ParseSocketControlMessage(oob[:oobn])
				if err != nil {
					return err
				}
				for i := range cms {
					fds, err := syscall.ParseUnixRights(&cms[i])
					if err != nil {
						return err
					}
					for _, fd := range fds {
						syscall.Close(fd)
					}
					got += len(fds)
				}
				if flags&syscall.MSG_CTRUNC != 0 {
					return errors.New("descriptors truncated (MSG_CTRUNC)")
				}
				want -= n
			}
			return count(msgs, got)
		}
	case "scm":
		c, err := scmrights.NewConn(uc)
		if err != nil {
			b.Fatal(err)
		}
		fds := make([]int, k)
		return func(msgs int) error {
			got := 0
			for want := msgs * p; want > 0; {
				n, nfds, err := c.Recv(buf, fds)
				if err != nil {
					return err
				}
				for _, fd := range fds[:nfds] {
					unix.Close(fd)
				}
				got += nfds
				want -= n
			}
			return count(msgs, got)
		}
	case "batched":
		c, err := scmrights.NewConn(uc)
		if err != nil {
			b.Fatal(err)
		}
		ms := make([]scmrights.Message, scmBatch)
		for i := range ms {
			ms[i] = scmrights.Message{Payload: make([]byte, p), FDs: make([]int, k)}
		}
		return func(msgs int) error {
			got := 0
			for want := msgs * p; want > 0; {
				// Never read past this call's messages: the warm-up is one.
				slots := min(len(ms), (want+p-1)/p)
				n, err := c.RecvBatch(ms[:slots])
				if err != nil {
					return err
				}
				for _, m := range ms[:n] {
					if m.Err != nil {
						return m.Err
					}
					for _, fd := range m.FDs[:m.NFDs] {
						unix.Close(fd)
					}
					got += m.NFDs
					want -= m.N
				}
			}
			return count(msgs, got)
		}
	}
	b.Fatalf("unknown implementation %q", impl)
	return nil
}

// roleSCMSend sends COUNT+1 messages of P bytes with K copies of one
// descriptor on fd 3 with the chosen implementation, then prints its
// allocations per message. Args: IMPL COUNT K P.
func roleSCMSend() int {
	a := helperproc.Args()
	if len(a) != 4 {
		return fatalf("scm-send: args %q", a)
	}
	impl := a[0]
	var nums [3]int
	for i, s := range a[1:] {
		n, err := strconv.Atoi(s)
		if err != nil {
			return fatalf("scm-send: %v", err)
		}
		nums[i] = n
	}
	count, k, p := nums[0], nums[1], nums[2]
	uc, err := scmrights.UnixConn(3)
	if err != nil {
		return fatalf("%v", err)
	}
	devnull, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fatalf("%v", os.NewSyscallError("open", err))
	}
	fds := make([]int, k)
	for i := range fds {
		fds[i] = devnull
	}
	payload := make([]byte, p)
	// Set-up first, then count the allocations of the sending loop only:
	// the target is the steady state, not NewConn amortised over b.N.
	var send func() error
	switch impl {
	case "naive":
		send = func() error {
			for i := 0; i <= count; i++ {
				if _, _, err := uc.WriteMsgUnix(payload, syscall.UnixRights(fds...), nil); err != nil {
					return err
				}
			}
			return nil
		}
	case "scm":
		c, err := scmrights.NewConn(uc)
		if err != nil {
			return fatalf("%v", err)
		}
		send = func() error {
			for i := 0; i <= count; i++ {
				if err := c.Send(payload, fds...); err != nil {
					return err
				}
			}
			return nil
		}
	case "batched":
		c, err := scmrights.NewConn(uc)
		if err != nil {
			return fatalf("%v", err)
		}
		ms := make([]scmrights.Message, scmBatch)
		for i := range ms {
			ms[i] = scmrights.Message{Payload: payload, FDs: fds}
		}
		send = func() error {
			for left := count + 1; left > 0; {
				n := min(left, len(ms))
				sent, err := c.SendBatch(ms[:n])
				if err != nil {
					return err
				}
				left -= sent
			}
			return nil
		}
	default:
		return fatalf("scm-send: unknown implementation %q", impl)
	}
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	if err := send(); err != nil {
		return fatalf("%v", err)
	}
	runtime.ReadMemStats(&ms1)
	fmt.Printf("allocs=%g\n", float64(ms1.Mallocs-ms0.Mallocs)/float64(count+1))
	return 0
}
