package listenfds_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/listenfds"
)

func TestValidName(t *testing.T) {
	for _, ok := range []string{"http", "a", "with space", strings.Repeat("n", 255), "~!@#"} {
		if err := listenfds.ValidName(ok); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "a:b", strings.Repeat("n", 256), "tab\t", "nl\n", "del\x7f", "é"} {
		if err := listenfds.ValidName(bad); !errors.Is(err, listenfds.ErrName) {
			t.Errorf("ValidName(%q) = %v, want ErrName", bad, err)
		}
	}
}
