//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// naiveSrvArg selects the naive fake worker, TESTPLAN E1's ACCEPT_NAIVE=1
// control: the fake worker's server with an accept loop that retries at
// once on every error, so at EMFILE it spins on the listener (the pending
// connection keeps it readable) where net/http would back off.
const naiveSrvArg = "-naive-srv"

// naiveGiveUp bounds the naive accept loop: after this long failing
// without a break the worker exits instead, longer than any test holds it
// at EMFILE.
const naiveGiveUp = 60 * time.Second

// init runs the naive worker before TestMain, whose roles are its own
// (helpers_test.go); package initialisation is all that runs before it.
func init() {
	if len(os.Args) > 1 && os.Args[1] == naiveSrvArg {
		os.Exit(naiveSrv())
	}
}

// naiveSrv is the naive worker. It answers "pid:generation" in X-Worker
// as fakeSrv does and takes the knobs TestEMFILEUnderLoad uses: SRV_NOFILE
// (its own soft RLIMIT_NOFILE) and SRV_REPORT (<pid>.emfile, <pid>.peak).
func naiveSrv() int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "naive-srv: "+format+"\n", args...)
		return 3
	}
	nofile := os.Getenv("SRV_NOFILE")
	if err := setNofile(nofile); err != nil {
		return fail("%v", err)
	}
	ln, err := fakeListener() // modes_test.go
	if err != nil {
		return fail("%v", err)
	}
	var open openConns
	if dir := os.Getenv("SRV_REPORT"); dir != "" {
		var closeCounters func()
		if ln, closeCounters, err = countEMFILE(dir, ln, &open); err != nil {
			return fail("%v", err)
		}
		defer closeCounters()
	}
	tag := strconv.Itoa(os.Getpid()) + ":" + os.Getenv("HANDOFF_WORKER_GENERATION")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Worker", tag)
			io.WriteString(w, "ok\n")
		}),
		ConnState: open.track,
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if err := sdNotify("READY=1\nSTATUS=naive ready"); err != nil {
		return fail("notify: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(naiveListener{ln}) }()
	select {
	case err := <-errc:
		return fail("serve: %v", err)
	case <-sigs:
	}
	sdNotify("STOPPING=1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return fail("shutdown: %v", err)
	}
	<-errc
	return 0
}

// naiveListener retries a failed accept at once, so net/http never sees
// the error and never backs off.
type naiveListener struct{ net.Listener }

func (l naiveListener) Accept() (net.Conn, error) {
	deadline := time.Now().Add(naiveGiveUp)
	for {
		c, err := l.Listener.Accept()
		if err == nil || errors.Is(err, net.ErrClosed) {
			return c, err
		}
		if time.Now().After(deadline) {
			// The wrapper is no net.Error, so Serve returns it and the
			// worker exits rather than turning into one that backs off.
			return nil, fmt.Errorf("naive accept: failing for %v: %w", naiveGiveUp, err)
		}
	}
}
