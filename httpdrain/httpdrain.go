package httpdrain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultGrace is the grace Serve uses when Options.Grace is zero. It is
// below mini-cluster's default -shutdown-timeout (10 s), so a worker that
// cannot drain in time still ends on its own, with an error saying why,
// before its master kills it.
const DefaultGrace = 5 * time.Second

// ErrGraceExpired is returned (wrapped, with the number of connections
// still open) when the grace ran out before the drain was over; Serve
// closed the remaining connections.
var ErrGraceExpired = errors.New("httpdrain: grace expired")

// Options configures Serve. A nil *Options is the zero Options.
type Options struct {
	// Grace bounds the drain, from the moment ctx is done (or the server
	// failed): waiting for fresh connections plus Shutdown. Past it the
	// remaining connections are closed and Serve returns ErrGraceExpired.
	// Zero or negative means DefaultGrace.
	Grace time.Duration
}

// testHookQuiesce, when set by a test, runs once Serve starts waiting for
// fresh connections, before Shutdown.
var testHookQuiesce func()

// testHookServing, when set by a test, runs once srv.Serve was started,
// before Serve waits for it or for ctx.
var testHookServing func()

// Serve serves srv on ln until ctx is done, then drains srv: it closes ln,
// waits until the first request of every accepted connection has reached
// srv's handler (or the connection closed), and shuts srv down, all within
// the grace. It returns nil when the drain ended within the grace. See
// the package documentation for the bug this avoids and for what Serve
// does to srv.
//
// If ctx is already done, Serve accepts nothing: it closes ln (the
// connections queued on it go to whoever else accepts on that socket) and
// returns nil.
//
// If srv.Serve fails on its own (an Accept error), Serve drains the
// connections already accepted the same way and returns that error as is,
// joined with ErrGraceExpired if the grace ran out too. If someone else
// shut srv down, Serve returns http.ErrServerClosed at once.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, opt *Options) error {
	grace := DefaultGrace
	if opt != nil && opt.Grace > 0 {
		grace = opt.Grace
	}
	t := install(srv, ln)
	// srv.Serve closes its listener when it returns; the once keeps a
	// listener that is not idempotent from being closed twice.
	l := &onceCloseListener{Listener: ln}
	var serveErr error
	var deadline time.Time
	if ctx.Err() != nil {
		deadline = time.Now().Add(grace)
		l.Close()
	} else {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(l) }()
		if testHookServing != nil {
			testHookServing()
		}
		select {
		case serveErr = <-errc:
			if errors.Is(serveErr, http.ErrServerClosed) {
				return serveErr
			}
			if ctx.Err() != nil {
				// Told to stop as Accept failed, both ready when select
				// chose (a handoff listener whose master is stopping
				// fails as the worker is told to stop): an ordinary stop,
				// whichever select picked.
				serveErr = nil
			}
			deadline = time.Now().Add(grace)
		case <-ctx.Done():
			// The grace includes closing ln, which may take time (a
			// handoff listener waits for its master's acknowledgement).
			deadline = time.Now().Add(grace)
			// A close error leaves nothing to undo; srv.Serve ignores it
			// as well.
			l.Close()
			// Accept fails once its listener is closed (the net.Listener
			// contract), so Serve returns; every connection it accepted
			// went through ConnContext before that.
			<-errc
		}
	}
	err := t.drain(srv, deadline, grace)
	if serveErr == nil {
		return err
	}
	if err != nil {
		return errors.Join(serveErr, err)
	}
	return serveErr
}

// drain waits for the fresh connections, then shuts srv down, until
// deadline (the end of grace). No connection is added any more: srv.Serve
// has returned.
func (t *tracker) drain(srv *http.Server, deadline time.Time, grace time.Duration) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	quiet := t.quiesce()
	if testHookQuiesce != nil {
		testHookQuiesce()
	}
	select {
	case <-quiet:
	case <-ctx.Done():
		err := t.expired(grace)
		// Shutdown once, with ctx done, so hooks registered with
		// RegisterOnShutdown still run and idle connections close; then
		// Close the rest.
		_ = srv.Shutdown(ctx)
		srv.Close()
		return err
	}
	if err := srv.Shutdown(ctx); err != nil {
		if ctx.Err() == nil {
			return err
		}
		// Shutdown ran the RegisterOnShutdown hooks already; another
		// Shutdown would run them twice.
		err := t.expired(grace)
		srv.Close()
		return err
	}
	return nil
}

// tracker counts accepted connections whose first request has not reached
// the handler yet.
type tracker struct {
	conns sync.Map // net.Conn -> *connInfo, every accepted connection not closed or hijacked

	mu       sync.Mutex
	fresh    int
	draining bool
	quiet    chan struct{} // closed once draining with no fresh connection
}

// connInfo is one accepted connection; the handler finds it in the
// request's context, the ConnState hook in tracker.conns.
type connInfo struct {
	fresh atomic.Bool
}

// connKey is the request context key of a connection's *connInfo.
type connKey struct{}

// install wraps srv's hooks and handler with t's, keeping the caller's.
func install(srv *http.Server, ln net.Listener) *tracker {
	t := &tracker{quiet: make(chan struct{})}
	cc := srv.ConnContext
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if cc != nil {
			ctx = cc(ctx, c)
			if ctx == nil {
				// net/http panics on it, as without us.
				return nil
			}
		}
		// Here, not in ConnState's StateNew: both run in Serve's accept
		// loop before the next Accept, but only this one can hand the
		// handler its connection.
		ci := &connInfo{}
		ci.fresh.Store(true)
		t.mu.Lock()
		t.fresh++
		t.mu.Unlock()
		t.conns.Store(c, ci)
		return context.WithValue(ctx, connKey{}, ci)
	}
	cs := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateIdle:
			// A first request answered without srv.Handler (OPTIONS *)
			// leaves the connection idle: no longer fresh either.
			if v, ok := t.conns.Load(c); ok {
				t.settle(v.(*connInfo))
			}
		case http.StateClosed, http.StateHijacked:
			if v, ok := t.conns.LoadAndDelete(c); ok {
				t.settle(v.(*connInfo))
			}
		}
		if cs != nil {
			cs(c, s)
		}
	}
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// From the handler on, Shutdown waits for the reply: it closes
		// only idle connections (and StateNew ones older than 5 s).
		if ci, ok := r.Context().Value(connKey{}).(*connInfo); ok && ci.fresh.Load() {
			t.settle(ci)
		}
		h.ServeHTTP(w, r)
	})
	if bc := srv.BaseContext; bc != nil {
		srv.BaseContext = func(net.Listener) context.Context { return bc(ln) }
	}
	return t
}

// settle marks ci as no longer fresh, once.
func (t *tracker) settle(ci *connInfo) {
	if !ci.fresh.CompareAndSwap(true, false) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fresh--
	if t.draining && t.fresh == 0 {
		close(t.quiet)
	}
}

// quiesce starts the drain and returns the channel closed once no
// connection is fresh.
func (t *tracker) quiesce() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.draining {
		t.draining = true
		if t.fresh == 0 {
			close(t.quiet)
		}
	}
	return t.quiet
}

// expired is the error for a grace that ran out with the connections t
// still holds.
func (t *tracker) expired(grace time.Duration) error {
	open := 0
	t.conns.Range(func(any, any) bool { open++; return true })
	t.mu.Lock()
	fresh := t.fresh
	t.mu.Unlock()
	return fmt.Errorf("%w after %v: closed %d connections, %d of them without a request served", ErrGraceExpired, grace, open, fresh)
}

// onceCloseListener closes its listener once; later calls return the
// first call's error.
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}
