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

// fdStreamCase is the input of the stream fuzz targets: the sends and, in
// honest mode, the frames expected back; in hostile mode, which send each
// descriptor rode on.
type fdStreamCase struct {
	hostile  bool
	sends    []fakeSend
	payloads [][]byte       // honest: every frame's payload...
	want     [][]int        // ...and descriptors
	owner    map[fdID]int   // hostile: the send each descriptor rode on
	sendIDs  map[int][]fdID // hostile: identities of each send's descriptors
}

// buildFDStream makes the sends of a fuzz case. Honest: frames from
// splitPayloads(data); plan byte i (cycling) gives frame i 1-4 descriptors
// if b&0x80, sent in one send, or with b&0x10 in two (a partial sendmsg
// continued without descriptors, as FDWriter.Send does), cut after
// 1+(b&7) bytes; the bytes of descriptor-less frames are cut into sends of
// (b&0x3f)+1. Hostile: data cut into sends of (b&0x7f)+1 bytes, with b&0x80
// carrying 1-8 descriptors.
func buildFDStream(t *testing.T, pool *fdPool, data, plan []byte, hostile bool) *fdStreamCase {
	c := &fdStreamCase{hostile: hostile, owner: map[fdID]int{}, sendIDs: map[int][]fdID{}}
	planAt := func(i int) byte {
		if len(plan) == 0 {
			return 0
		}
		return plan[i%len(plan)]
	}
	if hostile {
		for i := 0; len(data) > 0; i++ {
			b := planAt(i)
			n := min(int(b&0x7f)+1, len(data))
			s := fakeSend{data: data[:n]}
			if b&0x80 != 0 {
				s.fds = pool.make(int(b>>4&7) + 1)
				c.sendIDs[len(c.sends)] = ids(t, s.fds)
				for _, id := range c.sendIDs[len(c.sends)] {
					c.owner[id] = len(c.sends)
				}
			}
			c.sends = append(c.sends, s)
			data = data[n:]
		}
		return c
	}
	var loose []byte // bytes of descriptor-less frames not yet sent
	flush := func(i int) {
		for len(loose) > 0 {
			n := min(int(planAt(i)&0x3f)+1, len(loose))
			c.sends = append(c.sends, fakeSend{data: loose[:n]})
			loose = loose[n:]
			i++
		}
	}
	for i, p := range splitPayloads(data) {
		b := planAt(i)
		c.payloads = append(c.payloads, p)
		if b&0x80 == 0 {
			loose = ipcframe.AppendFrame(loose, p)
			c.want = append(c.want, nil)
			continue
		}
		flush(i)
		fds := pool.make(int(b>>5&3) + 1)
		fr := append(hdr(len(fds), len(p)), p...)
		if k := 1 + int(b&7); b&0x10 != 0 && k < len(fr) {
			c.sends = append(c.sends, fakeSend{data: fr[:k], fds: fds}, fakeSend{data: fr[k:]})
		} else {
			c.sends = append(c.sends, fakeSend{data: fr, fds: fds})
		}
		c.want = append(c.want, slices.Clone(fds))
	}
	flush(0)
	return c
}

// check reads c's frames from r. Honest: every frame comes back in order
// with exactly its descriptors, then io.EOF. Hostile: no panic, and the
// descriptors returned with a frame are, by identity, exactly those of one
// send, each send's at most once. Timeouts are retried, at most maxTimeouts
// in all. Every descriptor must end up returned or closed (fdPool).
func (c *fdStreamCase) check(t *testing.T, r *ipcframe.Reader, maxTimeouts int) {
	fds := make([]int, 4)
	delivered := map[int]bool{} // hostile: sends whose descriptors came out
	timeouts := 0
	total := 0
	for _, s := range c.sends {
		total += len(s.data)
	}
	// A frame is at least a header, and each read returns one or fails.
	for i := 0; i < total/ipcframe.HeaderSize+2; i++ {
		p, n, err := r.ReadFrameFDs(nil, fds)
		got := slices.Clone(fds[:n])
		gotIDs := ids(t, got)
		for _, fd := range got {
			unix.Close(fd)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if n != 0 || len(p) != 0 {
				t.Fatalf("frame %d: timeout with %d bytes and %d descriptors", i, len(p), n)
			}
			if timeouts++; timeouts > maxTimeouts {
				t.Fatalf("frame %d: more than %d timeouts", i, maxTimeouts)
			}
			i--
			continue
		}
		if c.hostile {
			if n > 0 {
				si, ok := c.owner[gotIDs[0]]
				if !ok || delivered[si] {
					t.Fatalf("frame %d: descriptors %v belong to no send, or to one delivered before", i, gotIDs)
				}
				delivered[si] = true
				if diff := cmp.Diff(c.sendIDs[si], gotIDs); diff != "" {
					t.Fatalf("frame %d: descriptors are not exactly those of send %d (-want +got):\n%s", i, si, diff)
				}
			}
			if err != nil && !errors.Is(err, ipcframe.ErrFrameDropped) {
				return
			}
			continue
		}
		if i == len(c.payloads) {
			if err != io.EOF {
				t.Fatalf("after %d frames: %v, want io.EOF", i, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(p, c.payloads[i]) {
			t.Fatalf("frame %d: payload %q, want %q", i, p, c.payloads[i])
		}
		if len(got) == 0 {
			got = nil
		}
		if diff := cmp.Diff(c.want[i], got); diff != "" {
			t.Fatalf("frame %d: descriptors (-want +got):\n%s", i, diff)
		}
	}
	if !c.hostile {
		t.Fatal("reader did not reach io.EOF")
	}
}

// FuzzFDStream has two modes (see buildFDStream). Honest: frames with 1-4
// descriptors or none, each descriptor-carrying frame in one send or two
// (a continued partial sendmsg) and the bytes of the others cut into
// arbitrary sends; every frame must come back with exactly its own
// descriptors. Hostile: arbitrary bytes in arbitrary sends with 1-8
// descriptors attached to some (more than the Reader's MaxFDs of 4 reaches
// the transport's truncation, which loses them); the Reader must not
// panic, every descriptor must end up returned or closed, and the
// descriptors returned with a frame must be, by identity, exactly those of
// one send, each send's at most once.
func FuzzFDStream(f *testing.F) {
	f.Add([]byte("\x05hello\x00\x03abc\x10"+string(bytes.Repeat([]byte("q"), 40))), []byte{1, 0x82, 3, 0x81}, false, uint16(0))
	f.Add([]byte("\x05hello\x00\x03abc"), []byte{0x83, 5, 0x81, 2}, false, uint16(64))
	f.Add([]byte("\x05hello\x00\x03abc"), []byte{0x93, 0xb6, 0x91}, false, uint16(64))
	f.Add(append(hdr(1, 3), "abc"...), []byte{0x81, 0x82, 1}, true, uint16(0))
	f.Add(append(append(hdr(0, 2), "ab"...), append(hdr(2, 1), 'c')...), []byte{0x89, 0x84, 0x82}, true, uint16(64))
	f.Add(append(append(hdr(5, 1), 'x'), append(hdr(1, 1), 'y')...), []byte{0xc9, 0x81}, true, uint16(0))
	f.Fuzz(func(t *testing.T, data, plan []byte, hostile bool, bufSize uint16) {
		c := buildFDStream(t, newFDPool(t), data, plan, hostile)
		fs := &fakeStream{sends: c.sends}
		r := ipcframe.NewReader(fs, &ipcframe.ReaderOptions{BufferSize: int(bufSize), MaxFDs: 4})
		defer fs.close()
		defer r.Close()
		c.check(t, r, 0)
	})
}

// timeoutStream makes a fakeStream's receives time out as a plan says, one
// plan byte per Recv (cycling): b&1 times out without data (never twice in
// a row, so reads progress), b&2 returns the data with a timeout, and a
// receive takes at most (b>>2)+1 bytes.
type timeoutStream struct {
	fs       *fakeStream
	plan     []byte
	i        int
	timedOut bool
}

func (s *timeoutStream) Recv(p []byte, fds []int) (int, int, error) {
	var b byte
	if len(s.plan) > 0 {
		b = s.plan[s.i%len(s.plan)]
	}
	s.i++
	if b&1 != 0 && !s.timedOut {
		s.timedOut = true
		return 0, 0, os.ErrDeadlineExceeded
	}
	s.timedOut = false
	n, nfds, err := s.fs.Recv(p[:min(len(p), int(b>>2)+1)], fds)
	if err == nil && n > 0 && b&2 != 0 {
		err = os.ErrDeadlineExceeded
	}
	return n, nfds, err
}

func (s *timeoutStream) Read(p []byte) (int, error) {
	n, _, err := s.Recv(p, nil)
	return n, err
}

// FuzzFDStreamTimeouts is FuzzFDStream with receives that time out, with
// or without data, and are cut short, as tplan says (timeoutStream): a
// timeout never loses, repeats or misattributes a byte or a descriptor.
func FuzzFDStreamTimeouts(f *testing.F) {
	f.Add([]byte("\x05hello\x00\x03abc\x10"+string(bytes.Repeat([]byte("q"), 40))), []byte{1, 0x82, 3, 0x81}, []byte{0, 1, 4, 9}, false, uint16(64))
	f.Add([]byte("\x05hello\x00\x03abc"), []byte{0x93, 0xb6, 0x91}, []byte{3, 0x0a, 1, 0xfe}, false, uint16(0))
	f.Add(append(append(hdr(0, 2), "ab"...), append(hdr(2, 1), 'c')...), []byte{0x89, 0x84, 0x82}, []byte{1, 2, 7}, true, uint16(64))
	f.Add(append(append(hdr(5, 1), 'x'), append(hdr(1, 1), 'y')...), []byte{0xc9, 0x81}, []byte{3, 0x0e}, true, uint16(0))
	f.Fuzz(func(t *testing.T, data, plan, tplan []byte, hostile bool, bufSize uint16) {
		c := buildFDStream(t, newFDPool(t), data, plan, hostile)
		fs := &fakeStream{sends: c.sends}
		r := ipcframe.NewReader(&timeoutStream{fs: fs, plan: tplan}, &ipcframe.ReaderOptions{BufferSize: int(bufSize), MaxFDs: 4})
		defer fs.close()
		defer r.Close()
		total := 0
		for _, s := range c.sends {
			total += len(s.data)
		}
		// At most one timeout without data per receive and one with data
		// per byte received.
		c.check(t, r, 4*total+8)
	})
}

// fakePackets models a SOCK_SEQPACKET socket read through scmrights: one
// Recv returns one message. A message longer than p is cut (MSG_TRUNC) and
// more descriptors than len(fds) are refused (MSG_CTRUNC); either way the
// message is consumed, its descriptors closed, and Recv fails with the
// bytes it copied. A plan byte per Recv (cycling) makes it time out first
// without data (b&1, never twice in a row) or with the message (b&2).
// plain hides Recv: the Reader then uses Read and gets no descriptors.
type fakePackets struct {
	msgs     []fakeSend
	plan     []byte
	i        int
	timedOut bool
}

var errFakeMsgTruncated = errors.New("fake: message truncated")

func (s *fakePackets) Recv(p []byte, fds []int) (int, int, error) {
	var b byte
	if len(s.plan) > 0 {
		b = s.plan[s.i%len(s.plan)]
	}
	s.i++
	if b&1 != 0 && !s.timedOut {
		s.timedOut = true
		return 0, 0, os.ErrDeadlineExceeded
	}
	s.timedOut = false
	if len(s.msgs) == 0 {
		return 0, 0, io.EOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	n := copy(p, m.data)
	var err error
	switch {
	case n < len(m.data):
		err = errFakeMsgTruncated
	case len(m.fds) > len(fds):
		err = errFakeTruncated
	}
	if err != nil {
		for _, fd := range m.fds {
			unix.Close(fd)
		}
		return n, 0, err
	}
	if b&2 != 0 {
		err = os.ErrDeadlineExceeded
	}
	return n, copy(fds, m.fds), err
}

func (s *fakePackets) Read(p []byte) (int, error) {
	n, _, err := s.Recv(p, nil)
	return n, err
}

func (s *fakePackets) close() {
	for _, m := range s.msgs {
		for _, fd := range m.fds {
			unix.Close(fd)
		}
	}
	s.msgs = nil
}

// plainPackets hides fakePackets' Recv.
type plainPackets struct{ fp *fakePackets }

func (p plainPackets) Read(b []byte) (int, error) { return p.fp.Read(b) }

// FuzzPacket feeds a packet-mode Reader messages built from data: plan byte
// i (cycling) makes message i a frame of payload i with b>>5 descriptors
// (0-7, more than the Reader's MaxFDs of 4 reaches the transport's
// truncation), declaring b&0x0f of them with b&0x10, or, with b&0x08, the
// raw payload bytes. Every message must give exactly what the rules say:
// its frame with exactly its descriptors, or a dropped-frame error of the
// right kind; the stream never fails before io.EOF, timeouts included, and
// every descriptor ends up returned or closed.
func FuzzPacket(f *testing.F) {
	f.Add([]byte("\x05hello\x00\x03abc\x10"+string(bytes.Repeat([]byte("q"), 40))), []byte{0x20, 0x00, 0x43}, []byte{0}, false, uint16(100), uint8(4))
	f.Add([]byte("\x05hello\x03abc"), []byte{0xa0, 0x31, 0x08}, []byte{1, 2, 3}, false, uint16(2), uint8(2))
	f.Add([]byte("\x05hello\x00\x30\x03abc"), []byte{0x20, 0x00, 0x00, 0x20}, []byte{2, 1}, true, uint16(40), uint8(0))
	f.Fuzz(func(t *testing.T, data, plan, tplan []byte, plain bool, maxFrame uint16, room uint8) {
		pool := newFDPool(t)
		const maxFDs = 4
		limit := int(maxFrame)%4096 + 1
		bufLen := ipcframe.HeaderSize + limit + 1
		fds := make([]int, int(room)%(maxFDs+2))
		planAt := func(i int) byte {
			if len(plan) == 0 {
				return 0
			}
			return plan[i%len(plan)]
		}
		var msgs []fakeSend
		for i, p := range splitPayloads(data) {
			b := planAt(i)
			var m fakeSend
			if !plain {
				m.fds = pool.make(int(b >> 5))
			}
			switch {
			case b&0x08 != 0 && len(p) > 0:
				m.data = p
			case b&0x10 != 0:
				m.data = append(hdr(int(b&0x0f), len(p)), p...)
			default:
				m.data = append(hdr(len(m.fds), len(p)), p...)
			}
			if len(m.data) == 0 {
				m.data = []byte{0} // an empty message reads as end of stream
			}
			msgs = append(msgs, m)
		}
		want := make([]error, len(msgs)) // nil: the frame, with its descriptors
		wantIDs := make([][]fdID, len(msgs))
		for i, m := range msgs {
			wantIDs[i] = ids(t, m.fds)
			h, err := ipcframe.ParseHeader(m.data)
			switch {
			case len(m.data) > bufLen:
				want[i] = errFakeMsgTruncated
			case len(m.fds) > maxFDs:
				want[i] = errFakeTruncated
			case errors.Is(err, ipcframe.ErrFrameTooLarge):
				want[i] = ipcframe.ErrFrameTooLarge
			case err != nil:
				want[i] = ipcframe.ErrBadHeader
			case h.Len > limit:
				want[i] = ipcframe.ErrFrameTooLarge
			case len(m.data) != ipcframe.HeaderSize+h.Len, h.FDs > maxFDs:
				want[i] = ipcframe.ErrBadHeader
			case plain && h.FDs > 0:
				want[i] = ipcframe.ErrNoFDTransport
			case len(m.fds) != h.FDs:
				want[i] = ipcframe.ErrFDCount
			case len(m.fds) > len(fds):
				want[i] = ipcframe.ErrTooManyFDs
			}
		}
		fp := &fakePackets{msgs: slices.Clone(msgs), plan: tplan}
		var rd io.Reader = fp
		if plain {
			rd = plainPackets{fp}
		}
		r := ipcframe.NewReader(rd, &ipcframe.ReaderOptions{Packet: true, MaxFrame: limit, MaxFDs: maxFDs})
		defer fp.close()
		defer r.Close()
		timeouts := 0
		for i := 0; i <= len(msgs); i++ {
			p, n, err := r.ReadFrameFDs(nil, fds)
			got := ids(t, fds[:n])
			for _, fd := range fds[:n] {
				unix.Close(fd)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if n != 0 || len(p) != 0 {
					t.Fatalf("message %d: timeout with %d bytes and %d descriptors", i, len(p), n)
				}
				if timeouts++; timeouts > len(msgs)+1 {
					t.Fatalf("message %d: %d timeouts", i, timeouts)
				}
				i--
				continue
			}
			if i == len(msgs) {
				if err != io.EOF {
					t.Fatalf("after %d messages: %v, want io.EOF", i, err)
				}
				break
			}
			if want[i] != nil {
				if !errors.Is(err, want[i]) || !errors.Is(err, ipcframe.ErrFrameDropped) || n != 0 || len(p) != 0 {
					t.Fatalf("message %d: %d bytes, %d descriptors, %v; want a dropped frame, %v", i, len(p), n, err, want[i])
				}
				continue
			}
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if w := msgs[i].data[ipcframe.HeaderSize:]; !bytes.Equal(p, w) {
				t.Fatalf("message %d: payload %q, want %q", i, p, w)
			}
			if diff := cmp.Diff(wantIDs[i], got); diff != "" {
				t.Fatalf("message %d: descriptors (-want +got):\n%s", i, diff)
			}
		}
		if _, err := r.ReadFrame(nil); err != io.EOF {
			t.Fatalf("after io.EOF: %v", err)
		}
	})
}
