package ipcframe_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

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
		case errors.Is(err, ipcframe.ErrFrameTooLarge):
			return append(out, step{err: ipcframe.ErrFrameTooLarge})
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

// planReader returns data in reads the plan describes, one plan byte per
// Read call (cycling): (b&0x3f)+1 bytes; with b&0x40 the read also times out
// (data and os.ErrDeadlineExceeded together); with b&0x80 the call first
// returns no data, (0, nil), or (0, timeout) with b&0x40, and the next call
// brings the data. The last data comes together with io.EOF. Every call
// after at most one empty one returns data, so a Reader always progresses.
type planReader struct {
	data  []byte
	plan  []byte
	i     int
	empty bool // the current plan byte's empty read is done
}

func (r *planReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	var b byte
	if len(r.plan) > 0 {
		b = r.plan[r.i%len(r.plan)]
	}
	if b&0x80 != 0 && !r.empty {
		r.empty = true
		if b&0x40 != 0 {
			return 0, os.ErrDeadlineExceeded
		}
		return 0, nil
	}
	r.i++
	r.empty = false
	n := min(int(b&0x3f)+1, len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	switch {
	case len(r.data) == 0:
		return n, io.EOF
	case b&0xc0 == 0x40:
		return n, os.ErrDeadlineExceeded
	}
	return n, nil
}

// allocated returns the bytes allocated so far by the process.
func allocated() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// readerCase is one input of FuzzReader and TestReaderAllocBound.
type readerCase struct {
	name              string
	data, plan        []byte
	bufSize, maxFrame uint16
}

// readerSeeds are FuzzReader's seeds, which TestReaderAllocBound also runs.
var readerSeeds = []readerCase{
	{"frames", frames([]byte("hello"), nil, []byte("world")), []byte{0, 3, 200}, 0, 100},
	{"huge length", append(frames([]byte("x")), 0x68, 0x01, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff), []byte{}, 64, 0},
	{"not a frame", []byte("GET / HTTP/1.1\r\n\r\n"), []byte{1}, 0, 0},
	{"larger than the buffer", frames(bytes.Repeat([]byte("y"), 1000), []byte("z")), []byte{7, 255}, 64, 2000},
	{"declares descriptors", []byte{0x68, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 'a', 0x68, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, []byte{2}, 0, 0},
	{"timeouts", frames(bytes.Repeat([]byte("t"), 3000), []byte("u")), []byte{0x3f, 0x7f, 0xc5, 0x85, 0x4a}, 64, 4000},
	{"maximal frame dripping in", frames(bytes.Repeat([]byte("m"), 65535)), []byte{0x7f, 0x3f, 0xc0}, 64, 65534},
	{"header only, maximal length", []byte{0x68, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 'a'}, []byte{0x40}, 64, 65535},
}

// checkReader reads rc.data and checks it against the reference decoder;
// before and after, if not nil, run around every ReadFrame (after gets
// what before returned).
func checkReader(t *testing.T, rc readerCase, before func() uint64, after func(step int, before uint64, limit int)) {
	t.Helper()
	limit := int(rc.maxFrame) + 1
	want := reference(rc.data, limit)
	r := ipcframe.NewReader(&planReader{data: rc.data, plan: rc.plan}, &ipcframe.ReaderOptions{BufferSize: int(rc.bufSize), MaxFrame: limit})
	effBuf := int(rc.bufSize) // the buffer NewReader makes
	if effBuf == 0 {
		effBuf = ipcframe.DefaultBufferSize
	}
	effBuf = max(effBuf, 64)
	var dst []byte
	timeouts := 0
	for i := 0; i < len(want); {
		var b uint64
		if before != nil {
			b = before()
		}
		c := cap(dst)
		var err error
		dst, err = r.ReadFrame(dst[:0])
		if after != nil {
			after(i, b, limit)
		}
		if cap(dst) != c && cap(dst) > limit+effBuf+1024 {
			t.Fatalf("step %d: dst grown to %d bytes for a %d-byte frame, MaxFrame %d, buffer %d", i, cap(dst), len(dst), limit, effBuf)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if timeouts++; timeouts > 2*len(rc.data)+2 {
				t.Fatalf("step %d: %d timeouts", i, timeouts)
			}
			continue
		}
		w := want[i]
		i++
		if w.err != nil {
			if !errors.Is(err, w.err) {
				t.Fatalf("step %d: error %v, want %v", i-1, err, w.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: error %v, want a %d-byte frame", i-1, err, len(w.payload))
		}
		if len(dst) > limit {
			t.Fatalf("step %d: %d-byte payload over MaxFrame %d", i-1, len(dst), limit)
		}
		if !bytes.Equal(dst, w.payload) {
			t.Fatalf("step %d: payload %q, want %q", i-1, dst, w.payload)
		}
	}
	last := want[len(want)-1].err
	if _, err := r.ReadFrame(nil); !errors.Is(err, last) {
		t.Fatalf("after the final error %v: %v", last, err)
	}
}

// TestReaderAllocBound: memory is bounded per frame, whatever the reads:
// one ReadFrame allocates less than 3*MaxFrame (the capacities a large
// frame grows through sum to under 2*MaxFrame because growth at most
// doubles what arrived; a timeout inside it adds one copy of what arrived),
// plus headroom for error values. It runs FuzzReader's seeds, among them
// large frames dripping in; the fuzz target leaves out the ReadMemStats
// calls, which cost more than the rest of an execution.
func TestReaderAllocBound(t *testing.T) {
	const headroom = 16 << 10 // error values, runtime noise
	for _, rc := range readerSeeds {
		t.Run(rc.name, func(t *testing.T) {
			checkReader(t, rc, allocated, func(step int, before uint64, limit int) {
				if grew := allocated() - before; grew > uint64(3*limit+headroom) {
					t.Fatalf("step %d: one ReadFrame allocated %d bytes, MaxFrame %d", step, grew, limit)
				}
			})
		})
	}
}

// FuzzReader feeds arbitrary bytes, split into arbitrary reads (some
// returning data with io.EOF or a timeout, some empty, some timing out
// with no data), to a Reader with arbitrary limits. It never panics, never
// returns a payload over MaxFrame, never loses or repeats a byte across
// timeouts, and agrees with the in-memory reference decoder; dst never
// grows beyond MaxFrame plus the buffer size. TestReaderAllocBound checks
// allocation per frame on the seeds.
func FuzzReader(f *testing.F) {
	for _, rc := range readerSeeds {
		f.Add(rc.data, rc.plan, rc.bufSize, rc.maxFrame)
	}
	f.Fuzz(func(t *testing.T, data, plan []byte, bufSize, maxFrame uint16) {
		checkReader(t, readerCase{data: data, plan: plan, bufSize: bufSize, maxFrame: maxFrame}, nil, nil)
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

// tcpPair returns a connected TCP loopback pair.
func tcpPair(tb testing.TB) (client, server net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	if client, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		tb.Fatal(err)
	}
	if server, err = ln.Accept(); err != nil {
		client.Close()
		tb.Fatal(err)
	}
	return client, server
}

// FuzzRoundTrip: any sequence of payloads, written by a Writer (one Write
// per frame, bytes equal to AppendFrame) and read back in arbitrary chunks,
// comes back unchanged, then io.EOF. The same payloads, every other one
// stretched to 4 KiB or more, also go through a Writer on a *net.TCPConn,
// whose large frames leave in one writev (header and payload unjoined), and
// come back unchanged.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("\x05hello\x00\x03abc"), []byte{0}, uint16(0))
	f.Add(append([]byte{0xff}, bytes.Repeat([]byte("p"), 300)...), []byte{1, 100}, uint16(64))
	f.Add([]byte{0, 0, 0}, []byte{}, uint16(9))
	// One connection for many iterations (each reads all it wrote), replaced
	// after a failure, which may leave it out of step.
	var client, server net.Conn
	var sockW *ipcframe.Writer
	f.Cleanup(func() {
		if client != nil {
			client.Close()
			server.Close()
		}
	})
	f.Fuzz(func(t *testing.T, data, plan []byte, bufSize uint16) {
		if client == nil {
			client, server = tcpPair(t)
			sockW = ipcframe.NewWriter(client, nil)
		}
		defer func() {
			if t.Failed() {
				client.Close()
				server.Close()
				client, server = nil, nil
			}
		}()
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

		var sent [][]byte
		for i, p := range payloads {
			if i%2 == 0 && len(p) > 0 {
				p = bytes.Repeat(p, 4<<10/len(p)+1)
			}
			sent = append(sent, p)
		}
		done := make(chan error, 1)
		go func() {
			for _, p := range sent {
				if err := sockW.WriteFrame(p); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		server.SetReadDeadline(time.Now().Add(10 * time.Second))
		sr := ipcframe.NewReader(server, &ipcframe.ReaderOptions{BufferSize: int(bufSize)})
		for i, want := range sent {
			got, err := sr.ReadFrame(nil)
			if err != nil {
				t.Fatalf("socket frame %d: %v", i, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("socket frame %d: %d bytes differ from the %d sent", i, len(got), len(want))
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
