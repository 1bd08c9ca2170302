package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
)

// AgentArg, as the first argument of the mini-cluster binary, selects its
// hidden agent mode (RunAgent on stdin and stdout): what a -config master
// runs on each remote host over ssh. A program that embeds the master and
// serves remote groups must call RunAgent when it sees it.
const AgentArg = "-handoff-agent"

// Agent protocol errors.
var (
	// ErrAgentProtocol reports a malformed, oversized or unexpected frame
	// on an agent session, on either end.
	ErrAgentProtocol = errors.New("cluster: agent protocol error")
	// ErrAgentFailed is matched by an *AgentError: the agent reported that
	// it could not run its workers (a bad start spec, a listener it could
	// not bind, a missing program).
	ErrAgentFailed = errors.New("cluster: agent failed")
	// ErrRemoteDown is returned by a command for a remote host whose agent
	// session is not up.
	ErrRemoteDown = errors.New("cluster: remote host not connected")
)

// AgentError is a failure the agent reported in an "error" frame, or a
// command the agent refused in its "ack". It matches ErrAgentFailed.
type AgentError struct {
	Message string
}

func (e *AgentError) Error() string { return "cluster: agent: " + e.Message }

// Is reports whether target is ErrAgentFailed.
func (e *AgentError) Is(target error) bool { return target == ErrAgentFailed }

// Agent protocol limits. A frame is at most maxAgentFrame bytes: a status
// of maxControlSlots slots takes about 0.9 MB with their last exits, and
// fits with STATUS= texts only once fitStatus has left them out (40-byte
// texts make it 1.1 MB); lists in a start spec and a log record's attributes are bounded
// so that a decoded message stays small.
const (
	agentVersion    = 1
	maxAgentFrame   = ipcframe.DefaultMaxFrame
	maxAgentArgs    = 1024
	maxAgentEnv     = 1024
	maxAgentListen  = 64
	maxAgentAttrs   = 64
	maxAgentAttrKey = 256
	maxAgentLevel   = 1000
	// maxAgentAttrValue and maxAgentLogMsg bound what the agent relays of
	// one record's string values and message; maxAgentAttrValueCut and
	// maxAgentLogMsgCut are the second, tighter cut of a record that does
	// not fit a frame even so: 64 attributes of 256-byte keys and values
	// plus a 4 KiB message take under 250 KiB even with every byte
	// escaped as \u00XX, so that cut always fits.
	maxAgentAttrValue    = 64 << 10
	maxAgentLogMsg       = 64 << 10
	maxAgentAttrValueCut = 256
	maxAgentLogMsgCut    = 4096
	maxAgentDurationMS   = math.MaxInt64 / int64(time.Millisecond)
	// defaultStatusInterval is how often an agent reports its status and
	// the master pings it (the session's heartbeats, one per direction).
	// The master gives up on a session silent for defaultHeartbeatTimeout:
	// long enough to ride out a stall of the link (TCP retransmissions on
	// a WAN take seconds), for ending a session restarts every worker of
	// the host. The agent gives up on a master silent for the start spec's
	// heartbeat timeout plus agentSilenceSlack, or, from a master that
	// sends none, for agentSilentIntervals status intervals plus the slack.
	defaultStatusInterval   = time.Second
	defaultHeartbeatTimeout = 15 * time.Second
	agentSilentIntervals    = 3
	agentSilenceSlack       = 2 * time.Second
)

// Agent message types: master to agent, then agent to master.
var agentTypes = [...]string{
	"start", "restart", "suspend", "resume", "stop", "ping", "kill", "max_running_time",
	"started", "status", "log", "ack", "error", "exit",
}

// agentMsg is every agent-protocol message, in one shape for both ends:
// decodeAgentMsg fills it and appendAgentMsg writes it. Fields not used by
// Type are zero.
type agentMsg struct {
	Type string
	// Seq numbers a command (restart, suspend, resume, stop) and the
	// "ack" answering it.
	Seq int64
	// MaxRunning is the new maximum running time of "max_running_time"
	// (0: none).
	MaxRunning time.Duration
	// Start is the body of "start".
	Start *agentStart
	// PID is the agent's pid ("started"); Addrs the addresses it bound.
	PID   int
	Addrs []string
	// Status, Ready (every worker of the first generation was ready),
	// Suspended and Dropped (log records the agent dropped so far) make up
	// "status".
	Status    *ControlStatus
	Ready     bool
	Suspended bool
	Dropped   int64
	// Level, Msg and Attrs are a "log" record.
	Level slog.Level
	Msg   string
	Attrs []agentAttr
	// Error is the failure of an "ack" (empty: done), "error" or "exit".
	Error string
}

// agentAttr is one attribute of a relayed log record. Value is an int64,
// float64, bool or string.
type agentAttr struct {
	Key   string
	Value slog.Value
}

// agentStart is the start spec: everything the agent's Master needs, from
// the group's settings and the host's share of its workers.
type agentStart struct {
	Version int
	Group   string
	Program string
	Args    []string
	// IDs are the global ids of the host's workers, one per slot (so
	// len(IDs) is the host's worker count); IndexBase is the group index
	// of slot 0 and GroupSize the group's size.
	IDs                  []int
	IndexBase, GroupSize int
	// Params is compact JSON (an object).
	Params   []byte
	Env      []string
	Listen   []string
	Mode     Mode
	Ready    ReadyMode
	Strategy supervise.Strategy
	Restart  supervise.Policy
	Backoff  supervise.Backoff
	// Durations travel in milliseconds. HeartbeatTimeout is how long the
	// master lets the session go without a frame (0: not sent, an older
	// master); the agent allows the master's pings as long.
	Heartbeat, ShutdownTimeout, StartTimeout, MaxRunningTime, StatusInterval time.Duration
	HeartbeatTimeout                                                         time.Duration
	Suspended                                                                bool
}

// agentSilence is how long the agent of spec s waits for a frame from the
// master before it gives up on the session.
func (s *agentStart) agentSilence() time.Duration {
	if s.HeartbeatTimeout > 0 {
		// Capped: the sum must not wrap, which would stop at once.
		return min(s.HeartbeatTimeout, 24*time.Hour) + agentSilenceSlack
	}
	interval := s.StatusInterval
	if interval <= 0 {
		interval = defaultStatusInterval
	}
	return agentSilentIntervals*interval + agentSilenceSlack
}

// checkRemoteSpec reports why the agent of a remote host of g with count
// workers would refuse the group's start spec (nil if it would not): its
// lists beyond the agent's limits, or a frame too large. The spec is
// encoded and decoded as a session would send it, with ids as long as
// any a file can give.
func checkRemoteSpec(g *GroupConfig, count int) error {
	switch {
	case len(g.Args) > maxAgentArgs:
		return fmt.Errorf("%d command arguments; an agent takes at most %d", len(g.Args), maxAgentArgs)
	case len(g.Env) > maxAgentEnv:
		return fmt.Errorf("%d env variables; an agent takes at most %d", len(g.Env), maxAgentEnv)
	case len(g.Listen) > maxAgentListen:
		return fmt.Errorf("%d listen addresses; an agent takes at most %d", len(g.Listen), maxAgentListen)
	case count < 1 || count > maxControlWorkers:
		return fmt.Errorf("%d workers; an agent runs 1 to %d", count, maxControlWorkers)
	}
	ids := make([]int, count)
	for i := range ids {
		ids[i] = MaxConfigWorkers - 1
	}
	spec := &agentStart{
		Version: agentVersion, Group: g.Name, Program: g.Program, Args: g.Args,
		IDs: ids, IndexBase: MaxConfigWorkers - 1, GroupSize: MaxConfigWorkers, Params: g.Params,
		Env: g.Env, Listen: g.Listen, Mode: g.Mode, Ready: g.Ready, Strategy: g.Strategy,
		Restart: g.Restart, Backoff: g.Backoff, Heartbeat: g.Heartbeat,
		ShutdownTimeout: g.ShutdownTimeout, StartTimeout: g.StartTimeout,
		MaxRunningTime: g.MaxRunningTime, StatusInterval: defaultStatusInterval,
		HeartbeatTimeout: defaultHeartbeatTimeout, Suspended: g.Suspended,
	}
	frame := appendAgentMsg(nil, &agentMsg{Type: "start", Start: spec})
	if len(frame) > maxAgentFrame {
		return fmt.Errorf("the start spec takes %d bytes; an agent takes frames of at most %d (shorten command, env or params)", len(frame), maxAgentFrame)
	}
	var p fastjson.Parser
	var msg agentMsg
	if err := decodeAgentMsg(&p, frame, &msg); err != nil {
		return fmt.Errorf("an agent would refuse the start spec: %w", err)
	}
	return nil
}

// appendAgentMsg appends msg as one JSON object: the encoder of both ends.
func appendAgentMsg(dst []byte, msg *agentMsg) []byte {
	dst = append(dst, `{"type":`...)
	dst = appendJSONString(dst, msg.Type)
	switch msg.Type {
	case "start":
		if msg.Start != nil {
			dst = msg.Start.appendFields(dst)
		}
	case "restart", "suspend", "resume", "stop":
		dst = appendKeyInt(dst, "seq", msg.Seq)
	case "max_running_time":
		dst = appendKeyInt(dst, "seq", msg.Seq)
		dst = appendMaxRunning(dst, msg.MaxRunning, true)
	case "ack":
		dst = appendKeyInt(dst, "seq", msg.Seq)
		if msg.Error != "" {
			dst = append(dst, `,"error":`...)
			dst = appendJSONString(dst, msg.Error)
		}
	case "started":
		dst = appendKeyInt(dst, "version", agentVersion)
		dst = appendKeyInt(dst, "pid", int64(msg.PID))
		dst = appendStrings(dst, "addrs", msg.Addrs)
	case "status":
		dst = append(dst, `,"ready":`...)
		dst = strconv.AppendBool(dst, msg.Ready)
		dst = append(dst, `,"suspended":`...)
		dst = strconv.AppendBool(dst, msg.Suspended)
		dst = appendKeyInt(dst, "dropped", msg.Dropped)
		if msg.Status != nil {
			dst = append(dst, `,"status":{`...)
			dst = msg.Status.appendFields(dst)
			dst = append(dst, '}')
		}
	case "log":
		dst = appendKeyInt(dst, "level", int64(msg.Level))
		dst = append(dst, `,"msg":`...)
		dst = appendJSONString(dst, msg.Msg)
		dst = append(dst, `,"attrs":{`...)
		for i, a := range msg.Attrs {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, a.Key)
			dst = append(dst, ':')
			dst = appendAttrValue(dst, a.Value)
		}
		dst = append(dst, '}')
	case "error", "exit":
		dst = append(dst, `,"error":`...)
		dst = appendJSONString(dst, msg.Error)
	}
	return append(dst, '}')
}

func (s *agentStart) appendFields(dst []byte) []byte {
	dst = appendKeyInt(dst, "version", int64(s.Version))
	dst = append(dst, `,"group":`...)
	dst = appendJSONString(dst, s.Group)
	dst = append(dst, `,"program":`...)
	dst = appendJSONString(dst, s.Program)
	dst = appendStrings(dst, "args", s.Args)
	dst = append(dst, `,"ids":[`...)
	for i, id := range s.IDs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendInt(dst, int64(id), 10)
	}
	dst = append(dst, ']')
	dst = appendKeyInt(dst, "index_base", int64(s.IndexBase))
	dst = appendKeyInt(dst, "group_size", int64(s.GroupSize))
	dst = append(dst, `,"params":`...)
	if len(s.Params) == 0 {
		dst = append(dst, "{}"...)
	} else {
		dst = append(dst, s.Params...)
	}
	dst = appendStrings(dst, "env", s.Env)
	dst = appendStrings(dst, "listen", s.Listen)
	dst = append(dst, `,"mode":`...)
	dst = appendJSONString(dst, s.Mode.String())
	dst = append(dst, `,"ready":`...)
	ready := "notify"
	if s.Ready == ReadyStarted {
		ready = "started"
	}
	dst = appendJSONString(dst, ready)
	dst = append(dst, `,"strategy":`...)
	dst = appendJSONString(dst, s.Strategy.String())
	dst = append(dst, `,"restart":`...)
	dst = appendJSONString(dst, s.Restart.String())
	b := &s.Backoff
	dst = append(dst, `,"backoff":{"min_ms":`...)
	dst = strconv.AppendInt(dst, b.Min.Milliseconds(), 10)
	dst = appendKeyInt(dst, "max_ms", b.Max.Milliseconds())
	dst = append(dst, `,"jitter":`...)
	dst = strconv.AppendFloat(dst, finite(b.Jitter), 'g', -1, 64)
	dst = appendKeyInt(dst, "reset_after_ms", b.ResetAfter.Milliseconds())
	dst = appendKeyInt(dst, "burst", int64(b.Burst))
	dst = appendKeyInt(dst, "window_ms", b.Window.Milliseconds())
	dst = appendKeyInt(dst, "quick_failures", int64(b.QuickFailures))
	dst = append(dst, '}')
	dst = appendKeyInt(dst, "heartbeat_ms", s.Heartbeat.Milliseconds())
	dst = appendKeyInt(dst, "shutdown_timeout_ms", s.ShutdownTimeout.Milliseconds())
	dst = appendKeyInt(dst, "start_timeout_ms", s.StartTimeout.Milliseconds())
	dst = appendKeyInt(dst, "max_running_time_ms", s.MaxRunningTime.Milliseconds())
	dst = appendKeyInt(dst, "status_interval_ms", s.StatusInterval.Milliseconds())
	if s.HeartbeatTimeout > 0 {
		dst = appendKeyInt(dst, "heartbeat_timeout_ms", s.HeartbeatTimeout.Milliseconds())
	}
	dst = append(dst, `,"suspended":`...)
	return strconv.AppendBool(dst, s.Suspended)
}

func finite(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return f
}

func appendKeyInt(dst []byte, key string, n int64) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, key...)
	dst = append(dst, '"', ':')
	return strconv.AppendInt(dst, n, 10)
}

func appendStrings(dst []byte, key string, ss []string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, key...)
	dst = append(dst, `":[`...)
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, s)
	}
	return append(dst, ']')
}

// appendAttrValue writes a resolved slog value as a JSON scalar: numbers
// and booleans as such (so slot and pid stay integers at the master),
// everything else as its text.
func appendAttrValue(dst []byte, v slog.Value) []byte {
	switch v.Kind() {
	case slog.KindInt64:
		return strconv.AppendInt(dst, v.Int64(), 10)
	case slog.KindUint64:
		if u := v.Uint64(); u <= math.MaxInt64 {
			return strconv.AppendUint(dst, u, 10)
		}
	case slog.KindFloat64:
		if f := v.Float64(); !math.IsNaN(f) && !math.IsInf(f, 0) {
			return strconv.AppendFloat(dst, f, 'g', -1, 64)
		}
	case slog.KindBool:
		return strconv.AppendBool(dst, v.Bool())
	case slog.KindTime:
		return appendJSONString(dst, v.Time().Format(time.RFC3339Nano))
	}
	return appendJSONString(dst, v.String())
}

// errAgentLogRecord marks a refused "log" frame: valid JSON of a known
// type whose record broke a limit (a level or an attribute key out of
// range). The stream is intact, so the master drops that record alone; a
// worker's log record must not end its host's session (ending it restarts
// every worker there, and the worker would do it again).
var errAgentLogRecord = errors.New("bad log record")

// decodeAgentMsg parses one agent-protocol message (either direction) from
// b into msg, reusing p. Unknown fields are ignored; known fields must have
// the right JSON type and range. Errors match ErrAgentProtocol, and also
// errAgentLogRecord for a "log" frame refused for its contents. Nothing in
// msg aliases b or p.
func decodeAgentMsg(p *fastjson.Parser, b []byte, msg *agentMsg) error {
	if err := decodeAgent(p, b, msg); err != nil {
		if msg.Type == "log" {
			err = fmt.Errorf("%w: %w", errAgentLogRecord, err)
		}
		*msg = agentMsg{}
		return fmt.Errorf("%w: %w", ErrAgentProtocol, err)
	}
	return nil
}

// encodeAgentLog encodes msg, a "log" record, as one frame the master's
// decoder takes, whatever msg holds: the level is clamped to ±1000, at
// most maxAgentAttrs attributes are kept, keys are cut to maxAgentAttrKey
// bytes and string values and the message to maxAgentAttrValue and
// maxAgentLogMsg (between UTF-8 characters, as the master decodes them),
// values of other kinds become their text, and a record still too large
// for a frame is cut further (to maxAgentAttrValueCut and
// maxAgentLogMsgCut, which always fits). msg is changed in place.
func encodeAgentLog(msg *agentMsg) []byte {
	msg.Level = min(max(msg.Level, -maxAgentLevel), maxAgentLevel)
	if len(msg.Attrs) > maxAgentAttrs {
		msg.Attrs = msg.Attrs[:maxAgentAttrs]
	}
	text := msg.Msg
	cut := func(msgMax, valueMax int) {
		// clipText also mends invalid UTF-8 (U+FFFD), which is no cut.
		if msg.Msg = clipText(text, msgMax); msg.Msg != text && len(msg.Msg) < len(clipText(text, math.MaxInt)) {
			msg.Msg += "…(cut)"
		}
		for i := range msg.Attrs {
			a := &msg.Attrs[i]
			a.Key = clipText(a.Key, maxAgentAttrKey)
			a.Value = agentAttrValue(a.Value, valueMax)
		}
	}
	cut(maxAgentLogMsg, maxAgentAttrValue)
	frame := appendAgentMsg(nil, msg)
	if len(frame) <= maxAgentFrame {
		return frame
	}
	cut(maxAgentLogMsgCut, maxAgentAttrValueCut)
	return appendAgentMsg(nil, msg)
}

// agentAttrValue is v as the master decodes it: an int64, a finite
// float64, a bool, or else a string of at most max bytes (what
// appendAttrValue writes for the other kinds).
func agentAttrValue(v slog.Value, max int) slog.Value {
	switch v.Kind() {
	case slog.KindInt64, slog.KindBool:
		return v
	case slog.KindUint64:
		if u := v.Uint64(); u <= math.MaxInt64 {
			return slog.Int64Value(int64(u))
		}
	case slog.KindFloat64:
		if f := v.Float64(); !math.IsNaN(f) && !math.IsInf(f, 0) {
			return v
		}
	case slog.KindTime:
		return slog.StringValue(clipText(v.Time().Format(time.RFC3339Nano), max))
	}
	return slog.StringValue(clipText(v.String(), max))
}

// statusCuts are what fitStatus leaves out of a status too large for its
// frame, one more at each step, the least missed first: the workers'
// STATUS= texts, their last exits, the remote hosts' slot lists (a -config
// master's status; their counts stay), then every slot list.
var statusCuts = [...]struct {
	name string
	cut  func(*ControlStatus)
}{
	{"slot status texts", func(st *ControlStatus) { eachSlot(st, func(s *ControlSlot) { s.Status = "" }) }},
	{"last exits", func(st *ControlStatus) { eachSlot(st, func(s *ControlSlot) { s.LastExit = nil }) }},
	{"remote slots", func(st *ControlStatus) {
		for i := range st.Groups {
			for j := range st.Groups[i].Remote {
				st.Groups[i].Remote[j].Slots = nil
			}
		}
	}},
	{"slots", func(st *ControlStatus) {
		st.Slots = nil
		for i := range st.Groups {
			st.Groups[i].Slots = nil
		}
	}},
}

// fitStatus encodes st with encode and, if the result is longer than
// limit, encodes a copy with less in it (statusCuts) until it fits: a
// status that does not fit its frame would otherwise not go out at all
// (an agent's session would die of silence, a control client get an
// error instead of a status). It returns the encoding and what was left
// out (nil if nothing); after every cut the encoding may still be too
// long, for a status whose counts and texts alone are. st is not changed.
func fitStatus(st *ControlStatus, limit int, encode func(*ControlStatus) []byte) ([]byte, []string) {
	out := encode(st)
	if len(out) <= limit {
		return out, nil
	}
	c := cloneStatus(st)
	var left []string
	for _, sc := range statusCuts {
		sc.cut(c)
		left = append(left, sc.name)
		if out = encode(c); len(out) <= limit {
			break
		}
	}
	return out, left
}

// agentStatusFrame encodes msg, a "status", as a frame of at most
// maxAgentFrame bytes: with less in it if need be (fitStatus), which it
// reports. A 4096-slot status always fits once the slots' STATUS= texts
// and last exits are left out. msg is not changed.
func agentStatusFrame(msg *agentMsg) ([]byte, []string) {
	m := *msg
	return fitStatus(msg.Status, maxAgentFrame, func(st *ControlStatus) []byte {
		m.Status = st
		return appendAgentMsg(nil, &m)
	})
}

// cloneStatus copies st down to its slots, which fitStatus changes.
func cloneStatus(st *ControlStatus) *ControlStatus {
	c := *st
	c.Slots = slices.Clone(st.Slots)
	c.Groups = slices.Clone(st.Groups)
	for i := range c.Groups {
		g := &c.Groups[i]
		g.Slots = slices.Clone(g.Slots)
		g.Remote = slices.Clone(g.Remote)
		for j := range g.Remote {
			g.Remote[j].Slots = slices.Clone(g.Remote[j].Slots)
		}
	}
	return &c
}

// eachSlot calls fn on every slot of st, its groups' and their remote
// hosts'.
func eachSlot(st *ControlStatus, fn func(*ControlSlot)) {
	for i := range st.Slots {
		fn(&st.Slots[i])
	}
	for i := range st.Groups {
		g := &st.Groups[i]
		for j := range g.Slots {
			fn(&g.Slots[j])
		}
		for j := range g.Remote {
			for k := range g.Remote[j].Slots {
				fn(&g.Remote[j].Slots[k])
			}
		}
	}
}

func decodeAgent(p *fastjson.Parser, b []byte, msg *agentMsg) error {
	*msg = agentMsg{}
	// fastjson unescapes on a best-effort basis: bad escapes and invalid
	// UTF-8 are refused first, not guessed (as decodeSockMsg does). Both
	// ends encode with appendJSONString, which mends invalid UTF-8, so
	// such bytes on the wire mean a broken peer.
	if !utf8.Valid(b) {
		return errors.New("message is not valid UTF-8")
	}
	if err := validateJSON(b); err != nil {
		return err
	}
	v, err := p.ParseBytes(b)
	if err != nil {
		return err
	}
	if v.Type() != fastjson.TypeObject {
		return fmt.Errorf("message is a JSON %s, not an object", v.Type())
	}
	typ, err := jsonString(v, "type", true)
	if err != nil {
		return err
	}
	for _, t := range agentTypes {
		if typ == t {
			msg.Type = t
		}
	}
	if msg.Type == "" {
		return fmt.Errorf("unknown message type %.64q", typ)
	}
	switch msg.Type {
	case "start":
		msg.Start, err = decodeStart(v)
		return err
	case "restart", "suspend", "resume", "stop":
		msg.Seq, err = jsonInt64(v, "seq", true)
		return err
	case "max_running_time":
		if msg.Seq, err = jsonInt64(v, "seq", true); err != nil {
			return err
		}
		msg.MaxRunning, err = jsonMaxRunning(v, true)
		return err
	case "ack":
		if msg.Seq, err = jsonInt64(v, "seq", true); err != nil {
			return err
		}
		fallthrough
	case "error", "exit":
		msg.Error, err = jsonString(v, "error", false)
		// A failure text goes to logs and status: one line's worth.
		msg.Error = clipText(msg.Error, maxControlText)
		return err
	case "started":
		ver, err := jsonInt(v, "version", true, 0, 1<<31-1)
		if err != nil {
			return err
		}
		if ver != agentVersion {
			return fmt.Errorf("agent speaks version %d, not %d", ver, agentVersion)
		}
		if msg.PID, err = jsonInt(v, "pid", true, 1, 1<<31-1); err != nil {
			return err
		}
		msg.Addrs, err = jsonStrings(v, "addrs", maxAgentListen)
		return err
	case "status":
		if msg.Ready, err = jsonBool(v, "ready"); err != nil {
			return err
		}
		if msg.Suspended, err = jsonBool(v, "suspended"); err != nil {
			return err
		}
		if msg.Dropped, err = jsonInt64(v, "dropped", false); err != nil {
			return err
		}
		sv := v.Get("status")
		if sv == nil || sv.Type() != fastjson.TypeObject {
			return errors.New("status without a status object")
		}
		msg.Status, err = decodeStatus(sv)
		return err
	case "log":
		lvl, err := jsonInt(v, "level", true, -maxAgentLevel, maxAgentLevel)
		if err != nil {
			return err
		}
		msg.Level = slog.Level(lvl)
		if msg.Msg, err = jsonString(v, "msg", false); err != nil {
			return err
		}
		msg.Attrs, err = decodeAttrs(v.Get("attrs"))
		return err
	}
	return nil
}

func decodeStart(v *fastjson.Value) (*agentStart, error) {
	s := &agentStart{}
	var err error
	if s.Version, err = jsonInt(v, "version", true, 0, 1<<31-1); err != nil {
		return nil, err
	}
	if s.Version != agentVersion {
		return nil, fmt.Errorf("start spec version %d, this agent speaks %d", s.Version, agentVersion)
	}
	if s.Group, err = jsonString(v, "group", false); err != nil {
		return nil, err
	}
	if s.Program, err = jsonString(v, "program", true); err != nil {
		return nil, err
	}
	if s.Program == "" {
		return nil, errors.New("empty program")
	}
	if s.Args, err = jsonStrings(v, "args", maxAgentArgs); err != nil {
		return nil, err
	}
	iv := v.Get("ids")
	if iv == nil {
		return nil, errors.New(`no "ids"`)
	}
	ids, err := iv.Array()
	if err != nil {
		return nil, fmt.Errorf(`"ids": %w`, err)
	}
	if len(ids) == 0 || len(ids) > maxControlWorkers {
		return nil, fmt.Errorf("%d ids (want 1..%d)", len(ids), maxControlWorkers)
	}
	s.IDs = make([]int, len(ids))
	for i, e := range ids {
		n, err := e.Int()
		if err != nil || n < 0 || n > 1<<31-1 {
			return nil, fmt.Errorf(`"ids"[%d] is not an id`, i)
		}
		s.IDs[i] = n
	}
	if s.IndexBase, err = jsonInt(v, "index_base", false, 0, 1<<31-1); err != nil {
		return nil, err
	}
	if s.GroupSize, err = jsonInt(v, "group_size", false, 0, 1<<31-1); err != nil {
		return nil, err
	}
	if pv := v.Get("params"); pv != nil {
		if pv.Type() != fastjson.TypeObject {
			return nil, fmt.Errorf(`"params" is a JSON %s, not an object`, pv.Type())
		}
		s.Params = pv.MarshalTo(nil)
	}
	if s.Env, err = jsonStrings(v, "env", maxAgentEnv); err != nil {
		return nil, err
	}
	for _, kv := range s.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("env entry %.64q is not KEY=VALUE", kv)
		}
	}
	// No argv or environment entry can hold a NUL byte (execve takes C
	// strings): refused here, not at every spawn of a worker.
	for _, f := range [][]string{{s.Group, s.Program}, s.Args, s.Env} {
		for _, str := range f {
			if strings.IndexByte(str, 0) >= 0 {
				return nil, fmt.Errorf("%.64q holds a NUL byte", str)
			}
		}
	}
	if s.Listen, err = jsonStrings(v, "listen", maxAgentListen); err != nil {
		return nil, err
	}
	if len(s.Listen) == 0 {
		return nil, errors.New("no listen address")
	}
	if name, err := jsonString(v, "mode", false); err != nil {
		return nil, err
	} else if name != "" {
		if s.Mode, err = ParseMode(name); err != nil {
			return nil, err
		}
	}
	if name, err := jsonString(v, "ready", false); err != nil {
		return nil, err
	} else if name != "" {
		if s.Ready, err = ParseReadyMode(name); err != nil {
			return nil, err
		}
	}
	if name, err := jsonString(v, "strategy", false); err != nil {
		return nil, err
	} else if name != "" {
		if s.Strategy, err = supervise.ParseStrategy(name); err != nil {
			return nil, err
		}
	}
	if name, err := jsonString(v, "restart", false); err != nil {
		return nil, err
	} else if name != "" {
		var ok bool
		if s.Restart, ok = cfgParsePolicy(name); !ok {
			return nil, fmt.Errorf("restart policy %.32q", name)
		}
	}
	if bv := v.Get("backoff"); bv != nil {
		if bv.Type() != fastjson.TypeObject {
			return nil, fmt.Errorf(`"backoff" is a JSON %s, not an object`, bv.Type())
		}
		b := &s.Backoff
		if b.Min, err = jsonMillis(bv, "min_ms"); err != nil {
			return nil, err
		}
		if b.Max, err = jsonMillis(bv, "max_ms"); err != nil {
			return nil, err
		}
		if jv := bv.Get("jitter"); jv != nil {
			n, ok := parseNumber(jv)
			if !ok || jv.Type() != fastjson.TypeNumber {
				return nil, errors.New(`"jitter" is not a number`)
			}
			b.Jitter = n.f
		}
		if b.ResetAfter, err = jsonMillis(bv, "reset_after_ms"); err != nil {
			return nil, err
		}
		if b.Burst, err = jsonInt(bv, "burst", false, -1<<31, 1<<31-1); err != nil {
			return nil, err
		}
		if b.Window, err = jsonMillis(bv, "window_ms"); err != nil {
			return nil, err
		}
		if b.QuickFailures, err = jsonInt(bv, "quick_failures", false, -1<<31, 1<<31-1); err != nil {
			return nil, err
		}
	}
	for _, d := range []struct {
		key string
		to  *time.Duration
	}{
		{"heartbeat_ms", &s.Heartbeat},
		{"shutdown_timeout_ms", &s.ShutdownTimeout},
		{"start_timeout_ms", &s.StartTimeout},
		{"max_running_time_ms", &s.MaxRunningTime},
		{"status_interval_ms", &s.StatusInterval},
		{"heartbeat_timeout_ms", &s.HeartbeatTimeout},
	} {
		if *d.to, err = jsonMillis(v, d.key); err != nil {
			return nil, err
		}
	}
	if s.Suspended, err = jsonBool(v, "suspended"); err != nil {
		return nil, err
	}
	return s, nil
}

func jsonInt64(v *fastjson.Value, key string, required bool) (int64, error) {
	return jsonRange(v, key, required, 0, 1<<53)
}

func jsonMillis(v *fastjson.Value, key string) (time.Duration, error) {
	ms, err := jsonRange(v, key, false, 0, maxAgentDurationMS)
	return time.Duration(ms) * time.Millisecond, err
}

// jsonStrings reads an optional array of at most limit strings.
func jsonStrings(v *fastjson.Value, key string, limit int) ([]string, error) {
	f := v.Get(key)
	if f == nil {
		return nil, nil
	}
	arr, err := f.Array()
	if err != nil {
		return nil, fmt.Errorf("%q: %w", key, err)
	}
	if len(arr) > limit {
		return nil, fmt.Errorf("%q: %d entries (at most %d)", key, len(arr), limit)
	}
	out := make([]string, len(arr))
	for i, e := range arr {
		b, err := e.StringBytes()
		if err != nil {
			return nil, fmt.Errorf("%q[%d]: %w", key, i, err)
		}
		out[i] = string(b)
	}
	return out, nil
}

func decodeAttrs(v *fastjson.Value) ([]agentAttr, error) {
	if v == nil {
		return nil, nil
	}
	o, err := v.Object()
	if err != nil {
		return nil, fmt.Errorf(`"attrs": %w`, err)
	}
	if o.Len() > maxAgentAttrs {
		return nil, fmt.Errorf("%d attributes (at most %d)", o.Len(), maxAgentAttrs)
	}
	out := make([]agentAttr, 0, o.Len())
	o.Visit(func(k []byte, e *fastjson.Value) {
		if err != nil {
			return
		}
		if len(k) > maxAgentAttrKey {
			err = fmt.Errorf("attribute key of %d bytes (at most %d)", len(k), maxAgentAttrKey)
			return
		}
		a := agentAttr{Key: string(k)}
		switch e.Type() {
		case fastjson.TypeString:
			a.Value = slog.StringValue(string(e.GetStringBytes()))
		case fastjson.TypeTrue, fastjson.TypeFalse:
			a.Value = slog.BoolValue(e.GetBool())
		case fastjson.TypeNumber:
			f, ok := parseNumber(e)
			switch {
			case !ok:
				err = fmt.Errorf("attribute %.64q: bad number", k)
				return
			case f.isInt:
				a.Value = slog.Int64Value(f.i)
			default:
				a.Value = slog.Float64Value(f.f)
			}
		default:
			err = fmt.Errorf("attribute %.64q is a JSON %s", k, e.Type())
			return
		}
		out = append(out, a)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// number is a JSON number: an int64 when it is one, else a float64.
type number struct {
	isInt bool
	i     int64
	f     float64
}

// parseNumber parses a JSON number from its text with strconv, which
// rounds correctly: fastjson's own float parser may not, and a re-encoded
// value would then drift from the one sent. Infinite results (1e400) are
// refused.
func parseNumber(v *fastjson.Value) (number, bool) {
	if v.Type() != fastjson.TypeNumber {
		return number{}, false
	}
	raw := string(v.MarshalTo(nil))
	if i, err := strconv.ParseInt(raw, 10, 64); err == nil {
		return number{isInt: true, i: i, f: float64(i)}, true
	}
	f, err := strconv.ParseFloat(raw, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return number{}, false
	}
	return number{f: f}, true
}
