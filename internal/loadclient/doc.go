// Package loadclient is the accounting HTTP load generator of the cluster
// tests and benchmarks (TESTPLAN §1.0 "Client accounting"): every request is
// counted as exactly one of ok, refused, reset, timeout or other, with a
// latency distribution, so "nothing lost" can be asserted as Sent == OK.
//
// It speaks just enough HTTP/1.1 (GET, Content-Length or close-delimited
// replies) over raw connections, so it sees every connection-level failure
// itself instead of having net/http retry or hide it. Two kinds of clients
// run side by side: "new" clients open a connection per request, "keep"
// clients reuse one. Following RFC 9112 §9.3.1, a keep-alive request that
// fails on a reused connection before any byte of the reply arrived (the
// server closed the idle connection while the request was in flight) is
// retried once on a fresh connection; such retries are counted in RetriedAfterReset,
// and the retry's outcome is the request's outcome.
//
// Loopback only, bounded: at most Options.Requests requests and
// Options.Duration of time. Linux and other unix systems.
package loadclient
