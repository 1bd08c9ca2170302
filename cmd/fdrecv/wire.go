package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// The wire format between fdsend and fdrecv, version 1 (docs/fdcli.md is
// the specification; fdsend has the encoder and the reply decoder, this file
// the message decoder and the reply encoder).
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
	// maxMessage is the largest valid message.
	maxMessage = len(msgMagic) + 2 + maxNames*(1+maxNameLen) + 4 + maxPayload
)

var errProtocol = errors.New("malformed message")

// decodeMessage parses a message. names alias nothing (they are copies);
// payload aliases b.
func decodeMessage(b []byte) (names []string, payload []byte, err error) {
	if len(b) < len(msgMagic)+2 || string(b[:len(msgMagic)]) != msgMagic {
		return nil, nil, fmt.Errorf("%w: not an fdsend message", errProtocol)
	}
	b = b[len(msgMagic):]
	if b[0] != wireVersion {
		return nil, nil, fmt.Errorf("%w: version %d, want %d", errProtocol, b[0], wireVersion)
	}
	n := int(b[1])
	b = b[2:]
	if n > maxNames {
		return nil, nil, fmt.Errorf("%w: %d names, at most %d", errProtocol, n, maxNames)
	}
	names = make([]string, 0, n)
	for i := range n {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return nil, nil, fmt.Errorf("%w: name %d cut short", errProtocol, i)
		}
		name := string(b[1 : 1+int(b[0])])
		if err := validName(name); err != nil {
			return nil, nil, fmt.Errorf("%w: name %d: %v", errProtocol, i, err)
		}
		names = append(names, name)
		b = b[1+int(b[0]):]
	}
	if len(b) < 4 {
		return nil, nil, fmt.Errorf("%w: payload length cut short", errProtocol)
	}
	plen := binary.BigEndian.Uint32(b)
	b = b[4:]
	if plen > maxPayload {
		return nil, nil, fmt.Errorf("%w: payload of %d bytes, at most %d", errProtocol, plen, maxPayload)
	}
	if uint32(len(b)) != plen {
		return nil, nil, fmt.Errorf("%w: payload length %d, but %d bytes follow", errProtocol, plen, len(b))
	}
	return names, b, nil
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

// encodeReply builds a reply; text is cut to maxReplyLen bytes on a rune
// boundary.
func encodeReply(status int, text string) []byte {
	for len(text) > maxReplyLen {
		_, size := utf8.DecodeLastRuneInString(text)
		text = text[:len(text)-size]
	}
	b := make([]byte, 0, len(replyMagic)+4+len(text))
	b = append(b, replyMagic...)
	b = append(b, wireVersion, byte(status))
	b = binary.BigEndian.AppendUint16(b, uint16(len(text)))
	return append(b, text...)
}
