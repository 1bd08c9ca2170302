//go:build linux

package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/handoff-go/handoff/reuseport"
	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// envConnFD names the worker's end of its connection channel (handoff mode).
const envConnFD = "HANDOFF_CONN_FD"

// envConnVersion is the connection channel's protocol version the master
// speaks (docs/protocol.md): "2" adds grants (hoGrant); a master that does
// not set it would take a grant for a protocol violation.
const envConnVersion = "HANDOFF_CONN_VERSION"

// modeState is the per-mode part of the master: the slot sockets of
// reuseport mode, the dispatcher of handoff mode.
type modeState struct {
	mu sync.Mutex
	// slots holds each reuseport slot's sockets in listener order; slot 0
	// uses m.listeners themselves.
	slots map[int][]*listener
	// live counts the worker processes of each slot (every generation).
	live map[int]int
	ho   *handoff
}

// checkMode validates the mode against the -listen addresses before
// anything is opened, so a bad combination is a start-up error.
func (m *master) checkMode() error {
	if !m.cfg.Mode.valid() {
		return fmt.Errorf("%w %d", ErrMode, int(m.cfg.Mode))
	}
	for _, s := range m.cfg.Listen {
		a, err := ParseAddr(s)
		if err != nil {
			continue // bind reports it
		}
		if err := modeAllows(m.cfg.Mode, a.Network); err != nil {
			return fmt.Errorf("%w: %s", err, s)
		}
	}
	return nil
}

// modeAllows says whether mode can serve a socket of network.
func modeAllows(mode Mode, network string) error {
	switch {
	case mode == ModeReuseport && network == "unix":
		// The kernel groups only TCP and UDP sockets by SO_REUSEPORT; a
		// second bind of a socket file fails with EADDRINUSE.
		return fmt.Errorf("%w reuseport: unix sockets cannot be shared by SO_REUSEPORT (use -mode shared or handoff)", ErrMode)
	case mode == ModeHandoff && network == "udp":
		// A datagram socket has no connections to hand off.
		return fmt.Errorf("%w handoff: udp sockets have no connections to hand off (use -mode shared or reuseport)", ErrMode)
	}
	return nil
}

// bindMode binds the -listen addresses for the configured mode: with
// SO_REUSEPORT in reuseport mode (these sockets are slot 0's, and fix the
// port every other slot binds), plain sockets otherwise.
func (m *master) bindMode(specs []string) ([]*listener, error) {
	if m.cfg.Mode != ModeReuseport {
		return bind(specs)
	}
	var out []*listener
	for _, s := range specs {
		a, err := ParseAddr(s)
		if err != nil {
			closeAll(out)
			return nil, err
		}
		l, err := bindReuseport(a.Network, a.Address)
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("%w: %s: %w", ErrListen, s, err)
		}
		out = append(out, l)
	}
	return out, nil
}

// bindReuseport binds one SO_REUSEPORT member of address's group.
func bindReuseport(network, address string) (*listener, error) {
	ctx := context.Background()
	var (
		sc   syscall.Conn
		addr net.Addr
		c    io.Closer
	)
	switch network {
	case "tcp":
		ln, err := reuseport.Listen(ctx, "tcp", address)
		if err != nil {
			return nil, err
		}
		sc, addr, c = ln.(*net.TCPListener), ln.Addr(), ln
	case "udp":
		pc, err := reuseport.ListenPacket(ctx, "udp", address)
		if err != nil {
			return nil, err
		}
		sc, addr, c = pc.(*net.UDPConn), pc.LocalAddr(), pc
	default:
		return nil, modeAllows(ModeReuseport, network)
	}
	fd, err := scmrights.Dup(sc)
	// The master never accepts in this mode; the duplicate keeps the
	// socket and its place in the group.
	c.Close()
	if err != nil {
		return nil, err
	}
	// Blocking, as in shared mode (systemd's NonBlocking=no).
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	name := fdName(network, addr.String())
	return &listener{addr: addr, name: name, file: os.NewFile(uintptr(fd), name)}, nil
}

// initMode finishes New for the mode once the listeners exist: adopted
// sockets must suit it, and handoff mode gets its dispatcher.
func (m *master) initMode() error {
	for _, l := range m.listeners {
		if err := modeAllows(m.cfg.Mode, l.addr.Network()); err != nil {
			return fmt.Errorf("%w: %s", err, l.name)
		}
		if m.cfg.Mode == ModeReuseport && m.adopted {
			// Other slots join the adopted socket's group, which needs
			// SO_REUSEPORT on it already (systemd's ReusePort=yes).
			rc, err := l.file.SyscallConn()
			if err != nil {
				return err
			}
			var on int
			var serr error
			if err := rc.Control(func(fd uintptr) { on, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT) }); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("%w: %s: %w", ErrActivation, l.name, os.NewSyscallError("getsockopt", serr))
			}
			if on == 0 {
				return fmt.Errorf("%w reuseport: adopted socket %s lacks SO_REUSEPORT (set ReusePort=yes in the .socket unit)", ErrMode, l.name)
			}
		}
	}
	m.mode.slots = map[int][]*listener{}
	m.mode.live = map[int]int{}
	if m.cfg.Mode == ModeHandoff {
		m.mode.ho = newHandoff(m)
	}
	return nil
}

// specFiles is Spec.ExtraFiles for the mode: in reuseport mode each slot
// gets its own sockets through prepareListeners instead.
func (m *master) specFiles(files []*os.File) []*os.File {
	if m.cfg.Mode == ModeReuseport {
		return nil
	}
	return files
}

// prepareListeners adds the mode to a spawn and, in reuseport mode, the
// slot's own sockets as its first descriptors. It runs first in prepare,
// so the listeners are descriptors 3.. in every mode.
func (m *master) prepareListeners(id supervise.ID, l *supervise.Launch) error {
	l.Env = append(l.Env, envMode+"="+m.cfg.Mode.String())
	if m.cfg.Mode != ModeReuseport {
		return nil
	}
	set, err := m.slotSet(id.Slot)
	if err != nil {
		return err
	}
	for _, s := range set {
		l.ExtraFiles = append(l.ExtraFiles, s.file)
	}
	return nil
}

// slotSet returns the sockets of a slot, binding them the first time the
// slot is spawned (at start or when scaling up). They stay open while the
// slot exists, across every respawn and generation: closing a member of a
// reuseport group resets the connections queued on it.
func (m *master) slotSet(slot int) ([]*listener, error) {
	if slot == 0 {
		return m.listeners, nil
	}
	m.mode.mu.Lock()
	defer m.mode.mu.Unlock()
	if set, ok := m.mode.slots[slot]; ok {
		return set, nil
	}
	set := make([]*listener, 0, len(m.listeners))
	for _, l0 := range m.listeners {
		// The resolved address of slot 0: port 0 was resolved once.
		l, err := bindReuseport(l0.addr.Network(), l0.addr.String())
		if err != nil {
			closeAll(set)
			return nil, fmt.Errorf("%w: slot %d: %s: %w", ErrListen, slot, l0.name, err)
		}
		l.name = l0.name
		set = append(set, l)
	}
	m.mode.slots[slot] = set
	m.log.Info("slot sockets bound", "slot", slot, "listeners", len(set))
	return set, nil
}

// existingSlotSet returns the reuseport sockets of slot, never binding
// them: false for a slot that has none (scaled away, or no slot at all).
func (m *master) existingSlotSet(slot int) ([]*listener, bool) {
	if slot == 0 {
		return m.listeners, true
	}
	m.mode.mu.Lock()
	defer m.mode.mu.Unlock()
	set, ok := m.mode.slots[slot]
	return set, ok
}

// prepareConn adds the connection channel in handoff mode. It runs last
// in prepare, so the channel follows every other descriptor.
// If it fails, what earlier steps allocated for the spawn is released
// through l.Done, which would otherwise never run.
func (m *master) prepareConn(id supervise.ID, l *supervise.Launch) error {
	if m.mode.ho == nil {
		return nil
	}
	specFiles := len(m.specFiles(m.listenerFiles()))
	err := m.mode.ho.prepare(id, listenFDsStart+specFiles+len(l.ExtraFiles), l)
	if err != nil && l.Done != nil {
		l.Done(0, err)
	}
	return err
}

// listenerFiles returns the listeners' descriptors in listen order.
func (m *master) listenerFiles() []*os.File {
	files := make([]*os.File, len(m.listeners))
	for i, l := range m.listeners {
		files[i] = l.file
	}
	return files
}

// closeRemovedSlots follows a scale-down to n slots (a Scaled event, or
// reconcile when that event was dropped): the master's copies of the
// reuseport sockets of the removed slots are closed at once.
//
// The slots from n on are being stopped. Their sockets would keep
// receiving their share of new connections with nobody to accept them, for
// as long as the socket is open: until the worker exits if the master kept
// its copy, so during its whole graceful stop, and all of them reset then.
// Closed here, a socket leaves the group as soon as its worker closes its
// own copy (its first step in a graceful stop); only connections queued on
// it in that moment are reset, unless the kernel migrates them
// (net.ipv4.tcp_migrate_req=1). A slot added again later binds new ones.
// m.workers is checked too: a scale-up that followed may have given a
// removed slot a worker again, with these sockets.
func (m *master) closeRemovedSlots(n int) {
	m.mode.mu.Lock()
	defer m.mode.mu.Unlock()
	for slot, set := range m.mode.slots {
		if slot >= n && int64(slot) >= m.workers.Load() {
			delete(m.mode.slots, slot)
			closeAll(set)
			m.log.Info("slot sockets closed", "slot", slot)
		}
	}
}

// slotProcessStarted counts a worker process of slot (every generation).
func (m *master) slotProcessStarted(slot int) {
	m.mode.mu.Lock()
	defer m.mode.mu.Unlock()
	if m.mode.live != nil {
		m.mode.live[slot]++
	}
}

// slotProcessGone uncounts a worker process of slot that exited; the last
// one of a slot beyond the worker count takes the slot's sockets with it.
func (m *master) slotProcessGone(slot int) {
	m.mode.mu.Lock()
	defer m.mode.mu.Unlock()
	if m.mode.live == nil {
		return
	}
	if m.mode.live[slot]--; m.mode.live[slot] > 0 {
		return
	}
	delete(m.mode.live, slot)
	// A slot beyond the worker count whose sockets the Scaled event left
	// open (a scale-up had raced it) and is gone now.
	if set, ok := m.mode.slots[slot]; ok && int64(slot) >= m.workers.Load() {
		delete(m.mode.slots, slot)
		closeAll(set)
		m.log.Info("slot sockets closed", "slot", slot)
	}
}

// startMode starts what the mode runs beside the supervisor (the accept
// loops of handoff mode) and returns the function that stops it and
// closes the per-slot sockets.
func (m *master) startMode() func() {
	if m.mode.ho != nil {
		m.mode.ho.start()
	}
	return func() {
		if m.mode.ho != nil {
			m.mode.ho.stop()
		}
		m.mode.mu.Lock()
		for slot, set := range m.mode.slots {
			closeAll(set)
			delete(m.mode.slots, slot)
		}
		m.mode.mu.Unlock()
	}
}
