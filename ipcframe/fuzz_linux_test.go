//go:build linux

package ipcframe_test

import (
	"bytes"
	"errors"
	"io"
	"os"
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

// fdPool makes descriptors for a fuzz run, each on its own object (a
// memfd) so that a descriptor's identity survives its number being reused,
// and checks none survives the run.
type fdPool struct {
	t       *testing.T
	created []int
}

func newFDPool(t *testing.T) *fdPool {
	p := &fdPool{t: t}
	t.Cleanup(p.check)
	return p
}

func (p *fdPool) make(n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fd, err := unix.MemfdCreate("ipcframe-fuzz", unix.MFD_CLOEXEC)
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
	for _, fd := range p.created {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			p.t.Errorf("descriptor %d still open", fd)
			unix.Close(fd)
		}
	}
}

// FuzzFDStream has two modes. Honest: frames with 1-4 descriptors or none,
// each descriptor-carrying frame in one send and the bytes of the others cut
// into arbitrary sends; every frame must come back with exactly its own
// descriptors. Hostile: arbitrary bytes in arbitrary sends with 1-8
// descriptors attached to some (more than the Reader's MaxFDs of 4 reaches
// the transport's truncation); the Reader must not panic, every descriptor
// must end up returned or closed, and the descriptors returned with a frame
// must be, by identity, exactly those of one send, each send's at most once.
func FuzzFDStream(f *testing.F) {
	f.Add([]byte("\x05hello\x00\x03abc\x10"+string(bytes.Repeat([]byte("q"), 40))), []byte{1, 0x82, 3, 0x81}, false, uint16(0))
	f.Add([]byte("\x05hello\x00\x03abc"), []byte{0x83, 5, 0x81, 2}, false, uint16(64))
	f.Add(append(hdr(1, 3), "abc"...), []byte{0x81, 0x82, 1}, true, uint16(0))
	f.Add(append(append(hdr(0, 2), "ab"...), append(hdr(2, 1), 'c')...), []byte{0x89, 0x84, 0x82}, true, uint16(64))
	f.Add(append(append(hdr(5, 1), 'x'), append(hdr(1, 1), 'y')...), []byte{0xc9, 0x81}, true, uint16(0))
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
		owner := map[fdID]int{}     // hostile: the send each descriptor rode on
		sendIDs := map[int][]fdID{} // hostile: identities of each send's descriptors
		if hostile {
			// Cut data into sends of 1..128 bytes; the plan byte's top bit
			// attaches 1..8 descriptors.
			for i := 0; len(data) > 0; i++ {
				b := planAt(i)
				n := min(int(b&0x7f)+1, len(data))
				s := fakeSend{data: data[:n]}
				if b&0x80 != 0 {
					s.fds = pool.make(int(b>>4&7) + 1)
					sendIDs[len(sends)] = ids(t, s.fds)
					for _, id := range sendIDs[len(sends)] {
						owner[id] = len(sends)
					}
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
		delivered := map[int]bool{} // hostile: sends whose descriptors came out
		for i := 0; i < len(sends)+len(payloads)+2; i++ {
			p, n, err := r.ReadFrameFDs(nil, fds)
			got := slices.Clone(fds[:n])
			gotIDs := ids(t, got)
			for _, fd := range got {
				unix.Close(fd)
			}
			if hostile {
				if n > 0 {
					si, ok := owner[gotIDs[0]]
					if !ok || delivered[si] {
						t.Fatalf("frame %d: descriptors %v belong to no send, or to one delivered before", i, gotIDs)
					}
					delivered[si] = true
					if diff := cmp.Diff(sendIDs[si], gotIDs); diff != "" {
						t.Fatalf("frame %d: descriptors are not exactly those of send %d (-want +got):\n%s", i, si, diff)
					}
				}
				if err != nil && !errors.Is(err, ipcframe.ErrFrameDropped) && !errors.Is(err, os.ErrDeadlineExceeded) {
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
