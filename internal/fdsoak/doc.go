// Package fdsoak is the transport-independent half of TESTPLAN L4, the
// descriptor-passing soak, shared by the soak tests of scmrights
// (SOCK_SEQPACKET) and ipcframe (framed SOCK_STREAM). It is test support:
// import it from _test files only.
//
// A soak case sends Messages() messages from one goroutine of the test
// process to receiving goroutines in a helper process. Message seq carries
// its sequence number and 1..MaxFDs descriptors drawn from a pool of
// PoolSize memfds; what it carries is derived from (Seed, seq) alone
// (Plan), so the receiver checks every message on its own, in any order,
// and nothing the sender does at run time can make a wrong delivery look
// right. The receiver identifies each descriptor by (device, inode), which
// is the same in both processes, and closes it.
//
// The sending side is Start (census, pool, deadline), Soak.Connect (socket
// pairs from the transport's constructor), Soak.Message and Soak.Run (send,
// end of stream, wait, census, goroutines); the helper's spec travels as
// one argument (Arg, ParseArg). The receiving side is Inherited and
// Receive, with the transport feeding every message, truncation and
// dropped message to its goroutine's Tally. Sending and receiving
// (Send/Recv, Writer/Reader) and starting the helper (internal/helperproc)
// stay in the calling test; socket constructors are passed in as
// functions. So this package imports neither scmrights nor ipcframe, and
// both can use it.
//
// A case passes when the helper's Report equals the one Run wants: every
// message exactly once and exactly as planned, in increasing order per
// receiver, nothing truncated or dropped, the helper's descriptor census
// flat. Run itself fails the test if the sender's census or goroutine count
// does not come back.
//
// Ownership: Check closes the descriptors it is given, whatever the
// verdict; pool descriptors belong to the Soak and are closed when the test
// ends.
//
// Linux only (memfd_create, /proc/self/fd census).
package fdsoak
