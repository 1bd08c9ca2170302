package loadclient_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/loadclient"
)

func TestRunAccounting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker", "w1")
		w.Write([]byte("hi"))
	})}
	go srv.Serve(ln)
	defer srv.Close()

	for _, tc := range []struct {
		name string
		opts loadclient.Options
	}{
		{"new connections", loadclient.Options{NewConn: 4, Requests: 200}},
		{"keep-alive", loadclient.Options{KeepAlive: 4, Requests: 200}},
		{"both", loadclient.Options{NewConn: 2, KeepAlive: 2, Requests: 200}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Addr, tc.opts.Header, tc.opts.Duration = ln.Addr().String(), "X-Worker", 10*time.Second
			r := loadclient.Run(context.Background(), tc.opts)
			got := [6]int{r.Sent, r.OK, r.Refused, r.Reset, r.Timeout, r.Other}
			if diff := cmp.Diff([6]int{200, 200, 0, 0, 0, 0}, got); diff != "" {
				t.Errorf("sent, ok, refused, reset, timeout, other (-want +got):\n%s\n%v", diff, r)
			}
			if diff := cmp.Diff(map[string]int{"w1": 200}, r.Values); diff != "" {
				t.Errorf("values (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRunClassifiesFailures(t *testing.T) {
	// A port with nothing listening: every request is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := loadclient.Run(context.Background(), loadclient.Options{Addr: addr, NewConn: 2, Requests: 10})
	if r.Refused != 10 || r.Sent != 10 {
		t.Errorf("closed port: %v, want 10 refused", r)
	}

	// A server that closes every connection without replying: resets.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	r = loadclient.Run(context.Background(), loadclient.Options{Addr: ln.Addr().String(), NewConn: 2, Requests: 10})
	if r.Reset != 10 {
		t.Errorf("closing server: %v, want 10 reset", r)
	}

	// A server that never answers: timeouts.
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	r = loadclient.Run(context.Background(), loadclient.Options{Addr: ln2.Addr().String(), NewConn: 2, Requests: 2, Timeout: 100 * time.Millisecond})
	if r.Timeout != 2 {
		t.Errorf("silent server: %v, want 2 timeouts", r)
	}
}

// TestRetriedAfterReset: a server that closes every keep-alive connection
// after one reply makes each later request on it fail with no reply byte;
// each is retried once on a fresh connection, ends ok, and is counted in
// RetriedAfterReset. Record keeps one Reply per ok request.
func TestRetriedAfterReset(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			if req, err := http.ReadRequest(br); err == nil {
				req.Body.Close()
				io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Worker: w1\r\nContent-Length: 2\r\n\r\nhi")
			}
			c.Close()
		}
	}()
	before := time.Now()
	const n = 4
	r := loadclient.Run(context.Background(), loadclient.Options{Addr: ln.Addr().String(), KeepAlive: 1, Requests: n, Header: "X-Worker", Record: true, Duration: 10 * time.Second})
	ln.Close()
	<-served
	got := [4]int{r.Sent, r.OK, r.Failed(), r.RetriedAfterReset}
	if diff := cmp.Diff([4]int{n, n, 0, n - 1}, got); diff != "" {
		t.Errorf("sent, ok, failed, retried after reset (-want +got):\n%s\n%v %q", diff, r, r.Errors)
	}
	if len(r.Replies) != n {
		t.Fatalf("%d replies recorded, want %d", len(r.Replies), n)
	}
	for i, rep := range r.Replies {
		if rep.Value != "w1" || rep.Sent.Before(before) || rep.Done.Before(rep.Sent) {
			t.Errorf("reply %d: %+v", i, rep)
		}
	}
}
