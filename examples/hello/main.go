// Command hello is an HTTP hello server that runs standalone, as a
// mini-cluster worker, or under systemd socket activation, with the same
// code, through package cluster's worker API:
//
//   - cluster.Listen with an empty address serves the first socket the
//     process inherited (LISTEN_FDS and LISTEN_PID equal to its pid); with
//     none it binds -addr (default 127.0.0.1:8080). Under mini-cluster an
//     -addr that is not inherited is bound once by the master and shared
//     by every worker;
//   - cluster.Ready sends READY=1 to NOTIFY_SOCKET once it serves;
//   - cluster.Done closes on SIGTERM or SIGINT (or when the master is
//     gone): it stops accepting (closing, never shutting down, the shared
//     listener) and finishes requests in flight. Under -heartbeat the
//     package keeps the master's watchdog fed.
//
// Standalone:
//
//	go run ./examples/hello -addr 127.0.0.1:8080
//
// In a cluster:
//
//	go build -o /tmp/hello ./examples/hello
//	go run ./cmd/mini-cluster -n 4 -listen 127.0.0.1:8080 -- /tmp/hello
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/handoff-go/handoff/cluster"
)

func main() {
	addr := flag.String("addr", "", "address to listen on (default: the first inherited socket, else 127.0.0.1:8080)")
	grace := flag.Duration("grace", 10*time.Second, "how long to wait for requests in flight on SIGTERM")
	flag.Parse()
	if err := serve(*addr, *grace); err != nil {
		log.Fatalf("hello: %v", err)
	}
}

func serve(addr string, grace time.Duration) error {
	ctx := cluster.Context()
	ln, err := listener(ctx, addr)
	if err != nil {
		return err
	}
	worker, gen := os.Getenv("HANDOFF_WORKER_ID"), os.Getenv("HANDOFF_WORKER_GENERATION")
	pid := os.Getpid()
	reply := fmt.Sprintf("hello from pid %d", pid)
	if worker != "" {
		reply += fmt.Sprintf(" (worker %s, generation %s)", worker, gen)
	}
	reply += "\n"
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("X-Worker", strconv.Itoa(pid)+":"+gen)
			fmt.Fprint(w, reply)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	fresh := trackFresh(srv) // after Handler: it wraps it
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Printf("hello: pid %d serving %s (cluster worker: %v)", pid, ln.Addr(), cluster.IsWorker())
	if err := cluster.Ready(); err != nil {
		log.Printf("hello: ready: %v", err)
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Structured, and under mini-cluster forwarded to the master's log.
	slog.New(cluster.LogHandler(nil)).Info("hello: stopping", "pid", pid, "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	// Stop accepting first, with close(2): the master and the other workers
	// keep accepting on the shared socket. Then let the first request of
	// every connection accepted so far reach the handler before Shutdown,
	// because net/http closes, unanswered, a connection whose request it
	// reads after Shutdown began (see trackFresh).
	ln.Close()
	if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	fresh.wait(sctx)
	return srv.Shutdown(sctx)
}

// freshConns tracks accepted connections whose first request has not
// reached the handler yet.
type freshConns struct {
	mu    sync.Mutex
	conns map[net.Conn]bool
}

// connKey carries the accepted connection in each request's context.
type connKey struct{}

// trackFresh sets srv's ConnState and ConnContext and wraps its Handler.
//
// A connection stays fresh until its first request enters the handler,
// not merely until it leaves http.StateNew: net/http marks a connection
// StateActive once it has read a request and only then checks whether
// Shutdown began, closing the connection unanswered if so
// (golang/go#65802). From the handler on, Shutdown waits for the reply.
func trackFresh(srv *http.Server) *freshConns {
	f := &freshConns{conns: map[net.Conn]bool{}}
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		f.mu.Lock()
		defer f.mu.Unlock()
		switch s {
		case http.StateNew:
			f.conns[c] = true
		case http.StateClosed, http.StateHijacked:
			delete(f.conns, c)
		}
	}
	h := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			f.mu.Lock()
			delete(f.conns, c)
			f.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
	return f
}

// wait returns once the first request of every accepted connection has
// reached the handler (or the connection closed), or when ctx is done.
func (f *freshConns) wait(ctx context.Context) {
	for ctx.Err() == nil {
		f.mu.Lock()
		n := len(f.conns)
		f.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// listener listens on addr, which cluster.Listen takes from the inherited
// sockets or the master when it can; the empty addr means the first
// inherited socket, else the default address.
func listener(ctx context.Context, addr string) (net.Listener, error) {
	if addr != "" {
		return cluster.Listen(ctx, "tcp", addr)
	}
	for _, network := range []string{"tcp", "unix"} {
		ln, err := cluster.Listen(ctx, network, "")
		if !errors.Is(err, cluster.ErrNoListener) {
			return ln, err
		}
	}
	return cluster.Listen(ctx, "tcp", "127.0.0.1:8080")
}
