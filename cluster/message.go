package cluster

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// The control channel between the master and one worker carries ipcframe
// frames, each payload one JSON object with a "type" field (docs/protocol.md,
// "Control channel"). One decoder, decodeControl, serves both ends.

// ErrMessage reports a control message that is not valid: bad JSON, an
// unknown type, a missing or ill-typed field, or a limit exceeded. A worker
// that sends one is restarted; the master never trusts any part of it.
var ErrMessage = errors.New("cluster: malformed control message")

// Control message limits. Frames are bounded by maxControlFrame before any
// JSON is parsed, so the others only bound what one frame may hold.
const (
	// maxControlFrame is the largest control frame payload either end
	// accepts (ipcframe.ReaderOptions.MaxFrame).
	maxControlFrame = 64 << 10
	// MaxMessage is the largest payload Send, Master.Send and
	// Master.Broadcast accept: base64 grows it by a third, and the frame
	// must hold the JSON around it.
	MaxMessage = 32 << 10
	// maxLogAttrs bounds the attributes of one forwarded log record.
	maxLogAttrs = 64
	// maxLogText bounds a forwarded log record's message.
	maxLogText = 8 << 10
	// maxAddress bounds a listen request's address.
	maxAddress = 256
	// maxListenError bounds a listen reply's error text.
	maxListenError = 1024
)

// msgType is a control message's "type".
type msgType uint8

const (
	// worker -> master
	msgHeartbeat msgType = iota + 1 // {"type":"heartbeat"}
	msgLog                          // {"type":"log","time":..,"level":..,"msg":..,"attrs":{..}}
	msgListen                       // {"type":"listen","id":N,"network":..,"address":..}
	// both ways
	msgData // {"type":"message","data":"<base64>"}
	// master -> worker
	msgListened // {"type":"listened","id":N,"name":..} + 1 fd, or {"type":"listened","id":N,"error":..}
)

var msgTypeNames = [...]string{msgHeartbeat: "heartbeat", msgLog: "log", msgListen: "listen", msgData: "message", msgListened: "listened"}

func (t msgType) String() string {
	if int(t) < len(msgTypeNames) && msgTypeNames[t] != "" {
		return msgTypeNames[t]
	}
	return "type(" + strconv.Itoa(int(t)) + ")"
}

// ctlMsg is one decoded control message. Its slices and strings are copies:
// nothing aliases the parser or the frame.
type ctlMsg struct {
	Type msgType
	// ID matches a listen request with its reply (1..2^31-1).
	ID int64
	// Network and Address of a listen request; Name of a successful reply.
	Network, Address, Name string
	// Err is a listen reply's bind error text.
	Err string
	// Data is a message's payload.
	Data []byte
	// Log record fields.
	Time  time.Time
	Level slog.Level
	Msg   string
	Attrs []slog.Attr
}

func msgErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMessage}, args...)...)
}

// maxJSONDepth bounds the nesting of JSON from another process. Every
// message of the package is at most a few levels deep.
const maxJSONDepth = 64

// validateJSON checks b strictly with fastjson.ValidateBytes, which unlike
// fastjson's parser checks escapes, after bounding its nesting:
// ValidateBytes has no depth limit, and its time and error text grow with
// the square of the depth (64 KiB of '[' kept a master busy for minutes).
func validateJSON(b []byte) error {
	depth, inString, escaped := 0, false, false
	for i, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '[', '{':
			if depth++; depth > maxJSONDepth {
				return fmt.Errorf("JSON nested deeper than %d levels (offset %d)", maxJSONDepth, i)
			}
		case ']', '}':
			depth--
		}
	}
	return fastjson.ValidateBytes(b)
}

// decodeControl parses one control frame payload with p, which is reused
// across calls (one parser per reading goroutine). Every error wraps
// ErrMessage. Unknown fields are ignored, so either end may add optional
// fields without breaking the other; unknown types are errors.
func decodeControl(p *fastjson.Parser, b []byte) (ctlMsg, error) {
	var m ctlMsg
	if len(b) > maxControlFrame {
		return m, msgErr("%d bytes, over %d", len(b), maxControlFrame)
	}
	// JSON text is UTF-8 (RFC 8259), and fastjson checks neither that nor
	// (in its parser) escapes: validate first, so garbage is refused, not
	// passed on to logs and callbacks.
	if !utf8.Valid(b) {
		return m, msgErr("not UTF-8")
	}
	if err := validateJSON(b); err != nil {
		return m, msgErr("%v", err)
	}
	v, err := p.ParseBytes(b)
	if err != nil {
		return m, msgErr("%v", err)
	}
	o, err := v.Object()
	if err != nil {
		return m, msgErr("not a JSON object")
	}
	typ, err := str(o, "type", 32, true)
	if err != nil {
		return m, err
	}
	switch typ {
	case "heartbeat":
		m.Type = msgHeartbeat
	case "message":
		m.Type = msgData
		s, err := str(o, "data", base64.StdEncoding.EncodedLen(MaxMessage), true)
		if err != nil {
			return m, err
		}
		if m.Data, err = base64.StdEncoding.DecodeString(s); err != nil {
			return m, msgErr("data: %v", err)
		}
	case "listen":
		m.Type = msgListen
		if m.ID, err = id(o); err != nil {
			return m, err
		}
		if m.Network, err = str(o, "network", 8, true); err != nil {
			return m, err
		}
		switch m.Network {
		case "tcp", "udp", "unix":
		default:
			return m, msgErr("network %q", m.Network)
		}
		if m.Address, err = str(o, "address", maxAddress, true); err != nil {
			return m, err
		}
	case "listened":
		m.Type = msgListened
		if m.ID, err = id(o); err != nil {
			return m, err
		}
		if m.Name, err = str(o, "name", 255, false); err != nil {
			return m, err
		}
		if m.Err, err = str(o, "error", maxListenError, false); err != nil {
			return m, err
		}
		if (m.Name == "") == (m.Err == "") {
			return m, msgErr("listened: want exactly one of name and error")
		}
	case "log":
		m.Type = msgLog
		if err := decodeLog(o, &m); err != nil {
			return m, err
		}
	default:
		return m, msgErr("unknown type %q", truncate([]byte(typ)))
	}
	return m, nil
}

// str returns the string field key of o, at most max bytes; a field that is
// absent is "" unless required.
func str(o *fastjson.Object, key string, max int, required bool) (string, error) {
	v := o.Get(key)
	if v == nil {
		if required {
			return "", msgErr("no %q", key)
		}
		return "", nil
	}
	b, err := v.StringBytes()
	if err != nil {
		return "", msgErr("%q is not a string", key)
	}
	if len(b) > max {
		return "", msgErr("%q: %d bytes, over %d", key, len(b), max)
	}
	return string(b), nil
}

func id(o *fastjson.Object) (int64, error) {
	v := o.Get("id")
	if v == nil || v.Type() != fastjson.TypeNumber {
		return 0, msgErr("no numeric \"id\"")
	}
	n, err := v.Int64()
	if err != nil || n <= 0 || n > math.MaxInt32 {
		return 0, msgErr("\"id\" is not an integer from 1 to %d", math.MaxInt32)
	}
	return n, nil
}

func decodeLog(o *fastjson.Object, m *ctlMsg) error {
	var err error
	if m.Msg, err = str(o, "msg", maxLogText, true); err != nil {
		return err
	}
	ts, err := str(o, "time", 64, false)
	if err != nil {
		return err
	}
	if ts != "" {
		if m.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
			return msgErr("time %q", truncate([]byte(ts)))
		}
	}
	lv, err := str(o, "level", 32, false)
	if err != nil {
		return err
	}
	if lv != "" {
		if err := m.Level.UnmarshalText([]byte(lv)); err != nil {
			return msgErr("level %q", truncate([]byte(lv)))
		}
	}
	av := o.Get("attrs")
	if av == nil {
		return nil
	}
	ao, err := av.Object()
	if err != nil {
		return msgErr("\"attrs\" is not an object")
	}
	if ao.Len() > maxLogAttrs {
		return msgErr("%d attributes, over %d", ao.Len(), maxLogAttrs)
	}
	m.Attrs = make([]slog.Attr, 0, ao.Len())
	ao.Visit(func(k []byte, v *fastjson.Value) {
		m.Attrs = append(m.Attrs, logAttr(string(k), v))
	})
	return nil
}

// logAttr converts one forwarded attribute. Nested values stay JSON text:
// the master logs them, it does not interpret them.
func logAttr(k string, v *fastjson.Value) slog.Attr {
	switch v.Type() {
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		return slog.String(k, string(b))
	case fastjson.TypeNumber:
		if n, err := v.Int64(); err == nil {
			return slog.Int64(k, n)
		}
		f, _ := v.Float64()
		return slog.Float64(k, f)
	case fastjson.TypeTrue:
		return slog.Bool(k, true)
	case fastjson.TypeFalse:
		return slog.Bool(k, false)
	case fastjson.TypeNull:
		return slog.Any(k, nil)
	}
	return slog.String(k, string(v.MarshalTo(nil)))
}

// Encoders append one control message to dst; they never fail, because
// every input is either fixed or escaped.

func appendType(dst []byte, typ string) []byte {
	dst = append(dst, `{"type":`...)
	return strconv.AppendQuote(dst, typ)
}

func appendHeartbeat(dst []byte) []byte {
	return append(dst, `{"type":"heartbeat"}`...)
}

func appendData(dst, payload []byte) []byte {
	dst = append(dst, `{"type":"message","data":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, payload)
	return append(dst, `"}`...)
}

func appendListen(dst []byte, id int64, network, address string) []byte {
	dst = appendType(dst, "listen")
	dst = append(dst, `,"id":`...)
	dst = strconv.AppendInt(dst, id, 10)
	dst = append(dst, `,"network":`...)
	dst = appendJSONString(dst, network)
	dst = append(dst, `,"address":`...)
	dst = appendJSONString(dst, address)
	return append(dst, '}')
}

func appendListened(dst []byte, id int64, name string, bindErr error) []byte {
	dst = appendType(dst, "listened")
	dst = append(dst, `,"id":`...)
	dst = strconv.AppendInt(dst, id, 10)
	if bindErr != nil {
		dst = append(dst, `,"error":`...)
		dst = appendJSONString(dst, clipText(bindErr.Error(), maxListenError))
	} else {
		dst = append(dst, `,"name":`...)
		dst = appendJSONString(dst, name)
	}
	return append(dst, '}')
}

// clipText returns s as the peer's decoder will see it, at most max
// bytes: invalid UTF-8 becomes U+FFFD, as appendJSONString writes it, and
// the cut falls between runes. Cutting the raw bytes is not enough: each
// invalid byte, and each byte of a rune cut in two, grows to three.
func clipText(s string, max int) string {
	if len(s) <= max && utf8.ValidString(s) {
		return s
	}
	b := make([]byte, 0, min(len(s), max))
	for _, r := range s {
		if len(b)+utf8.RuneLen(r) > max {
			break
		}
		b = utf8.AppendRune(b, r)
	}
	return string(b)
}

// appendJSONString appends s as a JSON string. strconv.AppendQuote is
// not used: it writes \x and \U escapes, which JSON lacks. Invalid UTF-8
// becomes U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			dst = append(dst, '\\', byte(r))
		case r < 0x20 || r == 0x7f:
			dst = append(dst, `\u00`...)
			dst = append(dst, "0123456789abcdef"[r>>4], "0123456789abcdef"[r&0xf])
		default:
			dst = utf8.AppendRune(dst, r)
		}
	}
	return append(dst, '"')
}
