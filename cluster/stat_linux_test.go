//go:build linux

package cluster

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseStatPPID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ppid int
		ok   bool
	}{
		{"42 (sh) S 7 42 42 0", 7, true},
		{"42 (a) b) c) R 9 1", 9, true}, // ')' in the command name
		{"42 (x y) Z 1 0", 1, true},
		{"42 (sh)", 0, false},
		{"42 sh S 7", 0, false},
		{"42 (sh) S x", 0, false},
		{"", 0, false},
	} {
		ppid, ok := parseStatPPID([]byte(tc.in))
		if ppid != tc.ppid || ok != tc.ok {
			t.Errorf("parseStatPPID(%q) = %d, %v; want %d, %v", tc.in, ppid, ok, tc.ppid, tc.ok)
		}
	}
}

func FuzzParseStatPPID(f *testing.F) {
	for _, s := range []string{"42 (sh) S 7 42 42 0", "1 ()) R 0", ")", "(", "9 (x) Z -1"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, ok := parseStatPPID(b); ok && p < 0 {
			t.Fatalf("negative ppid %d from %q", p, b)
		}
	})
}

// FuzzParseStatChild: whatever the command name (a process sets its own,
// up to 15 bytes of anything but NUL, with ')', spaces and newlines
// included), the fields after it are read as the kernel wrote them, and
// parseStatPPID agrees on the parent. Arbitrary lines never panic and
// never yield a negative pid.
func FuzzParseStatChild(f *testing.F) {
	f.Add("sh", uint32(7), uint32(42), uint64(123456), []byte("42 (sh) S 7 42"))
	f.Add("a) b) c", uint32(1), uint32(1), uint64(0), []byte(")"))
	f.Add(") R 9 9 ", uint32(9), uint32(0), uint64(1)<<40, []byte("1 (x\n) Z 1 1"))
	f.Fuzz(func(t *testing.T, comm string, ppid, pgid uint32, start uint64, raw []byte) {
		if p, g, _, ok := parseStatChild(raw); ok && (p < 0 || g < 0) {
			t.Fatalf("parseStatChild(%q): negative pid %d or group %d", raw, p, g)
		}
		comm = strings.ReplaceAll(comm, "\x00", "")
		if len(comm) > 15 {
			comm = comm[:15]
		}
		p, g := int(ppid&0x3fffffff), int(pgid&0x3fffffff) // pid_max is at most 2^22
		line := fmt.Sprintf("4242 (%s) S %d %d 4242 0 -1 4194560 100 0 0 0 3 1 0 0 20 0 1 0 %d 1000000 200 18446744073709551615\n", comm, p, g, start)
		gp, gg, gs, ok := parseStatChild([]byte(line))
		if !ok || gp != p || gg != g || gs != start {
			t.Fatalf("parseStatChild(%q) = %d, %d, %d, %v; want %d, %d, %d", line, gp, gg, gs, ok, p, g, start)
		}
		if pp, ok := parseStatPPID([]byte(line)); !ok || pp != p {
			t.Fatalf("parseStatPPID(%q) = %d, %v; want %d", line, pp, ok, p)
		}
	})
}
