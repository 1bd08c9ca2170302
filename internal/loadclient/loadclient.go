package loadclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Options configure one run. Zero fields mean the documented defaults.
type Options struct {
	// Addr is the host:port to load (loopback).
	Addr string
	// NewConn is the number of clients opening one connection per request;
	// KeepAlive the number reusing one (defaults: 1 and 0).
	NewConn, KeepAlive int
	// Requests caps the total requests (default 20000, the TESTPLAN
	// budget for new connections per test).
	Requests int
	// Duration caps the run (default 5 s).
	Duration time.Duration
	// Timeout bounds each request from dial to the last byte (default 5 s).
	Timeout time.Duration
	// Pause is how long each client waits between its requests (default
	// none), to spread the request budget over a run.
	Pause time.Duration
	// Path is the request path (default "/").
	Path string
	// Header, if set, is a response header whose values are counted in
	// Result.Values (e.g. "X-Worker" carrying pid:generation).
	Header string
	// Record keeps one Reply per ok request in Result.Replies, so a test
	// can check who answered when (default off: it costs memory).
	Record bool
}

// Reply is one ok request: when it was sent (the attempt that succeeded)
// and when its reply was complete, and the Options.Header value.
type Reply struct {
	Sent, Done time.Time
	Value      string
}

// Result is the accounting of a run.
type Result struct {
	Sent, OK, Refused, Reset, Timeout, Other int
	// RetriedAfterReset counts keep-alive requests that got a reset with
	// no reply byte on a reused connection (the server closed it while
	// idle, as HTTP/1.1 allows) and were retried once on a fresh
	// connection. They are in OK if the retry succeeded, and are counted
	// here as well so a test can bound them.
	RetriedAfterReset int
	// Errors holds up to 10 sample errors of the failure classes.
	Errors []string
	// Slow holds up to 10 descriptions of ok requests that took over 1 s
	// (a SYN retransmit or a stalled server), to tell their cause apart.
	Slow []string
	// P50, P99 and Max are latencies of ok requests.
	P50, P99, Max time.Duration
	// Elapsed is the run's duration.
	Elapsed time.Duration
	// Values counts the values of Options.Header in ok replies.
	Values map[string]int
	// Replies holds every ok request when Options.Record is set, in the
	// order they completed.
	Replies []Reply
}

// Failed is the number of requests that did not end ok.
func (r Result) Failed() int { return r.Refused + r.Reset + r.Timeout + r.Other }

func (r Result) String() string {
	return fmt.Sprintf("sent=%d ok=%d refused=%d reset=%d timeout=%d other=%d retried-after-reset=%d p50=%v p99=%v max=%v in %v",
		r.Sent, r.OK, r.Refused, r.Reset, r.Timeout, r.Other, r.RetriedAfterReset, r.P50, r.P99, r.Max, r.Elapsed.Round(time.Millisecond))
}

type outcome int

const (
	ok outcome = iota
	refused
	reset
	timeout
	other
)

type tally struct {
	mu      sync.Mutex
	r       Result
	lat     []time.Duration
	budget  int
	header  string
	record  bool
	stopped bool
}

// take reserves one request from the budget.
func (t *tally) take() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped || t.budget <= 0 {
		return false
	}
	t.budget--
	t.r.Sent++
	return true
}

func (t *tally) add(o outcome, d time.Duration, value string, err error, how string, sent time.Time) {
	done := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	switch o {
	case ok:
		t.r.OK++
		if t.record {
			t.r.Replies = append(t.r.Replies, Reply{Sent: sent, Done: done, Value: value})
		}
		t.lat = append(t.lat, d)
		if d > time.Second && len(t.r.Slow) < 10 {
			t.r.Slow = append(t.r.Slow, fmt.Sprintf("%v at %v: %s", d.Round(time.Millisecond), time.Now().Format("15:04:05.000"), how))
		}
		if t.header != "" {
			t.r.Values[value]++
		}
		return
	case refused:
		t.r.Refused++
	case reset:
		t.r.Reset++
	case timeout:
		t.r.Timeout++
	default:
		t.r.Other++
	}
	if len(t.r.Errors) < 10 && err != nil {
		t.r.Errors = append(t.r.Errors, err.Error())
	}
}

// Run loads opts.Addr until the request budget, opts.Duration or ctx ends,
// and waits for every request in flight.
func Run(ctx context.Context, opts Options) Result {
	if opts.NewConn == 0 && opts.KeepAlive == 0 {
		opts.NewConn = 1
	}
	if opts.Requests <= 0 {
		opts.Requests = 20000
	}
	if opts.Duration <= 0 {
		opts.Duration = 5 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Path == "" {
		opts.Path = "/"
	}
	t := &tally{budget: opts.Requests, header: opts.Header, record: opts.Record, r: Result{Values: map[string]int{}}}
	ctx, cancel := context.WithTimeout(ctx, opts.Duration)
	defer cancel()
	req := []byte("GET " + opts.Path + " HTTP/1.1\r\nHost: " + opts.Addr + "\r\nUser-Agent: loadclient\r\n\r\n")
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < opts.NewConn+opts.KeepAlive; i++ {
		keep := i >= opts.NewConn
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &client{addr: opts.Addr, req: req, timeout: opts.Timeout, keep: keep, header: opts.Header}
			defer c.close()
			for ctx.Err() == nil && t.take() {
				o, d, v, err := c.do()
				t.add(o, d, v, err, c.how, c.sent)
				if opts.Pause > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(opts.Pause):
					}
				}
			}
			t.mu.Lock()
			t.r.RetriedAfterReset += c.retries
			t.mu.Unlock()
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	select {
	case <-allDone:
	case <-ctx.Done():
		t.mu.Lock()
		t.stopped = true
		t.mu.Unlock()
		<-allDone
	}
	t.r.Elapsed = time.Since(start)
	slices.Sort(t.lat)
	if n := len(t.lat); n > 0 {
		t.r.P50 = t.lat[n/2]
		t.r.P99 = t.lat[(n*99)/100]
		t.r.Max = t.lat[n-1]
	}
	return t.r
}

type client struct {
	addr    string
	req     []byte
	timeout time.Duration
	keep    bool
	header  string
	conn    net.Conn
	br      *bufio.Reader
	cr      countReader
	used    int // requests completed on conn
	retries int
	how     string    // how the last request went, for Result.Slow
	sent    time.Time // when the last attempt began
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// do performs one request and classifies it.
func (c *client) do() (outcome, time.Duration, string, error) {
	start := time.Now()
	deadline := start.Add(c.timeout)
	reused := c.conn != nil
	o, v, err := c.attempt(deadline)
	c.how = fmt.Sprintf("keep-alive %v, reused connection %v, answered by %s", c.keep, reused, v)
	if o != ok && c.keep && c.used > 0 && c.cr.n == 0 && o == reset {
		// The server closed this idle keep-alive connection as the
		// request went out: retry once on a fresh connection.
		c.retries++
		c.close()
		first := time.Since(start)
		o, v, err = c.attempt(deadline)
		c.how = fmt.Sprintf("retried after %v on a fresh connection, answered by %s", first.Round(time.Millisecond), v)
	}
	if o != ok || !c.keep {
		c.close()
	}
	if err != nil {
		err = fmt.Errorf("%s (keep-alive %v, %d earlier requests on the connection, %d reply bytes)", err, c.keep, c.used, c.cr.n)
	}
	return o, time.Since(start), v, err
}

func (c *client) attempt(deadline time.Time) (outcome, string, error) {
	c.sent = time.Now()
	if c.conn == nil {
		d := net.Dialer{Deadline: deadline}
		conn, err := d.Dial("tcp", c.addr)
		if err != nil {
			return classify(err), "", err
		}
		c.conn, c.used = conn, 0
		c.cr.r = conn
		c.br = bufio.NewReader(&c.cr)
	}
	c.cr.n = 0
	c.conn.SetDeadline(deadline)
	if _, err := c.conn.Write(c.req); err != nil {
		return classify(err), "", err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return classify(err), "", err
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return classify(err), "", err
	}
	if resp.StatusCode != http.StatusOK {
		return other, "", fmt.Errorf("status %s", resp.Status)
	}
	c.used++
	if resp.Close {
		c.close()
	}
	return ok, resp.Header.Get(c.header), nil
}

// classify maps an error to its class: a refused connection, a reset or
// early EOF, or a timeout; anything else is "other".
func classify(err error) outcome {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return refused
	case errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return timeout
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return reset
	}
	return other
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// countReader counts bytes read since the last reset, to tell "no reply
// byte arrived" from a reply cut short.
type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
