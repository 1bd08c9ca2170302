//go:build linux

package cluster

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// wchannel is a worker's end of its control channel.
type wchannel struct {
	conn    *scmrights.Conn
	out     chan []byte
	gone    chan struct{} // closed once the master is gone
	dropped atomic.Uint64 // log records dropped on a full queue, not yet reported

	mu      sync.Mutex
	nextID  int64
	pending map[int64]chan listenReply
}

// listenReply is the master's answer to a listen request; fd is -1 with
// an error.
type listenReply struct {
	name, err string
	fd        int
}

// workerQueue bounds the frames waiting to go to the master.
const workerQueue = 256

// takenEnv are the variables the worker API reads once, at set-up, and
// removes from the environment, as sd_listen_fds(3) and sd_notify(3) do
// when asked to unset it: they describe this process's start. A child
// that inherited them would act for this process: report READY=1 for it
// (the master accepts notifications from a worker's descendants), send
// heartbeats for it, take descriptor numbers for its channels.
// HANDOFF_WORKER_ID, HANDOFF_WORKER_GENERATION and HANDOFF_WORKERS stay:
// programs read them (examples/hello), and ID reports 0 in a process
// LISTEN_PID does not name.
var takenEnv = []string{envListenPID, envListenFDs, envListenFDNames, envNotifySocket,
	envWatchdogUSec, envWatchdogPID, envControlFD, envConnFD, envConnVersion, envMode}

// takeEnv returns the variables of takenEnv, and with unset removes them
// from the environment.
func takeEnv(unset bool) map[string]string {
	e := make(map[string]string, len(takenEnv))
	for _, k := range takenEnv {
		if v, ok := os.LookupEnv(k); ok {
			e[k] = v
			if unset {
				os.Unsetenv(k)
			}
		}
	}
	return e
}

// initWorker takes what the master (or systemd) gave this process (see
// takeEnv): the socket-activation descriptors, the control channel and the
// slot, only when LISTEN_PID names this process, so a child that inherited
// the environment never takes its parent's; the connection channel also
// without LISTEN_PID. It also starts heartbeats when WATCHDOG_USEC asks
// for them. With take, the variables are removed from the environment.
func initWorker(w *wstate, take bool) {
	pid := os.Getpid()
	e := takeEnv(take)
	getenv := func(k string) string { return e[k] }
	w.notify = e[envNotifySocket]
	lp := e[envListenPID]
	mine := lp == strconv.Itoa(pid)
	// Without LISTEN_PID, as well: a handoff worker started by other means
	// than the exec shim, with no sockets to inherit.
	if conn := e[envConnFD]; conn != "" && (mine || lp == "") {
		w.mode, w.connFD, w.connVersion = e[envMode], conn, e[envConnVersion]
		// Before anything sets close-on-exec, which tells an inherited
		// descriptor from one this process opened.
		w.connErr = inheritedChannel(envConnFD, conn)
		if ctl := envFD(e[envControlFD]); w.connErr == nil && mine && envFD(conn) == ctl {
			// Both would take the one descriptor: the control channel
			// owns it from now on, and a connection channel opened later
			// by its number would take and close whatever the program
			// has opened under it by then.
			w.connErr = fmt.Errorf("%s=%d is %s too", envConnFD, ctl, envControlFD)
		}
	} else if mine {
		w.mode = e[envMode]
	}
	if mine {
		w.id, _ = strconv.Atoi(os.Getenv(envWorkerID))
		adoptAll(w, getenv, pid)
	}
	if fd := envFD(w.connFD); fd >= 0 {
		// The worker's children must not hold it: one would keep reading
		// after the worker is gone, taking connections the master means
		// to pass on.
		unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
	}
	startHeartbeats(w, pid, getenv)
}

// adoptAll adopts the activation descriptors and the control channel of a
// process LISTEN_PID names, and marks them and the connection channel
// close-on-exec whatever fails, as sd_listen_fds(3) does: the process's
// children must not hold them.
func adoptAll(w *wstate, getenv func(string) string, pid int) {
	ctl := getenv(envControlFD)
	// Before anything here sets close-on-exec.
	ctlErr := inheritedChannel(envControlFD, ctl)
	if act, extra, err := parseWorkerActivation(getenv, pid); err == nil {
		w.inh = adoptInherited(act, extra, envFD(ctl), envFD(w.connFD))
	} else {
		fmt.Fprintf(os.Stderr, "cluster: socket activation ignored: %v\n", err)
	}
	if n, err := strconv.Atoi(getenv(envListenFDs)); err == nil && n > 0 {
		for fd := listenFDsStart; fd < listenFDsStart+min(n, maxListenFDs); fd++ {
			unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
		}
	}
	if ctl == "" {
		return
	}
	if fd := envFD(ctl); fd >= 0 {
		unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
	}
	var ch *wchannel
	err := ctlErr
	if err == nil {
		ch, err = openChannel(ctl)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: control channel ignored: %v\n", err)
		return
	}
	w.ch = ch
	w.isWorker = true
	go w.readChannel()
	go ch.write()
}

// inheritedChannel checks that the descriptor in v (the value of key) is
// a channel's end this process inherited: a number from 3 up, open without
// close-on-exec (the runtime and this package open everything
// close-on-exec) and a unix socket (its type is checked where it is
// used). Anything else is not the master's channel, and taking it would
// read or close a descriptor of the program's.
func inheritedChannel(key, v string) error {
	fd := envFD(v)
	if fd < 0 {
		return fmt.Errorf("%s=%q is not a descriptor number", key, v)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		return fmt.Errorf("%s=%d: %w", key, fd, os.NewSyscallError("fcntl", err))
	}
	if flags&unix.FD_CLOEXEC != 0 {
		return fmt.Errorf("%s=%d: opened by this process, not inherited", key, fd)
	}
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("%s=%d: not a socket: %w", key, fd, os.NewSyscallError("getsockopt", err))
	}
	if dom != unix.AF_UNIX {
		return fmt.Errorf("%s=%d: socket family %d, want AF_UNIX", key, fd, dom)
	}
	return nil
}

// inspectInherited reads an activation descriptor's type and address and
// marks it close-on-exec, as sd_listen_fds(3) does, so the process's own
// children do not inherit it.
func inspectInherited(a Activated) inherited {
	in := inherited{fd: a.FD, name: a.Name}
	unix.FcntlInt(uintptr(a.FD), unix.F_SETFD, unix.FD_CLOEXEC)
	in.addr, in.stream, in.v6only = socketAddr(a.FD)
	return in
}

// socketAddr returns fd's local address (nil if it cannot be read),
// whether it is a stream socket, and whether it is an IPv6 socket with
// IPV6_V6ONLY.
func socketAddr(fd int) (addr net.Addr, stream, v6only bool) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, false, false
	}
	stream = typ == unix.SOCK_STREAM
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, stream, false
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		addr = inetAddr(stream, sa.Addr[:], sa.Port, "")
	case *unix.SockaddrInet6:
		zone := ""
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
		addr = inetAddr(stream, sa.Addr[:], sa.Port, zone)
		// A :: socket takes IPv4 too unless IPV6_V6ONLY is set
		// (net.ipv6.bindv6only): see listenReq.matchesInet.
		on, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		v6only = err == nil && on != 0
	case *unix.SockaddrUnix:
		addr = &net.UnixAddr{Name: sa.Name, Net: "unix"}
	}
	return addr, stream, v6only
}

func inetAddr(stream bool, ip []byte, port int, zone string) net.Addr {
	ipc := net.IP(append([]byte(nil), ip...))
	if stream {
		return &net.TCPAddr{IP: ipc, Port: port, Zone: zone}
	}
	return &net.UDPAddr{IP: ipc, Port: port, Zone: zone}
}

// openChannel takes the control channel descriptor named by
// HANDOFF_CONTROL_FD (checked by inheritedChannel), checking that it is a
// stream socket.
func openChannel(s string) (*wchannel, error) {
	fd := envFD(s)
	if fd < 0 {
		return nil, fmt.Errorf("%s=%q is not a descriptor number", envControlFD, s)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("descriptor %d: %w", fd, os.NewSyscallError("getsockopt", err))
	}
	if typ != unix.SOCK_STREAM {
		return nil, fmt.Errorf("descriptor %d: socket type %d, want SOCK_STREAM", fd, typ)
	}
	uc, err := scmrights.UnixConn(fd)
	if err != nil {
		return nil, fmt.Errorf("descriptor %d: %w", fd, err)
	}
	conn, err := scmrights.NewConn(uc)
	if err != nil {
		uc.Close()
		return nil, err
	}
	return &wchannel{conn: conn, out: make(chan []byte, workerQueue), gone: make(chan struct{}), pending: make(map[int64]chan listenReply)}, nil
}

// readChannel serves the master's messages until EOF, which means the
// master is gone: Done closes.
func (w *wstate) readChannel() {
	c := w.ch
	err := serveControl(c.conn, 1, func(m *ctlMsg, fds []int) error {
		if m.Type != msgListened {
			closeCtlFDs(fds)
		}
		switch m.Type {
		case msgData:
			select {
			case w.msgs <- m.Data:
			default:
			}
			return nil
		case msgListened:
			return c.deliver(m, fds)
		}
		return fmt.Errorf("%w: %s is not a master's message", ErrMessage, m.Type)
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: control channel: %v\n", err)
	}
	c.mu.Lock()
	close(c.gone)
	c.mu.Unlock()
	c.conn.Close()
	w.finish()
}

// deliver hands a listen reply to its waiting request; a reply nobody
// waits for (the request's context ended) has its descriptor closed.
func (c *wchannel) deliver(m *ctlMsg, fds []int) error {
	r := listenReply{name: m.Name, err: m.Err, fd: -1}
	if m.Err == "" {
		if len(fds) != 1 {
			closeCtlFDs(fds)
			return fmt.Errorf("%w: listened without a descriptor", ErrMessage)
		}
		r.fd = fds[0]
	} else if len(fds) > 0 {
		closeCtlFDs(fds)
		return fmt.Errorf("%w: failed listen with a descriptor", ErrMessage)
	}
	c.mu.Lock()
	ch := c.pending[m.ID]
	delete(c.pending, m.ID)
	if ch != nil {
		ch <- r // buffered, one reply per request
	}
	c.mu.Unlock()
	if ch == nil && r.fd >= 0 {
		unix.Close(r.fd)
	}
	return nil
}

func (c *wchannel) write() {
	wr := ipcframe.NewWriter(c.conn, &ipcframe.WriterOptions{MaxFrame: maxControlFrame})
	for {
		b, ok := c.dequeue()
		if !ok {
			return
		}
		if err := wr.WriteFrame(b); err != nil {
			// The reader then sees the closed socket: master gone.
			c.conn.Close()
			return
		}
	}
}

// dequeue waits for the next frame to write; false once the master is
// gone. Taking one makes room in the queue, where the count of log records
// dropped goes at once: a burst that overflowed it, with nothing logged
// after (a shutdown, no heartbeats), is reported all the same.
func (c *wchannel) dequeue() ([]byte, bool) {
	select {
	case <-c.gone:
		return nil, false
	case b := <-c.out:
		c.reportDropped()
		return b, true
	}
}

// enqueue queues one frame without waiting.
func (c *wchannel) enqueue(b []byte) error {
	select {
	case <-c.gone:
		return ErrMasterGone
	default:
	}
	select {
	case c.out <- b:
		return nil
	default:
		return ErrQueueFull
	}
}

// request asks the master to bind network://address and waits for the
// descriptor. The caller owns the returned descriptor.
func (c *wchannel) request(ctx context.Context, network, address string) (int, string, error) {
	if len(address) > maxAddress || !utf8.ValidString(address) {
		// The master would take it for garbage and restart this worker.
		return -1, "", fmt.Errorf("%w: address of %d bytes (at most %d of UTF-8)", ErrListen, len(address), maxAddress)
	}
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	reply := make(chan listenReply, 1)
	c.pending[id] = reply
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		// A reply that raced with ctx: its descriptor is nobody's.
		select {
		case r := <-reply:
			if r.fd >= 0 {
				unix.Close(r.fd)
			}
		default:
		}
	}()
	select {
	case c.out <- appendListen(nil, id, network, address):
	case <-ctx.Done():
		return -1, "", ctx.Err()
	case <-c.gone:
		return -1, "", ErrMasterGone
	}
	select {
	case r := <-reply:
		if r.err != "" {
			// The master's text starts with ErrListen's own, mostly.
			return -1, "", fmt.Errorf("%w: %s", ErrListen, strings.TrimPrefix(r.err, ErrListen.Error()+": "))
		}
		return r.fd, r.name, nil
	case <-ctx.Done():
		return -1, "", ctx.Err()
	case <-c.gone:
		return -1, "", ErrMasterGone
	}
}

func (w *wstate) send(payload []byte) error {
	if w.ch == nil {
		return ErrNotWorker
	}
	return w.ch.enqueue(appendData(nil, payload))
}

// forward queues a log record; a full queue drops it, and the writer, once
// it takes a frame, or the next record or heartbeat that finds room,
// reports how many were (see reportDropped).
func (w *wstate) forward(b []byte) {
	if w.ch == nil {
		return
	}
	w.ch.reportDropped()
	if w.ch.enqueue(b) != nil {
		w.ch.dropped.Add(1)
	}
}

// reportDropped queues, if records were dropped and there is room now, a
// warning record saying how many: a log that lost records says so where
// it is read, in the master's log.
func (c *wchannel) reportDropped() {
	// A load first: on every record, a Swap would write the shared line.
	if c.dropped.Load() == 0 {
		return
	}
	n := c.dropped.Swap(0)
	if n == 0 {
		return
	}
	if c.enqueue(appendDropped(nil, n)) != nil {
		c.dropped.Add(n)
	}
}

// droppedMsg is the message of the warning that records were dropped.
const droppedMsg = "cluster: log records dropped: the master did not keep up"

// appendDropped appends the warning that n log records were dropped.
func appendDropped(dst []byte, n uint64) []byte {
	dst = appendType(dst, "log")
	dst = append(dst, `,"level":"WARN","msg":`...)
	dst = appendJSONString(dst, droppedMsg)
	dst = append(dst, `,"attrs":{"dropped":`...)
	dst = strconv.AppendUint(dst, min(n, math.MaxInt64), 10)
	return append(dst, "}}"...)
}

// heartbeatEvery returns the heartbeat period for WATCHDOG_USEC v, or 0
// for none: v unset, not a positive number, or too large for a
// time.Duration (above about 292 years), which would wrap around to a
// tiny period (sd_watchdog_enabled(3) takes such a deadline as no
// deadline at all, too).
func heartbeatEvery(v string) time.Duration {
	usec, err := strconv.ParseInt(v, 10, 64)
	if err != nil || usec <= 0 || usec > math.MaxInt64/int64(time.Microsecond) {
		return 0
	}
	return max(time.Duration(usec)*time.Microsecond/HeartbeatFactor, time.Millisecond)
}

// startHeartbeats sends a heartbeat every WATCHDOG_USEC/HeartbeatFactor
// (see heartbeatEvery): on the control channel under mini-cluster,
// WATCHDOG=1 on NOTIFY_SOCKET otherwise (systemd's WatchdogSec=).
// WATCHDOG_PID, when set, must name this process (sd_watchdog_enabled(3)).
// Heartbeats go on after Done closes, while the program drains: the
// process is alive, and a SIGTERM from anyone but the master leaves the
// master waiting for them. They end with the process, or when the master
// is gone. One dropped on a full queue is not missed: the master reads
// every message queued ahead of it as a heartbeat.
func startHeartbeats(w *wstate, pid int, getenv func(string) string) {
	every := heartbeatEvery(getenv(envWatchdogUSec))
	if every == 0 {
		return
	}
	if p := getenv(envWatchdogPID); p != "" && p != strconv.Itoa(pid) {
		return
	}
	var gone <-chan struct{} // nil: never, without a control channel
	if w.ch != nil {
		gone = w.ch.gone
	}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-gone:
				return
			case <-t.C:
			}
			if w.ch != nil {
				w.ch.reportDropped()
				_ = w.ch.enqueue(appendHeartbeat(nil))
			} else if w.notify != "" {
				sdNotify(w.notify, "WATCHDOG=1")
			}
		}
	}()
}

func sameFamily(network string, a net.Addr) bool {
	switch a.(type) {
	case *net.TCPAddr:
		return network == "tcp" || network == "tcp4" || network == "tcp6"
	case *net.UDPAddr:
		return network == "udp" || network == "udp4" || network == "udp6"
	case *net.UnixAddr:
		return network == "unix"
	}
	return false
}

// masterNetwork maps a Go network name to a -listen scheme.
func masterNetwork(network string) string {
	switch network {
	case "tcp4", "tcp6":
		return "tcp"
	case "udp4", "udp6":
		return "udp"
	}
	return network
}

// listenReq is a Listen call's network and address, resolved once with
// the caller's context: the same resolution serves the match among the
// inherited sockets, the request to the master and a bind here.
type listenReq struct {
	network, address string
	// inet: address parsed as host and port; ip is invalid for an
	// empty host, the wildcard.
	inet bool
	ip   netip.Addr
	port int
	// named: the host was a name, resolved to ip.
	named bool
	// forMaster is address as the master takes it: IP literals only
	// (bindPolicy), a host always (an empty host is a wildcard here), a
	// numeric port.
	forMaster string
}

// resolve returns the request for network and address. A host name is
// resolved as net.Listen does, to the first address, IPv4 first unless
// the network says tcp6 or udp6, and only when something needs it (a
// master, or an inherited socket of the family): standalone, without
// one, the address goes to net.ListenConfig untouched. Anything
// unparsable is left to the master or the bind to judge, and matches no
// inherited socket.
func (w *wstate) resolve(ctx context.Context, network, address string) (*listenReq, error) {
	q := &listenReq{network: network, address: address, forMaster: address}
	if network == "unix" || address == "" || (w.ch == nil && !w.inheritsFamily(network)) {
		return q, nil
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return q, nil
	}
	port, err := net.DefaultResolver.LookupPort(ctx, network, portStr)
	if err != nil {
		return q, nil
	}
	v6 := strings.HasSuffix(network, "6")
	switch ip, err := netip.ParseAddr(host); {
	case host == "":
		// The master refuses an empty host, which could bind every
		// interface by accident; here it is what the caller asked.
		wild := "0.0.0.0"
		if v6 {
			wild = "::"
		}
		q.forMaster = net.JoinHostPort(wild, strconv.Itoa(port))
	case err == nil:
		q.ip = ip
		q.forMaster = net.JoinHostPort(host, strconv.Itoa(port))
	default:
		want := "ip"
		switch network {
		case "tcp4", "udp4":
			want = "ip4"
		case "tcp6", "udp6":
			want = "ip6"
		}
		ips, err := net.DefaultResolver.LookupNetIP(ctx, want, host)
		if err == nil && len(ips) == 0 {
			err = errors.New("no address")
		}
		if err != nil {
			return nil, fmt.Errorf("cluster: listen %s %s: %w: %w", network, address, ErrListen, err)
		}
		q.ip = ips[0]
		for _, a := range ips {
			if a.Unmap().Is4() {
				q.ip = a
				break
			}
		}
		q.ip = q.ip.Unmap()
		q.named = true
		q.forMaster = net.JoinHostPort(q.ip.String(), strconv.Itoa(port))
	}
	q.inet, q.port = true, port
	return q, nil
}

// bindAddr is the address to bind here, without a master.
func (q *listenReq) bindAddr() string {
	if q.named {
		return q.forMaster
	}
	return q.address
}

// matches reports whether the inherited socket in is the one q asks for.
// Port 0 never matches: it asks for a new socket.
func (q *listenReq) matches(in *inherited) bool {
	switch a := in.addr.(type) {
	case *net.UnixAddr:
		return q.network == "unix" && q.address != "" && a.Name == q.address
	case *net.TCPAddr:
		return q.matchesInet(a.IP, a.Port, in.v6only)
	case *net.UDPAddr:
		return q.matchesInet(a.IP, a.Port, in.v6only)
	}
	return false
}

func (q *listenReq) matchesInet(ip net.IP, port int, v6only bool) bool {
	if !q.inet || q.port == 0 || q.port != port {
		return false
	}
	bound, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	if q.ip.IsValid() && !q.ip.IsUnspecified() {
		return q.ip.WithZone("").Unmap() == bound.Unmap()
	}
	// A wildcard. For "tcp" and "udp", net.Listen binds "", 0.0.0.0 and
	// :: alike, as one dual-stack socket: an inherited 0.0.0.0, or a ::
	// that takes IPv4 too (systemd's ListenStream=8080), serves them.
	if !bound.IsUnspecified() {
		return false
	}
	switch q.network[len(q.network)-1] {
	case '4':
		return bound.Is4()
	case '6':
		return bound.Is6()
	}
	return bound.Is4() || !v6only
}

func (w *wstate) listen(ctx context.Context, network, address string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, fmt.Errorf("cluster: listen: %w", net.UnknownNetworkError(network))
	}
	q, err := w.resolve(ctx, network, address)
	if err != nil {
		return nil, err
	}
	// In handoff mode the master accepts: a claim needs no duplicate.
	handoff := w.mode == "handoff"
	c, ok, err := w.claim(q, true, !handoff)
	if err != nil {
		return nil, err
	}
	if ok && c.released == nil {
		if handoff {
			return handoffListener(c.name, nil)
		}
		return scmrights.Listener(c.fd)
	}
	if ok {
		// Closed by Ready: the master still has it (its -listen socket).
		if w.ch == nil {
			return nil, releasedError(network, address, c)
		}
		q.forMaster = c.released.String()
	}
	if w.ch == nil {
		var lc net.ListenConfig
		return lc.Listen(ctx, network, q.bindAddr())
	}
	fd, name, err := w.ch.request(ctx, masterNetwork(network), q.forMaster)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen %s %s: %w", network, address, err)
	}
	if handoff {
		// The master accepts on it and hands connections over; the
		// listener's address is the socket's (port 0 bound to a port).
		addr, _, _ := socketAddr(fd)
		unix.Close(fd)
		if addr == nil {
			addr = handoffAddr(name)
		}
		return handoffListener(name, addr)
	}
	return scmrights.Listener(fd)
}

func (w *wstate) listenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, fmt.Errorf("cluster: listen packet: %w", net.UnknownNetworkError(network))
	}
	q, err := w.resolve(ctx, network, address)
	if err != nil {
		return nil, err
	}
	c, ok, err := w.claim(q, false, true)
	if err != nil {
		return nil, err
	}
	if ok && c.released == nil {
		return scmrights.PacketConn(c.fd)
	}
	if ok {
		if w.ch == nil {
			return nil, releasedError(network, address, c)
		}
		q.forMaster = c.released.String()
	}
	if w.ch == nil {
		var lc net.ListenConfig
		return lc.ListenPacket(ctx, network, q.bindAddr())
	}
	fd, _, err := w.ch.request(ctx, masterNetwork(network), q.forMaster)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen %s %s: %w", network, address, err)
	}
	return scmrights.PacketConn(fd)
}
