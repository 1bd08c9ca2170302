package cluster

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
)

// Control socket errors. Errors returned by DialControl and ControlClient
// wrap one of these, a *ControlError, or the connection's error (so
// errors.Is(err, os.ErrNotExist), syscall.ECONNREFUSED and
// os.ErrPermission work on a failed dial).
var (
	// ErrControlProtocol reports a malformed frame or message on the
	// control socket: from the master (client side), or, inside a
	// *ControlError with code "bad_request", from the client.
	ErrControlProtocol = errors.New("cluster: control protocol error")
	// ErrControlClosed reports that the master closed the connection
	// without answering: it rejected the peer (a uid other than root and
	// its own), had no room for another client, or is stopping.
	ErrControlClosed = errors.New("cluster: control connection closed by the master without a reply")
	// ErrControlInvalid matches a *ControlError with code "invalid": the
	// request was well formed but its argument is out of range.
	ErrControlInvalid = errors.New("cluster: invalid control request")
	// ErrControlFailed matches a *ControlError with code "failed": the
	// master could not carry the request out.
	ErrControlFailed = errors.New("cluster: control request failed")
	// ErrUnsafeControlDir reports a control socket directory that is not a
	// directory owned by the master's user with no access for others.
	ErrUnsafeControlDir = errors.New("cluster: unsafe control socket directory")
)

// Error codes of a control "error" response.
const (
	ControlCodeBadRequest = "bad_request" // malformed frame or JSON, unknown type
	ControlCodeInvalid    = "invalid"     // argument out of range
	ControlCodeNotRunning = "not_running" // the supervisor is not running
	ControlCodeNoWorker   = "no_worker"   // send: the slot has no worker with a control channel
	ControlCodeQueueFull  = "queue_full"  // send: the worker does not read its messages
	ControlCodeFailed     = "failed"      // anything else
)

// ControlError is an error response from the master. It matches
// ErrControlProtocol (code bad_request), ErrControlInvalid (invalid),
// supervise.ErrNotRunning (not_running), ErrNoWorker (no_worker),
// ErrQueueFull (queue_full) or ErrControlFailed (failed and any code this
// version does not know) with errors.Is.
type ControlError struct {
	Code    string
	Message string
}

func (e *ControlError) Error() string {
	return "cluster: control: " + e.Code + ": " + e.Message
}

// Is maps the code to the package's sentinels.
func (e *ControlError) Is(target error) bool {
	switch e.Code {
	case ControlCodeBadRequest:
		return target == ErrControlProtocol
	case ControlCodeInvalid:
		return target == ErrControlInvalid
	case ControlCodeNotRunning:
		return target == supervise.ErrNotRunning
	case ControlCodeNoWorker:
		return target == ErrNoWorker
	case ControlCodeQueueFull:
		return target == ErrQueueFull
	}
	return target == ErrControlFailed
}

// Control protocol limits. A request is small; a status response grows with
// the slots (about 200 bytes each, at most 4096 slots).
const (
	maxControlRequest  = 64 << 10
	maxControlResponse = ipcframe.DefaultMaxFrame
	maxControlSlots    = 4096
	maxControlWorkers  = 4096
	// A -config master's status: at most this many groups, remote hosts
	// per group, and bytes in a group's name or a remote's host and error.
	maxControlGroups  = 1024
	maxControlRemotes = 256
	maxControlName    = 256
	maxControlText    = 4096
)

// ControlStatus is the master's answer to a status request.
type ControlStatus struct {
	// PID is the master's process id.
	PID int
	// Generation is the last generation a graceful restart completed (1
	// before any restart).
	Generation int
	// Restarting is true while a graceful restart is in flight.
	Restarting bool
	// Workers is the number of slots, ReadyWorkers those whose worker is
	// ready (not one that said STOPPING=1 or RELOADING=1).
	Workers, ReadyWorkers int
	Slots                 []ControlSlot
	// MaxRunningTime is the maximum running time in effect (0: none; a
	// -config master reports it per group).
	MaxRunningTime time.Duration
	// Groups is set by a master running a -config file: one entry per
	// group, in file order. Workers and ReadyWorkers then sum the local
	// workers of every group, and Slots is empty: each group lists its own
	// (listing them twice would halve the workers a response can hold).
	Groups []ControlGroup
}

// ControlGroup is the status of one group of a -config master.
type ControlGroup struct {
	Name string
	// Suspended is true while the group is suspended.
	Suspended bool
	// MaxRunningTime is the group's maximum running time in effect (0:
	// none).
	MaxRunningTime time.Duration
	// Generation and Restarting describe the group's local workers as
	// ControlStatus does for a single cluster.
	Generation int
	Restarting bool
	// Workers and ReadyWorkers count local and remote workers.
	Workers, ReadyWorkers int
	// Slots are the local workers.
	Slots []ControlSlot
	// Remote is one entry per remote host, in file order.
	Remote []ControlRemote
}

// ControlRemote is the status of one remote host of a group, as its agent
// last reported it.
type ControlRemote struct {
	// Host is the "ssh" target (user@host) and port.
	Host string
	Port int
	// Connected is true while an agent session is up; AgentPID is the
	// agent's pid on that host (0 when none).
	Connected bool
	AgentPID  int
	// Sessions counts agent sessions started; LastError is why the last
	// one ended or failed ("" if none did).
	Sessions  int
	LastError string
	// Workers and ReadyWorkers are the host's configured and ready
	// workers; Slots as its agent last reported them (empty while
	// disconnected).
	Workers, ReadyWorkers int
	Slots                 []ControlSlot
}

// ControlSlot is the status of one worker slot.
type ControlSlot struct {
	Slot int
	// PID and Generation of the slot's current worker (0 when none runs).
	PID, Generation int
	// State is the slot's supervise state, stopping for a worker that
	// said STOPPING=1 and reloading (supervise.SlotReloading) for a ready
	// one that said RELOADING=1 and not READY=1 since. It is 0 for a
	// state this release does not know, sent by a newer master or agent:
	// StateName then holds its name.
	State supervise.SlotState
	// StateName is the name of an unknown State as it came on the wire
	// (1 to 32 bytes of a-z, 0-9, '_' and '-'); empty for every state
	// this release knows. StateText gives the name in either case.
	StateName string
	// Uptime is how long the current worker has run (0 when none runs).
	Uptime time.Duration
	// Restarts counts respawns after unexpected exits.
	Restarts int
	// LastExit is the slot's most recent worker exit, nil if none exited
	// since the master started.
	LastExit *ControlExit
	// ID is the worker's global id (HANDOFF_WORKER_ID) and Index its
	// index in its group (HANDOFF_GROUP_INDEX); outside groups both equal
	// Slot.
	ID, Index int
	// Status is the last STATUS= the current worker sent on NOTIFY_SOCKET
	// (empty if none); the control socket carries its first MaxSlotStatus
	// bytes.
	Status string
}

// MaxSlotStatus bounds ControlSlot.Status: longer texts are cut.
const MaxSlotStatus = 256

// ControlExit describes a worker exit.
type ControlExit struct {
	PID int
	// Code is the exit status, or -1 when the worker was killed by Signal.
	Code   int
	Signal syscall.Signal
	// Requested is true when the master asked the worker to stop.
	Requested bool
	// Time is when the exit was seen (UTC, millisecond precision on the
	// wire).
	Time time.Time
}

// ControlOptions adjusts DialControl. nil or zero fields mean the defaults.
type ControlOptions struct {
	// Timeout bounds each request and its response (default 10 s).
	Timeout time.Duration
}

// ControlClient is a connection to a master's control socket. Requests
// are sent one at a time; its methods are safe for concurrent use (they
// queue). A request that fails on the connection (a timeout, a reset, a
// bad frame) closes the client: an answer may still be on its way, and it
// would be taken for the next request's. Later calls then fail with an
// error matching net.ErrClosed; dial again. Close is idempotent.
//
// The master closes a connection that stays idle for 30 s, or after 1 s
// idle when all its 8 places are taken and another client connects. A
// request that finds the connection closed that way (the write fails with
// EPIPE: nothing of it was read) is sent again once on a new connection:
// the master never saw it.
type ControlClient struct {
	timeout time.Duration
	path    string

	// connMu guards conn and closed, so that Close can interrupt a request
	// in progress (which holds mu) while a redial may replace conn.
	connMu sync.Mutex
	conn   *net.UnixConn
	closed bool

	mu     sync.Mutex
	broken error // why the connection was given up, set with mu held
	w      *ipcframe.Writer
	r      *ipcframe.Reader
	p      fastjson.Parser
	buf    []byte
	msg    sockMsg
}

// DialControl connects to the control socket at path. ctx bounds the
// connect only.
func DialControl(ctx context.Context, path string, opts *ControlOptions) (*ControlClient, error) {
	c := &ControlClient{timeout: 10 * time.Second, path: path}
	if opts != nil && opts.Timeout > 0 {
		c.timeout = opts.Timeout
	}
	conn, err := dialControl(ctx, path)
	if err != nil {
		return nil, err
	}
	c.use(conn)
	return c, nil
}

func dialControl(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("cluster: control socket: %w", err)
	}
	return conn.(*net.UnixConn), nil
}

// use makes conn the client's connection. Called before c is shared or
// with c.mu and c.connMu held.
func (c *ControlClient) use(conn *net.UnixConn) {
	c.conn = conn
	c.w = ipcframe.NewWriter(conn, &ipcframe.WriterOptions{MaxFrame: maxControlRequest})
	c.r = ipcframe.NewReader(conn, &ipcframe.ReaderOptions{MaxFrame: maxControlResponse, BufferSize: 4096})
}

// redial replaces a connection the master closed while it was idle.
// Called with c.mu held.
func (c *ControlClient) redial() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	conn, err := dialControl(ctx, c.path)
	if err != nil {
		return err
	}
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.closed {
		conn.Close()
		return fmt.Errorf("cluster: control socket: %w", net.ErrClosed)
	}
	c.conn.Close()
	c.use(conn)
	return nil
}

// Close closes the connection.
func (c *ControlClient) Close() error {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	c.closed = true
	err := c.conn.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Status asks for the master's status.
func (c *ControlClient) Status() (*ControlStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.roundTrip(&sockMsg{Type: "status"}); err != nil {
		return nil, err
	}
	if c.msg.Type != "status" || c.msg.Status == nil {
		return nil, fmt.Errorf("%w: status answered with %q", ErrControlProtocol, c.msg.Type)
	}
	return c.msg.Status, nil
}

// Restart begins a graceful restart and returns once the master accepted
// it; requests during a restart coalesce into at most one more. A -config
// master restarts every group.
func (c *ControlClient) Restart() error { return c.simple(&sockMsg{Type: "restart"}) }

// RestartGroup restarts one group of a -config master ("": every group).
func (c *ControlClient) RestartGroup(group string) error {
	if err := checkGroupArg(group, false); err != nil {
		return err
	}
	return c.simple(&sockMsg{Type: "restart", Group: group})
}

// Suspend stops the workers of a -config master's group gracefully until
// Resume; its listeners stay open, so connections wait in their backlog.
func (c *ControlClient) Suspend(group string) error {
	if err := checkGroupArg(group, true); err != nil {
		return err
	}
	return c.simple(&sockMsg{Type: "suspend", Group: group})
}

// SetMaxRunningTime changes the maximum running time of the workers of a
// group of a -config master, or of a single-command master (group ""): 0
// for none, else 1 s to 366 days. Workers already past it are recycled,
// one at a time.
func (c *ControlClient) SetMaxRunningTime(group string, d time.Duration) error {
	if err := checkGroupArg(group, false); err != nil {
		return err
	}
	if err := checkMaxRunning(d); err != nil {
		return err
	}
	return c.simple(&sockMsg{Type: "max_running_time", Group: group, MaxRunning: d.Truncate(time.Millisecond)})
}

// Resume starts the workers of a suspended group again.
func (c *ControlClient) Resume(group string) error {
	if err := checkGroupArg(group, true); err != nil {
		return err
	}
	return c.simple(&sockMsg{Type: "resume", Group: group})
}

// checkGroupArg refuses what the master would refuse anyway, before a
// round trip.
func checkGroupArg(group string, required bool) error {
	if required && group == "" {
		return fmt.Errorf("%w: a group name is required", ErrControlInvalid)
	}
	if len(group) > maxControlName {
		return fmt.Errorf("%w: group name of %d bytes (at most %d)", ErrControlInvalid, len(group), maxControlName)
	}
	return nil
}

// Stop begins a graceful stop of the cluster and returns once the master
// accepted it (the master exits later).
func (c *ControlClient) Stop() error { return c.simple(&sockMsg{Type: "stop"}) }

// Scale sets the number of worker slots to n (0 to 4096).
func (c *ControlClient) Scale(n int) error { return c.ScaleGroup("", n) }

// ScaleGroup sets the number of local worker slots of a -config master's
// group to n ("" addresses a single-command master).
func (c *ControlClient) ScaleGroup(group string, n int) error {
	if n < 0 || n > maxControlWorkers {
		return fmt.Errorf("%w: scale %d (want 0..%d)", ErrControlInvalid, n, maxControlWorkers)
	}
	if err := checkGroupArg(group, false); err != nil {
		return err
	}
	return c.simple(&sockMsg{Type: "scale", Group: group, Workers: n})
}

// Send queues payload (at most MaxMessage bytes) for the serving worker of
// slot, as Master.Send does; the worker reads it from Messages.
func (c *ControlClient) Send(slot int, payload []byte) error { return c.SendGroup("", slot, payload) }

// SendGroup is Send to a local slot of a -config master's group ("": a
// single-command master).
func (c *ControlClient) SendGroup(group string, slot int, payload []byte) error {
	if slot < 0 || slot >= maxControlSlots || len(payload) > MaxMessage {
		return fmt.Errorf("%w: send to slot %d, %d bytes (at most %d)", ErrControlInvalid, slot, len(payload), MaxMessage)
	}
	if err := checkGroupArg(group, false); err != nil {
		return err
	}
	return c.simple(&sockMsg{Type: "send", Group: group, Slot: slot, Data: payload})
}

// Broadcast queues payload for the serving worker of every slot, as
// Master.Broadcast does; a -config master queues it for every local worker
// of every group.
func (c *ControlClient) Broadcast(payload []byte) error { return c.BroadcastGroup("", payload) }

// BroadcastGroup is Broadcast to the local workers of one group ("": every
// group).
func (c *ControlClient) BroadcastGroup(group string, payload []byte) error {
	if len(payload) > MaxMessage {
		return fmt.Errorf("%w: broadcast of %d bytes (at most %d)", ErrControlInvalid, len(payload), MaxMessage)
	}
	if err := checkGroupArg(group, false); err != nil {
		return err
	}
	return c.simple(&sockMsg{Type: "broadcast", Group: group, Data: payload})
}

// giveUp closes the connection after err left it out of step. Called with
// c.mu held.
func (c *ControlClient) giveUp(err error) {
	c.broken = err
	c.connMu.Lock()
	c.conn.Close()
	c.connMu.Unlock()
}

func (c *ControlClient) simple(req *sockMsg) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.roundTrip(req); err != nil {
		return err
	}
	if c.msg.Type != "ok" {
		return fmt.Errorf("%w: %s answered with %q", ErrControlProtocol, req.Type, c.msg.Type)
	}
	return nil
}

// roundTrip sends req and decodes the answer into c.msg; an "error" answer
// becomes a *ControlError. Called with c.mu held.
func (c *ControlClient) roundTrip(req *sockMsg) error {
	if c.broken != nil {
		return fmt.Errorf("cluster: control socket: %w after an earlier failure (%v)", net.ErrClosed, c.broken)
	}
	if err := c.conn.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return fmt.Errorf("cluster: control socket: %w", err)
	}
	c.buf = appendSockMsg(c.buf[:0], req)
	err := c.w.WriteFrame(c.buf)
	if err != nil && errors.Is(err, syscall.EPIPE) {
		// The master had closed the idle connection: a peer that is
		// gone reads nothing (unix(7)), so the request was never seen
		// and may be sent again, whatever it asks.
		if derr := c.redial(); derr != nil {
			c.giveUp(err)
			return fmt.Errorf("%w (%v; dialling again: %v)", ErrControlClosed, err, derr)
		}
		if err = c.conn.SetDeadline(time.Now().Add(c.timeout)); err == nil {
			err = c.w.WriteFrame(c.buf)
		}
	}
	if err != nil {
		// Part of the frame may have been written: the stream is lost.
		c.giveUp(err)
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("%w (%v)", ErrControlClosed, err)
		}
		return fmt.Errorf("cluster: control socket: %w", err)
	}
	c.buf, err = c.r.ReadFrame(c.buf[:0])
	if err != nil {
		// After a timeout the answer may still come, and would be read as
		// the next request's: no further request on this connection.
		c.giveUp(err)
	}
	switch {
	case err == nil:
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("%w (%v)", ErrControlClosed, err)
	case errors.Is(err, ipcframe.ErrBadHeader) || errors.Is(err, ipcframe.ErrFrameTooLarge) || errors.Is(err, ipcframe.ErrFrameDropped) || errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %w", ErrControlProtocol, err)
	default:
		return fmt.Errorf("cluster: control socket: %w", err)
	}
	if err := decodeSockMsg(&c.p, c.buf, &c.msg); err != nil {
		return err
	}
	if c.msg.Type == "error" {
		return &ControlError{Code: c.msg.Code, Message: c.msg.Error}
	}
	return nil
}

// sockMsg is every control-socket message, request or response, in one
// shape: decodeSockMsg fills it and appendSockMsg writes it, for both ends.
// Fields not used by Type are zero.
type sockMsg struct {
	Type string
	// Workers is the target of "scale".
	Workers int
	// MaxRunning is the target of "max_running_time" (0: none).
	MaxRunning time.Duration
	// Slot and Data are the target and payload of "send"; Data that of
	// "broadcast" too (base64 on the wire, like the control channel's
	// messages).
	Slot int
	Data []byte
	// Group names the group a request of a -config master is for
	// ("restart", "scale", "send", "broadcast": optional; "suspend",
	// "resume": required; "stop": refused, it stops every group).
	Group string
	// Code and Error describe an "error" response.
	Code, Error string
	// Status is the body of a "status" response (nil in the request).
	Status *ControlStatus
}

// Control message types.
var controlTypes = [...]string{"status", "restart", "stop", "scale", "send", "broadcast", "suspend", "resume", "max_running_time", "ok", "error"}

// decodeSockMsg parses one control message (request or response) from b
// into msg, reusing p. Unknown fields are ignored; known fields must have
// the right JSON type and range. Nothing in msg aliases b or p.
func decodeSockMsg(p *fastjson.Parser, b []byte, msg *sockMsg) error {
	*msg = sockMsg{}
	// As in decodeControl: fastjson unescapes on a best-effort basis, so
	// bad escapes and invalid UTF-8 are refused first, not guessed.
	if !utf8.Valid(b) {
		return fmt.Errorf("%w: not UTF-8", ErrControlProtocol)
	}
	if err := validateJSON(b); err != nil {
		return fmt.Errorf("%w: %w", ErrControlProtocol, err)
	}
	v, err := p.ParseBytes(b)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrControlProtocol, err)
	}
	if v.Type() != fastjson.TypeObject {
		return fmt.Errorf("%w: message is a JSON %s, not an object", ErrControlProtocol, v.Type())
	}
	typ, err := jsonString(v, "type", true)
	if err != nil {
		return err
	}
	for _, t := range controlTypes {
		if typ == t {
			msg.Type = t
		}
	}
	if msg.Type == "" {
		return fmt.Errorf("%w: unknown message type %.64q", ErrControlProtocol, typ)
	}
	switch msg.Type {
	case "restart", "scale", "send", "broadcast", "suspend", "resume", "stop", "max_running_time":
		// "stop" takes none, but decodes it so that the master refuses
		// a stop meant for one group rather than stop every group.
		required := msg.Type == "suspend" || msg.Type == "resume"
		if msg.Group, err = jsonText(v, "group", required, maxControlName); err != nil {
			return err
		}
		if required && msg.Group == "" {
			return fmt.Errorf("%w: %s without a group", ErrControlProtocol, msg.Type)
		}
	}
	switch msg.Type {
	case "scale":
		if msg.Workers, err = jsonInt(v, "workers", true, 0, maxControlWorkers); err != nil {
			return err
		}
	case "max_running_time":
		if msg.MaxRunning, err = jsonMaxRunning(v, true); err != nil {
			return err
		}
	case "send", "broadcast":
		if msg.Type == "send" {
			if msg.Slot, err = jsonInt(v, "slot", true, 0, maxControlSlots-1); err != nil {
				return err
			}
		}
		data, err := jsonString(v, "data", true)
		if err != nil {
			return err
		}
		if len(data) > base64.StdEncoding.EncodedLen(MaxMessage) {
			return fmt.Errorf("%w: data: %d bytes of base64 (payload at most %d)", ErrControlProtocol, len(data), MaxMessage)
		}
		if msg.Data, err = base64.StdEncoding.DecodeString(data); err != nil {
			return fmt.Errorf("%w: data: %w", ErrControlProtocol, err)
		}
	case "error":
		if msg.Code, err = jsonString(v, "code", true); err != nil {
			return err
		}
		if msg.Error, err = jsonString(v, "error", false); err != nil {
			return err
		}
	case "status":
		// A request carries only its type; a response has the master's pid.
		if v.Get("pid") != nil {
			if msg.Status, err = decodeStatus(v); err != nil {
				return err
			}
		}
	}
	return nil
}

func decodeStatus(v *fastjson.Value) (*ControlStatus, error) {
	st := &ControlStatus{}
	var err error
	if st.PID, err = jsonInt(v, "pid", true, 0, 1<<31-1); err != nil {
		return nil, err
	}
	if st.Generation, err = jsonInt(v, "generation", true, 0, 1<<31-1); err != nil {
		return nil, err
	}
	if st.Restarting, err = jsonBool(v, "restarting"); err != nil {
		return nil, err
	}
	if st.Workers, err = jsonInt(v, "workers", true, 0, maxControlWorkers); err != nil {
		return nil, err
	}
	if st.ReadyWorkers, err = jsonInt(v, "ready_workers", true, 0, maxControlWorkers); err != nil {
		return nil, err
	}
	if st.MaxRunningTime, err = jsonMaxRunning(v, false); err != nil {
		return nil, err
	}
	if st.Slots, err = decodeSlots(v, true); err != nil {
		return nil, err
	}
	gv := v.Get("groups")
	if gv == nil || gv.Type() == fastjson.TypeNull {
		return st, nil
	}
	garr, err := gv.Array()
	if err != nil {
		return nil, fmt.Errorf("%w: groups: %w", ErrControlProtocol, err)
	}
	if len(garr) > maxControlGroups {
		return nil, fmt.Errorf("%w: %d groups (at most %d)", ErrControlProtocol, len(garr), maxControlGroups)
	}
	st.Groups = make([]ControlGroup, len(garr))
	for i, e := range garr {
		if err := decodeGroup(e, &st.Groups[i]); err != nil {
			return nil, fmt.Errorf("group %d: %w", i, err)
		}
	}
	return st, nil
}

// decodeSlots decodes v's "slots" array (absent: none, unless required).
func decodeSlots(v *fastjson.Value, required bool) ([]ControlSlot, error) {
	sv := v.Get("slots")
	if sv == nil {
		if required {
			return nil, fmt.Errorf("%w: status without slots", ErrControlProtocol)
		}
		return nil, nil
	}
	arr, err := sv.Array()
	if err != nil {
		return nil, fmt.Errorf("%w: slots: %w", ErrControlProtocol, err)
	}
	if len(arr) > maxControlSlots {
		return nil, fmt.Errorf("%w: %d slots (at most %d)", ErrControlProtocol, len(arr), maxControlSlots)
	}
	if len(arr) == 0 && !required {
		// A group's or host's empty list decodes as none, like an absent one.
		return nil, nil
	}
	out := make([]ControlSlot, len(arr))
	for i, e := range arr {
		if err := decodeSlot(e, &out[i]); err != nil {
			return nil, fmt.Errorf("slot %d: %w", i, err)
		}
	}
	return out, nil
}

func decodeGroup(v *fastjson.Value, g *ControlGroup) error {
	if v.Type() != fastjson.TypeObject {
		return fmt.Errorf("%w: group is a JSON %s", ErrControlProtocol, v.Type())
	}
	var err error
	if g.Name, err = jsonText(v, "name", true, maxControlName); err != nil {
		return err
	}
	if g.Suspended, err = jsonBool(v, "suspended"); err != nil {
		return err
	}
	if g.MaxRunningTime, err = jsonMaxRunning(v, false); err != nil {
		return err
	}
	if g.Generation, err = jsonInt(v, "generation", false, 0, 1<<31-1); err != nil {
		return err
	}
	if g.Restarting, err = jsonBool(v, "restarting"); err != nil {
		return err
	}
	// Local and remote workers together: a group has at most 4096 local
	// ones and 4096 on each remote host.
	if g.Workers, err = jsonInt(v, "workers", false, 0, maxControlWorkers*(maxControlRemotes+1)); err != nil {
		return err
	}
	if g.ReadyWorkers, err = jsonInt(v, "ready_workers", false, 0, maxControlWorkers*(maxControlRemotes+1)); err != nil {
		return err
	}
	if g.Slots, err = decodeSlots(v, false); err != nil {
		return err
	}
	rv := v.Get("remote")
	if rv == nil || rv.Type() == fastjson.TypeNull {
		return nil
	}
	arr, err := rv.Array()
	if err != nil {
		return fmt.Errorf("%w: remote: %w", ErrControlProtocol, err)
	}
	if len(arr) > maxControlRemotes {
		return fmt.Errorf("%w: %d remote hosts (at most %d)", ErrControlProtocol, len(arr), maxControlRemotes)
	}
	if len(arr) == 0 {
		return nil
	}
	g.Remote = make([]ControlRemote, len(arr))
	for i, e := range arr {
		if err := decodeRemote(e, &g.Remote[i]); err != nil {
			return fmt.Errorf("remote %d: %w", i, err)
		}
	}
	return nil
}

func decodeRemote(v *fastjson.Value, r *ControlRemote) error {
	if v.Type() != fastjson.TypeObject {
		return fmt.Errorf("%w: remote is a JSON %s", ErrControlProtocol, v.Type())
	}
	var err error
	if r.Host, err = jsonText(v, "host", true, maxControlName); err != nil {
		return err
	}
	if r.Port, err = jsonInt(v, "port", false, 0, 65535); err != nil {
		return err
	}
	if r.Connected, err = jsonBool(v, "connected"); err != nil {
		return err
	}
	if r.AgentPID, err = jsonInt(v, "agent_pid", false, 0, 1<<31-1); err != nil {
		return err
	}
	if r.Sessions, err = jsonInt(v, "sessions", false, 0, 1<<31-1); err != nil {
		return err
	}
	if r.LastError, err = jsonText(v, "last_error", false, maxControlText); err != nil {
		return err
	}
	if r.Workers, err = jsonInt(v, "workers", false, 0, maxControlWorkers); err != nil {
		return err
	}
	if r.ReadyWorkers, err = jsonInt(v, "ready_workers", false, 0, maxControlWorkers); err != nil {
		return err
	}
	r.Slots, err = decodeSlots(v, false)
	return err
}

func decodeSlot(v *fastjson.Value, s *ControlSlot) error {
	if v.Type() != fastjson.TypeObject {
		return fmt.Errorf("%w: slot is a JSON %s", ErrControlProtocol, v.Type())
	}
	var err error
	if s.Slot, err = jsonInt(v, "slot", true, 0, maxControlSlots); err != nil {
		return err
	}
	if s.PID, err = jsonInt(v, "pid", false, 0, 1<<31-1); err != nil {
		return err
	}
	if s.Generation, err = jsonInt(v, "generation", false, 0, 1<<31-1); err != nil {
		return err
	}
	state, err := jsonString(v, "state", true)
	if err != nil {
		return err
	}
	// A state added after this release is kept by name, not refused:
	// status still shows the slot, and a fleet master passes it on.
	if s.State = parseSlotState(state); s.State == 0 {
		if !validStateName(state) {
			return fmt.Errorf("%w: slot state %.32q", ErrControlProtocol, state)
		}
		s.StateName = state
	}
	// Bounded by what a time.Duration holds: beyond it the multiplication
	// below would wrap to a negative uptime.
	ms, err := jsonRange(v, "uptime_ms", false, 0, math.MaxInt64/int64(time.Millisecond))
	if err != nil {
		return err
	}
	s.Uptime = time.Duration(ms) * time.Millisecond
	if s.Restarts, err = jsonInt(v, "restarts", false, 0, 1<<31-1); err != nil {
		return err
	}
	// Absent from a master that predates groups: outside groups both are
	// the slot.
	s.ID, s.Index = s.Slot, s.Slot
	if v.Get("id") != nil {
		if s.ID, err = jsonInt(v, "id", true, 0, 1<<31-1); err != nil {
			return err
		}
	}
	if v.Get("index") != nil {
		if s.Index, err = jsonInt(v, "index", true, 0, 1<<31-1); err != nil {
			return err
		}
	}
	if s.Status, err = jsonText(v, "status", false, MaxSlotStatus); err != nil {
		return err
	}
	le := v.Get("last_exit")
	if le == nil || le.Type() == fastjson.TypeNull {
		return nil
	}
	if le.Type() != fastjson.TypeObject {
		return fmt.Errorf("%w: last_exit is a JSON %s", ErrControlProtocol, le.Type())
	}
	x := &ControlExit{}
	if x.PID, err = jsonInt(le, "pid", true, 0, 1<<31-1); err != nil {
		return err
	}
	if x.Code, err = jsonInt(le, "code", true, -1, 255); err != nil {
		return err
	}
	sig, err := jsonInt(le, "signal", false, 0, 127)
	if err != nil {
		return err
	}
	x.Signal = syscall.Signal(sig)
	if x.Requested, err = jsonBool(le, "requested"); err != nil {
		return err
	}
	at, err := jsonRange(le, "time_ms", false, 0, 1<<53)
	if err != nil {
		return err
	}
	x.Time = time.UnixMilli(at).UTC()
	s.LastExit = x
	return nil
}

// StateText is the slot state's name: State's, or StateName for a state
// this release does not know.
func (s ControlSlot) StateText() string {
	if s.State == 0 && s.StateName != "" {
		return s.StateName
	}
	return s.State.String()
}

// validStateName says whether name may stand for a slot state this release
// does not know: short, lower case, nothing a terminal or a table would
// interpret.
func validStateName(name string) bool {
	if name == "" || len(name) > 32 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// parseSlotState maps supervise's state names back; 0 means unknown.
func parseSlotState(name string) supervise.SlotState {
	for s := supervise.SlotStarting; s <= supervise.SlotReloading; s++ {
		if s.String() == name {
			return s
		}
	}
	return 0
}

func jsonString(v *fastjson.Value, key string, required bool) (string, error) {
	f := v.Get(key)
	if f == nil {
		if required {
			return "", fmt.Errorf("%w: no %q", ErrControlProtocol, key)
		}
		return "", nil
	}
	b, err := f.StringBytes()
	if err != nil {
		return "", fmt.Errorf("%w: %q: %w", ErrControlProtocol, key, err)
	}
	return string(b), nil
}

// jsonText is jsonString with a length limit, for strings a status
// response repeats per group or host.
func jsonText(v *fastjson.Value, key string, required bool, maxLen int) (string, error) {
	s, err := jsonString(v, key, required)
	if err != nil {
		return "", err
	}
	if len(s) > maxLen {
		return "", fmt.Errorf("%w: %q: %d bytes (at most %d)", ErrControlProtocol, key, len(s), maxLen)
	}
	return s, nil
}

func jsonInt(v *fastjson.Value, key string, required bool, lo, hi int) (int, error) {
	n, err := jsonRange(v, key, required, int64(lo), int64(hi))
	return int(n), err
}

// jsonRange reads an integer in lo..hi; absent, it is 0 unless required.
func jsonRange(v *fastjson.Value, key string, required bool, lo, hi int64) (int64, error) {
	f := v.Get(key)
	if f == nil {
		if required {
			return 0, fmt.Errorf("%w: no %q", ErrControlProtocol, key)
		}
		return 0, nil
	}
	n, err := f.Int64()
	if err != nil {
		return 0, fmt.Errorf("%w: %q: %w", ErrControlProtocol, key, err)
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%w: %q = %d (want %d..%d)", ErrControlProtocol, key, n, lo, hi)
	}
	return n, nil
}

func jsonBool(v *fastjson.Value, key string) (bool, error) {
	f := v.Get(key)
	if f == nil {
		return false, nil
	}
	switch f.Type() {
	case fastjson.TypeTrue:
		return true, nil
	case fastjson.TypeFalse:
		return false, nil
	}
	return false, fmt.Errorf("%w: %q is a JSON %s, not a boolean", ErrControlProtocol, key, f.Type())
}

// appendSockMsg appends msg as one JSON object: the encoder of both ends.
func appendSockMsg(dst []byte, msg *sockMsg) []byte {
	dst = append(dst, `{"type":`...)
	dst = appendJSONString(dst, msg.Type)
	if msg.Group != "" {
		dst = append(dst, `,"group":`...)
		dst = appendJSONString(dst, msg.Group)
	}
	switch msg.Type {
	case "scale":
		dst = append(dst, `,"workers":`...)
		dst = strconv.AppendInt(dst, int64(msg.Workers), 10)
	case "max_running_time":
		dst = appendMaxRunning(dst, msg.MaxRunning, true)
	case "send", "broadcast":
		if msg.Type == "send" {
			dst = append(dst, `,"slot":`...)
			dst = strconv.AppendInt(dst, int64(msg.Slot), 10)
		}
		dst = append(dst, `,"data":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, msg.Data)
		dst = append(dst, '"')
	case "error":
		dst = append(dst, `,"code":`...)
		dst = appendJSONString(dst, msg.Code)
		dst = append(dst, `,"error":`...)
		dst = appendJSONString(dst, msg.Error)
	case "status":
		if msg.Status != nil {
			dst = append(dst, ',')
			dst = msg.Status.appendFields(dst)
		}
	}
	return append(dst, '}')
}

// AppendJSON appends s as the JSON object the control protocol uses for a
// status response (without its "type" field), as printed by
// "mini-cluster status -json".
func (s *ControlStatus) AppendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	dst = s.appendFields(dst)
	return append(dst, '}')
}

func (s *ControlStatus) appendFields(dst []byte) []byte {
	dst = append(dst, `"pid":`...)
	dst = strconv.AppendInt(dst, int64(s.PID), 10)
	dst = append(dst, `,"generation":`...)
	dst = strconv.AppendInt(dst, int64(s.Generation), 10)
	dst = append(dst, `,"restarting":`...)
	dst = strconv.AppendBool(dst, s.Restarting)
	dst = append(dst, `,"workers":`...)
	dst = strconv.AppendInt(dst, int64(s.Workers), 10)
	dst = append(dst, `,"ready_workers":`...)
	dst = strconv.AppendInt(dst, int64(s.ReadyWorkers), 10)
	dst = appendMaxRunning(dst, s.MaxRunningTime, false)
	dst = appendSlots(dst, s.Slots)
	if len(s.Groups) == 0 {
		return dst
	}
	dst = append(dst, `,"groups":[`...)
	for i := range s.Groups {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = s.Groups[i].appendJSON(dst)
	}
	return append(dst, ']')
}

// appendSlots appends `,"slots":[...]`.
func appendSlots(dst []byte, slots []ControlSlot) []byte {
	dst = append(dst, `,"slots":[`...)
	for i := range slots {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = slots[i].appendJSON(dst)
	}
	return append(dst, ']')
}

func (g *ControlGroup) appendJSON(dst []byte) []byte {
	// Clipped as the decoder bounds them: one long text (an agent's error
	// from a remote host, say) must not make the whole status unreadable.
	dst = append(dst, `{"name":`...)
	dst = appendJSONString(dst, clipText(g.Name, maxControlName))
	dst = append(dst, `,"suspended":`...)
	dst = strconv.AppendBool(dst, g.Suspended)
	dst = appendMaxRunning(dst, g.MaxRunningTime, false)
	dst = append(dst, `,"generation":`...)
	dst = strconv.AppendInt(dst, int64(g.Generation), 10)
	dst = append(dst, `,"restarting":`...)
	dst = strconv.AppendBool(dst, g.Restarting)
	dst = append(dst, `,"workers":`...)
	dst = strconv.AppendInt(dst, int64(g.Workers), 10)
	dst = append(dst, `,"ready_workers":`...)
	dst = strconv.AppendInt(dst, int64(g.ReadyWorkers), 10)
	dst = appendSlots(dst, g.Slots)
	dst = append(dst, `,"remote":[`...)
	for i := range g.Remote {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = g.Remote[i].appendJSON(dst)
	}
	return append(dst, "]}"...)
}

func (r *ControlRemote) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"host":`...)
	dst = appendJSONString(dst, clipText(r.Host, maxControlName))
	dst = append(dst, `,"port":`...)
	dst = strconv.AppendInt(dst, int64(r.Port), 10)
	dst = append(dst, `,"connected":`...)
	dst = strconv.AppendBool(dst, r.Connected)
	dst = append(dst, `,"agent_pid":`...)
	dst = strconv.AppendInt(dst, int64(r.AgentPID), 10)
	dst = append(dst, `,"sessions":`...)
	dst = strconv.AppendInt(dst, int64(r.Sessions), 10)
	dst = append(dst, `,"last_error":`...)
	dst = appendJSONString(dst, clipText(r.LastError, maxControlText))
	dst = append(dst, `,"workers":`...)
	dst = strconv.AppendInt(dst, int64(r.Workers), 10)
	dst = append(dst, `,"ready_workers":`...)
	dst = strconv.AppendInt(dst, int64(r.ReadyWorkers), 10)
	dst = appendSlots(dst, r.Slots)
	return append(dst, '}')
}

func (s *ControlSlot) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"slot":`...)
	dst = strconv.AppendInt(dst, int64(s.Slot), 10)
	dst = append(dst, `,"pid":`...)
	dst = strconv.AppendInt(dst, int64(s.PID), 10)
	dst = append(dst, `,"generation":`...)
	dst = strconv.AppendInt(dst, int64(s.Generation), 10)
	dst = append(dst, `,"state":`...)
	dst = appendJSONString(dst, s.StateText())
	dst = append(dst, `,"uptime_ms":`...)
	dst = strconv.AppendInt(dst, s.Uptime.Milliseconds(), 10)
	dst = append(dst, `,"restarts":`...)
	dst = strconv.AppendInt(dst, int64(s.Restarts), 10)
	dst = append(dst, `,"id":`...)
	dst = strconv.AppendInt(dst, int64(s.ID), 10)
	dst = append(dst, `,"index":`...)
	dst = strconv.AppendInt(dst, int64(s.Index), 10)
	if s.Status != "" {
		dst = append(dst, `,"status":`...)
		dst = appendJSONString(dst, clipText(s.Status, MaxSlotStatus))
	}
	if x := s.LastExit; x != nil {
		dst = append(dst, `,"last_exit":{"pid":`...)
		dst = strconv.AppendInt(dst, int64(x.PID), 10)
		dst = append(dst, `,"code":`...)
		dst = strconv.AppendInt(dst, int64(x.Code), 10)
		dst = append(dst, `,"signal":`...)
		dst = strconv.AppendInt(dst, int64(x.Signal), 10)
		dst = append(dst, `,"requested":`...)
		dst = strconv.AppendBool(dst, x.Requested)
		dst = append(dst, `,"time_ms":`...)
		dst = strconv.AppendInt(dst, max(x.Time.UnixMilli(), 0), 10)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// controlErrorCode classifies an error of a master method for an "error"
// response.
func controlErrorCode(err error) string {
	switch {
	case errors.Is(err, supervise.ErrNotRunning):
		return ControlCodeNotRunning
	case errors.Is(err, supervise.ErrInvalid), errors.Is(err, ErrControlInvalid), errors.Is(err, ErrTooLarge):
		return ControlCodeInvalid
	case errors.Is(err, ErrNoWorker):
		return ControlCodeNoWorker
	case errors.Is(err, ErrQueueFull):
		return ControlCodeQueueFull
	}
	return ControlCodeFailed
}

// maxControlRunning bounds a maximum running time on the control
// socket: the configuration file's bound.
const maxControlRunning = cfgMaxRunningTimeCap

// checkMaxRunning refuses a maximum running time outside 0 or 1 s to 366
// days: an agent takes nothing else in its "max_running_time" frame (it
// would end the session as a protocol error), nor does a file.
func checkMaxRunning(d time.Duration) error {
	if d != 0 && (d < time.Second || d > maxControlRunning) {
		return fmt.Errorf("%w: maximum running time %v (want 0, or 1s to %v)", ErrControlInvalid, d, maxControlRunning)
	}
	return nil
}

// jsonMaxRunning reads "max_running_time_ms": 0 (none) or 1 s to 366 days.
func jsonMaxRunning(v *fastjson.Value, required bool) (time.Duration, error) {
	ms, err := jsonInt64(v, "max_running_time_ms", required)
	if err != nil {
		return 0, err
	}
	// Checked in milliseconds: up to 2^53 of them, the product in
	// nanoseconds would wrap, possibly into the valid range.
	if ms != 0 && (ms < time.Second.Milliseconds() || ms > maxControlRunning.Milliseconds()) {
		return 0, fmt.Errorf("%w: max_running_time_ms %d (want 0, or 1000 to %d)", ErrControlProtocol, ms, maxControlRunning.Milliseconds())
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// appendMaxRunning appends `,"max_running_time_ms":N`, when d is not zero
// or always is set.
func appendMaxRunning(dst []byte, d time.Duration, always bool) []byte {
	if d == 0 && !always {
		return dst
	}
	dst = append(dst, `,"max_running_time_ms":`...)
	return strconv.AppendInt(dst, d.Milliseconds(), 10)
}
