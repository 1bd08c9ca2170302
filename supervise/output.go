package supervise

import "bytes"

// lineSplitter cuts a byte stream into lines of at most max bytes. A line
// longer than max is delivered in max-byte pieces; a trailing "\r" is kept
// (output is passed through, not interpreted). The slice given to emit is
// valid only during the call.
type lineSplitter struct {
	max  int
	buf  []byte
	emit func([]byte)
}

func (l *lineSplitter) write(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.add(p)
			return
		}
		l.add(p[:i])
		l.emit(l.buf)
		l.buf = l.buf[:0]
		p = p[i+1:]
	}
}

// add appends b to the pending line, delivering full max-byte pieces so the
// buffer never grows past max whatever a worker writes.
func (l *lineSplitter) add(b []byte) {
	for len(l.buf)+len(b) >= l.max && len(b) > 0 {
		n := l.max - len(l.buf)
		if n == 0 {
			l.emit(l.buf)
			l.buf = l.buf[:0]
			continue
		}
		l.buf = append(l.buf, b[:n]...)
		b = b[n:]
		if len(b) > 0 {
			l.emit(l.buf)
			l.buf = l.buf[:0]
		}
	}
	l.buf = append(l.buf, b...)
}

// flush delivers a final line that had no newline.
func (l *lineSplitter) flush() {
	if len(l.buf) > 0 {
		l.emit(l.buf)
		l.buf = l.buf[:0]
	}
}
