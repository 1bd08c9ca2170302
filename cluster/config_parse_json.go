package cluster

import (
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file holds what fastjson lacks for a configuration file: a strict
// RFC 8259 checker that reports the byte offset of a syntax error and
// refuses duplicate keys, and cfgLocate, which finds the offset of the value
// at a JSON path in checked input. Both are bounds-checked on every index.

// cfgCheckJSON checks that b is exactly one JSON value (RFC 8259: UTF-8, no
// lone surrogate escapes) nested at most cfgMaxJSONDepth deep, made of at
// most cfgMaxJSONValues values, with no object holding the same key twice.
// On failure it returns the offset of the offending byte and a message; msg
// is "" when b is fine.
func cfgCheckJSON(b []byte) (off int, msg string) {
	c := cfgJsonChecker{b: b}
	i := c.ws(0)
	if i >= len(b) {
		return i, "empty file: want a JSON object"
	}
	if len(b) >= 3 && b[0] == 0xef && b[1] == 0xbb && b[2] == 0xbf {
		return 0, "byte order mark: save the file as UTF-8 without a BOM"
	}
	i = c.value(i, 1)
	if c.msg != "" {
		return c.off, c.msg
	}
	if i = c.ws(i); i < len(b) {
		return i, "unexpected " + cfgByteName(b, i) + " after the top-level value"
	}
	return 0, ""
}

type cfgJsonChecker struct {
	b      []byte
	off    int
	msg    string
	key    []byte // scratch for unescaped keys
	values int    // seen so far, against cfgMaxJSONValues
}

func (c *cfgJsonChecker) fail(off int, format string, args ...any) int {
	if c.msg == "" {
		c.off, c.msg = off, fmt.Sprintf(format, args...)
	}
	return len(c.b)
}

func (c *cfgJsonChecker) ws(i int) int {
	for i < len(c.b) {
		switch c.b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// cfgByteName describes b[i] for a message, or the end of input.
func cfgByteName(b []byte, i int) string {
	if i >= len(b) {
		return "end of file"
	}
	ch := b[i]
	if ch > 0x20 && ch < 0x7f {
		return strconv.QuoteRune(rune(ch))
	}
	return fmt.Sprintf("byte 0x%02x", ch)
}

// value checks the value starting at b[i] (no leading whitespace) and
// returns the offset just past it; on error it records it and returns
// len(b).
func (c *cfgJsonChecker) value(i, depth int) int {
	b := c.b
	if i >= len(b) {
		return c.fail(i, "unexpected end of file: want a value")
	}
	if c.values++; c.values > cfgMaxJSONValues {
		return c.fail(i, "more than %d JSON values in the file", cfgMaxJSONValues)
	}
	switch ch := b[i]; {
	case ch == '{' || ch == '[':
		if depth > cfgMaxJSONDepth {
			return c.fail(i, "nested deeper than %d levels", cfgMaxJSONDepth)
		}
		if ch == '{' {
			return c.object(i, depth)
		}
		return c.array(i, depth)
	case ch == '"':
		return c.str(i, false)
	case ch == 't':
		return c.literal(i, "true")
	case ch == 'f':
		return c.literal(i, "false")
	case ch == 'n':
		return c.literal(i, "null")
	case ch == '-' || ch >= '0' && ch <= '9':
		return c.number(i)
	}
	return c.fail(i, "unexpected %s: want a value", cfgByteName(b, i))
}

func (c *cfgJsonChecker) literal(i int, lit string) int {
	if len(c.b)-i < len(lit) || string(c.b[i:i+len(lit)]) != lit {
		return c.fail(i, "invalid literal: want %s", lit)
	}
	j := i + len(lit)
	if j < len(c.b) && cfgIsIdentByte(c.b[j]) {
		return c.fail(i, "invalid literal: want %s", lit)
	}
	return j
}

func cfgIsIdentByte(ch byte) bool {
	return ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_'
}

func (c *cfgJsonChecker) digits(i int) int {
	for i < len(c.b) && c.b[i] >= '0' && c.b[i] <= '9' {
		i++
	}
	return i
}

// number checks the RFC 8259 number grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (c *cfgJsonChecker) number(i int) int {
	b, start := c.b, i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = c.digits(i)
	default:
		return c.fail(start, "invalid number")
	}
	if i < len(b) && b[i] == '.' {
		j := c.digits(i + 1)
		if j == i+1 {
			return c.fail(start, "invalid number: want digits after '.'")
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := c.digits(i)
		if j == i {
			return c.fail(start, "invalid number: want digits in the exponent")
		}
		i = j
	}
	if i < len(b) && (cfgIsIdentByte(b[i]) || b[i] == '.' || b[i] == '+' || b[i] == '-') {
		return c.fail(start, "invalid number")
	}
	return i
}

func (c *cfgJsonChecker) object(i, depth int) int {
	b, start := c.b, i
	var keys map[string]bool
	i = c.ws(i + 1)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	for {
		if i >= len(b) {
			return c.fail(start, "unterminated object: want '}'")
		}
		if b[i] != '"' {
			return c.fail(i, "unexpected %s: want a string key", cfgByteName(b, i))
		}
		ks := i
		i = c.str(i, true)
		if c.msg != "" {
			return i
		}
		if keys == nil {
			keys = make(map[string]bool)
		}
		if keys[string(c.key)] {
			return c.fail(ks, "duplicate key %s", strconv.Quote(cfgTruncate(string(c.key), 40)))
		}
		keys[string(c.key)] = true
		i = c.ws(i)
		if i >= len(b) || b[i] != ':' {
			return c.fail(i, "unexpected %s: want ':' after the key", cfgByteName(b, i))
		}
		i = c.value(c.ws(i+1), depth+1)
		if c.msg != "" {
			return i
		}
		i = c.ws(i)
		switch {
		case i >= len(b):
			return c.fail(start, "unterminated object: want '}'")
		case b[i] == '}':
			return i + 1
		case b[i] != ',':
			return c.fail(i, "unexpected %s: want ',' or '}'", cfgByteName(b, i))
		}
		i = c.ws(i + 1)
		if i < len(b) && b[i] == '}' {
			return c.fail(i, "trailing comma before '}'")
		}
	}
}

func (c *cfgJsonChecker) array(i, depth int) int {
	b, start := c.b, i
	i = c.ws(i + 1)
	if i < len(b) && b[i] == ']' {
		return i + 1
	}
	for {
		if i >= len(b) {
			return c.fail(start, "unterminated array: want ']'")
		}
		i = c.value(i, depth+1)
		if c.msg != "" {
			return i
		}
		i = c.ws(i)
		switch {
		case i >= len(b):
			return c.fail(start, "unterminated array: want ']'")
		case b[i] == ']':
			return i + 1
		case b[i] != ',':
			return c.fail(i, "unexpected %s: want ',' or ']'", cfgByteName(b, i))
		}
		i = c.ws(i + 1)
		if i < len(b) && b[i] == ']' {
			return c.fail(i, "trailing comma before ']'")
		}
	}
}

// str checks the string starting at b[i] == '"' and returns the offset
// past its closing quote; with key, c.key receives the unescaped string.
func (c *cfgJsonChecker) str(i int, key bool) int {
	b, start := c.b, i
	c.key = c.key[:0]
	i++
	for {
		if i >= len(b) {
			return c.fail(start, "unterminated string: want '\"'")
		}
		ch := b[i]
		switch {
		case ch == '"':
			return i + 1
		case ch < 0x20:
			return c.fail(i, "control character 0x%02x in a string (write it escaped)", ch)
		case ch == '\\':
			r, n := c.escape(i)
			if n == 0 {
				return len(b)
			}
			if key {
				c.key = utf8.AppendRune(c.key, r)
			}
			i += n
		case ch < utf8.RuneSelf:
			if key {
				c.key = append(c.key, ch)
			}
			i++
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n <= 1 {
				return c.fail(i, "invalid UTF-8 in a string")
			}
			if key {
				c.key = append(c.key, b[i:i+n]...)
			}
			i += n
		}
	}
}

// escape decodes the escape sequence at b[i] == '\\' and returns the rune
// and its length in bytes, or n == 0 after recording an error.
func (c *cfgJsonChecker) escape(i int) (r rune, n int) {
	b := c.b
	if i+1 >= len(b) {
		c.fail(i, "unterminated escape sequence")
		return 0, 0
	}
	switch b[i+1] {
	case '"', '\\', '/':
		return rune(b[i+1]), 2
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case 'n':
		return '\n', 2
	case 'r':
		return '\r', 2
	case 't':
		return '\t', 2
	case 'u':
		r1, ok := cfgHex4(b, i+2)
		if !ok {
			c.fail(i, "invalid escape: want \\u and 4 hex digits")
			return 0, 0
		}
		if !utf16.IsSurrogate(r1) {
			return r1, 6
		}
		// A surrogate is only half a character: it must be a high one
		// followed by an escaped low one, else it decodes to nothing valid.
		if r1 < 0xdc00 && i+7 < len(b) && b[i+6] == '\\' && b[i+7] == 'u' {
			if r2, ok := cfgHex4(b, i+8); ok {
				if r := utf16.DecodeRune(r1, r2); r != utf8.RuneError {
					return r, 12
				}
			}
		}
		c.fail(i, "invalid escape: lone UTF-16 surrogate")
		return 0, 0
	}
	// Quoted as a byte: echoing a control character or half of a UTF-8
	// sequence would garble the operator's terminal.
	if ch := b[i+1]; ch > 0x20 && ch < 0x7f {
		c.fail(i, "invalid escape \\%c", ch)
	} else {
		c.fail(i, "invalid escape: '\\' before %s", cfgByteName(b, i+1))
	}
	return 0, 0
}

func cfgHex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, ch := range b[i : i+4] {
		var v byte
		switch {
		case ch >= '0' && ch <= '9':
			v = ch - '0'
		case ch >= 'a' && ch <= 'f':
			v = ch - 'a' + 10
		case ch >= 'A' && ch <= 'F':
			v = ch - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	return r, true
}

// cfgLocate returns the offset in b (input cfgCheckJSON accepted) of the value
// at path p, or of its key when onKey and p ends with a key. When the path
// does not lead anywhere (a missing key) it returns the offset of the
// deepest value found on the way. Values on the way are skipped by the
// checker itself: b passed it, so it cannot fail here, and the values it
// counts are a subset of those it counted before.
func cfgLocate(b []byte, p cfgPath, onKey bool) int {
	c := cfgJsonChecker{b: b}
	i := c.ws(0)
	for n, seg := range p {
		if i >= len(b) {
			return len(b)
		}
		at := i
		if seg.isKey {
			if b[i] != '{' {
				return at
			}
			i = c.ws(i + 1)
			found := false
			for i < len(b) && b[i] == '"' {
				ks := i
				i = c.str(i, true)
				if c.msg != "" {
					return at
				}
				match := string(c.key) == seg.key
				i = c.ws(i)
				if i >= len(b) || b[i] != ':' {
					return at
				}
				i = c.ws(i + 1)
				if match {
					if onKey && n == len(p)-1 {
						return ks
					}
					found = true
					break
				}
				if i = c.ws(c.value(i, 1)); i < len(b) && b[i] == ',' {
					i = c.ws(i + 1)
				}
			}
			if !found {
				return at
			}
			continue
		}
		if b[i] != '[' {
			return at
		}
		i = c.ws(i + 1)
		for k := 0; k < seg.index; k++ {
			if i >= len(b) || b[i] == ']' {
				return at
			}
			if i = c.ws(c.value(i, 1)); i < len(b) && b[i] == ',' {
				i = c.ws(i + 1)
			}
		}
		if i >= len(b) || b[i] == ']' {
			return at
		}
	}
	return min(i, len(b))
}

// cfgLineCol converts an offset into a 1-based line and byte column.
func cfgLineCol(b []byte, off int) (line, col int) {
	off = max(0, min(off, len(b)))
	line, start := 1, 0
	for i := 0; i < off; i++ {
		if b[i] == '\n' {
			line++
			start = i + 1
		}
	}
	return line, off - start + 1
}
