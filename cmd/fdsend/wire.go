package main

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The wire format between fdsend and fdrecv, version 1; docs/fdcli.md is
// the specification. fdrecv holds the message decoder and reply encoder.
//
// Message, one SOCK_SEQPACKET message carrying the descriptors:
//
//	"HFDS" | version 1 | nnames u8 | nnames × (len u8, name) | payload len u32 BE | payload
//
// Reply, one message without descriptors:
//
//	"HFDR" | version 1 | status u8 | text len u16 BE | text
const (
	msgMagic    = "HFDS"
	replyMagic  = "HFDR"
	wireVersion = 1
	maxNames    = 253 // SCM_MAX_FD: one name per descriptor
	maxNameLen  = 255
	maxPayload  = 64 << 10
	maxReplyLen = 1024
	// maxReply is the largest valid reply.
	maxReply = len(replyMagic) + 4 + maxReplyLen
)

var errProtocol = errors.New("malformed reply")

// encodeMessage builds a message for len(names) descriptors. The names must
// have passed validName.
func encodeMessage(names []string, payload []byte) ([]byte, error) {
	if len(names) > maxNames {
		return nil, fmt.Errorf("%d descriptors, at most %d", len(names), maxNames)
	}
	if len(payload) > maxPayload {
		return nil, fmt.Errorf("payload of %d bytes, at most %d", len(payload), maxPayload)
	}
	b := make([]byte, 0, len(msgMagic)+2+len(names)*(1+maxNameLen)+4+len(payload))
	b = append(b, msgMagic...)
	b = append(b, wireVersion, byte(len(names)))
	for _, n := range names {
		if err := validName(n); err != nil {
			return nil, err
		}
		b = append(b, byte(len(n)))
		b = append(b, n...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...), nil
}

// decodeReply parses fdrecv's reply: status 0 is success, anything else is
// the exit code class fdrecv failed with, and text says why.
func decodeReply(b []byte) (status int, text string, err error) {
	if len(b) < len(replyMagic)+4 || string(b[:len(replyMagic)]) != replyMagic {
		return 0, "", fmt.Errorf("%w: not an fdrecv reply", errProtocol)
	}
	b = b[len(replyMagic):]
	if b[0] != wireVersion {
		return 0, "", fmt.Errorf("%w: version %d, want %d", errProtocol, b[0], wireVersion)
	}
	status = int(b[1])
	l := int(binary.BigEndian.Uint16(b[2:]))
	b = b[4:]
	if l > maxReplyLen {
		return 0, "", fmt.Errorf("%w: text of %d bytes, at most %d", errProtocol, l, maxReplyLen)
	}
	if len(b) != l {
		return 0, "", fmt.Errorf("%w: text length %d, but %d bytes follow", errProtocol, l, len(b))
	}
	return status, string(b), nil
}

// validName applies systemd's rule for LISTEN_FDNAMES entries: 1 to 255
// printable ASCII characters, no ':' (the separator).
func validName(s string) error {
	if s == "" || len(s) > maxNameLen {
		return fmt.Errorf("name must be 1 to %d bytes long", maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == ':' {
			return fmt.Errorf("name %q: byte %#x not allowed (printable ASCII except ':')", s, c)
		}
	}
	return nil
}
