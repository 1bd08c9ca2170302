//go:build linux

package cluster

import (
	"context"
	"errors"
	"fmt"
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
	dropped atomic.Uint64 // log records and heartbeats dropped on a full queue

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

// initWorker takes what the master (or systemd) gave this process: the
// socket-activation descriptors and the control channel, both only when
// LISTEN_PID names this process, so a child that inherited the environment
// never takes its parent's. It also starts heartbeats when WATCHDOG_USEC
// asks for them.
func initWorker(w *wstate) {
	pid := os.Getpid()
	if os.Getenv(envListenPID) != strconv.Itoa(pid) {
		startHeartbeats(w, pid)
		return
	}
	if act, extra, err := parseWorkerActivation(os.Getenv, pid); err == nil {
		w.inh = adoptInherited(act, extra)
	} else {
		fmt.Fprintf(os.Stderr, "cluster: socket activation ignored: %v\n", err)
	}
	if s := os.Getenv(envControlFD); s != "" {
		ch, err := openChannel(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cluster: control channel ignored: %v\n", err)
		} else {
			w.ch = ch
			w.isWorker = true
			go w.readChannel()
			go ch.write()
		}
	}
	startHeartbeats(w, pid)
}

// inspectInherited reads an activation descriptor's type and address and
// marks it close-on-exec, as sd_listen_fds(3) does, so the process's own
// children do not inherit it.
func inspectInherited(a Activated) inherited {
	in := inherited{fd: a.FD, name: a.Name}
	unix.FcntlInt(uintptr(a.FD), unix.F_SETFD, unix.FD_CLOEXEC)
	typ, err := unix.GetsockoptInt(a.FD, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return in
	}
	in.stream = typ == unix.SOCK_STREAM
	sa, err := unix.Getsockname(a.FD)
	if err != nil {
		return in
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		in.addr = inetAddr(in.stream, sa.Addr[:], sa.Port, "")
	case *unix.SockaddrInet6:
		zone := ""
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
		in.addr = inetAddr(in.stream, sa.Addr[:], sa.Port, zone)
	case *unix.SockaddrUnix:
		in.addr = &net.UnixAddr{Name: sa.Name, Net: "unix"}
	}
	return in
}

func inetAddr(stream bool, ip []byte, port int, zone string) net.Addr {
	ipc := net.IP(append([]byte(nil), ip...))
	if stream {
		return &net.TCPAddr{IP: ipc, Port: port, Zone: zone}
	}
	return &net.UDPAddr{IP: ipc, Port: port, Zone: zone}
}

// openChannel takes the control channel descriptor named by
// HANDOFF_CONTROL_FD, checking that it is a connected unix stream socket,
// and removes the variable: the descriptor is this process's alone (its
// copy is close-on-exec).
func openChannel(s string) (*wchannel, error) {
	fd, err := strconv.Atoi(s)
	if err != nil || fd < listenFDsStart {
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
	os.Unsetenv(envControlFD)
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
		select {
		case <-c.gone:
			return
		case b := <-c.out:
			if err := wr.WriteFrame(b); err != nil {
				// The reader then sees the closed socket: master gone.
				c.conn.Close()
				return
			}
		}
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

// forward queues a log record; a full queue drops it.
func (w *wstate) forward(b []byte) {
	if w.ch != nil && w.ch.enqueue(b) != nil {
		w.ch.dropped.Add(1)
	}
}

// startHeartbeats sends a heartbeat every WATCHDOG_USEC/HeartbeatFactor:
// on the control channel under mini-cluster, WATCHDOG=1 on NOTIFY_SOCKET
// otherwise (systemd's WatchdogSec=). WATCHDOG_PID, when set, must name
// this process (sd_watchdog_enabled(3)).
func startHeartbeats(w *wstate, pid int) {
	usec, err := strconv.ParseInt(os.Getenv(envWatchdogUSec), 10, 64)
	if err != nil || usec <= 0 {
		return
	}
	if p := os.Getenv(envWatchdogPID); p != "" && p != strconv.Itoa(pid) {
		return
	}
	every := max(time.Duration(usec)*time.Microsecond/HeartbeatFactor, time.Millisecond)
	notify := os.Getenv(envNotifySocket)
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-t.C:
			}
			if w.ch != nil {
				w.forward(appendHeartbeat(nil))
			} else if notify != "" {
				sdNotify(notify, "WATCHDOG=1")
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

// sameAddr compares a requested address with a bound one. Port 0 never
// matches: it asks for a new socket.
func sameAddr(network, address string, a net.Addr) bool {
	switch a := a.(type) {
	case *net.UnixAddr:
		return a.Name == address
	case *net.TCPAddr:
		r, err := net.ResolveTCPAddr(network, address)
		return err == nil && r.Port != 0 && r.Port == a.Port && r.IP.Equal(a.IP)
	case *net.UDPAddr:
		r, err := net.ResolveUDPAddr(network, address)
		return err == nil && r.Port != 0 && r.Port == a.Port && r.IP.Equal(a.IP)
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

// resolveForMaster turns a host name in an inet address into an IP
// literal, here and cancellable by ctx: the master binds literals only
// (bindPolicy). Like net.Listen it takes the first address, IPv4 first
// unless the network says tcp6 or udp6. Anything else is left to the
// master to judge.
func resolveForMaster(ctx context.Context, network, address string) (string, error) {
	if network == "unix" {
		return address, nil
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil || host == "" {
		return address, nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return address, nil
	}
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
		return "", fmt.Errorf("cluster: listen %s %s: %w: %w", network, address, ErrListen, err)
	}
	ip := ips[0]
	for _, a := range ips {
		if a.Unmap().Is4() {
			ip = a
			break
		}
	}
	return net.JoinHostPort(ip.Unmap().String(), port), nil
}

func handoffMode() bool { return os.Getenv(envMode) == "handoff" }

func (w *wstate) listen(ctx context.Context, network, address string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, fmt.Errorf("cluster: listen: %w", net.UnknownNetworkError(network))
	}
	// In handoff mode the master accepts: a claim needs no duplicate.
	c, ok, err := w.claim(network, address, true, !handoffMode())
	if err != nil {
		return nil, err
	}
	if ok && c.released == nil {
		if handoffMode() {
			return handoffListener(c.name)
		}
		return scmrights.Listener(c.fd)
	}
	if ok {
		// Closed by Ready: the master still has it (its -listen socket).
		if w.ch == nil {
			return nil, releasedError(network, address, c)
		}
		address = c.released.String()
	}
	if w.ch == nil {
		var lc net.ListenConfig
		return lc.Listen(ctx, network, address)
	}
	addr, err := resolveForMaster(ctx, network, address)
	if err != nil {
		return nil, err
	}
	fd, name, err := w.ch.request(ctx, masterNetwork(network), addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen %s %s: %w", network, address, err)
	}
	if handoffMode() {
		// The master accepts on it and hands connections over.
		unix.Close(fd)
		return handoffListener(name)
	}
	return scmrights.Listener(fd)
}

func (w *wstate) listenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, fmt.Errorf("cluster: listen packet: %w", net.UnknownNetworkError(network))
	}
	c, ok, err := w.claim(network, address, false, true)
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
		address = c.released.String()
	}
	if w.ch == nil {
		var lc net.ListenConfig
		return lc.ListenPacket(ctx, network, address)
	}
	addr, err := resolveForMaster(ctx, network, address)
	if err != nil {
		return nil, err
	}
	fd, _, err := w.ch.request(ctx, masterNetwork(network), addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen %s %s: %w", network, address, err)
	}
	return scmrights.PacketConn(fd)
}
