//go:build linux

package scmrights_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

func cmsg(level, typ int32, words ...uint32) []byte {
	data := make([]byte, 4*len(words))
	for i, w := range words {
		binary.NativeEndian.PutUint32(data[4*i:], w)
	}
	b := make([]byte, unix.CmsgSpace(len(data)))
	binary.NativeEndian.PutUint64(b, uint64(unix.CmsgLen(len(data))))
	binary.NativeEndian.PutUint32(b[8:], uint32(level))
	binary.NativeEndian.PutUint32(b[12:], uint32(typ))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// The walker reports exactly the descriptors of SCM_RIGHTS messages, all of
// them across several messages, hands other descriptors to unwanted, and
// never mistakes other payloads for descriptors.
func TestWalkControl(t *testing.T) {
	type result struct {
		Rights, Unwanted []int
		Creds            int
		Err              bool
	}
	rights := cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 3, 4, 5)
	for _, tc := range []struct {
		name string
		oob  []byte
		want result
	}{
		{"empty", nil, result{}},
		{"one", rights, result{Rights: []int{3, 4, 5}}},
		{"two messages", cat(cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 7), cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 8, 9)), result{Rights: []int{7, 8, 9}}},
		{"credentials first", cat(cmsg(unix.SOL_SOCKET, unix.SCM_CREDENTIALS, 1, 0, 0), cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 9)), result{Rights: []int{9}, Creds: 1}},
		{"pidfd", cat(cmsg(unix.SOL_SOCKET, 0x04, 11), cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 12)), result{Rights: []int{12}, Unwanted: []int{11}}},
		{"other level", cmsg(unix.IPPROTO_IP, unix.SCM_RIGHTS, 13), result{}},
		{"other type", cmsg(unix.SOL_SOCKET, 0x7f, 14, 15), result{}},
		{"cut inside data", rights[:unix.CmsgLen(0)+5], result{Rights: []int{3}}},
		{"cut inside header", rights[:10], result{}},
		{"length below header", cat(cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 3), func() []byte {
			b := cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 4)
			binary.NativeEndian.PutUint64(b, 3)
			return b
		}()), result{Rights: []int{3}, Err: true}},
		// A BSD kernel's MSG_CTRUNC leaves a header longer than the
		// buffer; the descriptors that were copied are read up to the end.
		{"length past the end", func() []byte {
			b := cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 5, 6)
			binary.NativeEndian.PutUint64(b, 1<<63)
			return b
		}(), result{Rights: []int{5, 6}}},
	} {
		var got result
		err := scmrights.WalkControl(tc.oob,
			func(fd int) { got.Rights = append(got.Rights, fd) },
			func(fd int) { got.Unwanted = append(got.Unwanted, fd) },
			func([]byte) { got.Creds++ })
		got.Err = err != nil
		if err != nil && !errors.Is(err, scmrights.ErrMalformedControl) {
			t.Errorf("%s: error %v, want ErrMalformedControl", tc.name, err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}

// PutRights reuses its buffer; for every count, after larger and smaller
// ones, it must write the bytes unix.UnixRights gives.
func TestPutRights(t *testing.T) {
	var buf []byte
	for _, k := range []int{scmrights.MaxFDs, 1, 2, 7, scmrights.MaxFDs - 1, 3, 64, scmrights.MaxFDs} {
		fds := make([]int, k)
		for i := range fds {
			fds[i] = 1000 + 37*i + k
		}
		buf = scmrights.PutRights(buf, fds)
		if diff := cmp.Diff(unix.UnixRights(fds...), buf); diff != "" {
			t.Errorf("%d descriptors (-want +got):\n%s", k, diff)
		}
	}
	for k := 1; k <= scmrights.MaxFDs; k++ {
		fds := make([]int, k)
		for i := range fds {
			fds[i] = i
		}
		if diff := cmp.Diff(unix.UnixRights(fds...), scmrights.PutRights(buf, fds)); diff != "" {
			t.Errorf("%d descriptors (-want +got):\n%s", k, diff)
		}
	}
}

// AppendRights gives back what PutRights wrote, after what dst held, and
// the descriptors of every SCM_RIGHTS message; it closes an SCM_PIDFD
// descriptor nobody asked for, and on a malformed header returns the
// descriptors before it, open.
func TestAppendRights(t *testing.T) {
	fdcensus.Verify(t)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	bad := cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 4)
	binary.NativeEndian.PutUint64(bad, 3)
	for _, tc := range []struct {
		name string
		oob  []byte
		want []int
		err  bool
	}{
		{"PutRights", scmrights.PutRights(nil, []int{5, 6, 7}), []int{1, 5, 6, 7}, false},
		{"two messages and credentials", cat(cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 8), cmsg(unix.SOL_SOCKET, unix.SCM_CREDENTIALS, 1, 0, 0), cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 9, 10)), []int{1, 8, 9, 10}, false},
		{"malformed", cat(cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 3), bad), []int{1, 3}, true},
		{"pidfd", cat(cmsg(unix.SOL_SOCKET, 0x04, uint32(p[0])), cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, 12)), []int{1, 12}, false},
	} {
		got, err := scmrights.AppendRights([]int{1}, tc.oob)
		if (err != nil) != tc.err || err != nil && !errors.Is(err, scmrights.ErrMalformedControl) {
			t.Errorf("%s: error %v, want malformed %v", tc.name, err, tc.err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
	if _, err := unix.FcntlInt(uintptr(p[0]), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("the SCM_PIDFD descriptor is still open (fcntl: %v)", err)
	}
}
