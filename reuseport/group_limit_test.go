package reuseport_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/handoff-go/handoff/reuseport"
)

// TestGroupSizeLimit pins the per-OS group limit: FreeBSD (SO_REUSEPORT_LB,
// INPCBLBGROUP_SIZMAX) and DragonFly (INP_LOCALGROUP_SIZMAX) balance over at
// most 256 sockets and silently leave a 257th out, so a larger group is
// refused before any socket is opened.
func TestGroupSizeLimit(t *testing.T) {
	want := reuseport.MaxGroup
	switch runtime.GOOS {
	case "freebsd", "dragonfly":
		want = 256
	}
	if got := reuseport.MaxGroupSize(); got != want {
		t.Fatalf("MaxGroupSize() = %d on %s, want %d", got, runtime.GOOS, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tests := []struct {
		name string
		run  func() error
	}{
		{"tcp", func() error { _, err := reuseport.ListenGroup(ctx, "tcp4", "127.0.0.1:0", want+1); return err }},
		{"udp", func() error { _, err := reuseport.ListenPacketGroup(ctx, "udp4", "127.0.0.1:0", want+1); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); !errors.Is(err, reuseport.ErrInvalidConfig) {
				t.Errorf("group of %d: %v, want ErrInvalidConfig", want+1, err)
			}
		})
	}
}
