// Package fdwire is the contract between fdsend and fdrecv: the wire format,
// version 2, and the status codes both exit with (status.go);
// docs/fdcli.md is the specification. One codec serves both commands.
//
// Message, one SOCK_SEQPACKET message carrying the descriptors:
//
//	"HFDS" | version 2 | nnames u8 | nnames × (len u8, name) | payload len u32 BE | payload
//
// Reply, one message without descriptors:
//
//	"HFDR" | version 2 | status u8 | text len u16 BE | text
//
// Version 2 has version 1's layout; what changed is what a status 0 reply
// means. In version 1 it was final. In version 2 it says "placed": the
// descriptors are where they go, and success is the connection then
// reaching end of file with nothing more (fdrecv's last stage holds the
// reply channel close-on-exec, so only a successful execve closes it). A
// reply after "placed" is a failure that came later (execve failed).
//
// Messages come from another process: the decoders bound every length
// before using it and never panic.
package fdwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/handoff-go/handoff/internal/listenfds"
)

const (
	msgMagic   = "HFDS"
	replyMagic = "HFDR"
	// Version is the wire version this package speaks.
	Version = 2
	// MaxNames is the most descriptors one message names: SCM_MAX_FD.
	MaxNames = 253
	// MaxNameLen is the longest descriptor name (systemd's limit).
	MaxNameLen = listenfds.MaxNameLen
	// MaxPayload is the largest payload.
	MaxPayload = 64 << 10
	// MaxReplyText is the longest reply text.
	MaxReplyText = 1024
	// MaxMessage is the largest valid message.
	MaxMessage = len(msgMagic) + 2 + MaxNames*(1+MaxNameLen) + 4 + MaxPayload
	// MaxReply is the largest valid reply.
	MaxReply = len(replyMagic) + 4 + MaxReplyText
)

var (
	// ErrProtocol reports bytes that are not a valid message or reply.
	ErrProtocol = errors.New("fdwire: malformed")
	// ErrVersion reports a message or reply of another wire version; such
	// errors also match ErrProtocol.
	ErrVersion = errors.New("fdwire: unknown version")
	// ErrName reports a descriptor name outside systemd's rule.
	ErrName = errors.New("fdwire: invalid descriptor name")
	// ErrTooLarge reports too many names or too large a payload to encode.
	ErrTooLarge = errors.New("fdwire: message too large")
)

// EncodeMessage builds a message naming len(names) descriptors.
func EncodeMessage(names []string, payload []byte) ([]byte, error) {
	if len(names) > MaxNames {
		return nil, fmt.Errorf("%w: %d descriptors, at most %d", ErrTooLarge, len(names), MaxNames)
	}
	if len(payload) > MaxPayload {
		return nil, fmt.Errorf("%w: payload of %d bytes, at most %d", ErrTooLarge, len(payload), MaxPayload)
	}
	b := make([]byte, 0, len(msgMagic)+2+len(names)*(1+MaxNameLen)+4+len(payload))
	b = append(b, msgMagic...)
	b = append(b, Version, byte(len(names)))
	for _, n := range names {
		if err := ValidName(n); err != nil {
			return nil, err
		}
		b = append(b, byte(len(n)))
		b = append(b, n...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...), nil
}

// DecodeMessage parses a message. The names are copies; payload aliases b.
func DecodeMessage(b []byte) (names []string, payload []byte, err error) {
	if len(b) < len(msgMagic)+2 || string(b[:len(msgMagic)]) != msgMagic {
		return nil, nil, fmt.Errorf("%w: not an fdsend message", ErrProtocol)
	}
	b = b[len(msgMagic):]
	if b[0] != Version {
		return nil, nil, fmt.Errorf("%w: %w: version %d, want %d", ErrProtocol, ErrVersion, b[0], Version)
	}
	n := int(b[1])
	b = b[2:]
	if n > MaxNames {
		return nil, nil, fmt.Errorf("%w: %d names, at most %d", ErrProtocol, n, MaxNames)
	}
	names = make([]string, 0, n)
	for i := range n {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return nil, nil, fmt.Errorf("%w: name %d cut short", ErrProtocol, i)
		}
		name := string(b[1 : 1+int(b[0])])
		if err := ValidName(name); err != nil {
			return nil, nil, fmt.Errorf("%w: name %d: %w", ErrProtocol, i, err)
		}
		names = append(names, name)
		b = b[1+int(b[0]):]
	}
	if len(b) < 4 {
		return nil, nil, fmt.Errorf("%w: payload length cut short", ErrProtocol)
	}
	plen := binary.BigEndian.Uint32(b)
	b = b[4:]
	if plen > MaxPayload {
		return nil, nil, fmt.Errorf("%w: payload of %d bytes, at most %d", ErrProtocol, plen, MaxPayload)
	}
	if uint32(len(b)) != plen {
		return nil, nil, fmt.Errorf("%w: payload length %d, but %d bytes follow", ErrProtocol, plen, len(b))
	}
	return names, b, nil
}

// EncodeReply builds a reply; text is cut to MaxReplyText bytes on a rune
// boundary. Status 0 means "placed" (see the package comment).
func EncodeReply(status int, text string) []byte {
	return encodeReply(Version, status, text)
}

// MessageVersion returns the version byte of b if b starts like a message
// of any version, or 0 (also for a message stamped version 0).
func MessageVersion(b []byte) int {
	if len(b) < len(msgMagic)+1 || string(b[:len(msgMagic)]) != msgMagic {
		return 0
	}
	return int(b[len(msgMagic)])
}

// EncodeRefusal builds a reply with a non-zero status in the layout every
// version so far shares, stamped with the sender's version, so that a
// sender of another version can decode why it was refused. A zero status
// becomes StatusProtocol: a refusal must never read as success.
func EncodeRefusal(version, status int, text string) []byte {
	if version < 1 || version > 255 {
		version = Version
	}
	if status == StatusOK {
		status = StatusProtocol
	}
	return encodeReply(byte(version), status, text)
}

func encodeReply(version byte, status int, text string) []byte {
	for len(text) > MaxReplyText {
		_, size := utf8.DecodeLastRuneInString(text)
		text = text[:len(text)-size]
	}
	b := make([]byte, 0, len(replyMagic)+4+len(text))
	b = append(b, replyMagic...)
	b = append(b, version, byte(status))
	b = binary.BigEndian.AppendUint16(b, uint16(len(text)))
	return append(b, text...)
}

// DecodeReply parses a reply: status 0 is "placed" (success once end of
// file follows), anything else the exit code class the receiver failed
// with, and text says why.
func DecodeReply(b []byte) (status int, text string, err error) {
	if len(b) < len(replyMagic)+4 || string(b[:len(replyMagic)]) != replyMagic {
		return 0, "", fmt.Errorf("%w: not an fdrecv reply", ErrProtocol)
	}
	b = b[len(replyMagic):]
	if b[0] != Version {
		return 0, "", fmt.Errorf("%w: %w: version %d, want %d", ErrProtocol, ErrVersion, b[0], Version)
	}
	status = int(b[1])
	l := int(binary.BigEndian.Uint16(b[2:]))
	b = b[4:]
	if l > MaxReplyText {
		return 0, "", fmt.Errorf("%w: text of %d bytes, at most %d", ErrProtocol, l, MaxReplyText)
	}
	if len(b) != l {
		return 0, "", fmt.Errorf("%w: text length %d, but %d bytes follow", ErrProtocol, l, len(b))
	}
	return status, string(b), nil
}

// ValidName applies systemd's rule for LISTEN_FDNAMES entries (see
// listenfds.ValidName); errors match ErrName.
func ValidName(s string) error {
	if err := listenfds.ValidName(s); err != nil {
		return fmt.Errorf("%w: %w", ErrName, err)
	}
	return nil
}
