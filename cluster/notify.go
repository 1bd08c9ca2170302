package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/handoff-go/handoff/scmrights"
)

// The sd_notify(3) protocol: a datagram of newline-separated VAR=VALUE
// assignments sent to the unix socket named by NOTIFY_SOCKET (a path, or an
// abstract name written with a leading '@').

const (
	envNotifySocket = "NOTIFY_SOCKET"
	// maxNotify bounds one notification. systemd accepts up to 4096 bytes
	// of state per message; a longer datagram is refused as a whole.
	maxNotify = 4096
)

// ErrNotify reports a notification that is not a valid sd_notify message.
var ErrNotify = errors.New("cluster: malformed sd_notify message")

// Notification is what one sd_notify message said. Fields not mentioned in
// the message keep their zero value.
type Notification struct {
	Ready     bool   // READY=1
	Reloading bool   // RELOADING=1
	Stopping  bool   // STOPPING=1
	Watchdog  bool   // WATCHDOG=1
	Status    string // STATUS=...
	Errno     int    // ERRNO=...
	MainPID   int    // MAINPID=...
}

// fieldErrors summarises the fields of one message that were ignored as
// malformed: how many, and the first one's error (wrapping ErrNotify).
type fieldErrors struct {
	Count int
	First error
}

func (f *fieldErrors) add(err error) {
	if f.Count == 0 {
		f.First = err
	}
	f.Count++
}

// parseNotify decodes one sd_notify datagram field by field, as systemd
// does: unknown variables are ignored, and a malformed field (a line
// without '=', a variable set to a value outside its domain) is skipped and
// counted in bad while the valid fields are kept, so one bad STATUS never
// loses the READY=1 next to it. Only a message over maxNotify bytes is
// refused as a whole, with an error wrapping ErrNotify.
func parseNotify(b []byte) (n Notification, bad fieldErrors, err error) {
	if len(b) > maxNotify {
		return n, bad, fmt.Errorf("%w: %d bytes, over %d", ErrNotify, len(b), maxNotify)
	}
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if len(line) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(line, []byte{'='})
		if !ok || len(k) == 0 {
			bad.add(fmt.Errorf("%w: line %q has no assignment", ErrNotify, truncate(line)))
			continue
		}
		switch string(k) {
		case "READY", "RELOADING", "STOPPING", "WATCHDOG":
			if string(v) != "1" {
				// WATCHDOG=trigger is systemd's "fail now"; it is treated
				// as no keep-alive rather than guessed at.
				if string(k) != "WATCHDOG" || string(v) != "trigger" {
					bad.add(fmt.Errorf("%w: %s=%q", ErrNotify, k, truncate(v)))
				}
				continue
			}
			switch string(k) {
			case "READY":
				n.Ready = true
			case "RELOADING":
				n.Reloading = true
			case "STOPPING":
				n.Stopping = true
			case "WATCHDOG":
				n.Watchdog = true
			}
		case "STATUS":
			if !utf8Printable(v) {
				bad.add(fmt.Errorf("%w: STATUS is not printable text", ErrNotify))
				continue
			}
			n.Status = string(v)
		case "ERRNO":
			e, err := strconv.Atoi(string(v))
			if err != nil || e < 0 {
				bad.add(fmt.Errorf("%w: ERRNO=%q", ErrNotify, truncate(v)))
				continue
			}
			n.Errno = e
		case "MAINPID":
			p, err := strconv.Atoi(string(v))
			if err != nil || p <= 0 {
				bad.add(fmt.Errorf("%w: MAINPID=%q", ErrNotify, truncate(v)))
				continue
			}
			n.MainPID = p
		}
	}
	return n, bad, nil
}

func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// utf8Printable reports whether b is valid UTF-8 without control
// characters other than tab: a STATUS is shown to operators verbatim.
func utf8Printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return false
		}
	}
	return true
}

// notifyManager reports state to our own service manager's
// NOTIFY_SOCKET, socket (none: nothing to do), logging a failure.
func notifyManager(log *slog.Logger, socket, state string) {
	if err := sdNotify(socket, state); err != nil {
		log.Warn("sd_notify", "state", state, "err", err)
	}
}

// sdNotify sends state to the socket named by addr (the value of
// NOTIFY_SOCKET). An empty addr is a no-op, as in sd_notify(3).
func sdNotify(addr, state string) error {
	if addr == "" {
		return nil
	}
	if addr[0] != '/' && addr[0] != '@' {
		return fmt.Errorf("%s=%q: not an absolute path or abstract name", envNotifySocket, addr)
	}
	name := addr
	if addr[0] == '@' {
		name = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write([]byte(state))
	return err
}

// notifySocket is one NOTIFY_SOCKET endpoint of the master: a datagram
// socket with SO_PASSCRED, so every notification carries the sender's pid
// and uid as the kernel saw them.
type notifySocket struct {
	conn *scmrights.Conn
	path string
	msg  scmrights.Message
}

// listenNotify binds a notification socket at path, which should be in a
// directory only the master (and its workers' users) can reach.
func listenNotify(path string) (*notifySocket, error) {
	uc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	s := &notifySocket{path: path, msg: scmrights.Message{Payload: make([]byte, maxNotify+1), FDs: make([]int, maxNotifyFDs)}}
	c, err := scmrights.NewConn(uc)
	if err != nil {
		uc.Close()
		s.conn = nil
		s.removePath()
		return nil, err
	}
	s.conn = c
	if err := c.SetPassCred(true); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// received is one datagram read from a notifySocket.
type received struct {
	N   Notification
	Bad fieldErrors
	// FDs counts descriptors that came with the message (FDSTORE=1,
	// systemd-notify's BARRIER=1 pipe); they were closed at once.
	FDs  int
	Cred scmrights.Ucred
}

// maxNotifyFDs is room for the descriptors of one notification: a BARRIER
// brings one, FDSTORE a few. A message with more is refused whole (its
// descriptors closed by scmrights).
const maxNotifyFDs = 16

// recv waits for the next notification and returns it with its sender's
// credentials. Descriptors that came with it are closed (FDSTORE and
// BARRIER are not supported). An oversize message, one with more than
// maxNotifyFDs descriptors or one without credentials is an error for that
// message only: the socket stays usable. Close unblocks it.
func (s *notifySocket) recv() (received, error) {
	m := &s.msg
	m.FDs = m.FDs[:cap(m.FDs)]
	err := s.conn.RecvMsg(m)
	r := received{Cred: m.Cred}
	if err != nil {
		return r, err
	}
	for _, fd := range m.FDs[:m.NFDs] {
		// Received with MSG_CMSG_CLOEXEC and owned by nobody else.
		os.NewFile(uintptr(fd), "notify-fd").Close()
	}
	r.FDs = m.NFDs
	if !m.HasCred {
		return r, fmt.Errorf("%w: no sender credentials", ErrNotify)
	}
	r.N, r.Bad, err = parseNotify(m.Payload[:m.N])
	return r, err
}

// close closes the socket and removes its path; an abstract address
// ("@name") has no file to remove.
func (s *notifySocket) close() error {
	err := s.conn.Close()
	s.removePath()
	return err
}

func (s *notifySocket) removePath() {
	if s.path != "" && s.path[0] != '@' {
		os.Remove(s.path)
	}
}
