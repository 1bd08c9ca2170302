package cluster

import (
	"context"
	"errors"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// The worker API: what a Go program calls to run as a mini-cluster worker
// and, with the same code, standalone. Every function is safe for
// concurrent use; state is set up on the first call, not in init: a master
// imports this package too and reads the same variables for itself. That
// first call also takes the protocol variables out of the environment (see
// takeEnv), so call one before starting children.

// Errors of the worker API and of Master.Send and Master.Broadcast.
var (
	// ErrNotWorker is returned by Send when the process does not run
	// under a master (standalone, or a worker without a control channel).
	ErrNotWorker = errors.New("cluster: not running under a mini-cluster master")
	// ErrNoWorker is returned by Master.Send for a slot without a worker
	// with a control channel.
	ErrNoWorker = errors.New("cluster: no such worker")
	// ErrQueueFull is returned when the peer does not read its control
	// channel and the bounded queue to it is full; the message is dropped.
	ErrQueueFull = errors.New("cluster: control channel queue full")
	// ErrTooLarge is returned for a message payload over MaxMessage.
	ErrTooLarge = errors.New("cluster: message too large")
	// ErrNoListener is returned by Listen and ListenPacket for the empty
	// address when the process inherited no socket of that kind, and,
	// without a master to ask, for an inherited socket that Ready closed
	// because nothing had claimed it.
	ErrNoListener = errors.New("cluster: no inherited listener")
)

// Message is one message a worker sent to the master (Config.OnMessage).
type Message struct {
	// Slot is the sender's slot (-1 if it exited meanwhile), PID its pid.
	Slot, PID int
	// Payload is what the worker passed to Send.
	Payload []byte
}

// wstate is this process's worker state, set up once by self.
type wstate struct {
	id       int
	isWorker bool
	// notify is NOTIFY_SOCKET; mode, connFD and connVersion are
	// HANDOFF_MODE, HANDOFF_CONN_FD and HANDOFF_CONN_VERSION when they
	// are this process's (initWorker). All are read once, at set-up,
	// which removes them from the environment (takeEnv).
	notify, mode        string
	connFD, connVersion string
	connErr             error     // why HANDOFF_CONN_FD cannot be adopted
	ch                  *wchannel // nil: no control channel
	done                chan struct{}
	doneOnce            sync.Once
	msgs                chan []byte
	// inh is set up once by initWorker; after that only the claimed and
	// closed fields change, under inhMu.
	inh   []inherited
	inhMu sync.Mutex

	sigOnce sync.Once
	ctx     context.Context
	cancel  context.CancelFunc
}

// inherited is one socket-activation descriptor.
type inherited struct {
	fd     int
	name   string
	addr   net.Addr // nil if getsockname failed
	stream bool     // SOCK_STREAM listener, else datagram
	v6only bool     // an IPv6 socket with IPV6_V6ONLY
	// dev and ino identify the socket (an inherited listening or
	// datagram socket, checked at adoption), which Ready closes unless
	// claimed.
	dev, ino uint64
	// unnamed: beyond LISTEN_FDNAMES (see parseWorkerActivation), which
	// Ready closes and Listen never serves: what it is, nobody said.
	unnamed bool
	claimed bool // Listen or ListenPacket used it: kept open
	closed  bool // released by Ready
}

var (
	selfOnce sync.Once
	selfW    *wstate
)

// messageQueue bounds the master's messages not yet taken from Messages;
// more are dropped, so a worker that ignores them cannot grow.
const messageQueue = 256

func self() *wstate { return setUp(true) }

// setUp sets the worker state up once. The first call decides whether the
// protocol variables are also removed from the environment (take): every
// call of the API does, except HandoffListener (see there).
func setUp(take bool) *wstate {
	selfOnce.Do(func() {
		w := &wstate{done: make(chan struct{}), msgs: make(chan []byte, messageQueue)}
		w.ctx, w.cancel = context.WithCancel(context.Background())
		initWorker(w, take)
		selfW = w
	})
	return selfW
}

// finish closes Done: a termination signal, or the master is gone.
func (w *wstate) finish() {
	w.doneOnce.Do(func() {
		close(w.done)
		w.cancel()
	})
}

// IsWorker reports whether the process runs as a worker of a mini-cluster
// master, with a control channel to it.
func IsWorker() bool { return self().isWorker }

// ID returns the worker's slot, HANDOFF_WORKER_ID: stable across
// restarts, 0 to HANDOFF_WORKERS-1. In a group of a -config file it is
// the worker's global id instead (see Group). Standalone it is 0, and so
// it is in a process LISTEN_PID does not name: a worker's child that
// inherited the variable is not the worker.
func ID() int { return self().id }

// Done returns a channel closed when the process should stop gracefully:
// on the first SIGTERM or SIGINT (after which the signals' default action
// is restored, so a second one terminates the process), or when the
// master is gone (EOF on the control channel). Signals are watched from
// the first call of Done or Context on, never before.
func Done() <-chan struct{} {
	w := self()
	w.watchSignals()
	return w.done
}

// Context returns a context cancelled when Done is closed.
func Context() context.Context {
	w := self()
	w.watchSignals()
	return w.ctx
}

func (w *wstate) watchSignals() {
	w.sigOnce.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		go func() {
			select {
			case <-ch:
			case <-w.done:
			}
			signal.Stop(ch)
			w.finish()
		}()
	})
}

// Ready reports the worker ready: READY=1 on NOTIFY_SOCKET (sd_notify(3)),
// so it works with mini-cluster's -ready notify and under systemd alike.
// Without NOTIFY_SOCKET (standalone) it sends nothing. The socket is the
// one the process started with: the package's first call took the
// variable out of the environment, so the program's children do not
// report for it.
//
// First, as tableflip does, Ready closes every inherited socket (LISTEN_FDS)
// that no Listen or ListenPacket call has claimed: a name the worker does
// not know (a newer supervisor), descriptors beyond the names of a
// LISTEN_FDNAMES shorter than LISTEN_FDS, an address the program no longer
// serves. It uses close(2), never shutdown(2), so the master, systemd and
// the other workers, which hold the same sockets, lose nothing, and the
// worker's descriptors are exactly the ones it uses. Only listening and
// datagram sockets the process inherited (no close-on-exec at adoption)
// are closed; the control and connection channels (HANDOFF_CONTROL_FD,
// HANDOFF_CONN_FD) and anything else are never touched. A claimed socket
// stays open for later Listen calls, except in handoff mode, where the
// master accepts and the worker never uses it. A Listen after Ready for a closed
// socket's address asks the master, which returns the same socket; with no
// master (standalone, systemd) it fails with an error wrapping
// ErrNoListener, since the activator still holds the address: claim every
// socket before calling Ready.
func Ready() error {
	w := self()
	w.releaseInherited()
	return sdNotify(w.notify, "READY=1")
}

// Listen returns a stream listener (network "tcp", "tcp4", "tcp6" or
// "unix") for address:
//
//   - a socket the process inherited by socket activation (LISTEN_FDS with
//     LISTEN_PID equal to its pid: from mini-cluster or systemd) whose
//     local address is address; the empty address means the first
//     inherited stream socket (ErrNoListener if none). An empty host,
//     0.0.0.0 or :: asks for a wildcard socket and, as net.Listen binds
//     those, matches for "tcp" an inherited 0.0.0.0 or a :: that takes
//     IPv4 too (systemd's ListenStream=8080), for "tcp4" only 0.0.0.0,
//     for "tcp6" only ::. A host name is resolved once, with ctx, to the
//     address net.Listen would bind (the first, IPv4 first unless the
//     network says tcp6), and that address is what is matched and what
//     the master is asked for;
//   - otherwise, under a master, the socket the master binds for the
//     cluster: bound once, kept for the cluster's lifetime and shared by
//     every worker and generation that asks for the same network and
//     address (port 0 is resolved once; an empty host is sent as 0.0.0.0,
//     or :: for tcp6); bind errors come back as errors;
//   - otherwise (standalone) a socket bound here.
//
// Every call returns a new net.Listener on the same shared socket; closing
// it never affects other workers. In handoff mode, where the master
// accepts, every call returns a new listener of the connections the master
// hands over from that socket, shared with the process's other listeners
// of it (see HandoffListener), and its Addr is the socket's address. A call
// that matches an inherited socket claims it, so Ready keeps it open (see
// Ready).
//
// Make the first call of the worker API before anything that marks the
// LISTEN_FDS descriptors close-on-exec, as go-systemd's activation.Files
// does: a socket that is close-on-exec at that call cannot be told from
// one the process opened itself, so it is not taken as inherited
// (TESTPLAN A20), and Listen does not find it (the message on standard
// error says so). That first call, unless it is HandoffListener, also
// removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment:
// code that reads them afterwards (activation.Files) finds no sockets.
// Such code works only after a first call of HandoffListener, which
// leaves the environment as it is; otherwise read the variables yourself
// before the first call, without marking the descriptors.
func Listen(ctx context.Context, network, address string) (net.Listener, error) {
	return self().listen(ctx, network, address)
}

// ListenPacket is Listen for datagram sockets (network "udp", "udp4" or
// "udp6").
func ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	return self().listenPacket(ctx, network, address)
}

// Send queues payload (at most MaxMessage bytes) for the master, which
// receives it through Config.OnMessage. It returns ErrNotWorker when there
// is no master, ErrQueueFull when the master does not keep up, and
// ErrMasterGone once the master is gone (Done is closed then).
func Send(payload []byte) error {
	if len(payload) > MaxMessage {
		return ErrTooLarge
	}
	return self().send(payload)
}

// Messages returns the channel on which the master's messages
// (Master.Send, Master.Broadcast) arrive, in order. It holds up to 256
// unread messages; more are dropped. Standalone nothing ever arrives. The
// channel is never closed; use Done to learn that the master is gone.
func Messages() <-chan []byte { return self().msgs }
