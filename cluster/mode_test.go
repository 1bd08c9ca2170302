package cluster_test

import (
	"errors"
	"testing"

	"github.com/handoff-go/handoff/cluster"
)

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want cluster.Mode
		err  bool
	}{
		{"shared", cluster.ModeShared, false},
		{"reuseport", cluster.ModeReuseport, false},
		{"handoff", cluster.ModeHandoff, false},
		{"", 0, true},
		{"Shared", 0, true},
		{"reuse-port", 0, true},
	} {
		got, err := cluster.ParseMode(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err != nil && !errors.Is(err, cluster.ErrMode) {
			t.Errorf("ParseMode(%q) error %v does not match ErrMode", tc.in, err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tc.in)
		}
	}
}
