//go:build linux

package cluster

import (
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// Handoff protocol constants for the tests.
const (
	HoConns, HoReturn, HoAck, HoSub, HoUnsub, HoDone, HoGrant = hoConns, hoReturn, hoAck, hoSub, hoUnsub, hoDone, hoGrant
	HoMaxBatch, HoWindow, HoMaxMsg, HoNoLimit, HoReserve      = hoMaxBatch, hoWindow, hoMaxMsg, hoNoLimit, hoReserve
)

// HoDecoded is a decoded handoff message with copied strings.
type HoDecoded struct {
	Type         byte
	N            int
	Limit        int64 // of a grant
	Name         string
	Names, Addrs []string
	FDs          []int
}

// DecodeHandoff runs the one decoder of the connection channel.
func DecodeHandoff(p []byte, fds []int) (HoDecoded, error) {
	var m hoMsg
	if err := decodeHandoff(p, fds, &m); err != nil {
		return HoDecoded{}, err
	}
	d := HoDecoded{Type: m.typ, N: m.n, Limit: m.limit, Name: string(m.name), FDs: m.fds}
	if m.typ == hoConns || m.typ == hoReturn {
		for _, e := range m.entries[:m.n] {
			d.Names = append(d.Names, string(e.name))
			d.Addrs = append(d.Addrs, string(e.addr))
		}
	}
	return d, nil
}

// DecodeHandoffNoCopy runs the decoder with a reused message, as both
// ends do.
func DecodeHandoffNoCopy(p []byte, fds []int) error { return decodeHandoff(p, fds, &benchMsg) }

var benchMsg hoMsg

// EncodeHandoffConns builds a hoConns or hoReturn message.
func EncodeHandoffConns(typ byte, names, addrs []string) []byte {
	p := hoAppendHeader(nil, typ, len(names))
	for i := range names {
		p = hoAppendEntry(p, names[i], []byte(addrs[i]))
	}
	return p
}

// EncodeHandoffName builds a hoSub, hoUnsub or hoDone message.
func EncodeHandoffName(typ byte, name string) []byte { return hoAppendName(nil, typ, name) }

// EncodeHandoffAck builds a hoAck message.
func EncodeHandoffAck(n int) []byte { return hoAppendAck(nil, n) }

// EncodeHandoffGrant builds a hoGrant message (limit: HoNoLimit or a
// sequence number).
func EncodeHandoffGrant(limit int64) []byte { return hoAppendGrant(nil, limit) }

// SetHandoffBeforeRecv makes every worker-side read call fn right before
// its recvmsg, after the descriptor count.
func SetHandoffBeforeRecv(fn func()) (restore func()) {
	hoBeforeRecv = fn
	return func() { hoBeforeRecv = nil }
}

// HandoffRig is the master's dispatcher without a Master: the tests give
// it listeners and worker channels directly.
type HandoffRig struct {
	m    *master
	h    *handoff
	pids int
}

// NewHandoffRig takes copies of lns (closed by Stop); log may be nil.
func NewHandoffRig(log *slog.Logger, lns ...net.Listener) (*HandoffRig, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := &master{log: log}
	for _, ln := range lns {
		fd, err := scmrights.Dup(ln.(syscall.Conn))
		if err != nil {
			closeAll(m.listeners)
			return nil, err
		}
		name := fdName(ln.Addr().Network(), ln.Addr().String())
		m.listeners = append(m.listeners, &listener{addr: ln.Addr(), name: name, file: os.NewFile(uintptr(fd), name)})
	}
	m.mode.ho = newHandoff(m)
	// Workers count as ready at once (-ready started), unless a test
	// gates them (GateOnReady).
	m.mode.ho.gate = false
	return &HandoffRig{m: m, h: m.mode.ho}, nil
}

// GateOnReady makes workers added from now on wait for MarkReady before
// they are sent connections, as under -ready notify.
func (r *HandoffRig) GateOnReady() {
	r.h.mu.Lock()
	r.h.gate = true
	r.h.mu.Unlock()
}

// MarkReady is the master's note that the worker process pid sent READY=1.
func (r *HandoffRig) MarkReady(pid int) { r.h.markReady(pid) }

// Names returns the listener names in order.
func (r *HandoffRig) Names() []string {
	var out []string
	for _, l := range r.m.listeners {
		out = append(out, l.name)
	}
	return out
}

// Start starts the accept loops.
func (r *HandoffRig) Start() { r.h.start() }

// Stop stops everything and closes the listener copies.
func (r *HandoffRig) Stop() {
	r.h.stop()
	closeAll(r.m.listeners)
}

// Workers returns the number of registered worker channels.
func (r *HandoffRig) Workers() int {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	return len(r.h.workers)
}

// Outstanding returns, per registered worker, the connections delivered
// and not acknowledged.
func (r *HandoffRig) Outstanding() []int {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	var out []int
	for _, w := range r.h.workers {
		out = append(out, int(w.out.Load()))
	}
	return out
}

// AddRaw registers a new worker channel and returns the worker's end as a
// raw SOCK_SEQPACKET connection.
func (r *HandoffRig) AddRaw() (*net.UnixConn, error) {
	uc, _, err := r.AddRawPID()
	return uc, err
}

// AddRawPID is AddRaw that also returns the worker's made-up pid, for
// Exited: negative, so pidfd_open fails and no real process is ever
// signalled.
func (r *HandoffRig) AddRawPID() (*net.UnixConn, int, error) { return r.addRaw(false, 0) }

// AddRawPeer is AddRawPID with the dispatcher keeping its copy of the
// worker's end, as the master does for its workers (hoWorker.peer): what
// the worker never read is rescued when it exits.
func (r *HandoffRig) AddRawPeer() (*net.UnixConn, int, error) { return r.addRaw(true, 0) }

// AddRawPeerAs is AddRawPeer for a worker whose process is pid, a real
// one the test started: the dispatcher opens its pidfd and may look at
// its /proc/<pid>/fd (see watch), and kills it if its end is not there.
func (r *HandoffRig) AddRawPeerAs(pid int) (*net.UnixConn, error) {
	uc, _, err := r.addRaw(true, pid)
	return uc, err
}

func (r *HandoffRig) addRaw(keepPeer bool, pid int) (*net.UnixConn, int, error) {
	local, remote, err := scmrights.Socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		return nil, 0, err
	}
	conn, err := scmrights.NewConn(local)
	if err != nil {
		local.Close()
		remote.Close()
		return nil, 0, err
	}
	if pid == 0 {
		r.pids--
		pid = r.pids
	}
	peer := -1
	if keepPeer {
		if peer, err = scmrights.Dup(remote); err != nil {
			conn.Close()
			remote.Close()
			return nil, 0, err
		}
	}
	uc, err := scmrights.UnixConn(int(dupFile(remote)))
	remote.Close()
	r.h.register(pid, 0, conn, peer)
	return uc, pid, err
}

// Exited tells the dispatcher that the worker process pid exited, as the
// supervisor's event does.
func (r *HandoffRig) Exited(pid int) { r.h.exited(pid) }

// Pause and Resume are the master's handoffPause and handoffResume.
func (r *HandoffRig) Pause(d time.Duration) error { return r.m.handoffPause(d) }
func (r *HandoffRig) Resume()                     { r.m.handoffResume() }

// Busy returns how many accept loops and give-backs hold connections.
func (r *HandoffRig) Busy() int {
	r.h.pmu.Lock()
	defer r.h.pmu.Unlock()
	return r.h.busy
}

func dupFile(f *os.File) int {
	fd, err := scmrights.Dup(f)
	if err != nil {
		return -1
	}
	return fd
}

// HandoffWorker is a worker side of the connection channel.
type HandoffWorker struct{ r *hoReceiver }

// AddWorker registers a new worker channel and returns its worker side.
func (r *HandoffRig) AddWorker() (*HandoffWorker, error) {
	uc, err := r.AddRaw()
	if err != nil {
		return nil, err
	}
	rc, err := newReceiver(uc, true)
	if err != nil {
		return nil, err
	}
	return &HandoffWorker{r: rc}, nil
}

// Listen is handoffListener on this worker's channel.
func (w *HandoffWorker) Listen(name string) (net.Listener, error) {
	return w.r.listen(name, handoffAddr(name))
}

// Close closes the worker's end, as its death would.
func (w *HandoffWorker) Close() { w.r.end() }

// AcceptMeta accepts from a handoff listener and also returns the remote
// address the master reported.
func AcceptMeta(l net.Listener) (net.Conn, string, error) { return l.(*handoffLn).accept() }

// AdoptOld is handoffAdoptOld for a worker of an older image with a
// made-up pid; it takes f.
func (r *HandoffRig) AdoptOld(f *os.File) error {
	_, err := r.AdoptOldPeer(f, -1)
	return err
}

// AdoptOldPeer is AdoptOld with the old image's copy of the worker's end
// (peer, -1 for none), as an upgrade carries it over; it takes peer too and
// returns the made-up pid, for Exited.
func (r *HandoffRig) AdoptOldPeer(f *os.File, peer int) (int, error) {
	r.pids--
	return r.pids, r.m.handoffAdoptOld(r.pids, 0, f, peer)
}

// AdoptOldPeerAs is AdoptOldPeer for an old worker whose process is pid, a
// real one the test started: the dispatcher opens its pidfd and may look at
// its /proc/<pid>/fd (see watch).
func (r *HandoffRig) AdoptOldPeerAs(f *os.File, peer, pid int) error {
	return r.m.handoffAdoptOld(pid, 0, f, peer)
}

// NewHandoffWorker is the worker side of a connection channel made by the
// test.
func NewHandoffWorker(uc *net.UnixConn) (*HandoffWorker, error) {
	rc, err := newReceiver(uc, true)
	if err != nil {
		return nil, err
	}
	return &HandoffWorker{r: rc}, nil
}

// SetHandoffFileConn replaces the worker's net.FileConn until restore.
func SetHandoffFileConn(fn func(*os.File) (net.Conn, error)) (restore func()) {
	prev := hoFileConn
	hoFileConn = fn
	return func() { hoFileConn = prev }
}

// AcceptPeer accepts one connection on the listening socket fd as the
// master's accept loop does, and formats the peer's address as it sends it.
func AcceptPeer(fd int) (int, string, error) {
	var rsa unix.RawSockaddrAny
	nfd, n, err := accept4(fd, &rsa, unix.SOCK_CLOEXEC)
	if err != nil {
		return -1, "", err
	}
	return nfd, string(appendRawSockaddr(nil, &rsa, n)), nil
}

// Lingers is the master's test for a connection whose close may wait.
var Lingers = lingers

// SetHandoffSendFault makes the master's channel sends call fn first: a
// non-zero errno fails the send with it, as sendmsg would.
func SetHandoffSendFault(fn func() syscall.Errno) (restore func()) {
	hoSendFault = func() unix.Errno { return unix.Errno(fn()) }
	return func() { hoSendFault = nil }
}

// SetHoUnservedAfter sets how long ready workers may leave a listener
// unserved before the master warns, until the test ends.
func SetHoUnservedAfter(t interface{ Cleanup(func()) }, d time.Duration) {
	old := hoUnservedAfter
	hoUnservedAfter = d
	t.Cleanup(func() { hoUnservedAfter = old })
}
