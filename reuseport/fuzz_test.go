package reuseport_test

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/handoff-go/handoff/reuseport"
)

// FuzzParseSysctlInt checks that the parser of /proc/sys integer files never
// panics and accepts exactly one optionally padded decimal integer.
func FuzzParseSysctlInt(f *testing.F) {
	for _, s := range []string{"0\n", "1\n", "2", " 4096 \n", "", "\n", "-1\n", "1 2\n", "0x10", "99999999999999999999999\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := reuseport.ParseSysctlInt(b)
		want, werr := strconv.Atoi(string(bytes.TrimSpace(b)))
		if werr != nil || len(bytes.TrimSpace(b)) > 20 {
			if err == nil {
				t.Fatalf("ParseSysctlInt(%q) = %d, want an error", b, n)
			}
			return
		}
		if err != nil || n != want {
			t.Fatalf("ParseSysctlInt(%q) = %d, %v; want %d", b, n, err, want)
		}
	})
}
