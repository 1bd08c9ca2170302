//go:build unix && !aix

package scmrights

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Control messages are walked by hand: syscall.ParseUnixRights and its x/sys
// copy panic or misbehave on a header whose length is impossible, and the
// stdlib parser allocates.

var (
	cmsgDataOff = unix.CmsgLen(0)                       // header plus alignment padding
	cmsgAlign   = unix.CmsgSpace(1) - unix.CmsgSpace(0) // the platform's cmsg alignment
)

// walkRights calls fn for each descriptor carried by the SCM_RIGHTS messages
// in oob, in order, and skips other control messages.
func walkRights(oob []byte, fn func(fd int)) error { return walkControl(oob, fn, nil, nil) }

// walkControl calls rights for each descriptor carried by SCM_RIGHTS
// messages, unwanted for each descriptor carried by any other control
// message (SCM_PIDFD, when the socket has SO_PASSPIDFD set: the caller never
// asked for it and must close it), and, if cred is not nil, cred with the
// data of each credentials message, in order; other control messages are
// skipped. It returns ErrMalformedControl at the first header with an
// impossible length; the callbacks have seen every descriptor before it. A
// header whose length runs past the end of oob (what a BSD kernel leaves
// after MSG_CTRUNC) is read up to the end.
func walkControl(oob []byte, rights, unwanted func(fd int), cred func(data []byte)) error {
	for len(oob) >= unix.SizeofCmsghdr {
		var h unix.Cmsghdr
		// Copy rather than cast: oob need not be aligned.
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofCmsghdr), oob)
		l := uint64(h.Len)
		if l < unix.SizeofCmsghdr {
			return ErrMalformedControl
		}
		if l > uint64(len(oob)) {
			l = uint64(len(oob))
		}
		if h.Level == unix.SOL_SOCKET && l > uint64(cmsgDataOff) {
			switch {
			case h.Type == unix.SCM_RIGHTS:
				for data := oob[cmsgDataOff:l]; len(data) >= 4; data = data[4:] {
					rights(int(int32(binary.NativeEndian.Uint32(data))))
				}
			case h.Type == scmCredentials && cred != nil:
				cred(oob[cmsgDataOff:l])
			case h.Type == scmPidfd && unwanted != nil:
				for data := oob[cmsgDataOff:l]; len(data) >= 4; data = data[4:] {
					unwanted(int(int32(binary.NativeEndian.Uint32(data))))
				}
			}
		}
		next := (l + uint64(cmsgAlign) - 1) &^ uint64(cmsgAlign-1)
		if next >= uint64(len(oob)) {
			break
		}
		oob = oob[next:]
	}
	return nil
}

// PutRights writes one SCM_RIGHTS control message carrying fds into b and
// returns it: the bytes unix.UnixRights returns, without allocating once b
// has room for unix.CmsgSpace(4*len(fds)) bytes (a smaller b is replaced by
// one that has room for MaxFDs). It is for callers that build their own
// msghdr, such as a non-blocking sendmsg; Send and Conn do this themselves.
// Unix systems only.
func PutRights(b []byte, fds []int) []byte {
	n := unix.CmsgSpace(4 * len(fds))
	if cap(b) < n {
		b = make([]byte, max(n, unix.CmsgSpace(4*MaxFDs)))
	}
	b = b[:n]
	var h unix.Cmsghdr
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SCM_RIGHTS
	h.SetLen(unix.CmsgLen(4 * len(fds)))
	c := copy(b, unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofCmsghdr))
	clear(b[c:cmsgDataOff])
	for i, fd := range fds {
		binary.NativeEndian.PutUint32(b[cmsgDataOff+4*i:], uint32(fd))
	}
	clear(b[cmsgDataOff+4*len(fds):])
	return b
}

// AppendRights appends to dst the descriptors carried by the SCM_RIGHTS
// messages in oob, the control data of a caller's own recvmsg, and returns
// it: the counterpart of PutRights, with the bounds-checked walk Recv uses.
// Descriptors of other control messages (SCM_PIDFD) are closed;
// credentials are skipped. On ErrMalformedControl the result holds the
// descriptors before the bad header, still open, for the caller to close.
// It does not look at MSG_CTRUNC: the caller checks its flags. Unix systems
// only.
func AppendRights(dst []int, oob []byte) ([]int, error) {
	err := walkControl(oob, func(fd int) { dst = append(dst, fd) }, closeUnwanted, nil)
	return dst, err
}

// rightsSpace is the control buffer size for receiving up to n descriptors,
// plus room for the control messages the kernel adds on its own when the
// socket asks for them, so that they do not turn every receive with a full
// fds slice into a truncation (MSG_CTRUNC): one credentials message
// (SO_PASSCRED) and one pidfd (SO_PASSPIDFD, which walkControl closes).
func rightsSpace(n int) int {
	if n > MaxFDs {
		n = MaxFDs
	}
	return unix.CmsgSpace(4*n) + credSpace + pidfdSpace
}
