package reuseport_test

import (
	"testing"

	"github.com/handoff-go/handoff/internal/helperproc"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{
		"join":         joinHelper,
		"lossns":       lossNetnsHelper,
		"acceptserver": acceptServerHelper,
		"probens":      probeNetnsHelper,
		"portzerons":   portZeroNetnsHelper,
	})
}
