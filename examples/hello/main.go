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
//   - cluster.Context is done on SIGTERM or SIGINT (or when the master is
//     gone): httpdrain.Serve then stops accepting (closing, never shutting
//     down, the shared listener) and finishes requests in flight within
//     -grace (default httpdrain.DefaultGrace), then hello exits 0; if the
//     grace ran out, the connections left are closed, a warning says how
//     many, and the exit is still 0. ReadHeaderTimeout is half the grace
//     (at most 2 s), so a client that connected and sent nothing does not
//     hold the stop. Under -heartbeat the package keeps the master's
//     watchdog fed.
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
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/httpdrain"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		log.Fatalf("hello: %v", err)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("hello", flag.ExitOnError)
	addr := fs.String("addr", "", "address to listen on (default: the first inherited socket, else 127.0.0.1:8080)")
	// Below mini-cluster's default -shutdown-timeout (10 s), whose SIGKILL
	// timer starts with the SIGTERM: the drain must end first.
	grace := fs.Duration("grace", httpdrain.DefaultGrace, "how long to wait for requests in flight on SIGTERM (keep it below the master's -shutdown-timeout)")
	_ = fs.Parse(args) // ExitOnError
	if *grace <= 0 {
		*grace = httpdrain.DefaultGrace
	}
	return serve(*addr, *grace)
}

// readHeaderTimeout is how long a connection may take to send a request's
// headers: well below the grace, so that a client that connected and sent
// nothing (a browser's preconnect, say) is closed by net/http during a
// drain instead of holding the stop for the whole grace (see httpdrain).
func readHeaderTimeout(grace time.Duration) time.Duration {
	return min(grace/2, 2*time.Second)
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
		ReadHeaderTimeout: readHeaderTimeout(grace),
	}
	log.Printf("hello: pid %d serving %s (cluster worker: %v)", pid, ln.Addr(), cluster.IsWorker())
	if err := cluster.Ready(); err != nil {
		log.Printf("hello: ready: %v", err)
	}
	context.AfterFunc(ctx, func() {
		// Structured, and under mini-cluster forwarded to the master's log.
		slog.New(cluster.LogHandler(nil)).Info("hello: stopping", "pid", pid, "grace", grace)
	})
	// Serves until ctx is done, then stops accepting (closing, never
	// shutting down, the shared listener) and drains without dropping a
	// request net/http has already read.
	err = httpdrain.Serve(ctx, srv, ln, &httpdrain.Options{Grace: grace})
	var joined interface{ Unwrap() []error }
	if ctx.Err() != nil && errors.Is(err, httpdrain.ErrGraceExpired) && !errors.As(err, &joined) {
		// A stop that was asked for and done: the connections still open
		// at the end of the grace were closed, which is worth a warning,
		// not a failed exit. (Joined with a failure of the server's own,
		// the error is returned.)
		log.Printf("hello: warning: %v", err)
		return nil
	}
	return err
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
