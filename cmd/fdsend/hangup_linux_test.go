//go:build linux

package main_test

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	fdsend "github.com/handoff-go/handoff/cmd/fdsend"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"golang.org/x/sys/unix"
)

// fdrecv hanging up without a reply for us is one failure, exit 8,
// whenever it happens: before our send (its -timeout, or another
// sender's message was taken; the send fails with EPIPE, then end of
// file), or after it with our message unread (the kernel reports
// ECONNRESET rather than end of file). It used to be exit 1 in both
// cases. (After our message was read: "closed without reply" in
// TestReplies.)
func TestHangUpWithoutReply(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name   string
		before bool // hang up before fdsend sends
	}{
		{"before our send", true},
		{"after our send, message unread", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			closed := make(chan struct{})
			path := fakeReceiver(t, func(c *net.UnixConn) {
				defer close(closed)
				if !tt.before {
					// Wait until the message is queued, then close
					// without reading it.
					_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
					rc, err := c.SyscallConn()
					if err != nil {
						t.Error(err)
						return
					}
					if err := rc.Read(func(fd uintptr) bool {
						pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
						n, _ := unix.Poll(pfd, 0)
						return n > 0
					}); err != nil {
						t.Errorf("receiver waiting for the message: %v", err)
					}
				}
				c.Close()
			})
			if tt.before {
				defer fdsend.SetBeforeSend(func() {
					select {
					case <-closed:
					case <-time.After(10 * time.Second):
						t.Error("the receiver did not hang up")
					}
				})()
			}
			code, out := runFdsend("-socket", path, "-timeout", "20s", "-file", os.DevNull)
			if code != 8 || !strings.Contains(out, "fdrecv closed the connection without replying") {
				t.Errorf("exit %d, output:\n%s\nwant exit 8, fdrecv closed the connection without replying", code, out)
			}
		})
	}
}
