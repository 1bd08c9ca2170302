//go:build linux

package main

import (
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// TestTinyBacklogRestartBurst is TESTPLAN E3: the cluster's listener has
// a backlog of 8 (handed over by socket activation, as systemd's Backlog=
// would) while 64 clients open a connection per request and the cluster
// restarts three times. A full accept queue turns connections away
// without a reply and their SYN is sent again, so they show up as latency,
// never as errors: no request may fail, and p99 is logged so a regression
// is visible.
func TestTinyBacklogRestartBurst(t *testing.T) {
	const restarts = 3
	for _, mode := range []string{"shared", "handoff"} {
		t.Run("E3 "+mode, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			lf := os.NewFile(uintptr(fd), "backlog-8")
			defer lf.Close()
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Fatal(err)
			}
			if err := unix.Listen(fd, 8); err != nil {
				t.Fatal(err)
			}
			sa, err := unix.Getsockname(fd)
			if err != nil {
				t.Fatal(err)
			}
			addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}).String()
			m := startActivated(t, pc, []*os.File{lf}, "",
				append([]string{"-n", "2", "-mode", mode, "-listen", "127.0.0.1:1", "-shutdown-timeout", "2s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
			m.waitReady()
			over0 := listenOverflows(t)
			// SYN retries back off 1 s, 2 s, 4 s...: the timeout leaves room
			// for several.
			stop := runLoad(loadclient.Options{Addr: addr, NewConn: 64, Requests: 20000, Duration: 60 * time.Second, Timeout: 20 * time.Second})
			defer stop()
			time.Sleep(300 * time.Millisecond)
			for i := range restarts {
				m.signal(syscall.SIGHUP)
				if !waitFor(15*time.Second, func() bool { return count(m.records(), "restart done", "restart failed") >= i+1 }) {
					t.Fatalf("restart %d not done within 15 s; %v", i+1, stop())
				}
				time.Sleep(300 * time.Millisecond)
			}
			res := stop()
			recs := m.records()
			over := listenOverflows(t) - over0
			t.Logf("%s, backlog 8, %d restarts: %v; accept queue overflows %d", mode, restarts, res, over)
			if over == 0 {
				t.Errorf("the accept queue never overflowed: the burst did not test a tiny backlog")
			}
			if n := count(recs, "restart failed"); n != 0 {
				t.Errorf("%d restarts failed", n)
			}
			if res.Sent == 0 || res.Failed() != 0 || res.OK != res.Sent {
				t.Errorf("requests failed with a backlog of 8: %v; errors %q", res, res.Errors)
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}

// listenOverflows is the kernel's count of connections turned away by a
// full accept queue (TcpExt ListenOverflows in /proc/net/netstat).
func listenOverflows(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
			continue
		}
		for j, n := range names {
			if n == "ListenOverflows" {
				v, err := strconv.Atoi(values[j])
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatal("no TcpExt ListenOverflows in /proc/net/netstat")
	return 0
}
