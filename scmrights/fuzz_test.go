//go:build unix && !aix

package scmrights_test

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// FuzzWalkRights feeds arbitrary control data to the walker: it must never
// panic, never report a descriptor from outside an SCM_RIGHTS payload, and
// must read back exactly what the builder wrote.
func FuzzWalkRights(f *testing.F) {
	f.Add(scmrights.PutRights(make([]byte, unix.CmsgSpace(12)), []int{3, 4, 5}), uint8(0))
	f.Add(scmrights.PutRights(make([]byte, unix.CmsgSpace(4)), []int{7}), uint8(1))
	f.Add([]byte{}, uint8(0))
	f.Add(make([]byte, unix.SizeofCmsghdr), uint8(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0, 1, 0, 0, 0}, uint8(0))
	f.Fuzz(func(t *testing.T, oob []byte, cut uint8) {
		// Arbitrary bytes: count descriptors and check bounds.
		n := 0
		err := scmrights.WalkRights(oob, func(int) { n++ })
		if n > len(oob)/4 {
			t.Fatalf("%d descriptors from %d bytes", n, len(oob))
		}
		_ = err

		// Round trip: what PutRights writes, walkRights reads back, even
		// when followed by arbitrary bytes or cut short.
		fds := make([]int, 0, 8)
		for i := 0; i+4 <= len(oob) && len(fds) < 8; i += 4 {
			fds = append(fds, int(int32(binary.NativeEndian.Uint32(oob[i:]))))
		}
		if len(fds) == 0 {
			return
		}
		msg := scmrights.PutRights(make([]byte, unix.CmsgSpace(4*len(fds))), fds)
		var got []int
		if err := scmrights.WalkRights(msg, func(fd int) { got = append(got, fd) }); err != nil {
			t.Fatalf("walk of a well-formed message: %v", err)
		}
		if len(got) != len(fds) {
			t.Fatalf("got %d descriptors, want %d", len(got), len(fds))
		}
		for i := range fds {
			if got[i] != fds[i] {
				t.Fatalf("descriptor %d = %d, want %d", i, got[i], fds[i])
			}
		}
		// Cut short (a BSD kernel's MSG_CTRUNC): only whole descriptors
		// inside the buffer are reported, in order.
		short := msg[:int(cut)%len(msg)]
		got = got[:0]
		_ = scmrights.WalkRights(short, func(fd int) { got = append(got, fd) })
		hdr := unix.CmsgLen(0)
		wantN := 0
		if len(short) >= unix.SizeofCmsghdr && len(short) > hdr {
			wantN = (len(short) - hdr) / 4
		}
		if len(got) != wantN {
			t.Fatalf("cut to %d bytes: %d descriptors, want %d", len(short), len(got), wantN)
		}
	})
}

// FuzzRightsOnly checks deliver's fast path against the full walker: when
// it accepts control data, the walker must find exactly the same
// descriptors, no other control message and no error.
func FuzzRightsOnly(f *testing.F) {
	f.Add(scmrights.PutRights(make([]byte, unix.CmsgSpace(12)), []int{3, 4, 5}), uint8(3), uint8(0))
	f.Add(scmrights.PutRights(make([]byte, unix.CmsgSpace(4)), []int{7}), uint8(1), uint8(0))
	f.Add(scmrights.PutRights(make([]byte, unix.CmsgSpace(4)), []int{7}), uint8(0), uint8(0))
	f.Add([]byte{}, uint8(0), uint8(0))
	f.Add(make([]byte, unix.SizeofCmsghdr), uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, in []byte, room, shift uint8) {
		// Copy into an 8-aligned buffer at offset shift%8: the fast path
		// must decline unaligned data, never misread it.
		buf := make([]uint64, len(in)/8+2)
		raw := unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), len(buf)*8)
		oob := raw[int(shift%8) : int(shift%8)+len(in)]
		copy(oob, in)
		fds := make([]int, int(room%16))
		n, ok := scmrights.RightsOnly(oob, fds)
		if !ok {
			return
		}
		var walked []int
		other := false
		err := scmrights.WalkControl(oob, func(fd int) { walked = append(walked, fd) },
			func(int) { other = true }, func([]byte) { other = true })
		if err != nil || other {
			t.Fatalf("fast path accepted %x (%d fds), walker: err %v, other control messages %v", oob, n, err, other)
		}
		if n != len(walked) || n > len(fds) {
			t.Fatalf("fast path found %d descriptors in %x, walker %d, room %d", n, oob, len(walked), len(fds))
		}
		for i := range n {
			if fds[i] != walked[i] {
				t.Fatalf("descriptor %d: fast path %d, walker %d", i, fds[i], walked[i])
			}
		}
	})
}
