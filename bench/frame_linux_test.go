//go:build linux

package main_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/ipcframe"
	"golang.org/x/sys/unix"
)

// frameBaseline holds the ns per frame of the raw variant per
// "transport/size", so the ipcframe variant run right after it reports
// x-raw side by side.
var frameBaseline = map[string]float64{}

// BenchmarkFrame compares ipcframe frames with a raw write/read of the same
// bytes (one Write per frame; reads into a 64 KiB buffer) over a unix stream
// socket and an OS pipe, writer and reader in two goroutines of this
// process. Reported: msgs/s (frames per second), x-raw (raw time over
// ipcframe time; ≥ 1 means as fast), allocs/op of both sides and
// frame-allocs/op, the same counted exactly (testing rounds allocs/op down).
func BenchmarkFrame(b *testing.B) {
	for _, tr := range []string{"stream", "pipe"} {
		for _, size := range []int{16, 256, 4 << 10, 64 << 10} {
			name := tr + "/" + sizeName(size)
			// Rotated by $HANDOFF_BENCH_ROTATE; x-raw needs raw first.
			for _, v := range inOrder("raw", "ipcframe") {
				b.Run(name+"/"+v, func(b *testing.B) { benchFrame(b, tr, name, size, v == "ipcframe") })
			}
		}
	}
}

func sizeName(n int) string {
	if n >= 1<<10 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// framePair returns the two ends of a transport; both are closed when b
// ends.
func framePair(b *testing.B, transport string) (io.Writer, io.Reader) {
	b.Helper()
	if transport == "pipe" {
		r, w, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { r.Close(); w.Close() })
		return w, r
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(os.NewSyscallError("socketpair", err))
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		cs[i] = c
		b.Cleanup(func() { c.Close() })
	}
	return cs[0], cs[1]
}

func benchFrame(b *testing.B, transport, name string, size int, framed bool) {
	fdcensus.Verify(b)
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	wr, rd := framePair(b, transport)
	// A writer that fails must fail the benchmark, not leave the reader
	// waiting for bytes that never come.
	if err := rd.(interface{ SetReadDeadline(time.Time) error }).SetReadDeadline(time.Now().Add(5 * time.Minute)); err != nil {
		b.Fatal(err)
	}
	frame := ipcframe.AppendFrame(nil, payload)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	var write func() error
	var read func() error
	if framed {
		w := ipcframe.NewWriter(wr, nil)
		r := ipcframe.NewReader(rd, nil)
		dst := make([]byte, 0, size)
		write = func() error { return w.WriteFrame(payload) }
		read = func() error {
			for range b.N {
				var err error
				if dst, err = r.ReadFrame(dst[:0]); err != nil {
					return err
				}
			}
			return nil
		}
	} else {
		buf := make([]byte, ipcframe.DefaultBufferSize)
		write = func() error { _, err := wr.Write(frame); return err }
		read = func() error {
			for left := b.N * len(frame); left > 0; {
				n, err := rd.Read(buf[:min(len(buf), left)])
				if err != nil {
					return err
				}
				left -= n
			}
			return nil
		}
	}
	done := make(chan error, 1)
	// testing's allocs/op is rounded down to an integer, which reads 0 up
	// to 0.99 allocations per frame: count both sides exactly as well.
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	b.ResetTimer()
	start := time.Now()
	go func() {
		for range b.N {
			if err := write(); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := read(); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	select {
	case err := <-done:
		if err != nil {
			b.Fatal(err)
		}
	case <-time.After(time.Minute):
		b.Fatal("writer did not finish within a minute")
	}
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(b.N), "frame-allocs/op")
	perFrame := float64(elapsed) / float64(b.N)
	b.ReportMetric(1e9/perFrame, "msgs/s")
	if !framed {
		frameBaseline[name] = perFrame
	} else if base, ok := frameBaseline[name]; ok {
		b.ReportMetric(base/perFrame, "x-raw")
	}
}
