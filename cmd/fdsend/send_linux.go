//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/handoff-go/handoff/internal/fdwire"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

var longAgo = time.Unix(1, 0)

// opened holds what send opened itself, to close (or, for unix listeners
// after a failed send, unlink) at the end.
type opened struct {
	fds     []int
	unixLns []*sockfile.Listener
}

func (o *opened) close(sent bool) {
	for _, fd := range o.fds {
		unix.Close(fd)
	}
	for _, l := range o.unixLns {
		// Once sent, the path belongs to the receiver's copy of the socket.
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

	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", cfg.socket)
	if err != nil {
		return dialError(ctx, cfg, err)
	}
	conn := c.(*net.UnixConn)
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
	// Read the reply even when the send failed: a receiver that refused us
	// (wrong uid) replied before closing, and its reason beats EPIPE.
	status, text, err := readReply(conn)
	switch {
	case err == nil && status != fdwire.StatusOK:
		code := status
		if (code < fdwire.StatusTimeout || code > fdwire.StatusProtocol) && code != fdwire.StatusExec {
			code = fdwire.StatusFailure
		}
		return fail(code, "fdrecv refused the descriptors: %s", text)
	case sendErr != nil:
		return timeoutOr(ctx, cfg, fmt.Errorf("send: %w", sendErr))
	case err != nil:
		return timeoutOr(ctx, cfg, err)
	}
	sent = true
	return nil
}

func readReply(conn *net.UnixConn) (int, string, error) {
	buf := make([]byte, fdwire.MaxReply+1)
	// No room for descriptors: a reply carrying any is refused and they
	// are closed (ErrTruncated).
	n, _, err := scmrights.Recv(conn, buf, nil)
	switch {
	case err == io.EOF:
		return 0, "", fail(fdwire.StatusProtocol, "fdrecv closed the connection without replying")
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

// listen binds addr and returns a close-on-exec duplicate of the socket.
func listen(ctx context.Context, addr string, own *opened) (int, error) {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok {
		scheme, rest = "tcp", addr
	}
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
	return scmrights.Dup(c)
}
