//go:build linux

package ipcframe

import "golang.org/x/sys/unix"

// canPassFDs is true where the Reader's attribution rule holds: Linux
// unix_stream_read_generic stops a recvmsg right after the first skb that
// carries descriptors, so one read never returns descriptors of two sends.
const canPassFDs = true

// closeFDs closes descriptors this package owns and will not hand out.
func closeFDs(fds []int) {
	for i, fd := range fds {
		// close(2) releases the descriptor even when it reports EINTR or
		// EIO on Linux; retrying could close an unrelated, reused number.
		_ = unix.Close(fd)
		fds[i] = -1
	}
}
