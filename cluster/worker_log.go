package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"time"
)

// LogHandler returns a slog.Handler for a worker's log. Under a master it
// forwards every record, as a structured "log" control message, to the
// master, which logs it through its own logger with the worker's slot and
// pid added; records are dropped (never blocking the caller) when the
// master does not keep up, and once there is room again a warning
// record with a "dropped" attribute says how many were. Standalone it is
// slog.NewTextHandler on standard error. opts may be nil; only its Level
// is used when forwarding.
//
// A record's time is sent in UTC, and not at all if that falls outside
// the years 0 to 9999 (RFC 3339's range); the master logs it as the
// record's time.
//
// Attributes keep their types for strings, integers, floats and booleans;
// other values are sent as their text, groups as dotted keys. A record
// keeps at most 64 attributes and one message at most 8 KiB of text. The
// master adds slot and pid, and renames attributes that would collide with
// those or with its handler's own keys to "worker.<key>".
func LogHandler(opts *slog.HandlerOptions) slog.Handler {
	w := self()
	if w.ch == nil {
		return slog.NewTextHandler(os.Stderr, opts)
	}
	h := &fwdHandler{w: w, level: slog.LevelInfo}
	if opts != nil && opts.Level != nil {
		h.level = opts.Level
	}
	return h
}

// fwdHandler forwards records over the control channel. Its attrs are
// pre-encoded `"key":value` members, each preceded by a comma.
type fwdHandler struct {
	w      *wstate
	level  slog.Leveler
	prefix string
	attrs  []byte
	nattrs int
}

var _ slog.Handler = (*fwdHandler)(nil)

func (h *fwdHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

func (h *fwdHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append([]byte(nil), h.attrs...)
	for _, a := range as {
		c.attrs, c.nattrs = appendAttr(c.attrs, c.nattrs, c.prefix, a)
	}
	return &c
}

func (h *fwdHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix = h.prefix + name + "."
	return &c
}

func (h *fwdHandler) Handle(_ context.Context, r slog.Record) error {
	b := appendType(make([]byte, 0, 256), "log")
	// In UTC: RFC 3339, which the master parses, has no zone offset of
	// 24 hours or more, while a time.Location may (time.FixedZone), and a
	// time the master cannot parse breaks the protocol, which gets the
	// worker killed. The year is checked after the conversion, which may
	// move it across 0 or 9999.
	if t := r.Time.UTC(); !r.Time.IsZero() && t.Year() >= 0 && t.Year() <= 9999 {
		b = append(b, `,"time":"`...)
		b = t.AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	b = append(b, `,"level":`...)
	b = appendJSONString(b, r.Level.String())
	b = append(b, `,"msg":`...)
	b = appendJSONString(b, clip(r.Message))
	attrs, n := h.attrs, h.nattrs
	if r.NumAttrs() > 0 {
		attrs = append([]byte(nil), attrs...)
		r.Attrs(func(a slog.Attr) bool {
			attrs, n = appendAttr(attrs, n, h.prefix, a)
			return n < maxLogAttrs
		})
	}
	if len(attrs) > 0 && len(b)+len(attrs)+16 <= maxControlFrame {
		b = append(b, `,"attrs":{`...)
		b = append(b, attrs[1:]...)
		b = append(b, '}')
	}
	b = append(b, '}')
	h.w.forward(b)
	return nil
}

// clip cuts s to what the master's decoder accepts as a log text.
func clip(s string) string { return clipText(s, maxLogText) }

// appendAttr appends a as `,"key":value`, groups flattened into dotted
// keys, up to maxLogAttrs members.
func appendAttr(b []byte, n int, prefix string, a slog.Attr) ([]byte, int) {
	v := a.Value.Resolve()
	if a.Key == "" && v.Kind() != slog.KindGroup {
		return b, n
	}
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			b, n = appendAttr(b, n, p, g)
		}
		return b, n
	}
	if n >= maxLogAttrs {
		return b, n
	}
	b = append(b, ',')
	b = appendJSONString(b, prefix+a.Key)
	b = append(b, ':')
	switch v.Kind() {
	case slog.KindString:
		b = appendJSONString(b, clip(v.String()))
	case slog.KindInt64:
		b = strconv.AppendInt(b, v.Int64(), 10)
	case slog.KindUint64:
		b = strconv.AppendUint(b, v.Uint64(), 10)
	case slog.KindFloat64:
		if f := v.Float64(); math.IsInf(f, 0) || math.IsNaN(f) {
			b = appendJSONString(b, strconv.FormatFloat(f, 'g', -1, 64))
		} else {
			b = strconv.AppendFloat(b, f, 'g', -1, 64)
		}
	case slog.KindBool:
		b = strconv.AppendBool(b, v.Bool())
	case slog.KindTime:
		b = appendJSONString(b, v.Time().Format(time.RFC3339Nano))
	case slog.KindDuration:
		b = appendJSONString(b, v.Duration().String())
	default:
		s := ""
		if err, ok := v.Any().(error); ok && err != nil {
			s = err.Error()
		} else {
			s = fmt.Sprint(v.Any())
		}
		b = appendJSONString(b, clip(s))
	}
	return b, n + 1
}
