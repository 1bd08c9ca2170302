package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/syncbuf"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{"hello": helloRole})
}

// helloRole is main, standalone, with the arguments of helperproc.Options.
func helloRole() int {
	if err := run(helperproc.Args()); err != nil {
		log.Printf("hello: %v", err)
		return 1
	}
	return 0
}

type syncBuffer = syncbuf.Buffer

// TestStopExitsZero: SIGTERM stops hello with exit status 0 when a client
// holds a connection through the drain: one that connected and never sent
// anything (a preconnect), closed by net/http's ReadHeaderTimeout, which
// is below the grace; and one stuck sending a request body, which keeps
// the drain to the end of the grace: hello then closes it, says so in a
// warning, and still exits 0 (a stop that was asked for, done). With a
// ReadHeaderTimeout above the grace, the first held every stop for the
// whole grace, and either made hello exit 1.
func TestStopExitsZero(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hold    string // what the holding client sends
		warning bool
	}{
		{"idle", "", false},
		{"stalled-body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nfirst bytes", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			cmd := helperproc.Command(t, "hello", &helperproc.Options{Env: []string{pc.Env()}, Args: []string{"-addr", addr, "-grace", "3s"}})
			var stderr syncBuffer
			cmd.Stderr = &stderr
			helperproc.Start(t, cmd)
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
			get := func() error {
				resp, err := client.Get("http://" + addr + "/")
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err == nil && !strings.HasPrefix(string(b), "hello from pid") {
					err = fmt.Errorf("body %q", b)
				}
				return err
			}
			deadline := time.Now().Add(15 * time.Second)
			for err := get(); err != nil; err = get() {
				if time.Now().After(deadline) {
					t.Fatalf("hello never answered on %s: %v\n%s", addr, err, stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			hold, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer hold.Close()
			if _, err := io.WriteString(hold, tc.hold); err != nil {
				t.Fatal(err)
			}
			// Accepted in order: once this one is answered, the holding
			// connection was accepted too, 1.5 s (the ReadHeaderTimeout)
			// before net/http closes it if idle, and 3 s (the grace) before
			// the drain would give up.
			if err := get(); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("hello after SIGTERM: %v, want exit status 0\n%s", err, stderr.String())
				}
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				t.Fatalf("hello did not exit within 20 s of SIGTERM\n%s", stderr.String())
			}
			if got := strings.Contains(stderr.String(), "hello: warning: httpdrain: grace expired"); got != tc.warning {
				t.Errorf("grace-expired warning logged: %v, want %v\n%s", got, tc.warning, stderr.String())
			}
			if err := pc.WaitGone(5 * time.Second); err != nil {
				t.Error(err)
			}
		})
	}
}
