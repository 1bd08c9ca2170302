package cluster

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/handoff-go/handoff/internal/sshlaunch"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
)

// Limits of a configuration file.
const (
	// MaxConfigFile is the largest configuration file accepted, in bytes.
	MaxConfigFile = 1 << 20
	// MaxConfigWorkers is the most workers a file may declare, local and
	// remote, over all groups (supervise's slot limit).
	MaxConfigWorkers = 4096

	cfgMaxGroups      = 256
	cfgMaxCommand     = 4096 // elements of "command", program included
	cfgMaxStringBytes = 64 << 10
	cfgMaxListen      = 256
	cfgMaxEnv         = 4096
	cfgMaxRemotes     = 256
	cfgMaxNameBytes   = 64
	cfgMaxJSONDepth   = 64
	// fastjson allocates over 200 bytes per value (its value cache grows
	// by copying and the old copies stay referenced), so 1 MiB of "[],"
	// would cost 200 MiB; this cap keeps a file near 30 MiB.
	cfgMaxJSONValues = 1 << 16
	cfgMaxBurst      = 1000
	// Durations above these are surely typos ("10h" for "10s").
	cfgMaxTimeout        = 24 * time.Hour
	cfgMinTimeout        = 100 * time.Millisecond
	cfgMaxRunningTimeCap = 366 * 24 * time.Hour
	// Shorter heartbeat intervals would kill healthy workers that are
	// merely descheduled for a moment.
	cfgMinHeartbeat = 10 * time.Millisecond
	cfgMaxHeartbeat = time.Hour
	// A remote session's heartbeat timeout: the agent reports every
	// second, so less than 3 s would end sessions over a moment's delay;
	// more than 10 min would leave a dead link unnoticed that long.
	cfgMinHeartbeatTimeout = 3 * time.Second
	cfgMaxHeartbeatTimeout = 10 * time.Minute
	// execve fails with E2BIG when one argument or environment string
	// exceeds MAX_ARG_STRLEN (32 pages, 128 KiB) with its NUL.
	cfgMaxArgStrlen = 128 << 10
)

// LoadConfig reads and parses the configuration file at path (see
// ParseConfig). Errors are *ConfigError with File set to path; a file that
// cannot be read, is not a regular file (symlinks are followed; a pipe,
// FIFO or device is refused without being read, and without blocking if
// the path is replaced while it is opened) or is larger than
// MaxConfigFile is reported at 1:1.
func LoadConfig(path string) (*FileConfig, error) {
	data, err := readConfigFile(path)
	if err != nil {
		msg := err.Error()
		// The path is already in the error's File: keep the cause only.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			msg = pe.Op + ": " + pe.Err.Error()
		}
		return nil, &ConfigError{File: path, Line: 1, Column: 1, Msg: msg}
	}
	fc, err := ParseConfig(data)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.File = path
		}
		return nil, err
	}
	fc.source = &configSource{path: path, sum: sha256.Sum256(data)}
	return fc, nil
}

func readConfigFile(path string) ([]byte, error) {
	// Checked before opening: opening a FIFO would block until a writer
	// shows up.
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	switch t := st.Mode().Type(); {
	case t == 0:
	case t&fs.ModeDir != 0:
		return nil, errors.New("is a directory, not a file")
	case t&fs.ModeNamedPipe != 0:
		return nil, errors.New("is a pipe or FIFO, not a regular file")
	case t&fs.ModeDevice != 0:
		return nil, errors.New("is a device, not a regular file")
	default:
		return nil, errors.New("not a regular file")
	}
	// The path may have been replaced since (a FIFO now): open without
	// blocking (O_CLOEXEC is os's own) and check what was opened.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file (replaced while opened)")
	}
	// Read one byte past the limit instead of trusting the size: the file
	// may grow while it is read.
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxConfigFile {
		return nil, fmt.Errorf("file larger than %d bytes", MaxConfigFile)
	}
	return data, nil
}

// ParseConfig parses a mini-cluster configuration file: one JSON object
// (docs/operations.md, "Configuration file (-config)"). Unknown and
// duplicate keys are errors, as is any value of the wrong type or out of
// range; absent fields get their documented defaults. Every error is a
// *ConfigError naming the line and column of the offending value (or of
// the syntax error) and matching ErrConfig. The result does not alias
// data.
func ParseConfig(data []byte) (*FileConfig, error) {
	if len(data) > MaxConfigFile {
		return nil, &ConfigError{Line: 1, Column: 1, Msg: fmt.Sprintf("file larger than %d bytes", MaxConfigFile)}
	}
	// fastjson reports neither positions nor duplicate keys and unescapes
	// on a best-effort basis, so the bytes are checked strictly first; what
	// fastjson then parses is well-formed JSON with unique keys.
	if off, msg := cfgCheckJSON(data); msg != "" {
		line, col := cfgLineCol(data, off)
		return nil, &ConfigError{Line: line, Column: col, Msg: msg}
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(data)
	if err != nil {
		// Not reached for input cfgCheckJSON accepts; kept so that a
		// disagreement is an error, never a panic.
		return nil, &ConfigError{Line: 1, Column: 1, Msg: "invalid JSON: " + err.Error()}
	}
	d := &configDecoder{data: data}
	fc := d.file(v)
	if d.err != nil {
		return nil, d.err
	}
	return fc, nil
}

// cfgPath is the path of a value inside the file; it is only extended by
// copying, so paths may be shared.
type cfgPath []cfgPathSeg

type cfgPathSeg struct {
	key   string
	index int // when !isKey
	isKey bool
}

func (p cfgPath) key(k string) cfgPath {
	return append(p[:len(p):len(p)], cfgPathSeg{key: k, isKey: true})
}

func (p cfgPath) index(i int) cfgPath {
	return append(p[:len(p):len(p)], cfgPathSeg{index: i})
}

func (p cfgPath) String() string {
	var b strings.Builder
	for i, s := range p {
		switch {
		case !s.isKey:
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(s.index))
			b.WriteByte(']')
		case cfgPlainKey(s.key):
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s.key)
		default:
			b.WriteByte('[')
			b.WriteString(strconv.Quote(cfgTruncate(s.key, 64)))
			b.WriteByte(']')
		}
	}
	return b.String()
}

func cfgPlainKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !cfgIsIdentByte(c) && c != '-' {
			return false
		}
	}
	return true
}

// configDecoder turns the parsed value into a FileConfig; it keeps the
// first error (later checks are skipped once err is set).
type configDecoder struct {
	data    []byte
	err     *ConfigError
	workers int // declared so far, all groups
}

// fail records an error about the value at p (or its key when onKey).
func (d *configDecoder) fail(p cfgPath, onKey bool, format string, args ...any) {
	d.failAt(p, p, onKey, format, args...)
}

// failAt records an error shown as path shown, positioned at the value (or
// key) at p: a missing key is reported at its object.
func (d *configDecoder) failAt(p, shown cfgPath, onKey bool, format string, args ...any) {
	if d.err != nil {
		return
	}
	line, col := cfgLineCol(d.data, cfgLocate(d.data, p, onKey))
	d.err = &ConfigError{Line: line, Column: col, Path: shown.String(), Msg: fmt.Sprintf(format, args...)}
}

// cfgDescribe names v for a "got ..." message, bounded in length.
func cfgDescribe(v *fastjson.Value) string {
	switch v.Type() {
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		return strconv.Quote(cfgTruncate(string(b), 40))
	case fastjson.TypeNumber:
		return cfgTruncate(string(v.MarshalTo(nil)), 40)
	case fastjson.TypeObject:
		return "an object"
	case fastjson.TypeArray:
		return "an array"
	case fastjson.TypeTrue:
		return "true"
	case fastjson.TypeFalse:
		return "false"
	}
	return "null"
}

func cfgTruncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	n -= 3
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// object visits the members of the object v in file order, failing on a
// key that is not in known (nil: any key).
func (d *configDecoder) object(v *fastjson.Value, p cfgPath, known []string, f func(k string, v *fastjson.Value, p cfgPath)) {
	if d.err != nil {
		return
	}
	o, err := v.Object()
	if err != nil {
		d.fail(p, false, "want an object, got %s", cfgDescribe(v))
		return
	}
	o.Visit(func(kb []byte, fv *fastjson.Value) {
		if d.err != nil {
			return
		}
		k := string(kb)
		kp := p.key(k)
		if known != nil && !cfgContains(known, k) {
			d.fail(kp, true, "unknown key %s (want one of %s)", strconv.Quote(cfgTruncate(k, 40)), strings.Join(known, ", "))
			return
		}
		f(k, fv, kp)
	})
}

func cfgContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (d *configDecoder) array(v *fastjson.Value, p cfgPath, max int, what string) []*fastjson.Value {
	if d.err != nil {
		return nil
	}
	a, err := v.Array()
	if err != nil {
		d.fail(p, false, "want an array of %s, got %s", what, cfgDescribe(v))
		return nil
	}
	if len(a) > max {
		d.fail(p.index(max), false, "too many %s (at most %d)", what, max)
		return nil
	}
	return a
}

func (d *configDecoder) string(v *fastjson.Value, p cfgPath) string {
	if d.err != nil {
		return ""
	}
	b, err := v.StringBytes()
	if err != nil {
		d.fail(p, false, "want a string, got %s", cfgDescribe(v))
		return ""
	}
	if len(b) > cfgMaxStringBytes {
		d.fail(p, false, "string longer than %d bytes", cfgMaxStringBytes)
		return ""
	}
	if bytes.IndexByte(b, 0) >= 0 {
		d.fail(p, false, "string contains a NUL byte")
		return ""
	}
	return string(b)
}

func (d *configDecoder) int(v *fastjson.Value, p cfgPath, lo, hi int) int {
	if d.err != nil {
		return 0
	}
	n, err := v.Int()
	if err != nil || n < lo || n > hi {
		d.fail(p, false, "want an integer from %d to %d, got %s", lo, hi, cfgDescribe(v))
		return 0
	}
	return n
}

func (d *configDecoder) bool(v *fastjson.Value, p cfgPath) bool {
	if d.err != nil {
		return false
	}
	switch v.Type() {
	case fastjson.TypeTrue:
		return true
	case fastjson.TypeFalse:
		return false
	}
	d.fail(p, false, "want true or false, got %s", cfgDescribe(v))
	return false
}

// minDuration is duration with a lower bound for a non-zero value (0 keeps
// its meaning, zero: "off" or "the default").
func (d *configDecoder) minDuration(v *fastjson.Value, p cfgPath, lo, max time.Duration, zero string) time.Duration {
	t := d.duration(v, p, max)
	if d.err == nil && t != 0 && t < lo {
		d.fail(p, false, "want 0 (%s) or at least %s, got %s", zero, lo, cfgDescribe(v))
		return 0
	}
	return t
}

func (d *configDecoder) duration(v *fastjson.Value, p cfgPath, max time.Duration) time.Duration {
	if d.err != nil {
		return 0
	}
	b, err := v.StringBytes()
	var t time.Duration
	if err == nil {
		t, err = time.ParseDuration(string(b))
	}
	if err != nil {
		d.fail(p, false, "want a duration like \"10s\", got %s", cfgDescribe(v))
		return 0
	}
	if t < 0 || t > max {
		d.fail(p, false, "want a duration from 0 to %s, got %s", max, cfgDescribe(v))
		return 0
	}
	return t
}

var (
	fileKeys  = []string{"control", "pid_file", "user", "groups"}
	groupKeys = []string{"name", "command", "count", "params", "env", "listen", "mode", "ready", "restart_strategy",
		"restart", "backoff", "heartbeat", "shutdown_timeout", "start_timeout", "max_running_time", "suspended", "remote"}
	backoffKeys = []string{"min", "max", "reset_after", "burst", "window"}
	remoteKeys  = []string{"ssh", "port", "count", "identity", "known_hosts", "binary", "heartbeat_timeout"}
)

func (d *configDecoder) file(v *fastjson.Value) *FileConfig {
	fc := &FileConfig{}
	var root cfgPath
	var groups *fastjson.Value
	d.object(v, root, fileKeys, func(k string, fv *fastjson.Value, p cfgPath) {
		switch k {
		case "control":
			fc.Control = d.string(fv, p)
			switch {
			case d.err != nil:
			case fc.Control == "":
				d.fail(p, false, "empty path (leave \"control\" out for no control socket)")
			case len(fc.Control) > maxUnixPath:
				d.fail(p, false, "socket path longer than %d bytes", maxUnixPath)
			}
		case "pid_file":
			fc.PIDFile = d.string(fv, p)
			if d.err == nil && fc.PIDFile == "" {
				d.fail(p, false, "empty path (leave \"pid_file\" out for no pid file)")
			}
		case "user":
			fc.User = d.string(fv, p)
			if d.err != nil {
				break
			}
			// Resolved now, so that a typo is refused with its place in
			// the file, by the upgrade probe too.
			cred, err := LookupUser(fc.User)
			if err != nil {
				d.fail(p, false, "%v", strings.TrimPrefix(err.Error(), ErrUser.Error()+": "))
				break
			}
			fc.Credential = cred
		case "groups":
			groups = fv
		}
	})
	if d.err != nil {
		return nil
	}
	gp := root.key("groups")
	if groups == nil {
		d.failAt(root, gp, false, "missing: a configuration needs at least one group")
		return nil
	}
	a := d.array(groups, gp, cfgMaxGroups, "groups")
	if d.err == nil && len(a) == 0 {
		d.fail(gp, false, "no groups: a configuration needs at least one")
	}
	names := make(map[string]bool, len(a))
	for i, gv := range a {
		g := d.group(gv, gp.index(i), names)
		if d.err != nil {
			return nil
		}
		fc.Groups = append(fc.Groups, g)
	}
	// The rules a FileConfig built in Go is held to too (NewFleet); most
	// were checked above already, with finer positions.
	if p, msg := validateFileConfig(fc); msg != "" {
		d.fail(p, false, "%s", msg)
		return nil
	}
	return fc
}

// validateFileConfig checks the rules ParseConfig enforces on the values
// themselves, for NewFleet, whose FileConfig may be built in Go: group
// names, a program, at least one worker and one listen address per group,
// every setting's range and limits (groupSettings), the addresses each
// mode can serve, remote hosts, the worker limit, and addresses two
// groups would bind on one machine. It returns the path of the offending
// value and what is wrong ("" if nothing).
func validateFileConfig(fc *FileConfig) (cfgPath, string) {
	gp := cfgPath(nil).key("groups")
	switch {
	case fc == nil || len(fc.Groups) == 0:
		return gp, "no groups: a configuration needs at least one"
	case len(fc.Groups) > cfgMaxGroups:
		return gp, fmt.Sprintf("more than %d groups", cfgMaxGroups)
	}
	names := make(map[string]bool, len(fc.Groups))
	total := 0
	for i := range fc.Groups {
		g := &fc.Groups[i]
		p := gp.index(i)
		if p, msg := validateGroup(g, p, names); msg != "" {
			return p, msg
		}
		total += g.Size()
		if total > MaxConfigWorkers {
			return p, fmt.Sprintf("more than %d workers over every group", MaxConfigWorkers)
		}
	}
	return sharedBinds(gp, fc.Groups)
}

func validateGroup(g *GroupConfig, p cfgPath, names map[string]bool) (cfgPath, string) {
	switch {
	case !cfgValidGroupName(g.Name):
		return p.key("name"), fmt.Sprintf("want a name of 1 to %d bytes of A-Z a-z 0-9 . _ -, starting with a letter or digit, got %q", cfgMaxNameBytes, cfgTruncate(g.Name, 80))
	case names[g.Name]:
		return p.key("name"), fmt.Sprintf("duplicate group name %q", g.Name)
	case g.Program == "":
		return p.key("command"), "empty program name"
	case g.Count < 0 || g.Count > MaxConfigWorkers:
		return p.key("count"), fmt.Sprintf("want 0 to %d workers, got %d", MaxConfigWorkers, g.Count)
	case len(g.Listen) == 0:
		return p.key("listen"), "no listen addresses: a group needs at least one"
	case len(g.Remote) > cfgMaxRemotes:
		return p.key("remote"), fmt.Sprintf("more than %d remote hosts", cfgMaxRemotes)
	}
	names[g.Name] = true
	for i, r := range g.Remote {
		rp := p.key("remote").index(i)
		if r.Count < 1 || r.Count > MaxConfigWorkers {
			return rp.key("count"), fmt.Sprintf("want 1 to %d workers, got %d", MaxConfigWorkers, r.Count)
		}
		if _, err := sshlaunch.ParseTarget(r.SSH); err != nil {
			return rp.key("ssh"), fmt.Sprintf("want \"user@host\" or \"host\": %v", err)
		}
		if t := r.HeartbeatTimeout; t != 0 && (t < cfgMinHeartbeatTimeout || t > cfgMaxHeartbeatTimeout) {
			return rp.key("heartbeat_timeout"), fmt.Sprintf("want 0 (the default 15s) or %s to %s, got %s", cfgMinHeartbeatTimeout, cfgMaxHeartbeatTimeout, t)
		}
		if p, msg := remoteHostSettings(&r, rp); msg != "" {
			return p, msg
		}
	}
	if g.Size() == 0 {
		return p.key("count"), "the group has no workers (count 0 and no remote hosts)"
	}
	if p, msg := groupSettings(g, p); msg != "" {
		return p, msg
	}
	if p, msg := remoteSpecLimits(g, p); msg != "" {
		return p, msg
	}
	seen := make(map[Addr]bool, len(g.Listen))
	for i, l := range g.Listen {
		lp := p.key("listen").index(i)
		a, err := ParseAddr(l)
		if err != nil {
			return lp, err.Error()
		}
		if seen[a] && !cfgFreshPort(a) {
			return lp, fmt.Sprintf("duplicate listen address %q", a.String())
		}
		seen[a] = true
		if msg := modeListen(g.Mode, a); msg != "" {
			return lp, msg
		}
	}
	return nil, ""
}

// groupSettings holds a group built in Go to the rules ParseConfig applies
// to each value of a file: without them a remote host's agent would refuse
// the spec or its status at every session (retried for ever), a local
// group's status would be undecodable by clients (a maximum running time
// below 1 s), or every spawn would fail (a NUL in an argument). Zero
// values keep their Go meaning: the default.
func groupSettings(g *GroupConfig, p cfgPath) (cfgPath, string) {
	cp := p.key("command")
	if len(g.Args)+1 > cfgMaxCommand {
		return cp.index(cfgMaxCommand), fmt.Sprintf("too many command arguments (at most %d, the program included)", cfgMaxCommand)
	}
	for i, a := range append([]string{g.Program}, g.Args...) {
		if msg := cfgStringRule(a); msg != "" {
			return cp.index(i), msg
		}
	}
	if len(g.Params) > 0 {
		pp := p.key("params")
		if len(g.Params) > cfgMaxStringBytes {
			return pp, fmt.Sprintf("params of %d bytes (want at most %d)", len(g.Params), cfgMaxStringBytes)
		}
		if off, msg := cfgCheckJSON(g.Params); msg != "" {
			return pp, fmt.Sprintf("invalid JSON at byte %d: %s", off, msg)
		}
		if b := bytes.TrimLeft(g.Params, " \t\r\n"); b[0] != '{' {
			return pp, "want a JSON object"
		}
	}
	if p, msg := envSettings(g.Env, p.key("env")); msg != "" {
		return p, msg
	}
	lp := p.key("listen")
	if len(g.Listen) > cfgMaxListen {
		return lp.index(cfgMaxListen), fmt.Sprintf("too many listen addresses (at most %d)", cfgMaxListen)
	}
	for i, l := range g.Listen {
		if msg := cfgStringRule(l); msg != "" {
			return lp.index(i), msg
		}
	}
	switch {
	case !g.Mode.valid():
		return p.key("mode"), fmt.Sprintf("mode %d: want shared, reuseport or handoff", int(g.Mode))
	case g.Ready != ReadyNotify && g.Ready != ReadyStarted:
		return p.key("ready"), fmt.Sprintf("ready mode %d: want notify or started", int(g.Ready))
	}
	if _, err := supervise.ParseStrategy(g.Strategy.String()); err != nil {
		return p.key("restart_strategy"), fmt.Sprintf("strategy %d: want rolling or parallel", int(g.Strategy))
	}
	if _, ok := cfgParsePolicy(g.Restart.String()); !ok {
		return p.key("restart"), fmt.Sprintf("restart policy %d: want always, on-failure or never", int(g.Restart))
	}
	if p, msg := backoffSettings(&g.Backoff, p.key("backoff")); msg != "" {
		return p, msg
	}
	for _, d := range []struct {
		key    string
		t      time.Duration
		lo, hi time.Duration
		zeroIs string
	}{
		{"heartbeat", g.Heartbeat, cfgMinHeartbeat, cfgMaxHeartbeat, "off"},
		{"shutdown_timeout", g.ShutdownTimeout, cfgMinTimeout, cfgMaxTimeout, "the default"},
		{"start_timeout", g.StartTimeout, cfgMinTimeout, cfgMaxTimeout, "the default"},
	} {
		if d.t != 0 && (d.t < d.lo || d.t > d.hi) {
			return p.key(d.key), fmt.Sprintf("want 0 (%s) or %s to %s, got %s", d.zeroIs, d.lo, d.hi, d.t)
		}
	}
	// The control socket's and the agent's own rule: an agent ends its
	// session on a status frame with another, and clients refuse a
	// fleet's status holding one.
	if err := checkMaxRunning(g.MaxRunningTime); err != nil {
		return p.key("max_running_time"), fmt.Sprintf("want 0 (off) or 1s to %s, got %s", cfgMaxRunningTimeCap, g.MaxRunningTime)
	}
	return nil, ""
}

// cfgStringRule says why a string of a FileConfig built in Go is not one
// a file could hold ("" if it is).
func cfgStringRule(s string) string {
	switch {
	case len(s) > cfgMaxStringBytes:
		return fmt.Sprintf("string longer than %d bytes", cfgMaxStringBytes)
	case strings.IndexByte(s, 0) >= 0:
		return "string contains a NUL byte"
	}
	return ""
}

// envSettings checks a group's KEY=VALUE entries as "env" would hold them.
// Reserved names (cfgReservedEnv) are a file's rule only: Go code may pass
// its own, as it may in FleetOptions.Env and Config.Env (tests select
// their helper's role so).
func envSettings(env []string, p cfgPath) (cfgPath, string) {
	if len(env) > cfgMaxEnv {
		return p, fmt.Sprintf("too many variables (at most %d)", cfgMaxEnv)
	}
	for i, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return p.index(i), fmt.Sprintf("want KEY=VALUE, got %s", strconv.Quote(cfgTruncate(kv, 40)))
		}
		kp := p.key(k)
		switch {
		case cfgStringRule(k) != "":
			return kp, "variable name: " + cfgStringRule(k)
		case cfgStringRule(v) != "":
			return kp, cfgStringRule(v)
		case len(kv)+1 > cfgMaxArgStrlen:
			return kp, fmt.Sprintf("variable longer than %d bytes (execve's limit)", cfgMaxArgStrlen-1)
		}
	}
	return nil, ""
}

// backoffSettings checks a group's backoff as "backoff" would hold it.
// Jitter has no key: supervise clamps it.
func backoffSettings(b *supervise.Backoff, p cfgPath) (cfgPath, string) {
	for _, d := range []struct {
		key string
		t   time.Duration
	}{{"min", b.Min}, {"max", b.Max}, {"reset_after", b.ResetAfter}, {"window", b.Window}} {
		if d.t < 0 || d.t > cfgMaxTimeout {
			return p.key(d.key), fmt.Sprintf("want a duration from 0 to %s, got %s", cfgMaxTimeout, d.t)
		}
	}
	if b.Burst < -1 || b.Burst > cfgMaxBurst {
		return p.key("burst"), fmt.Sprintf("want an integer from -1 to %d, got %d", cfgMaxBurst, b.Burst)
	}
	return backoffOrder(b, p)
}

// backoffOrder refuses a max below min, compared as supervise reads them
// (defaults filled in): it would silently raise max to min.
func backoffOrder(b *supervise.Backoff, p cfgPath) (cfgPath, string) {
	def := supervise.Backoff{}.WithDefaults()
	lo, hi := b.Min, b.Max
	if lo == 0 {
		lo = def.Min
	}
	if hi == 0 {
		hi = def.Max
	}
	switch {
	case hi >= lo:
		return nil, ""
	case b.Max == 0:
		return p.key("min"), fmt.Sprintf("min %s is above the default max %s (set \"max\" too)", lo, hi)
	case b.Min == 0:
		return p.key("max"), fmt.Sprintf("max %s is below the default min %s (set \"min\" too)", hi, lo)
	}
	return p.key("max"), fmt.Sprintf("max %s is below min %s", hi, lo)
}

// remoteHostSettings checks the ssh settings of a remote host as "remote"
// would hold them (Port 0 and Binary "" are the defaults).
func remoteHostSettings(r *RemoteHost, p cfgPath) (cfgPath, string) {
	if msg := remoteSSHRule(r.SSH); msg != "" {
		return p.key("ssh"), msg
	}
	if r.Port < 0 || r.Port > 65535 {
		return p.key("port"), fmt.Sprintf("want 0 (the default 22) or 1 to 65535, got %d", r.Port)
	}
	if msg := sshPathRule(r.Identity, false); msg != "" {
		return p.key("identity"), msg
	}
	if msg := sshPathRule(r.KnownHosts, true); msg != "" {
		return p.key("known_hosts"), msg
	}
	if r.Binary != "" && (r.Binary[0] == '-' || cfgHasControl(r.Binary)) {
		return p.key("binary"), fmt.Sprintf("want a program name or path (no leading '-', no control characters), got %s", strconv.Quote(cfgTruncate(r.Binary, 40)))
	}
	return nil, ""
}

// remoteSSHRule says why ssh is not a "user@host" target ("" if it is).
func remoteSSHRule(ssh string) string {
	t, err := sshlaunch.ParseTarget(ssh)
	switch {
	case err != nil:
		return fmt.Sprintf("want \"user@host\" or \"host\": %v", err)
	case strings.Contains(t.Host, ":") && net.ParseIP(t.Host) == nil:
		// A colon is only valid in an IPv6 address; "host:2222" would
		// be looked up as a name.
		return fmt.Sprintf("want the port in \"port\", not in %s", strconv.Quote(cfgTruncate(ssh, 40)))
	}
	return ""
}

// sshPathRule says why s is no identity (or known_hosts) file path ssh
// can be given ("" if it is), with sshlaunch's own rules: the ssh
// arguments are built with only that path in question.
func sshPathRule(s string, knownHosts bool) string {
	if !strings.HasPrefix(s, "/") {
		return fmt.Sprintf("want an absolute path, got %s", strconv.Quote(cfgTruncate(s, 40)))
	}
	t := sshlaunch.Target{Host: "localhost", Identity: "/i", KnownHosts: "/k"}
	if knownHosts {
		t.KnownHosts = s
	} else {
		t.Identity = s
	}
	if _, err := t.Args([]string{"true"}); err != nil {
		return fmt.Sprintf("path unusable with ssh (no whitespace, quotes, backslashes, '%%', '$' or control characters), got %s", strconv.Quote(cfgTruncate(s, 40)))
	}
	return ""
}

// remoteSpecLimits refuses a group with remote hosts whose start spec
// their agents would refuse at every session (so the hosts would never
// start, retried for ever): the agent takes fewer arguments, variables and
// listen addresses than a file may hold, and frames of at most 1 MiB.
func remoteSpecLimits(g *GroupConfig, p cfgPath) (cfgPath, string) {
	if len(g.Remote) == 0 {
		return nil, ""
	}
	const why = "a group with remote hosts"
	switch {
	case len(g.Args) > maxAgentArgs:
		// command[0] is the program.
		return p.key("command").index(maxAgentArgs + 1), fmt.Sprintf("%s takes at most %d arguments after the program (the agent's limit)", why, maxAgentArgs)
	case len(g.Env) > maxAgentEnv:
		k, _, _ := strings.Cut(g.Env[maxAgentEnv], "=")
		return p.key("env").key(k), fmt.Sprintf("%s takes at most %d variables (the agent's limit)", why, maxAgentEnv)
	case len(g.Listen) > maxAgentListen:
		return p.key("listen").index(maxAgentListen), fmt.Sprintf("%s takes at most %d listen addresses (the agent's limit)", why, maxAgentListen)
	}
	most, at := 0, 0
	for i, r := range g.Remote {
		if r.Count > most {
			most, at = r.Count, i
		}
	}
	if err := checkRemoteSpec(g, most); err != nil {
		return p.key("remote").index(at), fmt.Sprintf("host %s: %v", strconv.Quote(g.Remote[at].SSH), err)
	}
	return nil, ""
}

// sharedBinds refuses an address that two groups, or two entries of one
// host, would bind on the same machine: the second bind fails (EADDRINUSE),
// or with SO_REUSEPORT the kernel splits connections between unrelated
// programs. On a remote host that failure would only show once connected,
// as an agent restarted with backoff for ever. Hosts are compared by name
// as written; port 0 never collides.
func sharedBinds(gp cfgPath, groups []GroupConfig) (cfgPath, string) {
	type bind struct {
		host string // "" for this machine
		addr Addr
	}
	seen := make(map[bind]string)
	for gi, g := range groups {
		type where struct {
			host  string
			p     cfgPath // the value to blame, nil: the listen entry
			shown string
			owner string
		}
		var hosts []where
		if g.Count > 0 {
			hosts = append(hosts, where{"", nil, "this machine", fmt.Sprintf("the local workers of %s (%q)", gp.index(gi), g.Name)})
		}
		for ri, r := range g.Remote {
			t, _ := sshlaunch.ParseTarget(r.SSH)
			h := strings.ToLower(t.Host)
			rp := gp.index(gi).key("remote").index(ri)
			hosts = append(hosts, where{h, rp.key("ssh"), "host " + strconv.Quote(h), rp.String()})
		}
		for li, l := range g.Listen {
			a, _ := ParseAddr(l)
			if cfgFreshPort(a) {
				continue
			}
			lp := gp.index(gi).key("listen").index(li)
			for _, h := range hosts {
				k := bind{h.host, a}
				if prev, ok := seen[k]; ok {
					p := h.p
					if p == nil {
						p = lp
					}
					return p, fmt.Sprintf("%s would bind %q twice (also for %s)", h.shown, a.String(), prev)
				}
				seen[k] = h.owner
			}
		}
	}
	return nil, ""
}

func (d *configDecoder) group(v *fastjson.Value, p cfgPath, names map[string]bool) GroupConfig {
	var g GroupConfig
	var hasName, hasCommand, hasCount, hasListen bool
	d.object(v, p, groupKeys, func(k string, fv *fastjson.Value, kp cfgPath) {
		switch k {
		case "name":
			hasName = true
			g.Name = d.string(fv, kp)
			switch {
			case d.err != nil:
			case !cfgValidGroupName(g.Name):
				d.fail(kp, false, "want a name of 1 to %d bytes of A-Z a-z 0-9 . _ -, starting with a letter or digit, got %s", cfgMaxNameBytes, cfgDescribe(fv))
			case names[g.Name]:
				d.fail(kp, false, "duplicate group name %q", g.Name)
			}
			names[g.Name] = true
		case "command":
			hasCommand = true
			a := d.array(fv, kp, cfgMaxCommand, "command arguments")
			if d.err == nil && len(a) == 0 {
				d.fail(kp, false, "empty command: want [\"program\", \"arg\", ...]")
			}
			for i, av := range a {
				s := d.string(av, kp.index(i))
				if d.err != nil {
					return
				}
				if i == 0 {
					if s == "" {
						d.fail(kp.index(i), false, "empty program name")
						return
					}
					g.Program = s
				} else {
					g.Args = append(g.Args, s)
				}
			}
		case "count":
			hasCount = true
			g.Count = d.int(fv, kp, 0, MaxConfigWorkers)
			d.addWorkers(g.Count, kp)
		case "params":
			if fv.Type() != fastjson.TypeObject {
				d.fail(kp, false, "want a JSON object, got %s", cfgDescribe(fv))
				return
			}
			// Compact and still valid JSON: fastjson copies strings and
			// keys it has not been asked to unescape as written, and
			// cfgCheckJSON checked those bytes.
			g.Params = fv.MarshalTo(nil)
			if len(g.Params) > cfgMaxStringBytes {
				d.fail(kp, false, "params longer than %d bytes as compact JSON", cfgMaxStringBytes)
			}
		case "env":
			d.env(fv, kp, &g)
		case "listen":
			hasListen = true
			d.listen(fv, kp, &g)
		case "mode":
			g.Mode = cfgEnum(d, fv, kp, ParseMode, "want \"shared\", \"reuseport\" or \"handoff\"")
		case "ready":
			g.Ready = cfgEnum(d, fv, kp, ParseReadyMode, "want \"notify\" or \"started\"")
		case "restart_strategy":
			g.Strategy = cfgEnum(d, fv, kp, supervise.ParseStrategy, "want \"rolling\" or \"parallel\"")
		case "restart":
			s := d.string(fv, kp)
			if d.err == nil {
				var ok bool
				if g.Restart, ok = cfgParsePolicy(s); !ok {
					d.fail(kp, false, "want \"always\", \"on-failure\" or \"never\", got %s", cfgDescribe(fv))
				}
			}
		case "backoff":
			d.backoff(fv, kp, &g.Backoff)
		case "heartbeat":
			g.Heartbeat = d.minDuration(fv, kp, cfgMinHeartbeat, cfgMaxHeartbeat, "off")
		case "shutdown_timeout":
			// Shorter ones kill every worker before it could drain, or
			// fail every start.
			g.ShutdownTimeout = d.minDuration(fv, kp, cfgMinTimeout, cfgMaxTimeout, "the default")
		case "start_timeout":
			g.StartTimeout = d.minDuration(fv, kp, cfgMinTimeout, cfgMaxTimeout, "the default")
		case "max_running_time":
			// Shorter limits recycle workers about as fast as they
			// start.
			g.MaxRunningTime = d.minDuration(fv, kp, time.Second, cfgMaxRunningTimeCap, "off")
		case "suspended":
			g.Suspended = d.bool(fv, kp)
		case "remote":
			a := d.array(fv, kp, cfgMaxRemotes, "remote hosts")
			for i, rv := range a {
				r := d.remote(rv, kp.index(i))
				if d.err != nil {
					return
				}
				g.Remote = append(g.Remote, r)
			}
		}
	})
	if d.err != nil {
		return g
	}
	switch {
	case !hasName:
		d.failAt(p, p.key("name"), false, "missing: every group needs a name")
	case !hasCommand:
		d.failAt(p, p.key("command"), false, "missing: want [\"program\", \"arg\", ...]")
	case !hasCount && len(g.Remote) == 0:
		g.Count = 1
		d.addWorkers(1, p)
	case g.Size() == 0:
		d.fail(p.key("count"), false, "the group has no workers (count 0 and no remote hosts)")
	}
	if d.err == nil && !hasListen {
		// Every group needs listeners: the master binds them for local
		// workers, each host's agent for its remote ones.
		d.failAt(p, p.key("listen"), false, "missing: a group needs at least one listen address")
	}
	d.modeListen(p, &g)
	if g.Params == nil {
		g.Params = []byte("{}")
	}
	return g
}

// addWorkers counts n more workers declared at p against the file's limit.
func (d *configDecoder) addWorkers(n int, p cfgPath) {
	if d.err != nil {
		return
	}
	d.workers += n
	if d.workers > MaxConfigWorkers {
		d.fail(p, false, "more than %d workers in the file", MaxConfigWorkers)
	}
}

func cfgValidGroupName(s string) bool {
	// A name starts with a letter or digit, so that "-x" on a command
	// line ("mini-cluster suspend -x") is never a group, nor "." a path.
	if s == "" || len(s) > cfgMaxNameBytes || !cfgAlnum(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !cfgIsIdentByte(c) && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func cfgAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// cfgEnum decodes the string at p with parse, one of the Parse functions
// of a named setting; want lists the accepted names for the error.
func cfgEnum[T any](d *configDecoder, v *fastjson.Value, p cfgPath, parse func(string) (T, error), want string) T {
	var t T
	s := d.string(v, p)
	if d.err != nil {
		return t
	}
	t, err := parse(s)
	if err != nil {
		d.fail(p, false, "%s, got %s", want, cfgDescribe(v))
	}
	return t
}

func cfgParsePolicy(s string) (supervise.Policy, bool) {
	for _, p := range []supervise.Policy{supervise.RestartAlways, supervise.RestartOnFailure, supervise.RestartNever} {
		if s == p.String() {
			return p, true
		}
	}
	return 0, false
}

// cfgReservedEnv reports names the master sets for each worker itself (or
// strips from their environment): a group's "env" must not fight it.
func cfgReservedEnv(k string) bool {
	return k == "NOTIFY_SOCKET" || strings.HasPrefix(k, "HANDOFF_") || strings.HasPrefix(k, "LISTEN_") ||
		strings.HasPrefix(k, "WATCHDOG_")
}

func (d *configDecoder) env(v *fastjson.Value, p cfgPath, g *GroupConfig) {
	n := 0
	d.object(v, p, nil, func(k string, fv *fastjson.Value, kp cfgPath) {
		n++
		switch {
		case n > cfgMaxEnv:
			d.fail(kp, true, "too many variables (at most %d)", cfgMaxEnv)
		case k == "" || strings.ContainsAny(k, "=\x00"):
			d.fail(kp, true, "want a variable name without '=' or NUL, got %s", strconv.Quote(cfgTruncate(k, 40)))
		case len(k) > cfgMaxStringBytes:
			d.fail(kp, true, "variable name longer than %d bytes", cfgMaxStringBytes)
		case cfgReservedEnv(k):
			d.fail(kp, true, "%s is set by mini-cluster itself (HANDOFF_*, LISTEN_*, WATCHDOG_*, NOTIFY_SOCKET are reserved)", strconv.Quote(cfgTruncate(k, 40)))
		}
		val := d.string(fv, kp)
		if d.err != nil {
			return
		}
		if len(k)+1+len(val)+1 > cfgMaxArgStrlen {
			d.fail(kp, false, "variable longer than %d bytes (execve's limit)", cfgMaxArgStrlen-1)
			return
		}
		g.Env = append(g.Env, k+"="+val)
	})
}

func (d *configDecoder) listen(v *fastjson.Value, p cfgPath, g *GroupConfig) {
	a := d.array(v, p, cfgMaxListen, "listen addresses")
	if d.err == nil && len(a) == 0 {
		d.fail(p, false, "no listen addresses: a group needs at least one")
	}
	seen := make(map[Addr]bool, len(a))
	for i, lv := range a {
		ip := p.index(i)
		s := d.string(lv, ip)
		if d.err != nil {
			return
		}
		addr, err := ParseAddr(s)
		if err != nil {
			d.fail(ip, false, "%v", err)
			return
		}
		if seen[addr] && !cfgFreshPort(addr) {
			d.fail(ip, false, "duplicate listen address %q", addr.String())
			return
		}
		seen[addr] = true
		g.Listen = append(g.Listen, s)
	}
}

// cfgFreshPort reports a tcp or udp address with port 0, which binds a
// fresh port each time, so it may repeat; any other repeat fails to bind
// (a unix path ending in ":0" included).
func cfgFreshPort(a Addr) bool {
	_, port, err := net.SplitHostPort(a.Address)
	return a.Network != "unix" && err == nil && port == "0"
}

// modeListen refuses addresses the group's mode cannot serve, which New
// would refuse at start-up (on a remote host, only once connected).
func (d *configDecoder) modeListen(p cfgPath, g *GroupConfig) {
	for i, l := range g.Listen {
		if d.err != nil {
			return
		}
		a, _ := ParseAddr(l)
		if msg := modeListen(g.Mode, a); msg != "" {
			d.fail(p.key("listen").index(i), false, "%s", msg)
		}
	}
}

// modeListen says why mode cannot serve a ("" if it can).
func modeListen(mode Mode, a Addr) string {
	switch {
	case mode == ModeReuseport && a.Network == "unix":
		return "unix sockets cannot be shared by SO_REUSEPORT (use mode shared or handoff)"
	case mode == ModeHandoff && a.Network == "udp":
		return "udp sockets have no connections to hand off (use mode shared or reuseport)"
	}
	return ""
}

func (d *configDecoder) backoff(v *fastjson.Value, p cfgPath, b *supervise.Backoff) {
	d.object(v, p, backoffKeys, func(k string, fv *fastjson.Value, kp cfgPath) {
		switch k {
		case "min":
			b.Min = d.duration(fv, kp, cfgMaxTimeout)
		case "max":
			b.Max = d.duration(fv, kp, cfgMaxTimeout)
		case "reset_after":
			b.ResetAfter = d.duration(fv, kp, cfgMaxTimeout)
		case "window":
			b.Window = d.duration(fv, kp, cfgMaxTimeout)
		case "burst":
			b.Burst = d.int(fv, kp, -1, cfgMaxBurst)
		}
	})
	if d.err != nil {
		return
	}
	if bp, msg := backoffOrder(b, p); msg != "" {
		d.fail(bp, false, "%s", msg)
	}
}

func (d *configDecoder) remote(v *fastjson.Value, p cfgPath) RemoteHost {
	r := RemoteHost{Port: sshlaunch.DefaultPort, Binary: "mini-cluster"}
	var hasSSH, hasCount, hasIdentity, hasKnownHosts bool
	d.object(v, p, remoteKeys, func(k string, fv *fastjson.Value, kp cfgPath) {
		switch k {
		case "ssh":
			hasSSH = true
			r.SSH = d.string(fv, kp)
			if d.err != nil {
				return
			}
			if msg := remoteSSHRule(r.SSH); msg != "" {
				d.fail(kp, false, "%s", msg)
			}
		case "port":
			r.Port = d.int(fv, kp, 1, 65535)
		case "count":
			hasCount = true
			r.Count = d.int(fv, kp, 1, MaxConfigWorkers)
			d.addWorkers(r.Count, kp)
		case "identity":
			hasIdentity = true
			r.Identity = d.sshPath(fv, kp, false)
		case "known_hosts":
			hasKnownHosts = true
			r.KnownHosts = d.sshPath(fv, kp, true)
		case "heartbeat_timeout":
			r.HeartbeatTimeout = d.minDuration(fv, kp, cfgMinHeartbeatTimeout, cfgMaxHeartbeatTimeout, "the default 15s")
		case "binary":
			r.Binary = d.string(fv, kp)
			if d.err == nil && (r.Binary == "" || r.Binary[0] == '-' || cfgHasControl(r.Binary)) {
				d.fail(kp, false, "want a program name or path (not empty, no leading '-', no control characters), got %s", cfgDescribe(fv))
			}
		}
	})
	if d.err != nil {
		return r
	}
	for _, m := range []struct {
		has  bool
		key  string
		what string
	}{
		{hasSSH, "ssh", "want \"user@host\""},
		{hasCount, "count", "want the number of workers on that host"},
		{hasIdentity, "identity", "want the private key file ssh offers"},
		{hasKnownHosts, "known_hosts", "want the known_hosts file with the host's key (host keys are always checked)"},
	} {
		if !m.has {
			d.failAt(p, p.key(m.key), false, "missing: %s", m.what)
			return r
		}
	}
	return r
}

// sshPath checks an identity (or known_hosts) file path (sshPathRule).
func (d *configDecoder) sshPath(v *fastjson.Value, p cfgPath, knownHosts bool) string {
	s := d.string(v, p)
	if d.err != nil {
		return ""
	}
	if msg := sshPathRule(s, knownHosts); msg != "" {
		d.fail(p, false, "%s", msg)
		return ""
	}
	return s
}

func cfgHasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
