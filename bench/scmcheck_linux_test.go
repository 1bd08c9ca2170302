//go:build linux

package main_test

import (
	"os"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// TestSCMReceiverChecksDescriptors feeds BenchmarkSCM's Go receivers a
// message with too few, too many (truncated by the kernel) or no
// descriptors: each must fail, as the C loop does, instead of counting the
// payload and looking faster.
func TestSCMReceiverChecksDescriptors(t *testing.T) {
	const k, p = 2, 4
	tests := []struct {
		name    string
		send    int // descriptors sent in the one message
		wantErr bool
	}{
		{"exact", k, false},
		{"one short", k - 1, true},
		{"none", 0, true},
		{"one too many", k + 1, true},
	}
	for _, sock := range scmSockets {
		for _, impl := range []string{"naive", "scm", "batched"} {
			for _, tt := range tests {
				t.Run(sock.name+"/"+impl+"/"+tt.name, func(t *testing.T) {
					fdcensus.Verify(t)
					local, remote, err := scmrights.Socketpair(sock.typ)
					if err != nil {
						t.Fatal(err)
					}
					defer remote.Close()
					defer local.Close()
					devnull, err := os.Open(os.DevNull)
					if err != nil {
						t.Fatal(err)
					}
					defer devnull.Close()
					fds := make([]int, tt.send)
					for i := range fds {
						fds[i] = int(devnull.Fd())
					}
					var oob []byte
					if len(fds) > 0 {
						oob = unix.UnixRights(fds...)
					}
					if err := unix.Sendmsg(int(remote.Fd()), make([]byte, p), oob, nil, 0); err != nil {
						t.Fatal(os.NewSyscallError("sendmsg", err))
					}
					// A receiver that waited for more must fail, not hang.
					if err := local.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
						t.Fatal(err)
					}
					err = scmReceiver(t, local, impl, k, p)(1)
					if (err != nil) != tt.wantErr {
						t.Errorf("receive %d descriptors with room for %d: %v, want an error: %v", tt.send, k, err, tt.wantErr)
					}
				})
			}
		}
	}
}
