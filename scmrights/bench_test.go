//go:build linux

package scmrights_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// BenchmarkSendRecv measures descriptor passing between two processes: a
// sender child (the test binary re-executed, or the C loop) and a receiver
// (this process, or a second C process for the C baseline). Every message
// carries P payload bytes and K descriptors; the receiver closes each
// descriptor it gets. Implementations, run side by side for each case:
//
//	c               blocking sendmsg/recvmsg in C (testdata/cloop.c): the limit
//	naive           WriteMsgUnix+UnixRights / ReadMsgUnix+ParseSocketControlMessage
//	scmrights       Conn.Send / Conn.Recv
//	scmrights-batch Conn.SendBatch / Conn.RecvBatch, 64 messages per call
//
// Reported: msgs/s, fds/s, xC (throughput relative to the C loop measured in
// the same run), allocs/op of the receiver and send-allocs/op of the sender.
func BenchmarkSendRecv(b *testing.B) {
	for _, st := range sotypes {
		for _, k := range []int{1, 8, 64, 253} {
			for _, p := range []int{1, 64, 4096} {
				for _, impl := range []string{"c", "naive", "scmrights", "scmrights-batch"} {
					b.Run(fmt.Sprintf("%s/K=%d/P=%d/%s", st.name, k, p, impl), func(b *testing.B) {
						benchSendRecv(b, st.typ, k, p, impl)
					})
				}
			}
		}
	}
}

const benchBatch = 64

var (
	cBaseline sync.Map // "sotype/K/P" -> ns per message of the C loop
	cloopOnce sync.Once
	cloopPath string
	cloopErr  error
)

func cloop(b *testing.B) string {
	cloopOnce.Do(func() {
		cc, err := exec.LookPath("cc")
		if err != nil {
			if cc, err = exec.LookPath("gcc"); err != nil {
				cloopErr = fmt.Errorf("no C compiler (cc, gcc) on PATH")
				return
			}
		}
		dir, err := os.MkdirTemp("", "cloop")
		if err != nil {
			cloopErr = err
			return
		}
		out := filepath.Join(dir, "cloop")
		if msg, err := exec.Command(cc, "-O2", "-o", out, filepath.Join("testdata", "cloop.c")).CombinedOutput(); err != nil {
			cloopErr = fmt.Errorf("compiling testdata/cloop.c: %v\n%s", err, msg)
			return
		}
		cloopPath = out
	})
	if cloopErr != nil {
		b.Skipf("C baseline unavailable: %v", cloopErr)
	}
	return cloopPath
}

func benchSendRecv(b *testing.B, sotype, k, p int, impl string) {
	b.ReportAllocs()
	b.SetBytes(int64(p))
	key := fmt.Sprintf("%d/%d/%d", sotype, k, p)
	args := []string{strconv.Itoa(b.N), strconv.Itoa(k), strconv.Itoa(p)}
	var elapsed time.Duration
	var sendAllocs float64
	if impl == "c" {
		bin := cloop(b)
		fds, err := unix.Socketpair(unix.AF_UNIX, sotype|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		sf, rf := os.NewFile(uintptr(fds[0]), "send"), os.NewFile(uintptr(fds[1]), "recv")
		send := exec.Command(bin, append([]string{"send"}, args...)...)
		send.ExtraFiles, send.Stderr = []*os.File{sf}, os.Stderr
		recv := exec.Command(bin, append([]string{"recv"}, args...)...)
		recv.ExtraFiles, recv.Stderr = []*os.File{rf}, os.Stderr
		out, err := recv.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := send.Start(); err != nil {
			b.Fatal(err)
		}
		if err := recv.Start(); err != nil {
			b.Fatal(err)
		}
		sf.Close()
		rf.Close()
		br := bufio.NewReader(out)
		if line, err := br.ReadString('\n'); err != nil || line != "R\n" {
			b.Fatalf("cloop recv: %q, %v", line, err)
		}
		b.ResetTimer()
		start := time.Now()
		rest, _ := br.ReadString('\n')
		elapsed = time.Since(start)
		b.StopTimer()
		if err := recv.Wait(); err != nil {
			b.Fatalf("cloop recv: %v", err)
		}
		if err := send.Wait(); err != nil {
			b.Fatalf("cloop send: %v", err)
		}
		if want := fmt.Sprintf("fds=%d\n", (b.N+1)*k); rest != want {
			b.Fatalf("cloop recv reported %q, want %q", rest, want)
		}
		cBaseline.Store(key, float64(elapsed)/float64(b.N))
	} else {
		local, remote, err := scmrights.Socketpair(sotype)
		if err != nil {
			b.Fatal(err)
		}
		cmd := helperproc.Command(b, "bench-send", &helperproc.Options{
			ExtraFiles: []*os.File{remote},
			Args:       append([]string{impl, strconv.Itoa(sotype)}, args...),
		})
		var out strings.Builder
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		remote.Close()
		// A sender that dies must fail the benchmark, not hang it.
		local.SetReadDeadline(time.Now().Add(5 * time.Minute))
		recv := benchReceiver(b, local, impl, k, p)
		recv(1) // warm-up: the sender is running
		b.ResetTimer()
		start := time.Now()
		recv(b.N)
		elapsed = time.Since(start)
		b.StopTimer()
		local.Close()
		if err := cmd.Wait(); err != nil {
			b.Fatalf("sender: %v\n%s", err, out.String())
		}
		if _, err := fmt.Sscanf(out.String(), "allocs=%g", &sendAllocs); err != nil {
			b.Fatalf("sender output %q: %v", out.String(), err)
		}
		b.ReportMetric(sendAllocs, "send-allocs/op")
	}
	perMsg := float64(elapsed) / float64(b.N)
	b.ReportMetric(1e9/perMsg, "msgs/s")
	b.ReportMetric(1e9/perMsg*float64(k), "fds/s")
	if c, ok := cBaseline.Load(key); ok {
		b.ReportMetric(c.(float64)/perMsg, "xC")
	}
}

// benchReceiver returns a function that receives msgs messages of p bytes
// and k descriptors each, closing the descriptors.
func benchReceiver(b *testing.B, uc *net.UnixConn, impl string, k, p int) func(msgs int) {
	buf := make([]byte, p)
	fail := func(err error) { b.Helper(); b.Fatalf("receive: %v", err) }
	switch impl {
	case "naive":
		oob := make([]byte, syscall.CmsgSpace(4*k))
		return func(msgs int) {
			for want := msgs * p; want > 0; {
				n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
				if err != nil {
					fail(err)
				}
				cms, err := syscall.ParseSocketControlMessage(oob[:oobn])
				if err != nil {
					fail(err)
				}
				for i := range cms {
					fds, err := syscall.ParseUnixRights(&cms[i])
					if err != nil {
						fail(err)
					}
					for _, fd := range fds {
						syscall.Close(fd)
					}
				}
				want -= n
			}
		}
	case "scmrights":
		c, err := scmrights.NewConn(uc)
		if err != nil {
			b.Fatal(err)
		}
		fds := make([]int, k)
		return func(msgs int) {
			for want := msgs * p; want > 0; {
				n, nfds, err := c.Recv(buf, fds)
				if err != nil {
					fail(err)
				}
				for _, fd := range fds[:nfds] {
					unix.Close(fd)
				}
				want -= n
			}
		}
	case "scmrights-batch":
		c, err := scmrights.NewConn(uc)
		if err != nil {
			b.Fatal(err)
		}
		ms := make([]scmrights.Message, benchBatch)
		for i := range ms {
			ms[i] = scmrights.Message{Payload: make([]byte, p), FDs: make([]int, k)}
		}
		return func(msgs int) {
			for want := msgs * p; want > 0; {
				// Never read past this round's messages: the warm-up is one.
				slots := min(len(ms), (want+p-1)/p)
				got, err := c.RecvBatch(ms[:slots])
				if err != nil {
					fail(err)
				}
				for _, m := range ms[:got] {
					if m.Err != nil {
						fail(m.Err)
					}
					for _, fd := range m.FDs[:m.NFDs] {
						unix.Close(fd)
					}
					want -= m.N
				}
			}
		}
	}
	b.Fatalf("unknown implementation %q", impl)
	return nil
}

// roleBenchSend sends COUNT+1 messages with the chosen implementation and
// prints its allocations per message.
func roleBenchSend() int {
	a := helperproc.Args()
	if len(a) != 5 {
		return fatalf("bench-send: args %q", a)
	}
	impl := a[0]
	var nums [4]int
	for i, s := range a[1:] {
		n, err := strconv.Atoi(s)
		if err != nil {
			return fatalf("bench-send: %v", err)
		}
		nums[i] = n
	}
	count, k, p := nums[1], nums[2], nums[3]
	uc, err := scmrights.UnixConn(3)
	if err != nil {
		return fatalf("%v", err)
	}
	devnull, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fatalf("%v", err)
	}
	fds := make([]int, k)
	for i := range fds {
		fds[i] = devnull
	}
	payload := make([]byte, p)
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	switch impl {
	case "naive":
		for i := 0; i <= count; i++ {
			if _, _, err := uc.WriteMsgUnix(payload, syscall.UnixRights(fds...), nil); err != nil {
				return fatalf("%v", err)
			}
		}
	case "scmrights":
		c, err := scmrights.NewConn(uc)
		if err != nil {
			return fatalf("%v", err)
		}
		for i := 0; i <= count; i++ {
			if err := c.Send(payload, fds...); err != nil {
				return fatalf("%v", err)
			}
		}
	case "scmrights-batch":
		c, err := scmrights.NewConn(uc)
		if err != nil {
			return fatalf("%v", err)
		}
		ms := make([]scmrights.Message, benchBatch)
		for i := range ms {
			ms[i] = scmrights.Message{Payload: payload, FDs: fds}
		}
		for left := count + 1; left > 0; {
			n := min(left, len(ms))
			if _, err := c.SendBatch(ms[:n]); err != nil {
				return fatalf("%v", err)
			}
			left -= n
		}
	default:
		return fatalf("bench-send: unknown implementation %q", impl)
	}
	runtime.ReadMemStats(&ms1)
	fmt.Printf("allocs=%g\n", float64(ms1.Mallocs-ms0.Mallocs)/float64(count+1))
	return 0
}
