//go:build linux

package ipcframe_test

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/ipcframe"
	"golang.org/x/sys/unix"
)

// fakeSend is one sendmsg: bytes and the descriptors on its first byte.
type fakeSend struct {
	data []byte
	fds  []int
}

// fakeStream models an AF_UNIX stream socket's receive queue as Linux
// unix_stream_read_generic reads it: one Recv returns bytes of consecutive
// sends and stops right after the first send carrying descriptors, which
// come with the Recv that reads that send's first byte. Like
// scmrights.Conn, it closes every descriptor that arrived and fails when
// they exceed len(fds).
type fakeStream struct {
	sends []fakeSend
	off   int // bytes of sends[0] already read
}

var errFakeTruncated = errors.New("fake: descriptors truncated")

func (s *fakeStream) Recv(p []byte, fds []int) (n, nfds int, err error) {
	if len(s.sends) == 0 {
		return 0, 0, io.EOF
	}
	var got []int
	for len(s.sends) > 0 && n < len(p) {
		cur := &s.sends[0]
		if s.off == 0 && len(cur.fds) > 0 {
			got = cur.fds
		}
		c := copy(p[n:], cur.data[s.off:])
		n += c
		s.off += c
		if s.off == len(cur.data) {
			s.sends, s.off = s.sends[1:], 0
		}
		if got != nil {
			break
		}
	}
	if len(got) > len(fds) {
		for _, fd := range got {
			unix.Close(fd)
		}
		return n, 0, errFakeTruncated
	}
	return n, copy(fds, got), nil
}

// close releases the descriptors still queued, as closing a socket does.
func (s *fakeStream) close() {
	for i, snd := range s.sends {
		if i == 0 && s.off > 0 {
			continue // delivered with the first byte
		}
		for _, fd := range snd.fds {
			unix.Close(fd)
		}
	}
	s.sends = nil
}

func (s *fakeStream) Read(p []byte) (int, error) {
	n, _, err := s.Recv(p, nil)
	return n, err
}

// fdPool makes descriptors for a fuzz run and checks none survives it.
type fdPool struct {
	t       *testing.T
	base    int
	created []int
}

func newFDPool(t *testing.T) *fdPool {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &fdPool{t: t, base: fd}
	t.Cleanup(p.check)
	return p
}

func (p *fdPool) make(n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fd, err := unix.FcntlInt(uintptr(p.base), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			p.t.Fatal(err)
		}
		fds[i] = fd
		p.created = append(p.created, fd)
	}
	return fds
}

// check fails the test if any descriptor made is still open at the end:
// each must have been returned to the caller (and closed there) or closed
// by the Reader.
func (p *fdPool) check() {
	unix.Close(p.base)
	for _, fd := range p.created {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			p.t.Errorf("descriptor %d still open", fd)
			unix.Close(fd)
		}
	}
}

// FuzzFDStream has two modes. Honest: frames with 0-3 descriptors, each
// descriptor-carrying frame in one send and the bytes of the others cut into
// arbitrary sends; every frame must come back with exactly its own
// descriptors. Hostile: arbitrary bytes in arbitrary sends with arbitrary
// descriptors attached; the Reader must not panic, and every descriptor
// must end up returned or closed.
func FuzzFDStream(f *testing.F) {
	f.Add([]byte("\x05hello\x00\x03abc\x10"+string(bytes.Repeat([]byte("q"), 40))), []byte{1, 0x82, 3, 0x81}, false, uint16(0))
	f.Add([]byte("\x05hello\x00\x03abc"), []byte{0x83, 5, 0x81, 2}, false, uint16(64))
	f.Add(append(hdr(1, 3), "abc"...), []byte{0x81, 0x82, 1}, true, uint16(0))
	f.Add(append(append(hdr(0, 2), "ab"...), append(hdr(2, 1), 'c')...), []byte{0x89, 0x84, 0x82}, true, uint16(64))
	f.Fuzz(func(t *testing.T, data, plan []byte, hostile bool, bufSize uint16) {
		pool := newFDPool(t)
		planAt := func(i int) byte {
			if len(plan) == 0 {
				return 0
			}
			return plan[i%len(plan)]
		}
		var sends []fakeSend
		var want [][]int
		var payloads [][]byte
		if hostile {
			// Cut data into sends of 1..128 bytes; the plan byte's top bit
			// attaches 1..4 descriptors.
			for i := 0; len(data) > 0; i++ {
				b := planAt(i)
				n := min(int(b&0x7f)+1, len(data))
				s := fakeSend{data: data[:n]}
				if b&0x80 != 0 {
					s.fds = pool.make(int(b>>5&3) + 1)
				}
				sends = append(sends, s)
				data = data[n:]
			}
		} else {
			var loose []byte // bytes of descriptor-less frames not yet sent
			flush := func(i int) {
				for len(loose) > 0 {
					n := min(int(planAt(i)&0x3f)+1, len(loose))
					sends = append(sends, fakeSend{data: loose[:n]})
					loose = loose[n:]
					i++
				}
			}
			for i, p := range splitPayloads(data) {
				b := planAt(i)
				payloads = append(payloads, p)
				if b&0x80 == 0 {
					loose = ipcframe.AppendFrame(loose, p)
					want = append(want, nil)
					continue
				}
				flush(i)
				fds := pool.make(int(b>>5&3) + 1)
				sends = append(sends, fakeSend{data: append(hdr(len(fds), len(p)), p...), fds: fds})
				want = append(want, slices.Clone(fds))
			}
			flush(0)
		}
		fs := &fakeStream{sends: sends}
		r := ipcframe.NewReader(fs, &ipcframe.ReaderOptions{BufferSize: int(bufSize), MaxFDs: 4})
		defer fs.close()
		defer r.Close()
		fds := make([]int, 4)
		for i := 0; i < len(sends)+len(payloads)+2; i++ {
			p, n, err := r.ReadFrameFDs(nil, fds)
			got := slices.Clone(fds[:n])
			for _, fd := range got {
				unix.Close(fd)
			}
			if hostile {
				if err != nil && !errors.Is(err, ipcframe.ErrFDCount) {
					return
				}
				continue
			}
			if i == len(payloads) {
				if err != io.EOF {
					t.Fatalf("after %d frames: %v, want io.EOF", i, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			if !bytes.Equal(p, payloads[i]) {
				t.Fatalf("frame %d: payload %q, want %q", i, p, payloads[i])
			}
			if len(got) == 0 {
				got = nil
			}
			if diff := cmp.Diff(want[i], got); diff != "" {
				t.Fatalf("frame %d: descriptors (-want +got):\n%s", i, diff)
			}
		}
		if !hostile {
			t.Fatal("reader did not reach io.EOF")
		}
	})
}
