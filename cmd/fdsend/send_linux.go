//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/fdwire"
	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

var longAgo = time.Unix(1, 0)

// beforeSend, when set by a test, runs between the receiver's uid check
// and the send: a test makes fdrecv hang up in that gap, which otherwise
// lasts microseconds.
var beforeSend func()

// opened holds what send opened itself, to close (or, for unix listeners
// never sent, unlink) at the end.
type opened struct {
	fds     []int
	unixLns []*sockfile.Listener
}

func (o *opened) close(sent bool) {
	for _, fd := range o.fds {
		unix.Close(fd)
	}
	for _, l := range o.unixLns {
		// Once sendmsg succeeded the receiver may already serve the socket
		// at this path, whatever the reply says (or if none comes).
		l.SetUnlinkOnClose(!sent)
		l.Close()
	}
}

func send(ctx context.Context, cfg *config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	var own opened
	sent := false
	defer func() { own.close(sent) }()
	fds := make([]int, 0, len(cfg.sources))
	for _, s := range cfg.sources {
		fd, err := open(ctx, s, &own)
		if err != nil {
			return &fdwire.ExitError{Code: fdwire.StatusSource, Err: err}
		}
		fds = append(fds, fd)
	}
	msg, err := fdwire.EncodeMessage(cfg.names, []byte(cfg.payload))
	if err != nil {
		return fail(fdwire.StatusUsage, "%w", err)
	}

	conn, err := dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(longAgo) })
	defer stop()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}

	cred, err := scmrights.PeerCred(conn)
	if err != nil {
		return err
	}
	if !cfg.allowUIDs.Allows(cred.UID) {
		return fail(fdwire.StatusPermission, "receiver pid %d runs as uid %d; allowed: %s", cred.PID, cred.UID, cfg.allowUIDs.Allowed())
	}

	if beforeSend != nil {
		beforeSend()
	}
	sendErr := scmrights.Send(conn, msg, fds...)
	sent = sendErr == nil
	if sendErr != nil {
		// A receiver that refused us (wrong uid) queued its reply before
		// shutting down, and its reason beats EPIPE. Any other failure
		// (ETOOMANYREFS: this user's descriptors in flight exceed
		// RLIMIT_NOFILE; EMSGSIZE; ENOBUFS) left the receiver waiting for
		// a message that never comes: no reply will follow, so only one
		// already queued is read, and the send error is reported at once
		// rather than as a timeout.
		return sendFailed(ctx, cfg, conn, sendErr)
	}
	status, text, err := readReply(conn)
	if err == nil && status == fdwire.StatusOK {
		// "Placed": success only once end of file follows. fdrecv's last
		// stage holds the channel close-on-exec, so a successful execve of
		// PROGRAM closes it, and a failed one writes a status instead.
		status, text, err = readReply(conn)
		switch {
		case err == io.EOF:
			return nil
		case err == nil && status == fdwire.StatusOK:
			return fail(fdwire.StatusProtocol, "%v: a second success reply", fdwire.ErrProtocol)
		}
	}
	switch {
	case err == nil:
		return refused(status, text)
	case hungUp(err):
		return errHungUp()
	}
	return timeoutOr(ctx, cfg, err)
}

// hungUp reports whether a read error means fdrecv closed the connection
// without a reply for us: end of file, or ECONNRESET, which the kernel
// reports instead when our message was still unread in fdrecv's queue
// (unix_release_sock), as for a connection fdrecv had not read yet when
// another sender's message was taken.
func hungUp(readErr error) bool {
	return readErr == io.EOF || errors.Is(readErr, unix.ECONNRESET)
}

// errHungUp is the one failure for fdrecv hanging up without replying,
// whether before our send (which then fails with EPIPE) or after it.
func errHungUp() error {
	return fail(fdwire.StatusProtocol, "fdrecv closed the connection without replying")
}

// queuedReplyWait bounds the wait for a reply after a failed send: one
// the receiver sent before our send failed is queued already.
const queuedReplyWait = 100 * time.Millisecond

// sendFailed reports a failed send: the receiver's refusal if one is
// queued, its hang-up if the send failed for that, else sendErr.
func sendFailed(ctx context.Context, cfg *config, conn *net.UnixConn, sendErr error) error {
	// A short deadline, not a past one: the netpoller checks the deadline
	// before reading, so a past one would never look at the queue, while
	// a reply already queued is read at once.
	d := time.Now().Add(queuedReplyWait)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	if err := conn.SetReadDeadline(d); err == nil {
		status, text, err := readReply(conn)
		switch {
		case err == nil && status != fdwire.StatusOK:
			return refused(status, text)
		case hungUp(err) && (errors.Is(sendErr, unix.EPIPE) || errors.Is(sendErr, unix.ECONNRESET)):
			// fdrecv hung up before our send (its -timeout, or
			// another sender's message was taken): the same failure
			// as when it hangs up after it.
			return errHungUp()
		}
	}
	if ctx.Err() == context.Canceled {
		return fail(fdwire.StatusFailure, "interrupted")
	}
	// A send that blocked until the deadline (the receiver's queue full)
	// is a timeout; every other send error is an I/O failure, status 1.
	if errors.Is(sendErr, os.ErrDeadlineExceeded) {
		return fail(fdwire.StatusTimeout, "fdrecv took no message within %v", cfg.timeout)
	}
	if errors.Is(sendErr, unix.ETOOMANYREFS) {
		return fail(fdwire.StatusFailure, "send: %w (this user's descriptors in flight exceed fdsend's RLIMIT_NOFILE)", sendErr)
	}
	return fail(fdwire.StatusFailure, "send: %w", sendErr)
}

// refused maps a failure status from fdrecv to fdsend's exit status.
func refused(status int, text string) error {
	code := status
	if (code < fdwire.StatusTimeout || code > fdwire.StatusProtocol) && code != fdwire.StatusExec {
		code = fdwire.StatusFailure
	}
	return fail(code, "fdrecv refused the descriptors: %s", text)
}

// dial connects to PATH, waiting for it to appear: fdrecv may be started
// in the background just before fdsend. ENOENT (no file yet) and
// ECONNREFUSED (a stale file not yet replaced, or not yet listening) are
// retried with a short backoff until the context ends.
func dial(ctx context.Context, cfg *config) (*net.UnixConn, error) {
	var d net.Dialer
	backoff := 5 * time.Millisecond
	var last error // the last ENOENT or ECONNREFUSED: why we are waiting
	for {
		c, err := d.DialContext(ctx, "unixpacket", cfg.socket)
		if err == nil {
			return c.(*net.UnixConn), nil
		}
		if last != nil && ctx.Err() == context.DeadlineExceeded {
			// The time ran out inside a dial: report what kept us
			// waiting, as when it runs out between dials.
			err = last
		} else if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ECONNREFUSED) {
			return nil, dialError(ctx, cfg, err)
		} else if err := notSocket(cfg.socket); err != nil {
			// connect(2) reports ECONNREFUSED for a FIFO or a regular
			// file too, which no waiting will change.
			return nil, &fdwire.ExitError{Code: fdwire.StatusSocket, Err: err}
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			if ctx.Err() == context.Canceled {
				return nil, fail(fdwire.StatusFailure, "interrupted")
			}
			return nil, &fdwire.ExitError{Code: fdwire.StatusSocket, Err: fmt.Errorf("%w (waited %v)", err, cfg.timeout)}
		case <-t.C:
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// notSocket returns an error if path exists and is not a socket. Stat
// follows symbolic links, as connect(2) does.
func notSocket(path string) error {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Type() == fs.ModeSocket {
		return nil
	}
	return fmt.Errorf("%s: not a socket (%s)", path, kind(fi.Mode()))
}

func kind(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "regular file"
	case fs.ModeDir:
		return "directory"
	case fs.ModeNamedPipe:
		return "FIFO"
	case fs.ModeDevice:
		return "block device"
	case fs.ModeDevice | fs.ModeCharDevice:
		return "character device"
	}
	return "another file type"
}

// readReply reads one reply; io.EOF is returned as is.
func readReply(conn *net.UnixConn) (int, string, error) {
	buf := make([]byte, fdwire.MaxReply+1)
	// No room for descriptors: a reply carrying any is refused and they
	// are closed (ErrTruncated).
	n, _, err := scmrights.Recv(conn, buf, nil)
	switch {
	case err == io.EOF:
		return 0, "", err
	case errors.Is(err, scmrights.ErrTruncated), errors.Is(err, scmrights.ErrPayloadTruncated):
		return 0, "", fail(fdwire.StatusProtocol, "%w: %v", fdwire.ErrProtocol, err)
	case err != nil:
		return 0, "", err
	}
	status, text, err := fdwire.DecodeReply(buf[:n])
	if err != nil {
		return 0, "", &fdwire.ExitError{Code: fdwire.StatusProtocol, Err: err}
	}
	return status, text, nil
}

func timeoutOr(ctx context.Context, cfg *config, err error) error {
	switch {
	case ctx.Err() == context.Canceled:
		return fail(fdwire.StatusFailure, "interrupted")
	// The connection's deadline is the context's and may fire first.
	case ctx.Err() == context.DeadlineExceeded, errors.Is(err, os.ErrDeadlineExceeded):
		return fail(fdwire.StatusTimeout, "no reply from fdrecv within %v", cfg.timeout)
	}
	return err
}

func dialError(ctx context.Context, cfg *config, err error) error {
	if ctx.Err() != nil {
		return timeoutOr(ctx, cfg, err)
	}
	if errors.Is(err, fs.ErrPermission) {
		return &fdwire.ExitError{Code: fdwire.StatusPermission, Err: err}
	}
	return &fdwire.ExitError{Code: fdwire.StatusSocket, Err: err}
}

// open returns the descriptor for one source, recording in own what it
// opened.
func open(ctx context.Context, s source, own *opened) (int, error) {
	switch s.kind {
	case "fd":
		fd, _ := strconv.Atoi(s.value) // checked by the flag
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			return -1, fmt.Errorf("-fd %d: %w", fd, os.NewSyscallError("fcntl", err))
		}
		// Every inherited descriptor survived an execve, so none is
		// close-on-exec; one that is belongs to fdsend itself (the Go
		// runtime's netpoller or cgroup file, often at 3 or 4 when the
		// caller passed nothing there).
		if flags&unix.FD_CLOEXEC != 0 {
			return -1, fmt.Errorf("-fd %d: not inherited (close-on-exec, fdsend's own descriptor)", fd)
		}
		return fd, nil
	case "file":
		// O_NONBLOCK: opening a FIFO read-only must not wait for a writer;
		// the flag is cleared again below because the receiver shares it.
		fd, err := unix.Open(s.value, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err != nil {
			return -1, fmt.Errorf("-file: %w", &os.PathError{Op: "open", Path: s.value, Err: err})
		}
		own.fds = append(own.fds, fd)
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err == nil {
			_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
		}
		if err != nil {
			return -1, fmt.Errorf("-file %s: %w", s.value, os.NewSyscallError("fcntl", err))
		}
		return fd, nil
	case "listen":
		fd, err := listen(ctx, s.value, own)
		if err != nil {
			return -1, fmt.Errorf("-listen %s: %w", s.value, err)
		}
		own.fds = append(own.fds, fd)
		return fd, nil
	}
	return -1, fmt.Errorf("unknown source %q", s.kind)
}

// listen binds addr and returns a close-on-exec duplicate of the socket, in
// blocking mode.
func listen(ctx context.Context, addr string, own *opened) (int, error) {
	scheme, rest := splitListen(addr)
	var lc net.ListenConfig
	// Plain TCP, as systemd hands out: since Go 1.24 package net creates
	// MPTCP listeners (IPPROTO_MPTCP) where the kernel has
	// net.mptcp.enabled=1, and an MPTCP socket refuses some TCP options
	// (TCP_USER_TIMEOUT on Linux 6.18, SO_ATTACH_REUSEPORT_CBPF) that the
	// receiving program may set.
	lc.SetMultipathTCP(false)
	var c syscall.Conn
	switch scheme {
	case "tcp", "tcp4", "tcp6":
		l, err := lc.Listen(ctx, scheme, rest)
		if err != nil {
			return -1, err
		}
		defer l.Close()
		c = l.(syscall.Conn)
	case "udp", "udp4", "udp6":
		l, err := lc.ListenPacket(ctx, scheme, rest)
		if err != nil {
			return -1, err
		}
		defer l.Close()
		c = l.(syscall.Conn)
	case "unix":
		l, err := sockfile.Listen(rest, nil)
		if err != nil {
			return -1, err
		}
		own.unixLns = append(own.unixLns, l)
		c = l.UnixListener()
	default:
		return -1, fmt.Errorf("unknown scheme %q (want tcp, udp or unix)", scheme)
	}
	fd, err := scmrights.Dup(c)
	if err != nil {
		return -1, err
	}
	// Go's sockets are O_NONBLOCK, and the duplicate shares that file
	// status flag. A socket-activated receiver expects blocking mode, as
	// systemd hands out by default (NonBlocking=no): a blocking accept(2)
	// on a non-blocking listener fails at once with EAGAIN. Nothing in
	// fdsend waits on the socket, so clearing it here is safe.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("fcntl", err)
	}
	return fd, nil
}
