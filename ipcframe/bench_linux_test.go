//go:build linux

package ipcframe_test

import (
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/handoff-go/handoff/ipcframe"
	"golang.org/x/sys/unix"
)

// baselineNs holds the ns/op of the last baseline sub-benchmark per case,
// so the ipcframe sub-benchmark that runs right after it reports its speed
// as a ratio (x-raw: baseline time / ipcframe time; ≥ 1 means as fast).
var baselineNs = map[string]float64{}

var benchBuf = 0

func nsPerOp(b *testing.B) float64 { return float64(b.Elapsed().Nanoseconds()) / float64(b.N) }

func sizeName(n int) string {
	if n >= 1<<10 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// BenchmarkStream compares frames over a unix stream socket with a raw
// write/read of the same bytes (one Write per frame, reads into a 64 KiB
// buffer) in the same run. Allocations count both sides.
func BenchmarkStream(b *testing.B) {
	for _, size := range []int{16, 256, 4 << 10, 64 << 10} {
		name := sizeName(size)
		payload := payloadOf(1, size)
		b.Run(name+"/raw", func(b *testing.B) {
			benchStreamRaw(b, payload)
			baselineNs[name] = nsPerOp(b)
		})
		b.Run(name+"/ipcframe", func(b *testing.B) {
			benchStreamFramed(b, payload)
			if base, ok := baselineNs[name]; ok {
				b.ReportMetric(base/nsPerOp(b), "x-raw")
			}
		})
	}
}

func benchStreamRaw(b *testing.B, payload []byte) {
	wc, rc := socketpair(b, unix.SOCK_STREAM)
	frame := ipcframe.AppendFrame(nil, payload)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	wait := writeLoop(b.N, func() error {
		_, err := wc.Write(frame)
		return err
	})
	buf := make([]byte, ipcframe.DefaultBufferSize)
	for left := b.N * len(frame); left > 0; {
		n, err := rc.Read(buf[:min(len(buf), left)])
		if err != nil {
			b.Fatal(err)
		}
		left -= n
	}
	if err := wait(b); err != nil {
		b.Fatal(err)
	}
}

func benchStreamFramed(b *testing.B, payload []byte) {
	wc, rc := socketpair(b, unix.SOCK_STREAM)
	w := ipcframe.NewWriter(wc, nil)
	r := ipcframe.NewReader(rc, &ipcframe.ReaderOptions{BufferSize: benchBuf})
	dst := make([]byte, 0, len(payload))
	b.ReportAllocs()
	b.SetBytes(int64(ipcframe.HeaderSize + len(payload)))
	b.ResetTimer()
	wait := writeLoop(b.N, func() error { return w.WriteFrame(payload) })
	for range b.N {
		var err error
		if dst, err = r.ReadFrame(dst[:0]); err != nil {
			b.Fatal(err)
		}
	}
	if err := wait(b); err != nil {
		b.Fatal(err)
	}
}

// writeLoop runs fn n times in a goroutine; the returned function waits
// for it. The goroutine is started before the timed reads begin.
func writeLoop(n int, fn func() error) func(testing.TB) error {
	return run(func() error {
		for range n {
			if err := fn(); err != nil {
				return err
			}
		}
		return nil
	})
}

// BenchmarkFDFrame compares frames of 64 payload bytes carrying 1 or 253
// descriptors with a raw scmrights Send/Recv of the same bytes and
// descriptors. Both sides close the received descriptors.
func BenchmarkFDFrame(b *testing.B) {
	payload := payloadOf(2, 64)
	for _, nfds := range []int{1, ipcframe.MaxFDsPerFrame} {
		name := fmt.Sprintf("%dfds", nfds)
		b.Run(name+"/scmrights", func(b *testing.B) {
			wc, rc := connPair(b, unix.SOCK_STREAM)
			fds, _ := memfds(b, nfds)
			frame := append(hdr(nfds, len(payload)), payload...)
			buf := make([]byte, ipcframe.DefaultBufferSize)
			rfds := make([]int, ipcframe.MaxFDsPerFrame)
			b.ReportAllocs()
			b.SetBytes(int64(len(frame)))
			b.ResetTimer()
			wait := writeLoop(b.N, func() error { return wc.Send(frame, fds...) })
			for range b.N {
				// Every send carries descriptors, so each recvmsg returns
				// exactly one of them.
				n, got, err := rc.Recv(buf, rfds)
				if err != nil || n != len(frame) || got != nfds {
					b.Fatalf("recv: %d bytes, %d fds, %v", n, got, err)
				}
				closeAll(rfds[:got])
			}
			if err := wait(b); err != nil {
				b.Fatal(err)
			}
			baselineNs[name] = nsPerOp(b)
		})
		b.Run(name+"/ipcframe", func(b *testing.B) {
			wc, rc := connPair(b, unix.SOCK_STREAM)
			fds, _ := memfds(b, nfds)
			w := ipcframe.NewWriter(wc, nil)
			r := ipcframe.NewReader(rc, nil)
			dst := make([]byte, 0, len(payload))
			rfds := make([]int, ipcframe.MaxFDsPerFrame)
			b.ReportAllocs()
			b.SetBytes(int64(ipcframe.HeaderSize + len(payload)))
			b.ResetTimer()
			wait := writeLoop(b.N, func() error { return w.WriteFrameFDs(payload, fds...) })
			for range b.N {
				var got int
				var err error
				dst, got, err = r.ReadFrameFDs(dst[:0], rfds)
				if err != nil || got != nfds {
					b.Fatalf("frame: %d fds, %v", got, err)
				}
				closeAll(rfds[:got])
			}
			if err := wait(b); err != nil {
				b.Fatal(err)
			}
			if base, ok := baselineNs[name]; ok {
				b.ReportMetric(base/nsPerOp(b), "x-raw")
			}
		})
	}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// BenchmarkPipe is the no-descriptor path over an OS pipe, as used for ssh
// stdio; baseline as in BenchmarkStream.
func BenchmarkPipe(b *testing.B) {
	payload := payloadOf(3, 256)
	frame := ipcframe.AppendFrame(nil, payload)
	pipe := func(b *testing.B) (io.ReadCloser, io.WriteCloser) {
		r, w, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { r.Close(); w.Close() })
		return r, w
	}
	b.Run("raw", func(b *testing.B) {
		rd, wr := pipe(b)
		b.ReportAllocs()
		b.SetBytes(int64(len(frame)))
		b.ResetTimer()
		wait := writeLoop(b.N, func() error { _, err := wr.Write(frame); return err })
		buf := make([]byte, ipcframe.DefaultBufferSize)
		for left := b.N * len(frame); left > 0; {
			n, err := rd.Read(buf[:min(len(buf), left)])
			if err != nil {
				b.Fatal(err)
			}
			left -= n
		}
		if err := wait(b); err != nil {
			b.Fatal(err)
		}
		baselineNs["pipe"] = nsPerOp(b)
	})
	b.Run("ipcframe", func(b *testing.B) {
		rd, wr := pipe(b)
		w := ipcframe.NewWriter(wr, nil)
		r := ipcframe.NewReader(rd, nil)
		dst := make([]byte, 0, len(payload))
		b.ReportAllocs()
		b.SetBytes(int64(len(frame)))
		b.ResetTimer()
		wait := writeLoop(b.N, func() error { return w.WriteFrame(payload) })
		for range b.N {
			var err error
			if dst, err = r.ReadFrame(dst[:0]); err != nil {
				b.Fatal(err)
			}
		}
		if err := wait(b); err != nil {
			b.Fatal(err)
		}
		if base, ok := baselineNs["pipe"]; ok {
			b.ReportMetric(base/nsPerOp(b), "x-raw")
		}
	})
}

func BenchmarkAppendFrame(b *testing.B) {
	payload := payloadOf(4, 256)
	dst := make([]byte, 0, 512)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for range b.N {
		dst = ipcframe.AppendFrame(dst[:0], payload)
	}
}
