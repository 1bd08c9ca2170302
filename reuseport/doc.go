// Package reuseport opens TCP listeners and UDP sockets with SO_REUSEPORT,
// so that several sockets (in one process or in several processes of the
// same user) bind one address and the kernel spreads new connections and
// datagrams over them.
//
// Listen and ListenPacket open one socket; ListenGroup and ListenPacketGroup
// open n on one address, resolving port 0 once. Control plugs the same
// socket options into a net.ListenConfig of your own. Config adds
// IPV6_V6ONLY, TCP_DEFER_ACCEPT, TCP_FASTOPEN and a real listen(2) backlog.
// On Linux, Group.SteerByCPU attaches a classic BPF program
// (SO_ATTACH_REUSEPORT_CBPF) that hands each connection to the member whose
// index is the receiving CPU mod the group size, and AttachProgram attaches a
// program of your own.
//
// # Who should not use it
//
// Servers that restart workers gracefully. Closing a member of a reuseport
// group resets every connection still waiting in that member's accept queue
// (measured in this package's tests: 200 connections queued on two members,
// one member closed, about 100 reset), unless net.ipv4.tcp_migrate_req=1
// (Linux 5.14+) lets the kernel move them to another member. One listening
// socket shared by all workers (passed with SCM_RIGHTS or inherited) loses
// none, which is why mini-cluster's master binds once and owns every
// listener. Use this package when each member lives as long as the service,
// or when per-member queues and CPU steering are worth that loss.
//
// SO_REUSEPORT is not an access control: any process of the same effective
// uid may join a group and receive a share of its traffic. The kernel only
// refuses other users (ErrAddrInUse).
//
// # Platforms
//
// Linux: SO_REUSEPORT balances by a hash of the 4-tuple; every Config field
// and BPF steering are supported. FreeBSD 12+: SO_REUSEPORT_LB balances
// (an older kernel lacks it, and every call fails with ErrNotSupported).
// DragonFly: plain SO_REUSEPORT balances (FreeBSD's SO_REUSEPORT_LB was
// ported from DragonFly's code). On both, a balancing group holds at most 256
// sockets per address; a 257th binds but receives nothing, so ListenGroup
// refuses more than MaxGroupSize() members, while sockets that other
// processes add are beyond this package's sight. DeferAccept, FastOpen and
// steering return ErrNotSupported on the BSDs. macOS, OpenBSD, NetBSD:
// SO_REUSEPORT lets sockets share a port but one member receives the
// traffic; Probe reports "supported, not balancing" rather than pretending.
// Everything else, Windows included: every call returns an error wrapping
// ErrNotSupported. Probe measures the running kernel instead of trusting
// this table.
//
// # Ownership
//
// Every listener and connection returned belongs to the caller (a Group's
// members to the Group, closed by Group.Close). Sockets are non-blocking, on
// the runtime netpoller, and close-on-exec; on every error path all sockets
// opened so far are closed.
package reuseport
