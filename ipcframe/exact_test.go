package ipcframe_test

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/ipcframe"
)

// spyReader serves a byte stream and records, for each Read, how long p was
// and whether p lay inside the caller's frame slice (watch).
type spyReader struct {
	data  []byte
	watch []byte
	reads []spyRead
}

type spyRead struct {
	n      int
	direct bool
}

func (s *spyReader) Read(p []byte) (int, error) {
	n := copy(p, s.data)
	s.data = s.data[n:]
	direct := false
	if len(p) > 0 && cap(s.watch) > 0 {
		lo := uintptr(unsafe.Pointer(unsafe.SliceData(s.watch[:cap(s.watch)])))
		at := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
		direct = at >= lo && at < lo+uintptr(cap(s.watch))
	}
	s.reads = append(s.reads, spyRead{n, direct})
	if n == 0 {
		return 0, nil
	}
	return n, nil
}

// Frames larger than the buffer are read as a header, then the payload
// straight into the caller's slice, with no copy through the buffer: after
// the first such frame every frame costs two reads, and the payload read
// lands in dst. A smaller frame that follows is still read correctly and
// through the buffer again.
func TestLargeFramesReadDirect(t *testing.T) {
	t.Parallel()
	const bufSize = 4 << 10
	sizes := []int{10_000, 10_000, 10_000, 5_000, 3, 10_000, 0, 100}
	var stream []byte
	var want [][]byte
	for i, n := range sizes {
		p := bytes.Repeat([]byte{byte('a' + i)}, n)
		want = append(want, p)
		stream = ipcframe.AppendFrame(stream, p)
	}
	dst := make([]byte, 0, 16<<10)
	spy := &spyReader{data: stream, watch: dst}
	r := ipcframe.NewReader(spy, &ipcframe.ReaderOptions{BufferSize: bufSize})
	var got [][]byte
	for i := range sizes {
		before := len(spy.reads)
		p, err := r.ReadFrame(dst[:0])
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		got = append(got, bytes.Clone(p))
		reads := spy.reads[before:]
		// Frames 1 and 2 follow a large frame and are large themselves.
		if i == 1 || i == 2 {
			wantReads := []spyRead{{ipcframe.HeaderSize, false}, {sizes[i], true}}
			if diff := cmp.Diff(wantReads, reads, cmp.AllowUnexported(spyRead{})); diff != "" {
				t.Errorf("frame %d reads (-want +got):\n%s", i, diff)
			}
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("payloads (-want +got):\n%s", diff)
	}
	if _, err := r.ReadFrame(nil); err == nil {
		t.Error("read past the end succeeded")
	}
}
