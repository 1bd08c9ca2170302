//go:build linux

package cluster

import "testing"

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
