package ipcframe_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/ipcframe"
)

// The hex examples of docs/protocol.md; this test keeps them true.
func TestAppendFrameWire(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		payload []byte
		want    string
	}{
		{"empty", nil, "68 01 00 00 00 00 00 00"},
		{"hi", []byte("hi"), "68 01 00 00 00 00 00 02 68 69"},
		{"300 bytes", bytes.Repeat([]byte{0xab}, 300), "68 01 00 00 00 00 01 2c" + strings.Repeat(" ab", 300)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := ipcframe.AppendFrame([]byte{0xee}, tt.payload)
			want := append([]byte{0xee}, unhex(t, tt.want)...)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("AppendFrame (-want +got):\n%s", diff)
			}
		})
	}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseHeader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    ipcframe.Header
		wantErr error
	}{
		{"empty frame", "68 01 00 00 00 00 00 00", ipcframe.Header{}, nil},
		{"two fds, 5 bytes", "68 01 02 00 00 00 00 05", ipcframe.Header{Len: 5, FDs: 2}, nil},
		{"docs: 13 bytes, 2 fds", "68 01 02 00 00 00 00 0d", ipcframe.Header{Len: 13, FDs: 2}, nil},
		{"docs: empty, 1 fd", "68 01 01 00 00 00 00 00", ipcframe.Header{FDs: 1}, nil},
		{"253 fds", "68 01 fd 00 00 00 00 01", ipcframe.Header{Len: 1, FDs: 253}, nil},
		{"MaxFrameLimit", "68 01 00 00 40 00 00 00", ipcframe.Header{Len: ipcframe.MaxFrameLimit}, nil},
		// Refused, not clamped or wrapped where int is 32 bits.
		{"MaxFrameLimit+1", "68 01 00 00 40 00 00 01", ipcframe.Header{}, ipcframe.ErrFrameTooLarge},
		{"max length", "68 01 00 00 ff ff ff ff", ipcframe.Header{}, ipcframe.ErrFrameTooLarge},
		{"above MaxInt32", "68 01 00 00 80 00 00 00", ipcframe.Header{}, ipcframe.ErrFrameTooLarge},
		{"254 fds", "68 01 fe 00 00 00 00 01", ipcframe.Header{}, ipcframe.ErrBadHeader},
		{"wrong magic", "47 45 54 20 2f 20 48 54", ipcframe.Header{}, ipcframe.ErrBadHeader},
		{"version 2", "68 02 00 00 00 00 00 00", ipcframe.Header{}, ipcframe.ErrBadHeader},
		{"reserved set", "68 01 00 80 00 00 00 00", ipcframe.Header{}, ipcframe.ErrBadHeader},
		{"short", "68 01 00", ipcframe.Header{}, ipcframe.ErrBadHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ipcframe.ParseHeader(unhex(t, tt.in))
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("ParseHeader error = %v, want %v", err, tt.wantErr)
			}
			var he *ipcframe.HeaderError
			if errors.Is(err, ipcframe.ErrBadHeader) && !errors.As(err, &he) {
				t.Errorf("error %T is not a *HeaderError", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseHeader (-want +got):\n%s", diff)
			}
		})
	}
}

// chunkReader returns the data in reads of the sizes given in turn
// (cycling), so a test controls exactly where reads split frames.
type chunkReader struct {
	data  []byte
	sizes []int
	i     int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(c.data)
	if len(c.sizes) > 0 {
		n = max(c.sizes[c.i%len(c.sizes)], 1)
		c.i++
	}
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func frames(payloads ...[]byte) []byte {
	var b []byte
	for _, p := range payloads {
		b = ipcframe.AppendFrame(b, p)
	}
	return b
}

// readAll reads frames until an error and returns the payloads and the error.
func readAll(r *ipcframe.Reader, limit int) ([][]byte, error) {
	var out [][]byte
	for range limit {
		p, err := r.ReadFrame(nil)
		if err != nil {
			return out, err
		}
		out = append(out, p)
	}
	return out, errors.New("frame limit reached")
}

func TestReaderChunking(t *testing.T) {
	t.Parallel()
	payloads := [][]byte{
		[]byte("first"),
		nil, // an empty frame; ReadFrame(nil) returns nil for it
		bytes.Repeat([]byte("x"), 100),
		bytes.Repeat([]byte("y"), 1000), // larger than the 64-byte buffer below
		[]byte("last"),
	}
	data := frames(payloads...)
	tests := []struct {
		name  string
		sizes []int
		buf   int
	}{
		{"whole", nil, 0},
		{"one byte", []int{1}, 0},
		{"odd", []int{3, 7, 1, 13}, 0},
		{"header split", []int{4, 4, 5}, 0},
		{"small buffer whole", nil, 64},
		{"small buffer one byte", []int{1}, 64},
		{"small buffer odd", []int{9, 2, 31}, 64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := ipcframe.NewReader(&chunkReader{data: data, sizes: tt.sizes}, &ipcframe.ReaderOptions{BufferSize: tt.buf})
			got, err := readAll(r, 100)
			if err != io.EOF {
				t.Errorf("final error = %v, want io.EOF", err)
			}
			if diff := cmp.Diff(payloads, got); diff != "" {
				t.Errorf("payloads (-want +got):\n%s", diff)
			}
			if _, err := r.ReadFrame(nil); err != io.EOF {
				t.Errorf("read after EOF = %v, want io.EOF again", err)
			}
		})
	}
}

func TestReaderEndOfStream(t *testing.T) {
	t.Parallel()
	full := frames([]byte("hello"), bytes.Repeat([]byte("z"), 500))
	tests := []struct {
		name    string
		data    []byte
		buf     int
		frames  int
		wantErr error
	}{
		{"empty stream", nil, 0, 0, io.EOF},
		{"boundary", full, 0, 2, io.EOF},
		{"half header", full[:3], 0, 0, io.ErrUnexpectedEOF},
		{"header only", full[:ipcframe.HeaderSize], 0, 0, io.ErrUnexpectedEOF},
		{"half payload", full[:10], 0, 0, io.ErrUnexpectedEOF},
		{"second frame cut", full[:len(full)-1], 0, 1, io.ErrUnexpectedEOF},
		{"streamed frame cut", full[:len(full)-1], 64, 1, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := ipcframe.NewReader(&chunkReader{data: tt.data, sizes: []int{7}}, &ipcframe.ReaderOptions{BufferSize: tt.buf})
			got, err := readAll(r, 10)
			if err != tt.wantErr {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
			if len(got) != tt.frames {
				t.Errorf("got %d frames, want %d", len(got), tt.frames)
			}
			if _, err2 := r.ReadFrame(nil); err2 != err {
				t.Errorf("error not final: next read = %v, want %v", err2, err)
			}
		})
	}
}

// TestBadHeaders covers TESTPLAN A1 on a plain stream: headers the Reader
// must refuse before allocating, each final.
func TestBadHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		header  string
		opts    *ipcframe.ReaderOptions
		wantErr error
	}{
		{"length 2^32-1", "68 01 00 00 ff ff ff ff", nil, ipcframe.ErrFrameTooLarge},
		{"MaxFrame+1 default", "68 01 00 00 00 10 00 01", nil, ipcframe.ErrFrameTooLarge},
		{"MaxFrame+1 custom", "68 01 00 00 00 00 01 01", &ipcframe.ReaderOptions{MaxFrame: 256}, ipcframe.ErrFrameTooLarge},
		{"http", "47 45 54 20 2f 20 48 54", nil, ipcframe.ErrBadHeader},
		{"version 0", "68 00 00 00 00 00 00 00", nil, ipcframe.ErrBadHeader},
		// Final, so it must not match the sentinels of dropped frames.
		{"fds over reader limit", "68 01 05 00 00 00 00 01", &ipcframe.ReaderOptions{MaxFDs: 4}, ipcframe.ErrBadHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data := append(unhex(t, tt.header), frames([]byte("after"))...)
			r := ipcframe.NewReader(bytes.NewReader(data), tt.opts)
			_, err := r.ReadFrame(nil)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if _, err2 := r.ReadFrame(nil); err2 != err {
				t.Errorf("error not final: next read = %v", err2)
			}
		})
	}
}

func TestReaderMaxFrameBoundary(t *testing.T) {
	t.Parallel()
	const limit = 300
	data := frames(bytes.Repeat([]byte("a"), limit))
	for _, buf := range []int{0, 64} {
		r := ipcframe.NewReader(bytes.NewReader(data), &ipcframe.ReaderOptions{MaxFrame: limit, BufferSize: buf})
		p, err := r.ReadFrame(nil)
		if err != nil || len(p) != limit {
			t.Errorf("buffer %d: frame of exactly MaxFrame: %d bytes, %v", buf, len(p), err)
		}
	}
}

// TestZeroLengthFrame is TESTPLAN A2: an empty frame is a frame, and what
// follows it is processed.
func TestZeroLengthFrame(t *testing.T) {
	t.Parallel()
	data := frames(nil, nil, []byte("valid"))
	r := ipcframe.NewReader(bytes.NewReader(data), nil)
	dst := []byte("keep")
	for i := range 2 {
		got, err := r.ReadFrame(dst)
		if err != nil || string(got) != "keep" {
			t.Fatalf("empty frame %d: %q, %v; want dst unchanged", i, got, err)
		}
	}
	got, err := r.ReadFrame(nil)
	if err != nil || string(got) != "valid" {
		t.Fatalf("frame after empty ones: %q, %v", got, err)
	}
}

func TestWriterPlain(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	w := ipcframe.NewWriter(&buf, &ipcframe.WriterOptions{MaxFrame: 10})
	for _, p := range []string{"a", "", "0123456789"} {
		if err := w.WriteFrame([]byte(p)); err != nil {
			t.Fatalf("WriteFrame(%q): %v", p, err)
		}
	}
	if err := w.WriteFrame(make([]byte, 11)); !errors.Is(err, ipcframe.ErrFrameTooLarge) {
		t.Errorf("11 bytes with MaxFrame 10: %v, want ErrFrameTooLarge", err)
	}
	if err := w.WriteFrameFDs([]byte("x"), 0); !errors.Is(err, ipcframe.ErrNoFDTransport) {
		t.Errorf("descriptors over a bytes.Buffer: %v, want ErrNoFDTransport", err)
	}
	want := frames([]byte("a"), nil, []byte("0123456789"))
	if diff := cmp.Diff(want, buf.Bytes()); diff != "" {
		t.Errorf("written bytes (-want +got):\n%s", diff)
	}
}

// capWriter records the capacity of the last slice it was given: the
// Writer's scratch buffer, for frames it copies.
type capWriter struct{ last int }

func (c *capWriter) Write(p []byte) (int, error) {
	c.last = cap(p)
	return len(p), nil
}

// TestWriterReleasesLargeBuffer: after a frame larger than 64 KiB the
// Writer does not keep that frame's memory as its scratch buffer, and
// small frames still cost no allocation once the buffer is back.
func TestWriterReleasesLargeBuffer(t *testing.T) {
	// Not parallel: AllocsPerRun counts every goroutine's allocations.
	cw := &capWriter{}
	w := ipcframe.NewWriter(cw, nil)
	steps := []struct {
		payload int
		maxCap  int // most the scratch buffer may hold after the write
	}{
		{10, 64 << 10},
		{ipcframe.DefaultMaxFrame, 0},
		{10, 64 << 10},
		{60 << 10, 64 << 10},
		{60 << 10, 64 << 10},
	}
	for i, st := range steps {
		if err := w.WriteFrame(make([]byte, st.payload)); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if st.maxCap > 0 && cw.last > st.maxCap {
			t.Errorf("step %d: %d-byte frame written from a %d-byte buffer, want at most %d", i, st.payload, cw.last, st.maxCap)
		}
	}
	small := []byte("small")
	if n := testing.AllocsPerRun(100, func() { _ = w.WriteFrame(small) }); n != 0 {
		t.Errorf("small frame: %v allocations per write, want 0", n)
	}
}

// shortWriter accepts at most n bytes per call and reports a short write.
type shortWriter struct {
	n      int
	writes int
}

func (s *shortWriter) Write(p []byte) (int, error) {
	s.writes++
	return min(len(p), s.n), nil
}

func TestWriterShortWriteIsFinal(t *testing.T) {
	t.Parallel()
	sw := &shortWriter{n: 3}
	w := ipcframe.NewWriter(sw, nil)
	if err := w.WriteFrame([]byte("payload")); err != io.ErrShortWrite {
		t.Fatalf("first write: %v, want io.ErrShortWrite", err)
	}
	if err := w.WriteFrame([]byte("x")); err != io.ErrShortWrite {
		t.Errorf("after a torn frame: %v, want the same error again", err)
	}
	if sw.writes != 1 {
		t.Errorf("%d Write calls, want 1 (one per frame, none after the failure)", sw.writes)
	}
}

// failingWriter fails its first call with err after taking n bytes, then
// takes everything; it records all it took.
type failingWriter struct {
	n      int
	err    error
	failed bool
	got    []byte
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if !f.failed {
		f.failed = true
		f.got = append(f.got, p[:f.n]...)
		return f.n, f.err
	}
	f.got = append(f.got, p...)
	return len(p), nil
}

// TestWriterFailureWithoutBytes: a write that fails having written nothing
// drops only that frame, whatever the error (EMSGSIZE for a SOCK_SEQPACKET
// frame larger than the send buffer used to end the Writer for good); one
// that wrote part of a frame is final, since the peer holds a fragment.
func TestWriterFailureWithoutBytes(t *testing.T) {
	t.Parallel()
	errTooLong := errors.New("sendmsg: message too long")
	tests := []struct {
		name    string
		n       int
		err     error
		wantErr error
		final   bool
	}{
		{"nothing written, message too long", 0, errTooLong, errTooLong, false},
		{"nothing written, timeout", 0, os.ErrDeadlineExceeded, os.ErrDeadlineExceeded, false},
		{"nothing written, no error", 0, nil, io.ErrShortWrite, false},
		{"part written, message too long", 3, errTooLong, errTooLong, true},
		{"part written, timeout", 3, os.ErrDeadlineExceeded, os.ErrDeadlineExceeded, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fw := &failingWriter{n: tt.n, err: tt.err}
			w := ipcframe.NewWriter(fw, nil)
			if err := w.WriteFrame([]byte("first")); !errors.Is(err, tt.wantErr) {
				t.Fatalf("failing write: %v, want %v", err, tt.wantErr)
			}
			err := w.WriteFrame([]byte("next"))
			want := frames([]byte("first"))[:tt.n]
			if tt.final {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("write after a torn frame: %v, want %v again", err, tt.wantErr)
				}
			} else {
				if err != nil {
					t.Errorf("write after one that wrote nothing: %v, want the Writer usable", err)
				}
				want = frames([]byte("next"))
			}
			if diff := cmp.Diff(want, fw.got); diff != "" {
				t.Errorf("bytes written (-want +got):\n%s", diff)
			}
		})
	}
}

// packetReader serves one read per message in turn: data, an error, or
// both; after the last it returns io.EOF.
type packetReader struct {
	reads []packetRead
}

type packetRead struct {
	data []byte
	err  error
}

func (p *packetReader) Read(b []byte) (int, error) {
	if len(p.reads) == 0 {
		return 0, io.EOF
	}
	r := p.reads[0]
	p.reads = p.reads[1:]
	return copy(b, r.data), r.err
}

// droppedMark is an error carrying the mark an FDReader puts on a message
// it consumed and discarded (*scmrights.TruncatedError has it).
type droppedMark struct{ dropped bool }

func (droppedMark) Error() string          { return "descriptors truncated" }
func (d droppedMark) MessageDropped() bool { return d.dropped }

// TestPacketEmptyMessageDropped: in packet mode a message that failed with
// no bytes is dropped, not final, when its error carries the
// MessageDropped mark, even wrapped: the frame after it is read. (An empty
// SOCK_SEQPACKET message whose descriptors the kernel cut used to end the
// Reader and lose the next frame.) Without the mark, an error with no bytes
// is the connection's and stays final.
func TestPacketEmptyMessageDropped(t *testing.T) {
	t.Parallel()
	reset := errors.New("connection reset")
	tests := []struct {
		name      string
		err       error
		wantFinal bool
	}{
		{"marked", droppedMark{true}, false},
		{"marked and wrapped", fmt.Errorf("read unixpacket: %w", droppedMark{true}), false},
		{"mark says no", droppedMark{false}, true},
		{"connection error", reset, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pr := &packetReader{reads: []packetRead{{nil, tt.err}, {frames([]byte("next")), nil}}}
			r := ipcframe.NewReader(pr, &ipcframe.ReaderOptions{Packet: true})
			got, err := r.ReadFrame([]byte("dst"))
			if !errors.Is(err, tt.err) || string(got) != "dst" {
				t.Fatalf("first read: %q, %v; want dst and %v", got, err, tt.err)
			}
			if dropped := errors.Is(err, ipcframe.ErrFrameDropped); dropped == tt.wantFinal {
				t.Errorf("first read: %v matches ErrFrameDropped: %v, want %v", err, dropped, !tt.wantFinal)
			}
			got, err = r.ReadFrame(nil)
			if tt.wantFinal {
				if !errors.Is(err, tt.err) {
					t.Errorf("read after a final error: %q, %v; want %v again", got, err, tt.err)
				}
				return
			}
			if err != nil || string(got) != "next" {
				t.Errorf("read after a dropped empty message: %q, %v; want \"next\"", got, err)
			}
		})
	}
}

// TestNoFDTransport: over a plain io.Reader a frame declaring descriptors is
// a typed error; the frame is dropped and the next one read.
func TestNoFDTransport(t *testing.T) {
	t.Parallel()
	data := append(unhex(t, "68 01 02 00 00 00 00 03 61 62 63"), frames([]byte("next"))...)
	r := ipcframe.NewReader(bytes.NewReader(data), nil)
	got, n, err := r.ReadFrameFDs([]byte("dst"), make([]int, 4))
	if !errors.Is(err, ipcframe.ErrNoFDTransport) || n != 0 || string(got) != "dst" {
		t.Fatalf("frame declaring fds over a plain reader: %q, %d, %v; want dst, 0, ErrNoFDTransport", got, n, err)
	}
	if got, err := r.ReadFrame(nil); err != nil || string(got) != "next" {
		t.Fatalf("next frame: %q, %v", got, err)
	}
}

// isPerFrame reports whether err is one of the errors a Reader documents as
// dropping a single frame; a caller loop skips exactly these.
func isPerFrame(err error) bool {
	for _, e := range []error{ipcframe.ErrFrameDropped, ipcframe.ErrFDCount, ipcframe.ErrNoFDTransport, ipcframe.ErrTooManyFDs} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// skipDropped reads frames the way a server loop does, skipping every
// per-frame error, for at most limit reads. It returns the payloads read,
// how many frames were dropped and the error that ended the loop (nil if
// the limit was reached: the loop would have spun). Every per-frame error
// must also match ErrFrameDropped. take, if not nil, disposes of the
// descriptors of frames read.
func skipDropped(t *testing.T, r *ipcframe.Reader, fds []int, limit int, take func([]int)) (payloads []string, drops int, final error) {
	t.Helper()
	for range limit {
		p, n, err := r.ReadFrameFDs(nil, fds)
		switch {
		case err == nil:
			if n > 0 {
				if take == nil {
					t.Fatalf("frame %q came with %d descriptors", p, n)
				}
				take(fds[:n])
			}
			payloads = append(payloads, string(p))
		case isPerFrame(err):
			if !errors.Is(err, ipcframe.ErrFrameDropped) {
				t.Fatalf("per-frame error %v does not match ErrFrameDropped", err)
			}
			drops++
		default:
			return payloads, drops, err
		}
	}
	return payloads, drops, nil
}

// TestDroppedFramesLoopEnds: a loop that skips per-frame errors over a
// hostile stream ends, because final errors never match the sentinels of
// dropped frames (a header declaring more descriptors than MaxFDs used to
// be a final ErrTooManyFDs, which such a loop skipped forever).
func TestDroppedFramesLoopEnds(t *testing.T) {
	t.Parallel()
	fdFrame := unhex(t, "68 01 02 00 00 00 00 01 7a") // declares 2 descriptors
	tests := []struct {
		name      string
		data      []byte
		opts      *ipcframe.ReaderOptions
		wantP     []string
		wantDrops int
		wantErr   error
	}{
		{"header over MaxFDs", append(unhex(t, "68 01 05 00 00 00 00 00"), frames([]byte("after"))...),
			&ipcframe.ReaderOptions{MaxFDs: 4}, nil, 0, ipcframe.ErrBadHeader},
		{"dropped frames, then over MaxFDs", slices.Concat(fdFrame, frames([]byte("a")), fdFrame, unhex(t, "68 01 05 00 00 00 00 00")),
			&ipcframe.ReaderOptions{MaxFDs: 4}, []string{"a"}, 2, ipcframe.ErrBadHeader},
		{"dropped frames, then too large", slices.Concat(fdFrame, fdFrame, fdFrame, unhex(t, "68 01 00 00 ff ff ff ff")),
			nil, nil, 3, ipcframe.ErrFrameTooLarge},
		{"dropped frames, then garbage", slices.Concat(fdFrame, []byte("GET / HTTP/1.1\r\n")),
			nil, nil, 1, ipcframe.ErrBadHeader},
		{"dropped frame, then cut", slices.Concat(fdFrame, fdFrame[:5]), nil, nil, 1, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := ipcframe.NewReader(&chunkReader{data: tt.data, sizes: []int{3}}, tt.opts)
			p, drops, err := skipDropped(t, r, make([]int, 4), 1000, nil)
			if err == nil {
				t.Fatalf("1000 reads skipping per-frame errors did not end (%d drops)", drops)
			}
			if !errors.Is(err, tt.wantErr) || isPerFrame(err) {
				t.Errorf("final error %v, want %v and no per-frame sentinel", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.wantP, p); diff != "" {
				t.Errorf("payloads (-want +got):\n%s", diff)
			}
			if drops != tt.wantDrops {
				t.Errorf("%d frames dropped, want %d", drops, tt.wantDrops)
			}
			if _, err2 := r.ReadFrame(nil); err2 != err {
				t.Errorf("error not final: next read = %v, want %v", err2, err)
			}
		})
	}
}

// timeoutReader returns its reads in turn: data, a timeout, or both. Like
// a connection whose deadline passed, once it has timed out every read
// times out until the test moves the deadline (clears expired).
type timeoutReader struct {
	steps   []timeoutStep
	expired bool
}

type timeoutStep struct {
	data    []byte
	timeout bool
}

func (s *timeoutReader) Read(p []byte) (int, error) {
	if s.expired {
		return 0, os.ErrDeadlineExceeded
	}
	if len(s.steps) == 0 {
		return 0, io.EOF
	}
	st := &s.steps[0]
	n := copy(p, st.data)
	st.data = st.data[n:]
	if len(st.data) > 0 {
		return n, nil
	}
	s.steps = s.steps[1:]
	if st.timeout {
		s.expired = true
		return n, os.ErrDeadlineExceeded
	}
	return n, nil
}

// TestTimeoutResumes: a read deadline in the middle of a frame larger than
// the buffer is not final; the next read resumes the frame where it
// stopped, with every byte once, whichever path (buffer, straight into dst,
// a timeout with data or without) the frame was on, and with a different
// dst on the retry.
func TestTimeoutResumes(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB
	data := frames([]byte("before"), big, []byte("after"))
	tests := []struct {
		name string
		cuts []int // stream offsets where a timeout occurs
		data bool  // the timeout comes with the read's data
		buf  int
		dst  int // spare capacity of dst
	}{
		{"mid frame, default buffer", []int{14 + 32<<10}, false, 0, 0},
		{"mid frame, data with the timeout", []int{14 + 32<<10}, true, 0, 0},
		{"several, small buffer", []int{100, 20 << 10, 20<<10 + 1, 60 << 10}, false, 64, 0},
		{"several, straight into dst", []int{14 + 9, 30 << 10, 50 << 10}, true, 4 << 10, 128 << 10},
		{"right after the header", []int{14 + 8}, false, 1 << 10, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var tr timeoutReader
			prev := 0
			for _, c := range tt.cuts {
				tr.steps = append(tr.steps, timeoutStep{data: data[prev:c], timeout: tt.data})
				if !tt.data {
					tr.steps = append(tr.steps, timeoutStep{timeout: true})
				}
				prev = c
			}
			tr.steps = append(tr.steps, timeoutStep{data: data[prev:]})
			r := ipcframe.NewReader(&tr, &ipcframe.ReaderOptions{BufferSize: tt.buf})
			var got []string
			timeouts := 0
			for range 20 {
				dst := make([]byte, 1, 1+tt.dst)
				dst[0] = '>'
				p, err := r.ReadFrame(dst)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					tr.expired = false
					timeouts++
					if string(p) != ">" {
						t.Fatalf("timeout returned %d bytes, want dst unchanged", len(p))
					}
					continue
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("after %d timeouts: %v", timeouts, err)
				}
				got = append(got, string(p[1:]))
			}
			if diff := cmp.Diff([]string{"before", string(big), "after"}, got); diff != "" {
				t.Errorf("frames (-want +got):\n%s", diff)
			}
			if timeouts != len(tt.cuts) {
				t.Errorf("%d timeouts, want %d", timeouts, len(tt.cuts))
			}
		})
	}
}

// TestTimeoutWithLastBytes: a timeout that comes with the bytes completing
// a frame does not outlive that frame. Once the deadline has moved, the
// next read returns the next frame, not the stale timeout; with the
// deadline still passed, it times out afresh; io.EOF with the last bytes
// is kept for the read after them.
func TestTimeoutWithLastBytes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		buf        int
		first      []byte
		moveFirst  bool // move the deadline before the second read
		wantSecond error
	}{
		{"buffered frame, deadline moved", 0, []byte("one"), true, nil},
		{"buffered frame, deadline still passed", 0, []byte("one"), false, os.ErrDeadlineExceeded},
		{"frame larger than the buffer, deadline moved", 64, bytes.Repeat([]byte("x"), 300), true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			first := frames(tt.first)
			tr := &timeoutReader{steps: []timeoutStep{
				{data: first[:len(first)-1]},
				{data: first[len(first)-1:], timeout: true},
				{data: frames([]byte("two"))},
			}}
			r := ipcframe.NewReader(tr, &ipcframe.ReaderOptions{BufferSize: tt.buf})
			p, err := r.ReadFrame(nil)
			if err != nil || !bytes.Equal(p, tt.first) {
				t.Fatalf("first frame: %d bytes, %v", len(p), err)
			}
			if tt.moveFirst {
				tr.expired = false
			}
			p, err = r.ReadFrame(nil)
			if !errors.Is(err, tt.wantSecond) || (err == nil) != (tt.wantSecond == nil) {
				t.Fatalf("second read: %q, %v; want error %v", p, err, tt.wantSecond)
			}
			if err != nil {
				tr.expired = false
				p, err = r.ReadFrame(nil)
			}
			if err != nil || string(p) != "two" {
				t.Fatalf("second frame: %q, %v", p, err)
			}
			if _, err := r.ReadFrame(nil); err != io.EOF {
				t.Fatalf("after the last frame: %v, want io.EOF", err)
			}
		})
	}
}
