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
		return fail(fdwire.StatusPermission, "receiver pid %d runs as uid %d; allowed: %d (use -allow-uid)", cred.PID, cred.UID, os.Getuid())
	}

	sendErr := scmrights.Send(conn, msg, fds...)
	sent = sendErr == nil
	// Read the reply even when the send failed: a receiver that refused us
	// (wrong uid) replied before closing, and its reason beats EPIPE.
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
		code := status
		if (code < fdwire.StatusTimeout || code > fdwire.StatusProtocol) && code != fdwire.StatusExec {
			code = fdwire.StatusFailure
		}
		return fail(code, "fdrecv refused the descriptors: %s", text)
	case sendErr != nil:
		return timeoutOr(ctx, cfg, fmt.Errorf("send: %w", sendErr))
	case err == io.EOF:
		return fail(fdwire.StatusProtocol, "fdrecv closed the connection without replying")
	}
	return timeoutOr(ctx, cfg, err)
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
