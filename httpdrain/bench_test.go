package httpdrain_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/handoff-go/handoff/httpdrain"
)

// benchBaseline holds the plain srv.Serve figures (ns/op) by workload, so
// the httpdrain run right after it reports its cost as a ratio.
var benchBaseline = map[string]float64{}

// BenchmarkServe measures what httpdrain's tracking costs per request
// against plain srv.Serve, on one keep-alive connection ("keepalive":
// the handler wrapper and the idle hook) and on a new connection per
// request ("newconn": also a connection's registration and removal). The
// client and the server share the process, so ns/op and allocs/op cover
// both. "x-stdlib" is httpdrain's ns/op over stdlib's, from the same run.
func BenchmarkServe(b *testing.B) {
	for _, load := range []string{"keepalive", "newconn"} {
		for _, kind := range []string{"stdlib", "httpdrain"} {
			b.Run(load+"/"+kind, func(b *testing.B) {
				nsPerOp := benchServe(b, kind == "httpdrain", load == "newconn")
				if kind == "stdlib" {
					benchBaseline[load] = nsPerOp
				} else if base := benchBaseline[load]; base > 0 {
					b.ReportMetric(nsPerOp/base, "x-stdlib")
				}
			})
		}
	}
}

func benchServe(b *testing.B, drain, newConn bool) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	if drain {
		go func() { errc <- httpdrain.Serve(ctx, srv, ln, &httpdrain.Options{Grace: 10 * time.Second}) }()
	} else {
		go func() {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
		context.AfterFunc(ctx, func() { srv.Close() })
	}
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			b.Errorf("serve: %v", err)
		}
	}()
	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()

	var c net.Conn
	var br *bufio.Reader
	connect := func() {
		var err error
		if c, err = net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second); err != nil {
			b.Fatal(err)
		}
		br = bufio.NewReader(c)
	}
	hangUp := func() {
		// An RST, not a FIN: no TIME_WAIT entry per connection, so a
		// long run does not exhaust loopback's ephemeral ports.
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	if !newConn {
		connect()
		defer hangUp()
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if newConn {
			connect()
		}
		if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if newConn {
			hangUp()
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	return float64(elapsed.Nanoseconds()) / float64(b.N)
}
