//go:build linux

package cluster

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// A worker's inherited sockets after Ready (TESTPLAN A19): what Listen
// claimed stays open, the rest is closed, tableflip's closeInherited and
// systemd's advice for descriptors a service does not know.

// adoptInherited builds the worker's table of activation descriptors. Only
// inherited listening or datagram sockets are adopted (TESTPLAN A20: never
// adopt random descriptors 3..N, as the master's checkActivated): a
// descriptor this process opened itself (close-on-exec, and so is an
// inherited one the program marked before its first call of the worker
// API, as go-systemd's activation.Files does: skipped too), a connection
// (a socket activated with Accept=yes gets one) or anything else is logged
// and left untouched, so neither Listen nor Ready ever takes it. The last
// extra of act are descriptors LISTEN_FDNAMES did not name: adopted, to be
// closed by Ready, and never served (no guessing what an unnamed
// descriptor is for). The control and connection channels are never
// adopted, even when a LISTEN_FDS too large covers their numbers (ctl and
// conn, -1 for none).
func adoptInherited(act []Activated, extra, ctl, conn int) []inherited {
	var out []inherited
	for i, a := range act {
		if a.FD == ctl || a.FD == conn {
			continue
		}
		unnamed := i >= len(act)-extra
		which := a.Name
		if unnamed {
			which = "beyond " + envListenFDNames
		}
		// Before inspectInherited sets close-on-exec, which is half of
		// what tells an inherited descriptor from one of this process.
		// Code that read LISTEN_FDS before the worker API (go-systemd's
		// activation.Files marks them close-on-exec) looks the same: the
		// message says so, and how to avoid it. Only HandoffListener
		// leaves LISTEN_FDS for such code to read after it.
		if flags, err := unix.FcntlInt(uintptr(a.FD), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC != 0 {
			fmt.Fprintf(os.Stderr, "cluster: descriptor %d (%s) ignored: it is close-on-exec, so not taken as inherited (this process opened it, or marked it after reading %s itself); make the first call of the worker API before anything that marks %s close-on-exec (that call removes %s from the environment unless it is HandoffListener)\n", a.FD, which, envListenFDs, envListenFDs, envListenFDs)
			continue
		}
		// dev and ino identify the socket later, for Ready.
		st, what, _ := inheritedSocket(a.FD)
		if what != "" {
			fmt.Fprintf(os.Stderr, "cluster: descriptor %d (%s) ignored: it %s, not an inherited listening or datagram socket\n", a.FD, which, what)
			continue
		}
		in := inspectInherited(a)
		in.dev, in.ino = uint64(st.Dev), uint64(st.Ino) // uint32 on mips
		in.unnamed = unnamed
		out = append(out, in)
	}
	return out
}

// envFD returns the descriptor number in v, a variable's value, or -1.
func envFD(v string) int {
	fd, err := strconv.Atoi(v)
	if err != nil || fd < listenFDsStart {
		return -1
	}
	return fd
}

// releaseInherited closes the inherited sockets nothing claimed (see
// Ready).
func (w *wstate) releaseInherited() {
	w.inhMu.Lock()
	defer w.inhMu.Unlock()
	for i := range w.inh {
		in := &w.inh[i]
		if in.claimed || in.closed {
			continue
		}
		in.closed = true
		// The number may have been closed and reused since adoption (by
		// code that took it with another activation library): close it
		// only if it still is the socket adopted.
		var st unix.Stat_t
		if unix.Fstat(in.fd, &st) != nil || uint64(st.Dev) != in.dev || uint64(st.Ino) != in.ino {
			continue
		}
		// close(2), not shutdown(2): shutdown would stop accept for the
		// master and every other worker holding the socket.
		unix.Close(in.fd)
	}
}

// claim is what a Listen call found among the inherited sockets.
type claim struct {
	fd   int // a close-on-exec duplicate for the caller, or -1
	name string
	// released is the address of a socket Ready closed, whose
	// descriptor was inhFD: the caller asks the master for it instead.
	released net.Addr
	inhFD    int
}

// claim finds the inherited socket for q (see Listen). With dup it
// returns a duplicate of it and marks it claimed, so Ready keeps it;
// without (handoff mode: the master accepts, the worker never uses the
// socket) Ready closes it all the same. ok is false when no inherited
// socket matches.
func (w *wstate) claim(q *listenReq, stream, dup bool) (c claim, ok bool, err error) {
	// addr, stream and name never change after adoption: match without
	// the lock.
	i := -1
	for j := range w.inh {
		in := &w.inh[j]
		if in.stream != stream || in.addr == nil || !sameFamily(q.network, in.addr) {
			continue
		}
		if in.unnamed {
			// Never served; asked for by address, it is still the
			// activator's, so a bind could only fail.
			if q.address != "" && q.matches(in) {
				return claim{}, false, fmt.Errorf("cluster: listen %s %s: %w: descriptor %d is beyond %s, so not served",
					q.network, q.address, ErrNoListener, in.fd, envListenFDNames)
			}
			continue
		}
		if q.address == "" || q.matches(in) {
			i = j
			break
		}
	}
	if i < 0 {
		if q.address == "" {
			return claim{}, false, fmt.Errorf("%w: no %s socket among LISTEN_FDS", ErrNoListener, q.network)
		}
		return claim{}, false, nil
	}
	w.inhMu.Lock()
	defer w.inhMu.Unlock()
	in := &w.inh[i]
	c = claim{fd: -1, name: in.name, inhFD: in.fd}
	if in.closed {
		c.released = in.addr
		return c, true, nil
	}
	if dup {
		fd, err := unix.FcntlInt(uintptr(in.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return claim{}, false, fmt.Errorf("cluster: listen %s: %w", in.name, os.NewSyscallError("fcntl", err))
		}
		c.fd = fd
		in.claimed = true
	}
	return c, true, nil
}

// inheritsFamily reports whether some inherited socket has network's
// family: only then is an address worth resolving for a match.
func (w *wstate) inheritsFamily(network string) bool {
	for _, in := range w.inh {
		if in.addr != nil && sameFamily(network, in.addr) {
			return true
		}
	}
	return false
}

// releasedError is Listen's error, without a master, for a socket Ready
// closed: the activator still holds the address, so a bind here would
// only fail with EADDRINUSE.
func releasedError(network, address string, c claim) error {
	return fmt.Errorf("cluster: listen %s %s: %w: descriptor %d (%s, %s) was closed by Ready, unclaimed, and there is no master to ask for it",
		network, address, ErrNoListener, c.inhFD, c.name, c.released)
}
