//go:build unix && !aix

package scmrights_test

import (
	"encoding/binary"
	"testing"

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
