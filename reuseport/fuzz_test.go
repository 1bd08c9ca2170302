package reuseport_test

import (
	"math"
	"math/big"
	"regexp"
	"testing"

	"github.com/handoff-go/handoff/reuseport"
)

// sysctlInt is the grammar of an integer sysctl file, written independently
// of the parser: ASCII blanks and newlines around an optionally negative run
// of decimal digits.
var sysctlInt = regexp.MustCompile(`^[ \t\n]*(-?[0-9]+)[ \t\n]*$`)

// referenceSysctlInt is the oracle for ParseSysctlInt: the grammar above,
// evaluated with math/big, and accepted only if the value fits in an int.
func referenceSysctlInt(b []byte) (int, bool) {
	m := sysctlInt.FindSubmatch(b)
	if m == nil {
		return 0, false
	}
	v, ok := new(big.Int).SetString(string(m[1]), 10)
	if !ok || v.Cmp(big.NewInt(math.MinInt)) < 0 || v.Cmp(big.NewInt(math.MaxInt)) > 0 {
		return 0, false
	}
	return int(v.Int64()), true
}

func TestParseSysctlInt(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"0\n", 0, true},
		{"1\n", 1, true},
		{" \t4096 \n", 4096, true},
		{"-1\n", -1, true},
		{"-0", 0, true},
		{"007", 7, true},
		{"9223372036854775807\n", math.MaxInt, true},
		{"-9223372036854775808\n", math.MinInt, true},
		{"9223372036854775808\n", 0, false},
		{"-9223372036854775809", 0, false},
		{"99999999999999999999999\n", 0, false},
		{"", 0, false},
		{"\n", 0, false},
		{"-", 0, false},
		{"+1", 0, false},
		{"--1", 0, false},
		{"1 2\n", 0, false},
		{"1\t2", 0, false},
		{"0x10", 0, false},
		{"1_000", 0, false},
		{"\u00a01", 0, false}, // no-break space: not a blank the kernel writes
		{"\v1", 0, false},
		{"1\r\n", 0, false},
		{"١", 0, false}, // Arabic-Indic digit one
	}
	if math.MaxInt != math.MaxInt64 {
		t.Skip("table written for 64-bit int")
	}
	for _, tt := range tests {
		n, err := reuseport.ParseSysctlInt([]byte(tt.in))
		if (err == nil) != tt.ok || n != tt.want {
			t.Errorf("ParseSysctlInt(%q) = %d, %v; want %d, ok=%v", tt.in, n, err, tt.want, tt.ok)
		}
		if rn, rok := referenceSysctlInt([]byte(tt.in)); rok != tt.ok || rn != tt.want {
			t.Errorf("reference(%q) = %d, %v; want %d, %v", tt.in, rn, rok, tt.want, tt.ok)
		}
	}
}

// FuzzParseSysctlInt checks that the parser of /proc/sys integer files never
// panics and agrees with an independent reference (regexp grammar plus
// math/big range check) on which inputs are accepted and on their value.
func FuzzParseSysctlInt(f *testing.F) {
	for _, s := range []string{"0\n", "1\n", "2", " 4096 \n", "", "\n", "-1\n", "1 2\n", "0x10", "+1", "-",
		"99999999999999999999999\n", "9223372036854775807", "-9223372036854775808", "9223372036854775808", "\u00a01"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := reuseport.ParseSysctlInt(b)
		want, ok := referenceSysctlInt(b)
		if !ok {
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
