//go:build linux

package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Message types on the connection channel (HANDOFF_CONN_FD), one per
// SOCK_SEQPACKET message. See docs/protocol.md.
const (
	hoConns  = 'C' // master → worker: connections, one descriptor each
	hoDone   = 'D' // master → worker: name; nothing more of that listener follows
	hoAck    = 'A' // worker → master: connections accepted since the last ack
	hoReturn = 'R' // worker → master: connections given back, one descriptor each
	hoSub    = 'S' // worker → master: name; send this listener's connections
	hoUnsub  = 'U' // worker → master: name; stop sending them
	hoGrant  = 'W' // worker → master: how many connections it has room for
)

const (
	// hoMaxBatch bounds the connections of one message: a drained accept
	// queue travels in few messages, far below SCM_MAX_FD (253).
	hoMaxBatch = 64
	// hoMaxName bounds a listener name (LISTEN_FDNAMES allows 255) and a
	// remote address, each length-prefixed by one byte.
	hoMaxName = 255
	// hoMaxMsg is the largest valid message: header, then for each
	// connection two lengths and two strings.
	hoMaxMsg = 2 + hoMaxBatch*(2+2*hoMaxName)
	// hoWindow bounds the connections delivered to one worker and not yet
	// acknowledged (accepted or returned): the most a worker can lose by
	// dying, and the room its queues need.
	hoWindow = 128
)

// hoNoLimit is a hoGrant without a limit: the worker has room for a window
// and a batch more than it holds (see hoReceiver.room).
const hoNoLimit = -1

// hoEntry is one connection's metadata; both slices alias the payload.
type hoEntry struct {
	name, addr []byte
}

// hoMsg is one decoded message. Its slices alias the payload and the
// descriptor slice passed to decodeHandoff, valid until they are reused.
type hoMsg struct {
	typ byte
	n   int // connections (hoConns, hoReturn) or the count of hoAck
	// limit of hoGrant: the sequence number (count of connections sent on
	// the channel, modulo 2³²) the master may send up to, or hoNoLimit.
	limit   int64
	entries [hoMaxBatch]hoEntry
	name    []byte // hoDone, hoSub, hoUnsub
	fds     []int  // hoConns, hoReturn: one per entry, in order
}

// decodeHandoff parses one message p that arrived with descriptors fds.
// On success the descriptors belong to m (m.fds, for hoConns and hoReturn);
// on any error every descriptor in fds is closed, so garbage never leaks
// one, and the error wraps ErrHandoffMessage. It never panics.
func decodeHandoff(p []byte, fds []int, m *hoMsg) (err error) {
	defer func() {
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			m.fds = nil
			err = fmt.Errorf("%w: %w", ErrHandoffMessage, err)
		}
	}()
	m.n, m.limit, m.name, m.fds = 0, 0, nil, nil
	if len(p) == 0 {
		return errors.New("empty")
	}
	m.typ = p[0]
	body := p[1:]
	switch m.typ {
	case hoConns, hoReturn:
		if len(body) == 0 {
			return errors.New("no count")
		}
		n := int(body[0])
		body = body[1:]
		if n == 0 || n > hoMaxBatch {
			return fmt.Errorf("%d connections (want 1 to %d)", n, hoMaxBatch)
		}
		if len(fds) != n {
			return fmt.Errorf("%d descriptors for %d connections", len(fds), n)
		}
		for i := range n {
			var name, addr []byte
			if name, body, err = hoField(body, 1); err != nil {
				return fmt.Errorf("connection %d name: %w", i, err)
			}
			if addr, body, err = hoField(body, 0); err != nil {
				return fmt.Errorf("connection %d address: %w", i, err)
			}
			m.entries[i] = hoEntry{name: name, addr: addr}
		}
		if len(body) != 0 {
			return fmt.Errorf("%d bytes after the last connection", len(body))
		}
		m.n, m.fds = n, fds
		return nil
	case hoAck:
		if len(fds) != 0 {
			return fmt.Errorf("%d descriptors on an ack", len(fds))
		}
		if len(body) != 4 {
			return fmt.Errorf("ack of %d bytes (want 4)", len(body))
		}
		c := binary.BigEndian.Uint32(body)
		if c == 0 || c > hoWindow {
			return fmt.Errorf("ack of %d connections (want 1 to %d)", c, hoWindow)
		}
		m.n = int(c)
		return nil
	case hoGrant:
		if len(fds) != 0 {
			return fmt.Errorf("%d descriptors on a grant", len(fds))
		}
		switch len(body) {
		case 0:
			m.limit = hoNoLimit
		case 4:
			m.limit = int64(binary.BigEndian.Uint32(body))
		default:
			return fmt.Errorf("grant of %d bytes (want 0 or 4)", len(body))
		}
		return nil
	case hoDone, hoSub, hoUnsub:
		if len(fds) != 0 {
			return fmt.Errorf("%d descriptors on a %q message", len(fds), m.typ)
		}
		name, rest, err := hoField(body, 1)
		if err != nil {
			return fmt.Errorf("name: %w", err)
		}
		if len(rest) != 0 {
			return fmt.Errorf("%d bytes after the name", len(rest))
		}
		m.name = name
		return nil
	}
	return fmt.Errorf("unknown type 0x%02x", m.typ)
}

// hoField reads one length-prefixed string of at least min bytes.
func hoField(b []byte, min int) (field, rest []byte, err error) {
	if len(b) == 0 {
		return nil, nil, errors.New("missing")
	}
	n := int(b[0])
	if n < min {
		return nil, nil, errors.New("empty")
	}
	if len(b)-1 < n {
		return nil, nil, fmt.Errorf("%d bytes announced, %d left", n, len(b)-1)
	}
	return b[1 : 1+n], b[1+n:], nil
}

// hoAppendHeader starts a hoConns or hoReturn message of n connections.
func hoAppendHeader(dst []byte, typ byte, n int) []byte {
	return append(dst, typ, byte(n))
}

// hoAppendEntry appends one connection's metadata; name and addr are cut
// to hoMaxName bytes (names are at most 255 bytes already; an address
// never comes near).
func hoAppendEntry(dst []byte, name string, addr []byte) []byte {
	name = name[:min(len(name), hoMaxName)]
	addr = addr[:min(len(addr), hoMaxName)]
	dst = append(dst, byte(len(name)))
	dst = append(dst, name...)
	dst = append(dst, byte(len(addr)))
	return append(dst, addr...)
}

// hoAppendName builds a hoDone, hoSub or hoUnsub message.
func hoAppendName(dst []byte, typ byte, name string) []byte {
	name = name[:min(len(name), hoMaxName)]
	dst = append(dst, typ, byte(len(name)))
	return append(dst, name...)
}

// hoAppendAck builds a hoAck message for n accepted connections.
func hoAppendAck(dst []byte, n int) []byte {
	return binary.BigEndian.AppendUint32(append(dst, hoAck), uint32(n))
}

// hoAppendGrant builds a hoGrant message: limit is a sequence number, or
// hoNoLimit.
func hoAppendGrant(dst []byte, limit int64) []byte {
	dst = append(dst, hoGrant)
	if limit == hoNoLimit {
		return dst
	}
	return binary.BigEndian.AppendUint32(dst, uint32(limit))
}
