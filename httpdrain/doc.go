// Package httpdrain serves a net/http server on a listener until a context
// is done, then drains it without losing a request: the stop sequence a
// worker needs for zero-downtime restarts (mini-cluster, tableflip, systemd
// socket activation, Kubernetes), in one call:
//
//	err := httpdrain.Serve(ctx, srv, ln, &httpdrain.Options{Grace: 10 * time.Second})
//	if errors.Is(err, httpdrain.ErrGraceExpired) { ... }
//
// # The net/http trap it works around
//
// For every request, net/http's conn.serve reads it, sets
// http.StateActive (running the ConnState hook), and then, if Shutdown has
// begun, closes the connection without a reply (the check added for
// golang/go#65802). Shutdown closes idle connections and waits for the
// others, StateNew ones included, so the first request of a fresh
// connection is dropped, the client getting EOF for a complete request,
// when net/http reads it after Shutdown began, or reads it before and
// reaches that check after. Calling Shutdown right after closing the
// listener loses every request in that situation; waiting until
// connections leave StateNew does not help, since the drop comes after
// StateActive.
//
// Serve closes that window: once ctx is done it stops accepting, waits
// until the first request of every connection accepted so far has reached
// the handler (from there on Shutdown waits for the reply) or the
// connection closed, and only then calls Shutdown. A keep-alive connection
// that was answered is no longer fresh; Shutdown closes it while idle,
// which HTTP clients expect and retry on (a request sent on a reused
// connection at that instant is the keep-alive race every HTTP server
// has). Hijacked connections (WebSockets, upgrades) count as done at once;
// use srv.RegisterOnShutdown to tell them to stop.
//
// A connection that never sends anything holds the drain until the grace
// expires, since the server cannot tell a silent client from a slow one.
// Set srv.ReadHeaderTimeout (or ReadTimeout) below the grace: net/http then
// closes such connections itself.
//
// # Ownership
//
// Serve takes ownership of ln and srv. It closes ln with Close (close(2),
// never shutdown(2), which on a listening socket shared with other
// processes would break accept for all of them), exactly once, on every
// path. It shuts srv down (Shutdown, then Close once the grace expires);
// srv cannot be reused afterwards, and nothing else may call its Serve,
// Shutdown or Close while Serve runs. Serve installs wrappers in
// srv.ConnState, srv.ConnContext, srv.Handler and srv.BaseContext that call
// the ones already set there (a nil Handler still means
// http.DefaultServeMux, and BaseContext still gets ln itself); set them
// before calling Serve and do not change them afterwards. Serve tracks the
// connections ln returns by their net.Conn value, so they must be usable as
// map keys, as every net.Conn of the standard library (a pointer) is. Requests'
// contexts do not derive from ctx: ctx only says when to stop, and
// requests in flight keep running through the drain.
//
// # Concurrency
//
// Serve blocks until the drain is over. When the grace expires it closes
// the remaining connections but cannot stop their handlers: a handler
// still running (in a sleep, say) may outlive Serve, its writes failing.
// Call it once per server; to serve
// several listeners, use one http.Server per listener (they may share a
// Handler). The installed hooks are safe for net/http's concurrent use.
//
// # Who should not use it
//
// A server that is never stopped while clients talk to it, or that may
// lose requests on stop (plain srv.Shutdown is simpler), and HTTP/3 or
// other servers not built on net/http's Server.
//
// # Platforms
//
// Every platform net/http supports; the package uses nothing else.
package httpdrain
