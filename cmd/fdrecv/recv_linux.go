//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/handoff-go/handoff/internal/fdwire"
	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// longAgo is a deadline in the past: setting it unblocks a pending Accept or
// Recv at once.
var longAgo = time.Unix(1, 0)

// maxPending bounds the allowed connections fdrecv reads at once. A silent
// one holds its slot for at most connReadTimeout, so it delays nobody
// unless maxPending of them are silent together; then the next allowed
// connection waits, accepted, for a free slot, its message queued intact.
// Accepting goes on meanwhile, so refusals never wait for a slot.
const maxPending = 8

// maxAccepted bounds the allowed connections accepted and not yet done
// with (read or waiting for a slot). One beyond it is refused with status
// 1 at once: a crowd of silent connections costs a descriptor and a
// goroutine each, never more.
const maxAccepted = 64

func receive(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	var progPath string
	if len(cfg.program) > 0 {
		// Resolved before anything is received, so a typo never costs the
		// sender its descriptors.
		p, err := exec.LookPath(cfg.program[0])
		if err != nil {
			return fail(fdwire.StatusExec, "%w", err)
		}
		progPath = p
	}
	opts := &sockfile.Options{Network: "unixpacket"}
	if len(cfg.allowUIDs) > 0 {
		// connect(2) needs write permission on the socket file, so another
		// user can reach a 0600 socket only as root. Who may talk is
		// decided by SO_PEERCRED below; the directory around PATH decides
		// who may replace the file.
		opts.Mode = 0o666
	}
	ln, err := sockfile.Listen(cfg.socket, opts)
	if err != nil {
		return &fdwire.ExitError{Code: fdwire.StatusSocket, Err: err}
	}
	defer ln.Close()

	if cfg.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	m, err := acceptMessage(ctx, cfg, ln, stderr)
	if err != nil {
		return err
	}
	conn, cred, names, payload, fds := m.conn, m.cred, m.names, m.payload, m.fds
	defer conn.Close()
	keep := false
	defer func() {
		if !keep {
			closeAll(fds)
		}
	}()
	if progPath == "" {
		// "Placed", then end of file: the sender's success. A sender that
		// cannot take the reply any more (EPIPE) has reported a failure,
		// so nothing is described.
		if err := reply(conn, fdwire.StatusOK, ""); err != nil {
			return fmt.Errorf("reply to the sender: %w", err)
		}
		hangUp(conn)
		infos := make([]fdInfo, len(fds))
		for i, fd := range fds {
			infos[i] = describe(fd)
			infos[i].Index, infos[i].Name = i, names[i]
		}
		return writeReport(stdout, cfg.json, cred, infos, payload)
	}
	// With PROGRAM the "placed" reply comes from stage 2, once the
	// descriptors sit at 3, 4, ..., and success is the reply channel
	// closing at PROGRAM's execve: a sender that succeeds may close its own
	// copy of a listener, so success must not precede a failure we can
	// still report. Stage 2 execs PROGRAM only if "placed" was delivered.
	// Nothing more is read from the sender: what it queued after its
	// message goes now, so that neither stage 2's exit nor PROGRAM's
	// execve closes the channel with records unread (see hangUp).
	stopReading(conn)
	if err := ln.Close(); err != nil {
		reply(conn, fdwire.StatusSocket, err.Error())
		return err
	}
	keep = true
	err = execWith(conn, progPath, cfg.program, names, fds)
	closeAll(fds)
	reply(conn, fdwire.StatusExec, err.Error())
	return err
}

// message is one sender's message as received, or why there is none.
type message struct {
	conn *net.UnixConn
	cred scmrights.Ucred
	msg  []byte
	fds  []int
	// names and payload are msg decoded, set once it is checked.
	names   []string
	payload []byte
	// err is nil for a message, a *dropError for a connection to drop (a
	// note for stderr, conn already closed), errAcceptEnded when the
	// accept loop ended, or a failure that ends fdrecv (conn closed).
	err error
}

var errAcceptEnded = errors.New("accept loop ended")

// acceptMessage accepts connections until one delivers a message from an
// allowed sender that still waits for the reply, and returns it, checked
// (see check). Every other connection is dropped with a note on stderr: a
// refused uid, nothing sent within connReadTimeout, a hang-up before or
// after sending, a message too large or with its control data truncated
// (its sender gets the status), or a message that arrived after another
// sender's was taken. Nothing a dropped peer does delays the next accept:
// refusals never wait (see refuse), and up to maxPending allowed
// connections are read at once, the first complete message winning. A
// message that fails check ends fdrecv with its status, as does an Accept
// failure, -timeout or an interruption; a message read meanwhile gets
// status 1 with that cause.
func acceptMessage(ctx context.Context, cfg *config, ln *sockfile.Listener, stderr io.Writer) (*message, error) {
	outer := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.SetDeadline(longAgo) })
	defer stop()

	results := make(chan *message)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		acceptLoop(ctx, cfg, ln, &wg, results)
	}()
	go func() {
		wg.Wait()
		close(results)
	}()

	var (
		won   *message
		fatal error
	)
	// results is closed once the accept loop and every reader have
	// returned, which the cancel below brings about: nothing outlives the
	// call.
	for m := range results {
		var drop *dropError
		switch {
		case errors.As(m.err, &drop):
			fmt.Fprintf(stderr, "fdrecv: dropped a connection: %v\n", drop.err)
		case m.err == errAcceptEnded:
			if won == nil && fatal == nil {
				fatal = interrupted(outer, cfg, nil)
			}
		case m.err != nil:
			if won == nil && fatal == nil {
				fatal = m.err
				cancel()
			} else {
				fmt.Fprintf(stderr, "fdrecv: dropped a connection: %v\n", m.err)
			}
		case won != nil:
			closeAll(m.fds)
			refuse(m.conn, fdwire.StatusFailure, "another sender's descriptors were taken")
			fmt.Fprintf(stderr, "fdrecv: dropped a connection: pid %d sent its message after another sender's was taken\n", m.cred.PID)
		case fatal != nil:
			closeAll(m.fds)
			refuse(m.conn, fdwire.StatusFailure, "fdrecv ended without taking this message: "+fatal.Error())
			fmt.Fprintf(stderr, "fdrecv: dropped a connection: pid %d sent its message as fdrecv was ending\n", m.cred.PID)
		case peerGone(m.conn):
			// The sender gave up (its -timeout, say) while its message
			// waited here: it has reported a failure, so its descriptors
			// must not be used.
			closeAll(m.fds)
			m.conn.Close()
			fmt.Fprintf(stderr, "fdrecv: dropped a connection: pid %d hung up after sending, before its message was taken\n", m.cred.PID)
		default:
			if err := check(cfg, m); err != nil {
				closeAll(m.fds)
				hangUp(m.conn)
				fatal = err
			} else {
				won = m
			}
			cancel()
		}
	}
	if fatal != nil {
		if won != nil {
			closeAll(won.fds)
			won.conn.Close()
		}
		return nil, fatal
	}
	if won == nil {
		return nil, interrupted(outer, cfg, nil)
	}
	return won, nil
}

// check decodes m's message into m.names and m.payload and checks it
// against the descriptors that came with it and -n. On failure it has
// told the sender why, in the sender's own version's layout for a version
// mismatch (so that it can tell why), and returns the failure.
func check(cfg *config, m *message) error {
	names, payload, err := fdwire.DecodeMessage(m.msg)
	nfds := len(m.fds)
	switch {
	case err != nil:
		e := &fdwire.ExitError{Code: fdwire.StatusProtocol, Err: err}
		if errors.Is(err, fdwire.ErrVersion) {
			replyBytes(m.conn, fdwire.EncodeRefusal(fdwire.MessageVersion(m.msg), e.Code, e.Error()))
			return e
		}
		err = e
	case len(names) != nfds:
		err = fail(fdwire.StatusCount, "the message names %d descriptors but %d arrived", len(names), nfds)
	case cfg.n > 0 && nfds != cfg.n:
		err = fail(fdwire.StatusCount, "received %d descriptors, want %d (-n)", nfds, cfg.n)
	default:
		m.names, m.payload = names, payload
		return nil
	}
	reply(m.conn, err.(*fdwire.ExitError).Code, err.Error())
	return err
}

// interrupted maps the end of ctx to fdrecv's exit status, or returns err.
func interrupted(ctx context.Context, cfg *config, err error) error {
	switch ctx.Err() {
	case context.DeadlineExceeded:
		return fail(fdwire.StatusTimeout, "nothing received within %v", cfg.timeout)
	case context.Canceled:
		return fail(fdwire.StatusFailure, "interrupted")
	}
	if err == nil {
		err = fail(fdwire.StatusFailure, "interrupted")
	}
	return err
}

// acceptLoop accepts until ctx ends or Accept fails, refuses disallowed
// peers inline, and starts a reader for each allowed one, maxPending
// reading at once, the others waiting for a slot without holding up the
// next accept; beyond maxAccepted it refuses. It sends a note for each
// connection it drops itself, and errAcceptEnded or the Accept failure
// last; each reader sends one result.
func acceptLoop(ctx context.Context, cfg *config, ln *sockfile.Listener, wg *sync.WaitGroup, results chan<- *message) {
	slots := make(chan struct{}, maxPending)
	accepted := make(chan struct{}, maxAccepted)
	turn := make(chan struct{}) // closed: the first reader's turn
	close(turn)
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil {
				err = fail(fdwire.StatusFailure, "%w", err)
			} else {
				err = errAcceptEnded
			}
			results <- &message{err: err}
			return
		}
		// A16: the peer is judged by the credentials the kernel recorded
		// at connect time, before a byte of its message is read.
		cred, err := scmrights.PeerCred(c)
		if err != nil {
			c.Close()
			results <- &message{err: &dropError{err}}
			continue
		}
		if !cfg.allowUIDs.Allows(cred.UID) {
			err := fail(fdwire.StatusPermission, "sender pid %d runs as uid %d; allowed: %s", cred.PID, cred.UID, cfg.allowUIDs.Allowed())
			refuse(c, fdwire.StatusPermission, err.Error())
			results <- &message{err: &dropError{err}}
			continue
		}
		select {
		case accepted <- struct{}{}:
		default:
			err := fail(fdwire.StatusFailure, "sender pid %d not read: %d connections already wait to be read", cred.PID, maxAccepted)
			refuse(c, fdwire.StatusFailure, err.Error())
			results <- &message{err: &dropError{err}}
			continue
		}
		// Slots go in accept order: each reader waits for the one
		// accepted before it to hold a slot (turn), so a later sender
		// never overtakes one that waits.
		prev, mine := turn, make(chan struct{})
		turn = mine
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-accepted }()
			if !takeSlot(ctx, prev, slots) {
				close(mine)
				c.Close()
				results <- &message{err: &dropError{fmt.Errorf("pid %d was not read: fdrecv stopped reading", cred.PID)}}
				return
			}
			close(mine)
			defer func() { <-slots }()
			results <- readOne(ctx, c, cred)
		}()
	}
}

// takeSlot waits for prev (the previous reader has its slot, or gave up)
// and then for a free slot; false if ctx ended first. A free slot is taken
// even if ctx has ended: readOne then drops the connection the usual way.
func takeSlot(ctx context.Context, prev <-chan struct{}, slots chan<- struct{}) bool {
	select {
	case <-prev:
	case <-ctx.Done():
	}
	select {
	case slots <- struct{}{}:
		return true
	default:
	}
	select {
	case slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// dropError marks a connection fdrecv drops to accept the next one.
type dropError struct{ err error }

func (e *dropError) Error() string { return e.err.Error() }

// readOne receives the message of an allowed peer. Unless it returns a
// message, it has closed c.
func readOne(ctx context.Context, c *net.UnixConn, cred scmrights.Ucred) *message {
	d := time.Now().Add(connReadTimeout)
	if err := c.SetReadDeadline(d); err != nil {
		c.Close()
		return &message{err: &dropError{err}}
	}
	// A zero-length record reads as 0 bytes, as the end of file does.
	// With SO_PASSCRED every record, empty or not, comes with
	// SCM_CREDENTIALS (also one queued before the option was set: the
	// kernel decides as it is read), the end of file with no control data,
	// so RecvMsg's HasCred tells them apart exactly.
	sc, err := scmrights.NewConn(c)
	if err == nil {
		err = sc.SetPassCred(true)
	}
	if err != nil {
		c.Close()
		return &message{err: &dropError{fmt.Errorf("pid %d: %w", cred.PID, err)}}
	}
	// Registered after the deadline above, so that it cannot overwrite
	// this one: ctx ends when another message won or fdrecv gives up.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(longAgo) })
	m := scmrights.Message{Payload: make([]byte, fdwire.MaxMessage+1), FDs: make([]int, scmrights.MaxFDs)}
	err = sc.RecvMsg(&m)
	stop()
	if err == nil && m.N > 0 {
		return &message{conn: c, cred: cred, msg: m.Payload[:m.N], fds: m.FDs[:m.NFDs]}
	}
	var rerr *fdwire.ExitError
	switch {
	case err == nil, err == io.EOF && m.HasCred:
		// A zero-length record, with or without descriptors, is
		// malformed input like any other.
		closeAll(m.FDs[:m.NFDs])
		rerr = fail(fdwire.StatusProtocol, "%w: an empty record", fdwire.ErrProtocol).(*fdwire.ExitError)
	case ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded):
		c.Close()
		return &message{err: &dropError{fmt.Errorf("pid %d had sent nothing when fdrecv stopped reading", cred.PID)}}
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.Close()
		return &message{err: &dropError{fmt.Errorf("pid %d sent nothing within %v", cred.PID, connReadTimeout)}}
	case err == io.EOF:
		c.Close()
		return &message{err: &dropError{fmt.Errorf("pid %d closed the connection without sending", cred.PID)}}
	case errors.Is(err, scmrights.ErrTruncated):
		rerr = &fdwire.ExitError{Code: fdwire.StatusTruncated, Err: fmt.Errorf("control data truncated, all received descriptors closed: %w", err)}
	case errors.Is(err, scmrights.ErrPayloadTruncated):
		rerr = fail(fdwire.StatusProtocol, "%w: larger than %d bytes", fdwire.ErrProtocol, fdwire.MaxMessage).(*fdwire.ExitError)
	default:
		c.Close()
		return &message{err: &dropError{fmt.Errorf("pid %d: %w", cred.PID, err)}}
	}
	// One connection's failure (a truncation may also come from fdrecv's
	// own descriptor limit): that sender gets the status, and fdrecv goes
	// on accepting, the connections read meanwhile unaffected. The peer
	// may have sent more records after this one: refuse discards them, so
	// the status is not lost to ECONNRESET.
	refuse(c, rerr.Code, rerr.Error())
	return &message{err: &dropError{fmt.Errorf("pid %d: %w", cred.PID, rerr)}}
}

// refuse tells a peer its verdict (status, text) and closes the
// connection without waiting for it (see hangUp). The verdict is sent
// with MSG_DONTWAIT: fdrecv has sent nothing else on the connection, so
// the peer's queue has room, and a peer cannot make this wait.
func refuse(c *net.UnixConn, status int, text string) {
	defer hangUp(c)
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		// MSG_NOSIGNAL: a peer gone already is EPIPE, not SIGPIPE.
		_ = unix.Sendto(int(fd), fdwire.EncodeReply(status, text), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, nil)
	})
}

// hangUp closes a connection whose peer has been sent its verdict, so
// that the peer reads it. Closing a unix socket whose receive queue holds
// a message makes the kernel report ECONNRESET to the peer
// (unix_release_sock), and the peer's next read returns that error before
// anything queued for it, the verdict included; fdsend sends right after
// connecting, and a broken peer may send more after the record that got
// it dropped, so that queue is often not empty. shutdown SHUT_RD makes the
// kernel refuse (EPIPE) whatever the peer sends from then on, so once the
// messages already queued are discarded the queue stays empty, and the
// peer reads the verdict, then end of file. The discarded messages are
// read with room for credentials only: their descriptors are never
// installed here, the kernel drops them with the message (MSG_CTRUNC,
// scm_detach_fds).
//
// Once SHUT_RD is in effect, a read of the empty queue returns 0, as a
// zero-length record does (unix_dgram_recvmsg turns EAGAIN into end of
// file), so SO_PASSCRED tells them apart: every record, empty or not,
// comes with SCM_CREDENTIALS, the end of the queue with no control data.
func hangUp(c *net.UnixConn) {
	defer c.Close()
	stopReading(c)
}

// stopReading is hangUp without the close: from then on the connection
// only carries replies, and closing it, here or at an execve, costs the
// peer none of them.
func stopReading(c *net.UnixConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		s := int(fd)
		if err := unix.Shutdown(s, unix.SHUT_RD); err != nil {
			return
		}
		if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
			return
		}
		// The queue is bounded by the peer's send buffer when SHUT_RD
		// takes effect (a few hundred records at most); the bound only
		// guards against a kernel that reports otherwise.
		var b [1]byte
		oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
		for range 4096 {
			_, oobn, _, _, err := unix.Recvmsg(s, b[:], oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
			if err != nil || oobn == 0 {
				return
			}
			// Only credentials fit, but should a kernel install
			// descriptors anyway, they are not kept.
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if fds, err := unix.ParseUnixRights(&m); err == nil {
						closeAll(fds)
					}
				}
			}
		}
	})
}

// peerGone reports whether the peer of c has closed its end, so that no
// reply can reach it: POLLHUP, which the kernel reports once both
// directions are shut down (unix_dgram_poll), as they are when the peer
// closes. A peer that only shut down its writing side still reads replies
// and is not gone.
func peerGone(c *net.UnixConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	gone := false
	cerr := rc.Control(func(fd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(fd)}}
		for range 100 {
			_, err := unix.Poll(pfd, 0)
			if err != unix.EINTR {
				gone = err != nil || pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
				return
			}
		}
		gone = true
	})
	return gone || cerr != nil
}

// reply tells the sender the outcome; a sender that went away is no error
// worth reporting over the real one.
func reply(c *net.UnixConn, status int, text string) error {
	return replyBytes(c, fdwire.EncodeReply(status, text))
}

func replyBytes(c *net.UnixConn, b []byte) error {
	if err := c.SetWriteDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	_, err := c.Write(b)
	return err
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// fdInfo describes one received descriptor.
type fdInfo struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
	// Kind is "file", "directory", "pipe", "fifo", "char device",
	// "block device", "socket" or "other".
	Kind string `json:"kind"`
	// Path is the file's path (readlink of /proc/self/fd/N).
	Path string `json:"path,omitempty"`
	// Network is "tcp", "udp", "unix", "unixgram" or "unixpacket" for
	// sockets, or "family F type T" for others.
	Network string `json:"network,omitempty"`
	// Role is "listener", "connection" or "unconnected" for sockets.
	Role   string `json:"role,omitempty"`
	Local  string `json:"local,omitempty"`
	Remote string `json:"remote,omitempty"`
}

func (fi fdInfo) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s: ", fi.Index, fi.Name)
	if fi.Kind != "socket" {
		b.WriteString(fi.Kind)
		if fi.Path != "" {
			b.WriteString(" " + quoteOdd(fi.Path))
		}
		return b.String()
	}
	b.WriteString(fi.Network + " " + fi.Role)
	if fi.Local != "" {
		b.WriteString(" " + quoteOdd(fi.Local))
	}
	if fi.Remote != "" {
		b.WriteString(" -> " + quoteOdd(fi.Remote))
	}
	return b.String()
}

// quoteOdd returns s Go-quoted if it holds anything but printable UTF-8
// (strconv.IsPrint: no newline, escape, other control or format
// character), or starts with a double quote, which would make it look
// quoted; otherwise as is. Paths and unix socket addresses come from the
// sender: printed raw, a newline or a terminal escape in one could forge
// report lines.
func quoteOdd(s string) string {
	if !utf8.ValidString(s) || strings.HasPrefix(s, `"`) || strings.IndexFunc(s, func(r rune) bool { return !strconv.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

func describe(fd int) fdInfo {
	link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fdInfo{Kind: "other", Path: link}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return fdInfo{Kind: "file", Path: link}
	case unix.S_IFDIR:
		return fdInfo{Kind: "directory", Path: link}
	case unix.S_IFIFO:
		if strings.HasPrefix(link, "pipe:") {
			return fdInfo{Kind: "pipe", Path: link}
		}
		return fdInfo{Kind: "fifo", Path: link}
	case unix.S_IFCHR:
		return fdInfo{Kind: "char device", Path: link}
	case unix.S_IFBLK:
		return fdInfo{Kind: "block device", Path: link}
	case unix.S_IFSOCK:
		return describeSocket(fd)
	}
	return fdInfo{Kind: "other", Path: link}
}

func describeSocket(fd int) fdInfo {
	fi := fdInfo{Kind: "socket"}
	family, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	sotype, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	listening, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	switch {
	case (family == unix.AF_INET || family == unix.AF_INET6) && sotype == unix.SOCK_STREAM:
		fi.Network = "tcp"
	case (family == unix.AF_INET || family == unix.AF_INET6) && sotype == unix.SOCK_DGRAM:
		fi.Network = "udp"
	case family == unix.AF_UNIX && sotype == unix.SOCK_STREAM:
		fi.Network = "unix"
	case family == unix.AF_UNIX && sotype == unix.SOCK_DGRAM:
		fi.Network = "unixgram"
	case family == unix.AF_UNIX && sotype == unix.SOCK_SEQPACKET:
		fi.Network = "unixpacket"
	default:
		fi.Network = fmt.Sprintf("family %d type %d", family, sotype)
	}
	if sa, err := unix.Getsockname(fd); err == nil {
		fi.Local = sockaddrString(sa)
	}
	sa, perr := unix.Getpeername(fd)
	if family == unix.AF_UNIX {
		// x/sys shows an unnamed unix socket as "@", like an abstract one
		// named "": only the raw address length tells them apart.
		fi.Local, _ = unixName(unix.SYS_GETSOCKNAME, fd)
		if perr == nil {
			fi.Remote, perr = unixName(unix.SYS_GETPEERNAME, fd)
		}
	}
	switch {
	case listening != 0:
		fi.Role = "listener"
	case perr == nil:
		fi.Role = "connection"
		if family != unix.AF_UNIX {
			fi.Remote = sockaddrString(sa)
		}
	default:
		fi.Role = "unconnected"
	}
	return fi
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return (&net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}).String()
	case *unix.SockaddrInet6:
		a := &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				a.Zone = ifi.Name
			}
		}
		return a.String()
	}
	return ""
}

// unixName returns a unix socket's own (SYS_GETSOCKNAME) or peer's
// (SYS_GETPEERNAME) address: "(unnamed)" when the kernel returns no path
// at all (a socketpair, an unbound socket), "@name" for an abstract
// address, otherwise the path.
func unixName(trap uintptr, fd int) (string, error) {
	var rsa unix.RawSockaddrUnix
	l := uint32(unsafe.Sizeof(rsa))
	_, _, e := unix.Syscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)))
	if e != 0 {
		return "", e
	}
	off := uint32(unsafe.Offsetof(rsa.Path))
	if l <= off {
		return "(unnamed)", nil
	}
	n := int(min(l-off, uint32(len(rsa.Path))))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rsa.Path[i])
	}
	if p[0] == 0 {
		// Abstract: every byte of the given length is the name.
		return "@" + string(p[1:]), nil
	}
	if i := strings.IndexByte(string(p), 0); i >= 0 {
		p = p[:i]
	}
	return string(p), nil
}

// report is what -json prints.
type report struct {
	Version int      `json:"version"`
	Sender  sender   `json:"sender"`
	FDs     []fdInfo `json:"fds"`
	Payload string   `json:"payload"`
}

type sender struct {
	PID int `json:"pid"`
	UID int `json:"uid"`
	GID int `json:"gid"`
}

func writeReport(w io.Writer, asJSON bool, cred scmrights.Ucred, infos []fdInfo, payload []byte) error {
	if asJSON {
		enc := json.NewEncoder(w)
		return enc.Encode(report{
			Version: 1,
			Sender:  sender{PID: cred.PID, UID: cred.UID, GID: cred.GID},
			FDs:     infos,
			Payload: string(payload),
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sender: pid %d uid %d gid %d\n", cred.PID, cred.UID, cred.GID)
	for _, fi := range infos {
		b.WriteString(fi.String() + "\n")
	}
	fmt.Fprintf(&b, "payload: %q\n", payload)
	_, err := io.WriteString(w, b.String())
	return err
}

// Exec hand-off, stage 1 (this process) and stage 2 (a fresh image of this
// binary, see init). Stage 1 leaves exactly the received descriptors, the
// reply channel and any parked standard descriptors (see parkedStdio)
// inheritable; stage 2 moves the received ones to 3, 4, ... before any
// runtime descriptor exists there, puts the parked ones back, and execs
// PROGRAM.
const (
	shimArg0       = "fdrecv-exec"
	shimEnv        = "HANDOFF_FDRECV_EXEC_FDS"
	shimReplyEnv   = "HANDOFF_FDRECV_REPLY_FD"
	shimGodebugEnv = "HANDOFF_FDRECV_GODEBUG" // "0": unset; "1"+value: GODEBUG=value
	shimStdioEnv   = "HANDOFF_FDRECV_STDIO"   // parked standard descriptors, see parkedStdio
)

func execWith(conn *net.UnixConn, path string, argv, names []string, fds []int) error {
	replyFD, err := scmrights.Dup(conn)
	if err != nil {
		return fail(fdwire.StatusExec, "%w", err)
	}
	defer unix.Close(replyFD) // reached only if the re-exec failed
	// Everything above 2 becomes close-on-exec first (descriptors fdrecv
	// itself inherited must not reach PROGRAM), then the received ones and
	// the reply channel are made inheritable.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		if err := cloexecAll(); err != nil {
			return fail(fdwire.StatusExec, "mark descriptors close-on-exec: %w", err)
		}
	}
	list := make([]string, len(fds))
	for i, fd := range append(fds, replyFD) {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fail(fdwire.StatusExec, "%w", os.NewSyscallError("fcntl", err))
		}
		if i < len(fds) {
			list[i] = strconv.Itoa(fd)
		}
	}
	env := withoutVars(os.Environ(), "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", shimEnv, shimReplyEnv, shimGodebugEnv, shimStdioEnv, "GODEBUG")
	env = append(env,
		"LISTEN_PID="+strconv.Itoa(os.Getpid()),
		"LISTEN_FDS="+strconv.Itoa(len(fds)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		shimEnv+"="+strings.Join(list, ","),
		shimReplyEnv+"="+strconv.Itoa(replyFD),
	)
	// Since Go 1.25 the runtime keeps a cgroup CPU-limit file open for the
	// process lifetime, usually at descriptor 3. containermaxprocs=0 makes
	// the stage 2 runtime close it during start-up; stage 2 restores the
	// caller's GODEBUG (the last setting of a key wins) for PROGRAM.
	if g, ok := os.LookupEnv("GODEBUG"); ok {
		env = append(env, shimGodebugEnv+"=1"+g, "GODEBUG="+g+",containermaxprocs=0")
	} else {
		env = append(env, shimGodebugEnv+"=0", "GODEBUG=containermaxprocs=0")
	}
	// From here until execve returns, os.Stdin, os.Stdout and os.Stderr may
	// refer to placeholders: nothing may print.
	parked, err := parkStdio()
	if err != nil {
		return fail(fdwire.StatusExec, "%w", err)
	}
	env = append(env, shimStdioEnv+"="+parked.String())
	err = unix.Exec("/proc/self/exe", append([]string{shimArg0, path}, argv...), env)
	// The caller prints this error on stderr: the real one again.
	parked.unpark()
	return fail(fdwire.StatusExec, "re-exec /proc/self/exe: %w", os.NewSyscallError("execve", err))
}

// parkedStdio says, for each standard descriptor 0, 1, 2, where the
// original is parked while a blocking placeholder holds its slot, or -1.
//
// Why: os's package initialisation wraps 0, 1 and 2 with os.NewFile, which
// registers a non-blocking descriptor with the netpoller, so a stage 2
// image started with a non-blocking standard descriptor would create its
// epoll and eventfd at 3 and 4 before its init could run, right where the
// received descriptors must go. O_NONBLOCK itself must stay as it is: it
// belongs to the open file description, which the caller shares (a
// terminal, a pipe to Node.js), so it is never cleared, only moved aside.
//
// Encoded for stage 2 (shimStdioEnv) as "SLOT=FD" items joined by ",", in
// ascending slot order, each number in canonical decimal: "" (nothing
// parked), "0=9", "0=9,2=10".
type parkedStdio [3]int

var noneParked = parkedStdio{-1, -1, -1}

// parkStdio parks each standard descriptor in non-blocking mode at a
// descriptor above 2, inheritable, and puts a blocking /dev/null (O_RDWR,
// inheritable) in its slot. On failure nothing stays parked.
func parkStdio() (parkedStdio, error) {
	p := noneParked
	null := -1
	defer func() {
		if null >= 0 {
			unix.Close(null)
		}
	}()
	for slot := range p {
		fl, err := unix.FcntlInt(uintptr(slot), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK == 0 {
			continue
		}
		if null < 0 {
			fd, err := unix.Open(os.DevNull, unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				p.unpark()
				return noneParked, fmt.Errorf("park non-blocking descriptor %d: %w", slot, &os.PathError{Op: "open", Path: os.DevNull, Err: err})
			}
			null = fd
		}
		// F_DUPFD, not F_DUPFD_CLOEXEC: stage 2 must inherit it.
		saved, err := unix.FcntlInt(uintptr(slot), unix.F_DUPFD, 3)
		if err != nil {
			p.unpark()
			return noneParked, fmt.Errorf("park non-blocking descriptor %d: %w", slot, os.NewSyscallError("fcntl", err))
		}
		p[slot] = saved
		if err := unix.Dup3(null, slot, 0); err != nil {
			p.unpark()
			return noneParked, fmt.Errorf("park non-blocking descriptor %d: %w", slot, os.NewSyscallError("dup3", err))
		}
	}
	return p, nil
}

// unpark puts every parked descriptor back in its slot and closes the
// parked copy (stage 1, after a failed re-exec).
func (p *parkedStdio) unpark() {
	p.restore()
	for slot, fd := range p {
		if fd >= 0 {
			unix.Close(fd)
			p[slot] = -1
		}
	}
}

// restore puts every parked descriptor back in its slot, with dup3 (no
// flags: inheritable), keeping the parked copy. The slot's placeholder is
// closed by dup3 itself; the original description, flags included, is
// the caller's again.
func (p *parkedStdio) restore() error {
	var first error
	for slot, fd := range p {
		if fd < 0 {
			continue
		}
		if err := unix.Dup3(fd, slot, 0); err != nil && first == nil {
			first = os.NewSyscallError("dup3", err)
		}
	}
	return first
}

func (p parkedStdio) String() string {
	var items []string
	for slot, fd := range p {
		if fd >= 0 {
			items = append(items, strconv.Itoa(slot)+"="+strconv.Itoa(fd))
		}
	}
	return strings.Join(items, ",")
}

// parseParkedStdio decodes the shimStdioEnv value strictly: numbers from
// anywhere else must never be dup3'ed onto 0, 1 or 2. Items in ascending
// slot order, slots 0 to 2, descriptors above 2, canonical decimal, no
// descriptor twice: exactly one encoding for each value, the one String
// produces.
func parseParkedStdio(s string) (parkedStdio, error) {
	p := noneParked
	if s == "" {
		return p, nil
	}
	bad := fmt.Errorf("bad %s=%q", shimStdioEnv, s)
	last := -1
	for _, item := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(item, "=")
		if !ok || len(k) != 1 || k[0] < '0' || k[0] > '2' {
			return noneParked, bad
		}
		slot := int(k[0] - '0')
		fd, err := strconv.Atoi(v)
		if err != nil || fd < 3 || fd > maxFD || strconv.Itoa(fd) != v || slot <= last {
			return noneParked, bad
		}
		for _, other := range p {
			if other == fd {
				return noneParked, bad
			}
		}
		p[slot], last = fd, slot
	}
	return p, nil
}

// maxFD bounds descriptor numbers read from the environment: descriptors
// are C ints.
const maxFD = 1<<31 - 1

// cloexecAll is close_range(CLOSE_RANGE_CLOEXEC) for kernels before 5.11.
func cloexecAll() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		// The directory's own descriptor is gone by now: EBADF is fine.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return os.NewSyscallError("fcntl", err)
		}
	}
	return nil
}

func withoutVars(env []string, names ...string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, n := range names {
			if k == n {
				drop = true
				break
			}
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// init runs stage 2 when this binary was re-executed by execWith. It uses
// raw system calls only: an os.File or net call here could create the
// netpoller's descriptors, possibly at 3, 4, ...
func init() {
	if len(os.Args) < 3 || os.Args[0] != shimArg0 {
		return
	}
	spec, ok := os.LookupEnv(shimEnv)
	if !ok {
		return
	}
	replyFD := -1
	if v, err := strconv.Atoi(os.Getenv(shimReplyEnv)); err == nil && v > 2 {
		replyFD = v
	}
	parked := noneParked
	err := shim(spec, &replyFD, &parked, os.Args[1], os.Args[2:])
	// Before anything is printed: stderr may be a placeholder until then.
	// parked is set only once validated, so nothing from a malformed
	// environment is ever dup3'ed onto 0, 1 or 2.
	parked.restore()
	if errors.Is(err, errNotPlaced) {
		// The received descriptors close with this process.
		fmt.Fprintf(os.Stderr, "fdrecv: %v; %s not run, the descriptors closed\n", err, os.Args[1])
		os.Exit(fdwire.StatusFailure)
	}
	msg := fmt.Sprintf("exec %s: %v", os.Args[1], err)
	if replyFD >= 0 {
		sendReply(replyFD, fdwire.StatusExec, msg)
	}
	fmt.Fprintf(os.Stderr, "fdrecv: %s\n", msg)
	os.Exit(fdwire.StatusExec)
}

// errNotPlaced: the "placed" reply could not be delivered, so the sender
// will not report success and PROGRAM must not run.
var errNotPlaced = errors.New("could not tell the sender the descriptors were placed")

// replyRetry bounds how long stage 2 retries a reply while the sender is
// still connected but the send fails for want of room.
const replyRetry = 5 * time.Second

// sendReply writes a reply with a raw send: no netpoller in stage 2. The
// channel is non-blocking (it shares stage 1's socket description), so a
// full queue is EAGAIN rather than a wait. MSG_NOSIGNAL: a sender that went
// away is EPIPE, not SIGPIPE. EAGAIN (the sender's receive queue full),
// ENOBUFS and ENOMEM (the kernel short of memory) leave the sender
// connected and waiting, so the send is retried, after poll reports room
// or a short pause, for up to replyRetry; the last error is returned as a
// *os.SyscallError.
func sendReply(fd, status int, text string) error {
	deadline := time.Now().Add(replyRetry)
	for try := 0; ; try++ {
		err := unix.Sendto(fd, fdwire.EncodeReply(status, text), unix.MSG_NOSIGNAL, nil)
		switch err {
		case nil:
			return nil
		case unix.EINTR, unix.EAGAIN, unix.ENOBUFS, unix.ENOMEM:
		default:
			return os.NewSyscallError("sendto", err)
		}
		left := time.Until(deadline)
		if left <= 0 || try >= 1000 {
			return os.NewSyscallError("sendto", err)
		}
		switch err {
		case unix.EAGAIN:
			// EINTR, a timeout or POLLHUP all lead to another send,
			// which tells.
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			unix.Poll(pfd, int(min(left, time.Second)/time.Millisecond)+1)
		case unix.ENOBUFS, unix.ENOMEM:
			// poll says nothing about memory: wait a little.
			time.Sleep(min(left, 10*time.Millisecond))
		}
	}
}

// sendPlaced sends "placed" on fd. Only EPIPE, ECONNRESET and ENOTCONN
// mean the sender is gone (errNotPlaced: it reports a failure itself).
// Any other failure, after sendReply's retries, is returned as is: init
// then tries to send the sender status 10 and exits 10. Whether or not
// that reply gets through, the sender never reads success, which takes
// "placed" and then end of file.
func sendPlaced(fd int) error {
	err := sendReply(fd, fdwire.StatusOK, "")
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPIPE), errors.Is(err, unix.ECONNRESET), errors.Is(err, unix.ENOTCONN):
		return fmt.Errorf("%w: %w", errNotPlaced, err)
	}
	return fmt.Errorf("send the placed reply: %w", err)
}

// shim places fds at 3, 4, ..., puts the standard descriptors stage 1
// parked back in their slots, tells the sender (on *replyFD, or -1) that
// the descriptors are in place, and execs path. It returns only on
// failure, with *replyFD and *parked updated to where the reply channel
// and the parked descriptors are now (*parked stays noneParked unless
// shimStdioEnv was valid).
func shim(spec string, replyFD *int, parked *parkedStdio, path string, argv []string) error {
	var fds []int
	if spec != "" {
		for _, s := range strings.Split(spec, ",") {
			fd, err := strconv.Atoi(s)
			if err != nil || fd < 0 || len(fds) >= fdwire.MaxNames {
				return fmt.Errorf("bad %s=%q", shimEnv, spec)
			}
			fds = append(fds, fd)
		}
	}
	n := len(fds)
	ours := func(fd int) bool {
		for _, f := range fds {
			if f == fd {
				return true
			}
		}
		for _, f := range parked {
			if f == fd {
				return true
			}
		}
		return fd == *replyFD
	}
	stdioSpec, ok := os.LookupEnv(shimStdioEnv)
	if !ok {
		return fmt.Errorf("%s not set", shimStdioEnv)
	}
	p, err := parseParkedStdio(stdioSpec)
	if err != nil {
		return err
	}
	for _, fd := range p {
		if fd < 0 {
			continue
		}
		if ours(fd) {
			return fmt.Errorf("bad %s=%q: descriptor %d is also received or the reply channel", shimStdioEnv, stdioSpec, fd)
		}
		// Stage 1 parks with F_DUPFD: a parked descriptor came through
		// execve, so it is open and not close-on-exec. Anything this
		// image's runtime opened is close-on-exec.
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC != 0 {
			return fmt.Errorf("bad %s=%q: descriptor %d was not inherited", shimStdioEnv, stdioSpec, fd)
		}
	}
	*parked = p
	// A target slot held by anything but a descriptor of ours belongs to
	// this image's runtime (it opened it before init): overwriting it could
	// crash the runtime before execve, so refuse.
	for t := 3; t < 3+n; t++ {
		if _, err := unix.FcntlInt(uintptr(t), unix.F_GETFD, 0); err == nil && !ours(t) {
			l, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(t))
			return fmt.Errorf("descriptor %d (%s) is in use, cannot place received descriptors at 3..%d", t, l, 2+n)
		}
	}
	// Move every received descriptor, the reply channel and the parked
	// standard descriptors above the target range first, so no dup3 below
	// overwrites one not yet placed. The moved copies are close-on-exec.
	moveUp := func(fd int) (int, error) {
		m, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3+n)
		if err != nil {
			return -1, os.NewSyscallError("fcntl", err)
		}
		unix.Close(fd)
		return m, nil
	}
	if *replyFD >= 0 {
		m, err := moveUp(*replyFD)
		if err != nil {
			return err
		}
		*replyFD = m
	}
	for slot, fd := range parked {
		if fd < 0 {
			continue
		}
		m, err := moveUp(fd)
		if err != nil {
			return err
		}
		parked[slot] = m
	}
	moved := make([]int, n)
	for i, fd := range fds {
		m, err := moveUp(fd)
		if err != nil {
			return err
		}
		moved[i] = m
	}
	for i, m := range moved {
		// dup3 with no flags: the copy at 3+i is inheritable, the only
		// descriptors above 2 that are.
		if err := unix.Dup3(m, 3+i, 0); err != nil {
			return os.NewSyscallError("dup3", err)
		}
		unix.Close(m)
	}
	env := withoutVars(os.Environ(), shimEnv, shimReplyEnv, shimGodebugEnv, shimStdioEnv, "GODEBUG")
	if g := os.Getenv(shimGodebugEnv); strings.HasPrefix(g, "1") {
		env = append(env, "GODEBUG="+g[1:])
	}
	// PROGRAM gets the caller's own standard descriptors, O_NONBLOCK as
	// the caller left it; the parked copies close at execve.
	if err := parked.restore(); err != nil {
		return err
	}
	if *replyFD >= 0 {
		// "Placed". The channel stays open, close-on-exec (moveUp): a
		// successful execve closes it, which the sender reads as end of
		// file, its success; if execve fails (a #! interpreter missing,
		// another architecture, PROGRAM gone since LookPath) the caller
		// writes the failure on it instead. A sender that can no longer
		// take "placed" (it hung up: its -timeout, a kill) reports a
		// failure and its old server keeps serving, so PROGRAM must not
		// run: the commit point is this send succeeding.
		if err := sendPlaced(*replyFD); err != nil {
			return err
		}
	}
	return unix.Exec(path, argv, env)
}
