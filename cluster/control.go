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
	// ready.
	Workers, ReadyWorkers int
	Slots                 []ControlSlot
}

// ControlSlot is the status of one worker slot.
type ControlSlot struct {
	Slot int
	// PID and Generation of the slot's current worker (0 when none runs).
	PID, Generation int
	// State is the slot's supervise state.
	State supervise.SlotState
	// Uptime is how long the current worker has run (0 when none runs).
	Uptime time.Duration
	// Restarts counts respawns after unexpected exits.
	Restarts int
	// LastExit is the slot's most recent worker exit, nil if none exited
	// since the master started.
	LastExit *ControlExit
}

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
type ControlClient struct {
	timeout time.Duration
	conn    *net.UnixConn

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
	c := &ControlClient{timeout: 10 * time.Second}
	if opts != nil && opts.Timeout > 0 {
		c.timeout = opts.Timeout
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("cluster: control socket: %w", err)
	}
	c.conn = conn.(*net.UnixConn)
	c.w = ipcframe.NewWriter(c.conn, &ipcframe.WriterOptions{MaxFrame: maxControlRequest})
	c.r = ipcframe.NewReader(c.conn, &ipcframe.ReaderOptions{MaxFrame: maxControlResponse, BufferSize: 4096})
	return c, nil
}

// Close closes the connection.
func (c *ControlClient) Close() error {
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
// it; requests during a restart coalesce into at most one more.
func (c *ControlClient) Restart() error { return c.simple(&sockMsg{Type: "restart"}) }

// Stop begins a graceful stop of the cluster and returns once the master
// accepted it (the master exits later).
func (c *ControlClient) Stop() error { return c.simple(&sockMsg{Type: "stop"}) }

// Scale sets the number of worker slots to n (0 to 4096).
func (c *ControlClient) Scale(n int) error {
	if n < 0 || n > maxControlWorkers {
		return fmt.Errorf("%w: scale %d (want 0..%d)", ErrControlInvalid, n, maxControlWorkers)
	}
	return c.simple(&sockMsg{Type: "scale", Workers: n})
}

// Send queues payload (at most MaxMessage bytes) for the serving worker of
// slot, as Master.Send does; the worker reads it from Messages.
func (c *ControlClient) Send(slot int, payload []byte) error {
	if slot < 0 || slot >= maxControlSlots || len(payload) > MaxMessage {
		return fmt.Errorf("%w: send to slot %d, %d bytes (at most %d)", ErrControlInvalid, slot, len(payload), MaxMessage)
	}
	return c.simple(&sockMsg{Type: "send", Slot: slot, Data: payload})
}

// Broadcast queues payload for the serving worker of every slot, as
// Master.Broadcast does.
func (c *ControlClient) Broadcast(payload []byte) error {
	if len(payload) > MaxMessage {
		return fmt.Errorf("%w: broadcast of %d bytes (at most %d)", ErrControlInvalid, len(payload), MaxMessage)
	}
	return c.simple(&sockMsg{Type: "broadcast", Data: payload})
}

// giveUp closes the connection after err left it out of step. Called with
// c.mu held.
func (c *ControlClient) giveUp(err error) {
	c.broken = err
	c.conn.Close()
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
	if err := c.w.WriteFrame(c.buf); err != nil {
		// Part of the frame may have been written: the stream is lost.
		c.giveUp(err)
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("%w (%v)", ErrControlClosed, err)
		}
		return fmt.Errorf("cluster: control socket: %w", err)
	}
	var err error
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
	// Slot and Data are the target and payload of "send"; Data that of
	// "broadcast" too (base64 on the wire, like the control channel's
	// messages).
	Slot int
	Data []byte
	// Code and Error describe an "error" response.
	Code, Error string
	// Status is the body of a "status" response (nil in the request).
	Status *ControlStatus
}

// Control message types.
var controlTypes = [...]string{"status", "restart", "stop", "scale", "send", "broadcast", "ok", "error"}

// decodeSockMsg parses one control message (request or response) from b
// into msg, reusing p. Unknown fields are ignored; known fields must have
// the right JSON type and range. Nothing in msg aliases b or p.
func decodeSockMsg(p *fastjson.Parser, b []byte, msg *sockMsg) error {
	*msg = sockMsg{}
	// As in decodeControl: fastjson unescapes on a best-effort basis, so
	// bad escapes and invalid UTF-8 are refused first, not guessed.
	if err := fastjson.ValidateBytes(b); err != nil {
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
	case "scale":
		if msg.Workers, err = jsonInt(v, "workers", true, 0, maxControlWorkers); err != nil {
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
	sv := v.Get("slots")
	if sv == nil {
		return nil, fmt.Errorf("%w: status without slots", ErrControlProtocol)
	}
	arr, err := sv.Array()
	if err != nil {
		return nil, fmt.Errorf("%w: slots: %w", ErrControlProtocol, err)
	}
	if len(arr) > maxControlSlots {
		return nil, fmt.Errorf("%w: %d slots (at most %d)", ErrControlProtocol, len(arr), maxControlSlots)
	}
	st.Slots = make([]ControlSlot, len(arr))
	for i, e := range arr {
		if err := decodeSlot(e, &st.Slots[i]); err != nil {
			return nil, fmt.Errorf("slot %d: %w", i, err)
		}
	}
	return st, nil
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
	if s.State = parseSlotState(state); s.State == 0 {
		return fmt.Errorf("%w: slot state %.32q", ErrControlProtocol, state)
	}
	// Bounded by what a time.Duration holds: beyond it the multiplication
	// below would wrap to a negative uptime.
	ms, err := jsonInt(v, "uptime_ms", false, 0, int(math.MaxInt64/int64(time.Millisecond)))
	if err != nil {
		return err
	}
	s.Uptime = time.Duration(ms) * time.Millisecond
	if s.Restarts, err = jsonInt(v, "restarts", false, 0, 1<<31-1); err != nil {
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
	at, err := jsonInt(le, "time_ms", false, 0, 1<<53)
	if err != nil {
		return err
	}
	x.Time = time.UnixMilli(int64(at)).UTC()
	s.LastExit = x
	return nil
}

// parseSlotState maps supervise's state names back; 0 means unknown.
func parseSlotState(name string) supervise.SlotState {
	for s := supervise.SlotStarting; s <= supervise.SlotStopping; s++ {
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

func jsonInt(v *fastjson.Value, key string, required bool, lo, hi int) (int, error) {
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
	if n < int64(lo) || n > int64(hi) {
		return 0, fmt.Errorf("%w: %q = %d (want %d..%d)", ErrControlProtocol, key, n, lo, hi)
	}
	return int(n), nil
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
	switch msg.Type {
	case "scale":
		dst = append(dst, `,"workers":`...)
		dst = strconv.AppendInt(dst, int64(msg.Workers), 10)
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
	dst = append(dst, `,"slots":[`...)
	for i := range s.Slots {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = s.Slots[i].appendJSON(dst)
	}
	return append(dst, ']')
}

func (s *ControlSlot) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"slot":`...)
	dst = strconv.AppendInt(dst, int64(s.Slot), 10)
	dst = append(dst, `,"pid":`...)
	dst = strconv.AppendInt(dst, int64(s.PID), 10)
	dst = append(dst, `,"generation":`...)
	dst = strconv.AppendInt(dst, int64(s.Generation), 10)
	dst = append(dst, `,"state":`...)
	dst = appendJSONString(dst, s.State.String())
	dst = append(dst, `,"uptime_ms":`...)
	dst = strconv.AppendInt(dst, s.Uptime.Milliseconds(), 10)
	dst = append(dst, `,"restarts":`...)
	dst = strconv.AppendInt(dst, int64(s.Restarts), 10)
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
