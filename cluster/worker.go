package cluster

import (
	"context"
	"errors"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
)

// The worker API: what a Go program calls to run as a mini-cluster worker
// and, with the same code, standalone. Every function is safe for
// concurrent use; state is set up on the first call, not in init.

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
	ch       *wchannel // nil: no control channel
	done     chan struct{}
	doneOnce sync.Once
	msgs     chan []byte
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
	// releasable: an inherited listening or datagram socket (checked at
	// adoption, identified by dev and ino), which Ready closes unless
	// claimed.
	releasable bool
	dev, ino   uint64
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

func self() *wstate {
	selfOnce.Do(func() {
		w := &wstate{done: make(chan struct{}), msgs: make(chan []byte, messageQueue)}
		w.ctx, w.cancel = context.WithCancel(context.Background())
		w.id, _ = strconv.Atoi(os.Getenv("HANDOFF_WORKER_ID")) // envWorkerID (Linux only)
		initWorker(w)
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
// the worker's global id instead (see Group). Standalone it is 0.
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
// Without NOTIFY_SOCKET (standalone) it sends nothing.
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
	self().releaseInherited()
	return sdNotify(os.Getenv(envNotifySocket), "READY=1")
}

// Listen returns a stream listener (network "tcp", "tcp4", "tcp6" or
// "unix") for address:
//
//   - a socket the process inherited by socket activation (LISTEN_FDS with
//     LISTEN_PID equal to its pid: from mini-cluster or systemd) whose
//     local address is address; the empty address means the first
//     inherited stream socket (ErrNoListener if none);
//   - otherwise, under a master, the socket the master binds for the
//     cluster: bound once, kept for the cluster's lifetime and shared by
//     every worker and generation that asks for the same network and
//     address (port 0 is resolved once); bind errors come back as errors;
//   - otherwise (standalone) a socket bound here.
//
// Every call returns a new net.Listener on the same shared socket; closing
// it never affects other workers. A call that matches an inherited socket
// claims it, so Ready keeps it open (see Ready).
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
// is no master and ErrQueueFull when the master does not keep up.
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
