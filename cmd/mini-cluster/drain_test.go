//go:build linux

package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
)

// TestFreshConnsDrain: the fake worker's drain (stop accepting, wait for
// fresh connections, Shutdown) answers a first request that net/http has
// read but not yet handed to the handler when the drain begins. net/http
// marks such a connection StateActive and only then checks for Shutdown;
// the ConnState hook here holds the connection in that window until
// Shutdown begins, or for 500 ms when the drain rightly waits for the
// handler first. A drain that trusted StateActive lost the request, rarely,
// in TestRestartsUnderLoad/L1_parallel.
func TestFreshConnsDrain(t *testing.T) {
	fdcensus.Verify(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})}
	fresh := trackFresh(srv)
	begun := make(chan struct{})
	srv.RegisterOnShutdown(func() { close(begun) })
	read := make(chan struct{})
	var once sync.Once
	track := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		track(c, s)
		if s == http.StateActive {
			once.Do(func() { close(read) })
			select {
			case <-begun:
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		<-errc
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: drain\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-read:
	case <-time.After(10 * time.Second):
		t.Fatal("request not read within 10 s")
	}

	// The drain, in fakeSrv's order.
	ln.Close()
	<-errc
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fresh.wait(ctx)
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}

	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("request read before the drain began got no reply: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Errorf("reply %s %q (%v), want 200 %q", resp.Status, body, err, "ok\n")
	}
}
