// Command hello is an HTTP hello server that runs standalone or as a
// mini-cluster worker, using only the systemd protocols so the same binary
// works under systemd too:
//
//   - it serves the first socket passed by socket activation (LISTEN_FDS and
//     LISTEN_PID equal to its pid) and otherwise binds -addr;
//   - it sends READY=1 to NOTIFY_SOCKET once it serves, and STOPPING=1 when
//     it begins to stop;
//   - on SIGTERM or SIGINT it stops accepting (closing, never shutting down,
//     the shared listener) and finishes requests in flight.
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
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to bind when not socket-activated")
	grace := flag.Duration("grace", 10*time.Second, "how long to wait for requests in flight on SIGTERM")
	flag.Parse()
	if err := serve(*addr, *grace); err != nil {
		log.Fatalf("hello: %v", err)
	}
}

func serve(addr string, grace time.Duration) error {
	ln, activated, err := listener(addr)
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
	fresh := trackFresh(srv)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Printf("hello: pid %d serving %s (socket-activated: %v)", pid, ln.Addr(), activated)
	notify("READY=1\nSTATUS=serving " + ln.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	notify("STOPPING=1")
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	// Stop accepting first, with close(2): the master and the other workers
	// keep accepting on the shared socket. Then let connections accepted so
	// far send their request before Shutdown, because net/http closes,
	// unanswered, a connection whose request it reads after Shutdown began.
	ln.Close()
	if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	fresh.wait(sctx)
	return srv.Shutdown(sctx)
}

// freshConns tracks accepted connections that have not sent a request yet.
type freshConns struct {
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func trackFresh(srv *http.Server) *freshConns {
	f := &freshConns{conns: map[net.Conn]bool{}}
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if s == http.StateNew {
			f.conns[c] = true
		} else {
			delete(f.conns, c)
		}
	}
	return f
}

// wait returns once every accepted connection has sent its first request,
// or when ctx is done.
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

// listener returns the first socket-activated listener, or binds addr.
func listener(addr string) (net.Listener, bool, error) {
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) {
		n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
		if err != nil || n < 1 {
			return nil, false, fmt.Errorf("LISTEN_FDS=%q: want at least one descriptor", os.Getenv("LISTEN_FDS"))
		}
		f := os.NewFile(3, "listen-fd-3")
		ln, err := net.FileListener(f) // duplicates the descriptor
		f.Close()
		if err != nil {
			return nil, false, fmt.Errorf("descriptor 3: %w", err)
		}
		return ln, true, nil
	}
	ln, err := net.Listen("tcp", addr)
	return ln, false, err
}

// notify sends state to NOTIFY_SOCKET (sd_notify(3)); without one it does
// nothing.
func notify(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		log.Printf("hello: notify: %v", err)
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		log.Printf("hello: notify: %v", err)
	}
}
