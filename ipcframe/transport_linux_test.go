//go:build linux

package ipcframe_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"testing"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/ipcframe"
	"golang.org/x/sys/unix"
)

// TestTransports: frames of 0 B to 300 KiB from two concurrent writers over
// a pipe, TCP loopback and a plain unix socket (the last two written with
// writev) arrive whole, in each writer's order, never interleaved.
func TestTransports(t *testing.T) {
	fdcensus.Verify(t)
	const maxFrame = 512 << 10
	sizes := []int{0, 10, 5000, 300 << 10, 4 << 10, 70 << 10}
	tests := []struct {
		name string
		open func(t *testing.T) (io.Reader, io.Writer)
	}{
		{"pipe", func(t *testing.T) (io.Reader, io.Writer) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close(); w.Close() })
			return r, w
		}},
		{"tcp", func(t *testing.T) (io.Reader, io.Writer) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s, c
		}},
		{"unix", func(t *testing.T) (io.Reader, io.Writer) {
			a, b := socketpair(t, unix.SOCK_STREAM)
			return b, a
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rd, wr := tt.open(t)
			w := ipcframe.NewWriter(wr, &ipcframe.WriterOptions{MaxFrame: maxFrame})
			var waits []func(testing.TB) error
			for id := range 2 {
				waits = append(waits, run(func() error {
					for seq, n := range sizes {
						if err := w.WriteFrame(body(id, seq, n)); err != nil {
							return err
						}
					}
					return nil
				}))
			}
			r := ipcframe.NewReader(rd, &ipcframe.ReaderOptions{MaxFrame: maxFrame + 16})
			next := [2]int{}
			var dst []byte
			for range 2 * len(sizes) {
				var err error
				if dst, err = r.ReadFrame(dst[:0]); err != nil {
					t.Fatal(err)
				}
				if len(dst) < 16 {
					t.Fatalf("%d-byte frame", len(dst))
				}
				id, seq := int(binary.BigEndian.Uint64(dst)), int(binary.BigEndian.Uint64(dst[8:]))
				if id > 1 || seq != next[id] {
					t.Fatalf("frame %d of writer %d, want %d", seq, id, next[id])
				}
				next[id]++
				if !bytes.Equal(dst, body(id, seq, sizes[seq])) {
					t.Fatalf("writer %d frame %d corrupted", id, seq)
				}
			}
			for _, wait := range waits {
				if err := wait(t); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// body is frame seq of writer id: both numbers, then n bytes of a pattern.
func body(id, seq, n int) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(id))
	b = binary.BigEndian.AppendUint64(b, uint64(seq))
	for i := range n {
		b = append(b, byte(i*7+id+seq))
	}
	return b
}
