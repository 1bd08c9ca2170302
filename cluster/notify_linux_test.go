//go:build linux

package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestWarnLimiter: a flood of warnings yields one line, and the next line
// after the quiet period says how many were suppressed.
func TestWarnLimiter(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var w warnLimiter
	for range 100 {
		w.warn(log, "flood", "sender", 1)
	}
	if n := strings.Count(buf.String(), "flood"); n != 1 {
		t.Fatalf("%d lines logged for 100 warnings within a second, want 1:\n%s", n, buf.String())
	}
	// Pretend the second passed.
	w.mu.Lock()
	w.last = w.last.Add(-2e9)
	w.mu.Unlock()
	w.warn(log, "flood", "sender", 1)
	if !strings.Contains(buf.String(), "suppressed_since_last=99") {
		t.Errorf("suppressed count not logged:\n%s", buf.String())
	}
}
