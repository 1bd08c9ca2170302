package ipcframe_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/handoff-go/handoff/ipcframe"
)

// step is one result of reading a frame: a payload or an error class.
type step struct {
	payload []byte
	err     error // nil, or the sentinel the error must match
}

// reference decodes data the simple way: the whole stream in memory, one
// frame after another. The Reader must agree with it for every chunking.
func reference(data []byte, maxFrame int) []step {
	var out []step
	for {
		if len(data) == 0 {
			return append(out, step{err: io.EOF})
		}
		if len(data) < ipcframe.HeaderSize {
			return append(out, step{err: io.ErrUnexpectedEOF})
		}
		h, err := ipcframe.ParseHeader(data)
		switch {
		case err != nil:
			return append(out, step{err: ipcframe.ErrBadHeader})
		case h.Len > maxFrame:
			return append(out, step{err: ipcframe.ErrFrameTooLarge})
		case len(data) < ipcframe.HeaderSize+h.Len:
			return append(out, step{err: io.ErrUnexpectedEOF})
		case h.FDs > 0:
			out = append(out, step{err: ipcframe.ErrNoFDTransport})
		default:
			out = append(out, step{payload: data[ipcframe.HeaderSize : ipcframe.HeaderSize+h.Len]})
		}
		data = data[ipcframe.HeaderSize+h.Len:]
	}
}

func chunkSizes(plan []byte) []int {
	sizes := make([]int, len(plan))
	for i, b := range plan {
		sizes[i] = int(b) + 1
	}
	return sizes
}

// FuzzReader feeds arbitrary bytes, split into arbitrary reads, to a Reader
// with arbitrary limits: it never panics, never returns a payload over
// MaxFrame, and agrees with the in-memory reference decoder.
func FuzzReader(f *testing.F) {
	f.Add(frames([]byte("hello"), nil, []byte("world")), []byte{0, 3, 200}, uint16(0), uint16(100))
	f.Add(append(frames([]byte("x")), 0x68, 0x01, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff), []byte{}, uint16(64), uint16(0))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), []byte{1}, uint16(0), uint16(0))
	f.Add(frames(bytes.Repeat([]byte("y"), 1000), []byte("z")), []byte{7, 255}, uint16(64), uint16(2000))
	f.Add([]byte{0x68, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 'a', 0x68, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, []byte{2}, uint16(0), uint16(0))
	f.Fuzz(func(t *testing.T, data, plan []byte, bufSize, maxFrame uint16) {
		limit := int(maxFrame) + 1
		want := reference(data, limit)
		r := ipcframe.NewReader(&chunkReader{data: data, sizes: chunkSizes(plan)}, &ipcframe.ReaderOptions{BufferSize: int(bufSize), MaxFrame: limit})
		var dst []byte
		for i, w := range want {
			var err error
			dst, err = r.ReadFrame(dst[:0])
			if w.err != nil {
				if !errors.Is(err, w.err) {
					t.Fatalf("step %d: error %v, want %v", i, err, w.err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("step %d: error %v, want a %d-byte frame", i, err, len(w.payload))
			}
			if len(dst) > limit {
				t.Fatalf("step %d: %d-byte payload over MaxFrame %d", i, len(dst), limit)
			}
			if !bytes.Equal(dst, w.payload) {
				t.Fatalf("step %d: payload %q, want %q", i, dst, w.payload)
			}
		}
		last := want[len(want)-1].err
		if _, err := r.ReadFrame(nil); !errors.Is(err, last) {
			t.Fatalf("after the final error %v: %v", last, err)
		}
	})
}

// splitPayloads cuts data into payloads: each starts with a length byte,
// scaled so some payloads exceed a small read buffer.
func splitPayloads(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		n := min(int(data[0])*int(data[0]&7+1), len(data)-1)
		out = append(out, data[1:1+n])
		data = data[1+n:]
	}
	return out
}

// countingWriter records how many Write calls it saw.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	return c.Buffer.Write(p)
}

// FuzzRoundTrip: any sequence of payloads, written by a Writer (one Write
// per frame, bytes equal to AppendFrame) and read back in arbitrary chunks,
// comes back unchanged, then io.EOF.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("\x05hello\x00\x03abc"), []byte{0}, uint16(0))
	f.Add(append([]byte{0xff}, bytes.Repeat([]byte("p"), 300)...), []byte{1, 100}, uint16(64))
	f.Add([]byte{0, 0, 0}, []byte{}, uint16(9))
	f.Fuzz(func(t *testing.T, data, plan []byte, bufSize uint16) {
		payloads := splitPayloads(data)
		var wire countingWriter
		var appended []byte
		w := ipcframe.NewWriter(&wire, nil)
		for _, p := range payloads {
			if err := w.WriteFrame(p); err != nil {
				t.Fatal(err)
			}
			appended = ipcframe.AppendFrame(appended, p)
		}
		if wire.writes != len(payloads) {
			t.Fatalf("%d Write calls for %d frames", wire.writes, len(payloads))
		}
		if !bytes.Equal(wire.Bytes(), appended) {
			t.Fatal("Writer and AppendFrame disagree")
		}
		r := ipcframe.NewReader(&chunkReader{data: wire.Bytes(), sizes: chunkSizes(plan)}, &ipcframe.ReaderOptions{BufferSize: int(bufSize)})
		for i, want := range payloads {
			got, err := r.ReadFrame(nil)
			if err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("frame %d: %q, want %q", i, got, want)
			}
		}
		if _, err := r.ReadFrame(nil); err != io.EOF {
			t.Fatalf("after the last frame: %v, want io.EOF", err)
		}
	})
}
