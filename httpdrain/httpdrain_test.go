//go:build linux

package httpdrain_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/httpdrain"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, nil)
}

// wait is the bound on every wait in these tests; none is expected to
// come near it.
const wait = 10 * time.Second

const request = "GET / HTTP/1.1\r\nHost: drain\r\n\r\n"

// okHandler answers "ok\n".
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.WriteString(w, "ok\n")
})

// countingListener counts Accept and Close calls; acceptErr, when set,
// makes the next Accept fail with it.
type countingListener struct {
	net.Listener
	accepts, closes atomic.Int32
	acceptErr       chan error
}

func (l *countingListener) Accept() (net.Conn, error) {
	l.accepts.Add(1)
	if l.acceptErr != nil {
		type result struct {
			c   net.Conn
			err error
		}
		res := make(chan result, 1)
		go func() { c, err := l.Listener.Accept(); res <- result{c, err} }()
		select {
		case r := <-res:
			return r.c, r.err
		case err := <-l.acceptErr:
			// The real Accept returns once Serve closes the listener.
			go func() {
				if r := <-res; r.c != nil {
					r.c.Close()
				}
			}()
			return nil, err
		}
	}
	return l.Listener.Accept()
}

func (l *countingListener) Close() error {
	l.closes.Add(1)
	return l.Listener.Close()
}

func listen(t *testing.T) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &countingListener{Listener: ln}
}

// serving is httpdrain.Serve running in the background: cancel starts
// the drain, result waits for Serve's error.
type serving struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // valid once done is closed
}

func start(t *testing.T, srv *http.Server, ln net.Listener, opt *httpdrain.Options) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.err = httpdrain.Serve(ctx, srv, ln, opt)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(wait):
			t.Errorf("Serve did not return within %v", wait)
		}
	})
	return s
}

func (s *serving) result(t *testing.T) error {
	t.Helper()
	within(t, s.done, "Serve's return")
	return s.err
}

func dial(t *testing.T, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	return c
}

// reply reads one response from c and returns its status code and body.
func reply(br *bufio.Reader) (int, string, error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// within waits for ch or fails the test after the bound.
func within(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("%s: not within %v", what, wait)
	}
}

// TestFreshConnHeldInGap holds a fresh connection in the window net/http
// leaves between reading its first request (StateActive) and checking
// whether Shutdown began, and starts the drain right then. httpdrain
// answers it; plain close-then-Shutdown drops it without a reply, which
// shows the test catches the bug (golang/go#65802's check; TESTPLAN L1,
// C16). The caller's StateActive hook holds the connection until Shutdown
// begins or httpdrain starts waiting for fresh connections, whichever
// comes first, so both outcomes are deterministic.
func TestFreshConnHeldInGap(t *testing.T) {
	tests := []struct {
		name string
		// drain serves srv on ln until stop closes, then drains it.
		drain    func(stop <-chan struct{}, srv *http.Server, ln net.Listener) error
		answered bool
	}{
		{
			name: "httpdrain",
			drain: func(stop <-chan struct{}, srv *http.Server, ln net.Listener) error {
				ctx, cancel := context.WithCancel(context.Background())
				go func() { <-stop; cancel() }()
				return httpdrain.Serve(ctx, srv, ln, &httpdrain.Options{Grace: wait})
			},
			answered: true,
		},
		{
			name: "plain Shutdown",
			drain: func(stop <-chan struct{}, srv *http.Server, ln net.Listener) error {
				errc := make(chan error, 1)
				go func() { errc <- srv.Serve(ln) }()
				<-stop
				ln.Close()
				<-errc
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				defer cancel()
				return srv.Shutdown(ctx)
			},
			answered: false,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			ln := listen(t)
			srv := &http.Server{Handler: okHandler}
			begun := make(chan struct{})
			srv.RegisterOnShutdown(func() { close(begun) })
			quiescing := make(chan struct{})
			defer httpdrain.SetTestHookQuiesce(func() { close(quiescing) })()
			read := make(chan struct{})
			var once sync.Once
			var released atomic.Bool
			srv.ConnState = func(c net.Conn, s http.ConnState) {
				if s != http.StateActive {
					return
				}
				once.Do(func() { close(read) })
				select {
				case <-begun:
					released.Store(true)
				case <-quiescing:
					released.Store(true)
				case <-time.After(wait):
				}
			}
			stop := make(chan struct{})
			var stopOnce sync.Once
			stopNow := func() { stopOnce.Do(func() { close(stop) }) }
			// On an early failure too, so the drain ends and closes ln.
			t.Cleanup(stopNow)
			errc := make(chan error, 1)
			go func() { errc <- tc.drain(stop, srv, ln) }()

			c := dial(t, ln.Addr())
			if _, err := io.WriteString(c, request); err != nil {
				t.Fatal(err)
			}
			within(t, read, "request read")
			stopNow()

			code, body, err := reply(bufio.NewReader(c))
			if !released.Load() {
				t.Fatal("the hook was released by its timeout, not by the drain")
			}
			if tc.answered {
				if err != nil || code != http.StatusOK || body != "ok\n" {
					t.Errorf("reply %d %q, %v; want 200 %q", code, body, err, "ok\n")
				}
			} else if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				t.Errorf("plain Shutdown: reply %d %q, %v; want the request dropped (EOF)", code, body, err)
			}
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("drain: %v", err)
				}
			case <-time.After(wait):
				t.Fatalf("drain not over within %v", wait)
			}
		})
	}
}

// TestDrainAnswersEverything: requests in their handler when the drain
// begins finish; connections accepted before it that send their first
// request only during the drain are answered; a connection idle after its
// reply is closed; new connections are refused once the listener is
// closed; Serve returns nil (TESTPLAN C16, L1).
func TestDrainAnswersEverything(t *testing.T) {
	const inHandler, silent = 8, 4
	fdcensus.Verify(t)
	ln := listen(t)
	entered := make(chan struct{}, inHandler+silent+1)
	release := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		if r.URL.Path == "/block" {
			select {
			case <-release:
			case <-time.After(wait):
			}
		}
		io.WriteString(w, "ok\n")
	})}
	var accepted atomic.Int32
	acceptedAll := make(chan struct{})
	total := int32(inHandler + silent + 1)
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew && accepted.Add(1) == total {
			close(acceptedAll)
		}
	}
	quiescing := make(chan struct{})
	defer httpdrain.SetTestHookQuiesce(func() { close(quiescing) })()
	s := start(t, srv, ln, &httpdrain.Options{Grace: wait})

	// One keep-alive connection answered before the drain: idle.
	idle := dial(t, ln.Addr())
	idleR := bufio.NewReader(idle)
	if _, err := io.WriteString(idle, request); err != nil {
		t.Fatal(err)
	}
	if code, _, err := reply(idleR); err != nil || code != http.StatusOK {
		t.Fatalf("idle connection's first request: %d, %v", code, err)
	}
	<-entered
	blocked := make([]net.Conn, inHandler)
	for i := range blocked {
		blocked[i] = dial(t, ln.Addr())
		if _, err := io.WriteString(blocked[i], "GET /block HTTP/1.1\r\nHost: drain\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	for range inHandler {
		within(t, entered, "request in handler")
	}
	quiet := make([]net.Conn, silent)
	for i := range quiet {
		quiet[i] = dial(t, ln.Addr())
	}
	within(t, acceptedAll, "every connection accepted")

	s.cancel()
	within(t, quiescing, "drain waiting for fresh connections")
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), wait); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial during the drain: %v, want ECONNREFUSED", err)
	}
	// Sent only now, into a drain that has closed its listener.
	for _, c := range quiet {
		if _, err := io.WriteString(c, request); err != nil {
			t.Fatal(err)
		}
	}
	for range silent {
		within(t, entered, "late first request in handler")
	}
	close(release)

	var got []string
	for _, c := range append(blocked, quiet...) {
		code, body, err := reply(bufio.NewReader(c))
		if err != nil {
			got = append(got, err.Error())
			continue
		}
		got = append(got, http.StatusText(code)+" "+body)
	}
	want := make([]string, inHandler+silent)
	for i := range want {
		want[i] = "OK ok\n"
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("replies (-want +got):\n%s", d)
	}
	if err := s.result(t); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := idleR.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle keep-alive connection after the drain: %v, want EOF", err)
	}
	if n := ln.closes.Load(); n != 1 {
		t.Errorf("listener closed %d times, want 1", n)
	}
}

// TestFirstRequestWithoutHandler: a first request that never reaches
// srv.Handler still ends the connection's freshness, so it does not hold
// the drain: OPTIONS * (answered by net/http itself, the connection left
// idle), a malformed request (400, closed), and a hijacked connection
// still open after the drain.
func TestFirstRequestWithoutHandler(t *testing.T) {
	tests := []struct {
		name, request, wantStatus string
	}{
		{name: "OPTIONS *", request: "OPTIONS * HTTP/1.1\r\nHost: drain\r\n\r\n", wantStatus: "HTTP/1.1 200 OK"},
		{name: "malformed", request: "NOT HTTP\r\n\r\n", wantStatus: "HTTP/1.1 400 Bad Request"},
		{name: "hijacked", request: "GET /hijack HTTP/1.1\r\nHost: drain\r\n\r\n", wantStatus: "HTTP/1.1 101 Switching Protocols"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			ln := listen(t)
			hijacked := make(chan net.Conn, 1)
			defer func() {
				select {
				case c := <-hijacked:
					c.Close()
				default:
				}
			}()
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c, brw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					t.Errorf("hijack: %v", err)
					return
				}
				hijacked <- c
				brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n\r\n")
				brw.Flush()
			})}
			s := start(t, srv, ln, &httpdrain.Options{Grace: wait / 2})
			c := dial(t, ln.Addr())
			if _, err := io.WriteString(c, tc.request); err != nil {
				t.Fatal(err)
			}
			status, err := bufio.NewReader(c).ReadString('\n')
			if d := cmp.Diff(tc.wantStatus+"\r\n", status); d != "" || err != nil {
				t.Fatalf("status line (-want +got):\n%s%v", d, err)
			}
			s.cancel()
			if err := s.result(t); err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
}

// TestGraceExpired: what may hold a drain past its grace (a connection
// that never sends anything, a handler that never returns) does not; the
// connection is closed and Serve returns ErrGraceExpired. With
// ReadHeaderTimeout below the grace, net/http closes the silent connection
// itself and the drain succeeds.
func TestGraceExpired(t *testing.T) {
	tests := []struct {
		name              string
		readHeaderTimeout time.Duration
		grace             time.Duration
		path              string // "" sends nothing
		wantErr           error
	}{
		{name: "silent connection", grace: 200 * time.Millisecond, wantErr: httpdrain.ErrGraceExpired},
		{name: "silent connection, ReadHeaderTimeout", readHeaderTimeout: 100 * time.Millisecond, grace: wait / 2},
		{name: "handler past the grace", grace: 200 * time.Millisecond, path: "/block", wantErr: httpdrain.ErrGraceExpired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			ln := listen(t)
			done := make(chan struct{})
			defer close(done)
			entered := make(chan struct{})
			var accepted sync.WaitGroup
			accepted.Add(1)
			srv := &http.Server{
				ReadHeaderTimeout: tc.readHeaderTimeout,
				ConnState: func(c net.Conn, s http.ConnState) {
					if s == http.StateNew {
						accepted.Done()
					}
				},
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					close(entered)
					select {
					case <-r.Context().Done():
					case <-done:
					}
				}),
			}
			s := start(t, srv, ln, &httpdrain.Options{Grace: tc.grace})
			c := dial(t, ln.Addr())
			if tc.path != "" {
				if _, err := io.WriteString(c, "GET "+tc.path+" HTTP/1.1\r\nHost: drain\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				within(t, entered, "request in handler")
			}
			accepted.Wait()
			s.cancel()
			if err := s.result(t); !errors.Is(err, tc.wantErr) {
				t.Errorf("Serve: %v, want %v", err, tc.wantErr)
			}
			// Closed by the server either way: EOF, no reply.
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("client read after the drain: %v, want EOF", err)
			}
		})
	}
}

// TestCallerHooks: the caller's ConnState, ConnContext, BaseContext and
// Handler keep working under Serve, BaseContext with the caller's own
// listener; a nil Handler still means http.DefaultServeMux.
func TestCallerHooks(t *testing.T) {
	for _, nilHandler := range []bool{false, true} {
		name := "handler"
		if nilHandler {
			name = "DefaultServeMux"
		}
		t.Run(name, func(t *testing.T) {
			fdcensus.Verify(t)
			ln := listen(t)
			var mu sync.Mutex
			var states []string
			closed := make(chan struct{})
			var baseLn net.Listener
			srv := &http.Server{
				BaseContext: func(l net.Listener) context.Context {
					mu.Lock()
					baseLn = l
					mu.Unlock()
					return context.WithValue(context.Background(), ctxKey("base"), "b")
				},
				ConnContext: func(ctx context.Context, c net.Conn) context.Context {
					return context.WithValue(ctx, ctxKey("conn"), "c")
				},
				ConnState: func(c net.Conn, s http.ConnState) {
					mu.Lock()
					states = append(states, s.String())
					mu.Unlock()
					if s == http.StateClosed {
						close(closed)
					}
				},
			}
			path := "/"
			if nilHandler {
				path = defaultMuxPath()
			} else {
				srv.Handler = http.HandlerFunc(echoContext)
			}
			s := start(t, srv, ln, nil)
			c := dial(t, ln.Addr())
			br := bufio.NewReader(c)
			var got []string
			for range 2 {
				if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: drain\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				code, body, err := reply(br)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, http.StatusText(code)+" "+body)
			}
			s.cancel()
			if err := s.result(t); err != nil {
				t.Errorf("Serve: %v", err)
			}
			within(t, closed, "StateClosed")
			mu.Lock()
			defer mu.Unlock()
			want := struct{ Replies, States []string }{
				Replies: []string{"OK bc", "OK bc"},
				States:  []string{"new", "active", "idle", "active", "idle", "closed"},
			}
			if d := cmp.Diff(want, struct{ Replies, States []string }{got, states}); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
			if baseLn != ln {
				t.Errorf("BaseContext got %T %p, want the caller's listener %p", baseLn, baseLn, ln)
			}
		})
	}
}

// ctxKey keys the caller's context values in TestCallerHooks.
type ctxKey string

// echoContext writes the values BaseContext and ConnContext set.
func echoContext(w http.ResponseWriter, r *http.Request) {
	base, _ := r.Context().Value(ctxKey("base")).(string)
	conn, _ := r.Context().Value(ctxKey("conn")).(string)
	io.WriteString(w, base+conn)
}

var registerOnce sync.Once

// defaultMuxPath registers, once per process, a handler in
// http.DefaultServeMux that echoes the base and connection context values.
func defaultMuxPath() string {
	const path = "/httpdrain-test"
	registerOnce.Do(func() {
		http.HandleFunc(path, echoContext)
	})
	return path
}

// TestServeError: an error of srv.Serve that the drain did not cause is
// returned as is, after the connections already accepted are drained;
// the listener is closed exactly once on every path.
func TestServeError(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name string
		// fail makes srv.Serve return while ctx is not done.
		fail    func(ln *countingListener, srv *http.Server)
		wantErr error
	}{
		{name: "accept error", fail: func(ln *countingListener, _ *http.Server) { ln.acceptErr <- errBoom }, wantErr: errBoom},
		{name: "listener closed by another party", fail: func(ln *countingListener, _ *http.Server) { ln.Listener.Close() }, wantErr: net.ErrClosed},
		{name: "server shut down by another party", fail: func(_ *countingListener, srv *http.Server) { srv.Close() }, wantErr: http.ErrServerClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			ln := listen(t)
			ln.acceptErr = make(chan error, 1)
			var accepted sync.WaitGroup
			accepted.Add(1)
			srv := &http.Server{Handler: okHandler, ConnState: func(c net.Conn, s http.ConnState) {
				if s == http.StateNew {
					accepted.Done()
				}
			}}
			quiescing := make(chan struct{})
			defer httpdrain.SetTestHookQuiesce(func() { close(quiescing) })()
			s := start(t, srv, ln, &httpdrain.Options{Grace: wait})
			c := dial(t, ln.Addr())
			accepted.Wait()
			tc.fail(ln, srv)
			if tc.wantErr != http.ErrServerClosed {
				// The accepted connection is still drained: its first
				// request, sent now, is answered.
				within(t, quiescing, "drain waiting for fresh connections")
				if _, err := io.WriteString(c, request); err != nil {
					t.Fatal(err)
				}
				if code, body, err := reply(bufio.NewReader(c)); err != nil || code != http.StatusOK {
					t.Errorf("accepted connection during the drain: %d %q, %v", code, body, err)
				}
			}
			if err := s.result(t); !errors.Is(err, tc.wantErr) {
				t.Errorf("Serve: %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == errBoom {
				if n := ln.closes.Load(); n != 1 {
					t.Errorf("listener closed %d times, want 1", n)
				}
			}
		})
	}
}

// stopFailListener's Accept cancels the context Serve was given and then
// fails: an accept error caused by the stop (a handoff listener whose
// master is stopping). Its Close, which srv.Serve calls as it returns
// that error, closes closed.
type stopFailListener struct {
	net.Listener
	cancel context.CancelFunc
	closed chan struct{}
	once   sync.Once
}

func (l *stopFailListener) Accept() (net.Conn, error) {
	l.cancel()
	return nil, errors.New("listener gone with the stop")
}

func (l *stopFailListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// TestStopWithAcceptError: an Accept that fails as ctx is done is an
// ordinary stop, never reported as the server's error, whichever of the
// two Serve sees first. The hook lets srv.Serve return before Serve
// looks, so both are ready and Serve's select picks at random; 40 runs.
func TestStopWithAcceptError(t *testing.T) {
	fdcensus.Verify(t)
	for i := range 40 {
		ctx, cancel := context.WithCancel(context.Background())
		ln := &stopFailListener{Listener: listen(t), cancel: cancel, closed: make(chan struct{})}
		restore := httpdrain.SetTestHookServing(func() {
			within(t, ln.closed, "srv.Serve returning")
			// srv.Serve sends its error right after the close.
			time.Sleep(time.Millisecond)
		})
		err := httpdrain.Serve(ctx, &http.Server{Handler: okHandler}, ln, &httpdrain.Options{Grace: wait})
		restore()
		cancel()
		if err != nil {
			t.Fatalf("run %d: Serve: %v, want nil", i, err)
		}
	}
}

// TestCanceledBeforeServe: with ctx already done, Serve accepts nothing,
// closes the listener once, leaves srv shut down and returns nil.
func TestCanceledBeforeServe(t *testing.T) {
	fdcensus.Verify(t)
	ln := listen(t)
	srv := &http.Server{Handler: okHandler}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := httpdrain.Serve(ctx, srv, ln, nil); err != nil {
		t.Errorf("Serve: %v", err)
	}
	got := []int32{ln.accepts.Load(), ln.closes.Load()}
	if d := cmp.Diff([]int32{0, 1}, got); d != "" {
		t.Errorf("[accepts closes] (-want +got):\n%s", d)
	}
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(other); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("srv.Serve after httpdrain.Serve: %v, want ErrServerClosed", err)
	}
}

// TestSharedListenerKeepsAccepting: the drain closes its descriptor of
// the listening socket and never shuts the socket down, so another
// descriptor of it (another worker's, the master's) still accepts
// (TESTPLAN B9).
func TestSharedListenerKeepsAccepting(t *testing.T) {
	fdcensus.Verify(t)
	ln := listen(t)
	f, err := ln.Listener.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	sibling, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer sibling.Close()
	s := start(t, &http.Server{Handler: okHandler}, ln, nil)
	s.cancel()
	if err := s.result(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	c := dial(t, sibling.Addr())
	sibling.(*net.TCPListener).SetDeadline(time.Now().Add(wait))
	sc, err := sibling.Accept()
	if err != nil {
		t.Fatalf("sibling Accept after the drain: %v", err)
	}
	sc.Close()
	c.Close()
}
