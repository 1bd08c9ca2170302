//go:build unix && !linux && !aix

package scmrights

import (
	"errors"
	"io"
)

type batchWriter struct{}
type batchReader struct{}

// SendBatch sends msgs in order, each as one message, and returns how many
// were sent whole. This platform has no sendmmsg; the messages are sent one
// system call each under one hold of the send lock.
func (c *Conn) SendBatch(msgs []Message) (int, error) {
	for i := range msgs {
		if err := checkSend(c.sotype, msgs[i].Payload, msgs[i].FDs); err != nil {
			return 0, opError("write", c.uc, err)
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for i := range msgs {
		if _, err := c.w.send(c.rc, c.sotype, msgs[i].Payload, msgs[i].FDs); err != nil {
			return i, opError("write", c.uc, err)
		}
	}
	return len(msgs), nil
}

// RecvBatch receives one message into msgs[0]: this platform has no
// recvmmsg. Results are reported as on Linux (see the Linux documentation):
// msgs[0].Err carries a per-message failure, the returned error is set only
// when nothing was received.
func (c *Conn) RecvBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	m := &msgs[0]
	c.rmu.Lock()
	n, nfds, err := c.r.recv(c.rc, c.sotype, m.Payload, m.FDs, m)
	c.rmu.Unlock()
	if err == io.EOF || err == io.ErrShortBuffer {
		return 0, err
	}
	m.N, m.NFDs, m.Err = n, nfds, nil
	if err != nil {
		if !isMessageError(err) {
			return 0, opError("read", c.uc, err)
		}
		m.N, m.NFDs, m.Err = n, 0, err
	}
	return 1, nil
}

// isMessageError reports whether err failed one message but left the
// connection usable.
func isMessageError(err error) bool {
	return errors.Is(err, ErrTruncated) || errors.Is(err, ErrPayloadTruncated) || errors.Is(err, ErrMalformedControl)
}
