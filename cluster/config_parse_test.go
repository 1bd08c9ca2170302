package cluster_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/supervise"
)

// docExample returns the first ```json block of the "Configuration file
// (-config)" section of docs/operations.md, so the documented example is
// the one tested.
func docExample(t testing.TB) []byte {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := bytes.Cut(doc, []byte("\n## Configuration file (-config)\n"))
	if !ok {
		t.Fatal("docs/operations.md: no \"Configuration file (-config)\" section")
	}
	_, block, ok := bytes.Cut(sec, []byte("\n```json\n"))
	if !ok {
		t.Fatal("docs/operations.md: no json example in the -config section")
	}
	block, _, ok = bytes.Cut(block, []byte("\n```\n"))
	if !ok {
		t.Fatal("docs/operations.md: unterminated json example")
	}
	return block
}

func TestParseConfigDocExample(t *testing.T) {
	got, err := cluster.ParseConfig(docExample(t))
	if err != nil {
		t.Fatal(err)
	}
	want := &cluster.FileConfig{
		Control: "/run/app/control.sock",
		PIDFile: "/run/app/pid",
		Groups: []cluster.GroupConfig{{
			Name:     "web",
			Program:  "./srv",
			Args:     []string{"-v"},
			Count:    2,
			Params:   []byte(`{"db":"x"}`),
			Env:      []string{"K=V"},
			Listen:   []string{"127.0.0.1:8080"},
			Mode:     cluster.ModeShared,
			Ready:    cluster.ReadyNotify,
			Strategy: supervise.Rolling,
			Restart:  supervise.RestartAlways,
			Backoff: supervise.Backoff{Min: time.Second, Max: 30 * time.Second, ResetAfter: 10 * time.Second,
				Burst: 5, Window: 10 * time.Second},
			Heartbeat:       5 * time.Second,
			ShutdownTimeout: 10 * time.Second,
			StartTimeout:    30 * time.Second,
			MaxRunningTime:  time.Hour,
			Remote: []cluster.RemoteHost{{
				SSH: "deploy@10.0.0.5", Port: 22, Count: 2, Identity: "/etc/app/id_ed25519",
				KnownHosts: "/etc/app/known_hosts", Binary: "/usr/local/bin/mini-cluster",
			}},
		}},
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreUnexported(cluster.FileConfig{})); diff != "" {
		t.Errorf("ParseConfig(doc example) (-want +got):\n%s", diff)
	}
	if n := got.Groups[0].Size(); n != 4 {
		t.Errorf("Size() = %d, want 4", n)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *cluster.FileConfig
	}{{
		name: "local group",
		in:   `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0"]}]}`,
		want: &cluster.FileConfig{Groups: []cluster.GroupConfig{{
			Name: "a", Program: "p", Count: 1, Params: []byte("{}"), Listen: []string{"127.0.0.1:0"},
		}}},
	}, {
		name: "remote only",
		in: `{"groups": [{"name": "r", "command": ["p", "x y", ""], "listen": ["unix:///run/r.sock"],
			"remote": [{"ssh": "h", "count": 3, "identity": "/i", "known_hosts": "/k"}]}]}`,
		want: &cluster.FileConfig{Groups: []cluster.GroupConfig{{
			Name: "r", Program: "p", Args: []string{"x y", ""}, Params: []byte("{}"), Listen: []string{"unix:///run/r.sock"},
			Remote: []cluster.RemoteHost{{SSH: "h", Port: 22, Count: 3, Identity: "/i", KnownHosts: "/k", Binary: "mini-cluster"}},
		}}},
	}, {
		name: "every enum and explicit zeros",
		in: `{"groups": [{"name": "A.b_c-9", "command": ["/bin/p"], "count": 0, "listen": ["udp://[::1]:53", "tcp://127.0.0.1:0", "127.0.0.1:0"],
			"mode": "reuseport", "ready": "started", "restart_strategy": "parallel", "restart": "on-failure",
			"backoff": {"burst": -1}, "heartbeat": "0s", "suspended": true,
			"remote": [{"ssh": "u@[::1]", "port": 2222, "count": 1, "identity": "/i", "known_hosts": "/k"}]},
			{"name": "n", "command": ["p"], "restart": "never", "mode": "handoff", "listen": ["127.0.0.1:1"],
			 "params": {"a": [1, 2.5e3, true, null], "b": {"c\"": "\u00e9\n"}}, "env": {"A": "", "B": "x=y"}}]}`,
		want: &cluster.FileConfig{Groups: []cluster.GroupConfig{{
			Name: "A.b_c-9", Program: "/bin/p", Params: []byte("{}"),
			Listen: []string{"udp://[::1]:53", "tcp://127.0.0.1:0", "127.0.0.1:0"},
			Mode:   cluster.ModeReuseport, Ready: cluster.ReadyStarted, Strategy: supervise.Parallel,
			Restart: supervise.RestartOnFailure, Backoff: supervise.Backoff{Burst: -1}, Suspended: true,
			Remote: []cluster.RemoteHost{{SSH: "u@[::1]", Port: 2222, Count: 1, Identity: "/i", KnownHosts: "/k", Binary: "mini-cluster"}},
		}, {
			Name: "n", Program: "p", Count: 1, Restart: supervise.RestartNever, Mode: cluster.ModeHandoff,
			Listen: []string{"127.0.0.1:1"},
			// Compact, escapes kept as written.
			Params: []byte(`{"a":[1,2.5e3,true,null],"b":{"c\"":"\u00e9\n"}}`),
			Env:    []string{"A=", "B=x=y"},
		}}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cluster.ParseConfig([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreUnexported(cluster.FileConfig{})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			checkFileConfig(t, got)
		})
	}
}

// mark is where a test input expects its error: removed before parsing.
const mark = "§"

// group wraps the fields of one group after a valid name, command and
// listen.
func group(fields string) string {
	return `{"groups": [{"name": "g", "command": ["p"], "listen": ["127.0.0.1:0"], ` + fields + `}]}`
}

// remote wraps the fields of one remote host after a valid ssh target.
func remote(fields string) string {
	return group(`"remote": [{"ssh": "h", ` + fields + `}]`)
}

const remoteOK = `"count": 1, "identity": "/i", "known_hosts": "/k"`

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, in, path string
		msg            string // a part of the message
	}{
		{"root not object", `§[]`, "", "want an object, got an array"},
		{"unknown top key", `{"groups": [], §"grups": 1}`, "grups", `unknown key "grups"`},
		{"missing groups", `§{"control": "/c"}`, "groups", "missing"},
		{"groups empty", `{"groups": §[]}`, "groups", "no groups"},
		{"groups not array", `{"groups": §{}}`, "groups", "want an array of groups, got an object"},
		{"group not object", `{"groups": [§1]}`, "groups[0]", "want an object, got 1"},
		{"control empty", `{"control": §"", "groups": []}`, "control", "empty path"},
		{"control long", `{"control": §"/` + strings.Repeat("c", 107) + `", "groups": []}`, "control", "longer than 107"},
		{"pid_file number", `{"pid_file": §5, "groups": []}`, "pid_file", "want a string, got 5"},
		{"user unknown", `{"user": §"no-such-user-x", "groups": []}`, "user", `unknown user "no-such-user-x"`},
		{"user unknown group", `{"user": §"root:no-such-group-x", "groups": []}`, "user", `unknown group "no-such-group-x"`},
		{"user malformed", `{"user": §"root:0:0", "groups": []}`, "user", "one colon at most"},
		{"user empty", `{"user": §"", "groups": []}`, "user", "want USER[:GROUP]"},
		{"user number", `{"user": §0, "groups": []}`, "user", "want a string, got 0"},
		{"unknown group key", group(`§"cnt": 1`), "groups[0].cnt", `unknown key "cnt"`},
		{"missing name", `{"groups": [§{"command": ["p"], "listen": ["127.0.0.1:0"]}]}`, "groups[0].name", "missing"},
		{"name with space", `{"groups": [{"name": §"a b"}]}`, "groups[0].name", `got "a b"`},
		{"name empty", `{"groups": [{"name": §""}]}`, "groups[0].name", "want a name"},
		{"name like a flag", `{"groups": [{"name": §"-x"}]}`, "groups[0].name", "starting with a letter or digit"},
		{"name dot", `{"groups": [{"name": §".."}]}`, "groups[0].name", "starting with a letter or digit"},
		{"name too long", `{"groups": [{"name": §"` + strings.Repeat("n", 65) + `"}]}`, "groups[0].name", "want a name"},
		{"name not string", `{"groups": [{"name": §["a"]}]}`, "groups[0].name", "want a string, got an array"},
		{"duplicate name", `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0"]},
			{"name": §"a"}]}`, "groups[1].name", `duplicate group name "a"`},
		{"missing command", `{"groups": [§{"name": "a", "listen": ["127.0.0.1:0"]}]}`, "groups[0].command", "missing"},
		{"command string", `{"groups": [{"name": "a", "command": §"p"}]}`, "groups[0].command", "want an array of command arguments"},
		{"command empty", `{"groups": [{"name": "a", "command": §[]}]}`, "groups[0].command", "empty command"},
		{"empty program", `{"groups": [{"name": "a", "command": [§""]}]}`, "groups[0].command[0]", "empty program"},
		{"arg not string", `{"groups": [{"name": "a", "command": ["p", §1]}]}`, "groups[0].command[1]", "want a string, got 1"},
		{"arg NUL", `{"groups": [{"name": "a", "command": ["p", §"a\u0000"]}]}`, "groups[0].command[1]", "NUL"},
		{"arg too long", `{"groups": [{"name": "a", "command": ["p", §"` + strings.Repeat("x", 64<<10+1) + `"]}]}`, "groups[0].command[1]", "longer than 65536"},
		{"too many args", `{"groups": [{"name": "a", "command": [` + strings.Repeat(`"a",`, 4096) + `§"b"]}]}`, "groups[0].command[4096]", "too many command arguments (at most 4096)"},
		{"count negative", group(`"count": §-1`), "groups[0].count", "want an integer from 0 to 4096, got -1"},
		{"count too big", group(`"count": §4097`), "groups[0].count", "got 4097"},
		{"count fraction", group(`"count": §1.5`), "groups[0].count", "got 1.5"},
		{"count string", group(`"count": §"2"`), "groups[0].count", `got "2"`},
		{"count huge", group(`"count": §1e400`), "groups[0].count", "got 1e400"},
		{"no workers", group(`"count": §0`), "groups[0].count", "no workers"},
		{"too many workers", `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0"], "count": 4000},
			{"name": "b", "command": ["p"], "listen": ["127.0.0.1:0"], "count": §97}]}`, "groups[1].count", "more than 4096 workers"},
		{"too many workers remote", remote(`"count": §4097, "identity": "/i", "known_hosts": "/k"`), "groups[0].remote[0].count", "got 4097"},
		{"too many workers default", `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0"], "count": 4096},
			§{"name": "b", "command": ["p"], "listen": ["127.0.0.1:0"]}]}`, "groups[1]", "more than 4096 workers"},
		{"params array", group(`"params": §[1]`), "groups[0].params", "want a JSON object, got an array"},
		{"params string", group(`"params": §"{}"`), "groups[0].params", `want a JSON object, got "{}"`},
		{"params too big", group(`"params": §{"a": "` + strings.Repeat("x", 64<<10) + `"}`), "groups[0].params", "longer than 65536"},
		{"env array", group(`"env": §["A=B"]`), "groups[0].env", "want an object"},
		{"env value number", group(`"env": {"A": §1}`), "groups[0].env.A", "want a string, got 1"},
		{"env odd key value", group(`"env": {"A B": §null}`), `groups[0].env["A B"]`, "want a string, got null"},
		{"env key =", group(`"env": {§"A=B": "c"}`), `groups[0].env["A=B"]`, "without '='"},
		{"env key empty", group(`"env": {§"": "c"}`), `groups[0].env[""]`, "without '='"},
		{"env key NUL", group(`"env": {§"A\u0000": "c"}`), `groups[0].env["A\x00"]`, "without '='"},
		{"env value NUL", group(`"env": {"A": §"\u0000"}`), "groups[0].env.A", "NUL"},
		{"env reserved", group(`"env": {§"HANDOFF_WORKER_ID": "1"}`), "groups[0].env.HANDOFF_WORKER_ID", "reserved"},
		{"env reserved listen", group(`"env": {"OK": "1", §"LISTEN_FDS": "1"}`), "groups[0].env.LISTEN_FDS", "reserved"},
		{"env reserved notify", group(`"env": {§"NOTIFY_SOCKET": "/x"}`), "groups[0].env.NOTIFY_SOCKET", "reserved"},
		{"env reserved watchdog", group(`"env": {§"WATCHDOG_USEC": "1"}`), "groups[0].env.WATCHDOG_USEC", "reserved"},
		// The name is quoted: a raw ESC would reach the operator's terminal.
		{"env reserved control char", group(`"env": {§"HANDOFF_\u001b[2J": "1"}`), `groups[0].env["HANDOFF_\x1b[2J"]`, `"HANDOFF_\x1b[2J" is set by mini-cluster`},
		{"env too many", group(`"env": {` + envVars(4096) + `§"x": ""}`), "groups[0].env.x", "too many variables (at most 4096)"},
		{"env too long", group(`"env": {"` + strings.Repeat("K", 64<<10) + `": §"` + strings.Repeat("v", 64<<10) + `"}`),
			`groups[0].env.` + strings.Repeat("K", 64<<10), "execve"},
		{"missing listen", `{"groups": [§{"name": "a", "command": ["p"]}]}`, "groups[0].listen", "missing"},
		{"missing listen remote", `{"groups": [§{"name": "a", "command": ["p"], "remote": [{"ssh": "h", ` + remoteOK + `}]}]}`, "groups[0].listen", "missing"},
		{"listen empty", `{"groups": [{"name": "a", "command": ["p"], "listen": §[]}]}`, "groups[0].listen", "no listen addresses"},
		{"listen string", `{"groups": [{"name": "a", "command": ["p"], "listen": §"127.0.0.1:0"}]}`, "groups[0].listen", "want an array"},
		{"listen no port", `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0", §"localhost"]}]}`, "groups[0].listen[1]", "bad listen address"},
		{"listen scheme", `{"groups": [{"name": "a", "command": ["p"], "listen": [§"ftp://h:1"]}]}`, "groups[0].listen[0]", "scheme"},
		{"listen duplicate", `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:80", §"tcp://127.0.0.1:80"]}]}`, "groups[0].listen[1]", `duplicate listen address "tcp://127.0.0.1:80"`},
		// Only tcp and udp have a port 0; the second bind of this path fails.
		{"listen duplicate unix :0", `{"groups": [{"name": "a", "command": ["p"], "listen": ["unix:///run/a:0", §"unix:///run/a:0"]}]}`, "groups[0].listen[1]", `duplicate listen address "unix:///run/a:0"`},
		{"too many listen", `{"groups": [{"name": "a", "command": ["p"], "listen": [` + strings.Repeat(`"127.0.0.1:0",`, 256) + `§"127.0.0.1:0"]}]}`, "groups[0].listen[256]", "too many listen addresses (at most 256)"},
		{"mode", group(`"mode": §"fast"`), "groups[0].mode", `want "shared", "reuseport" or "handoff", got "fast"`},
		{"ready", group(`"ready": §"now"`), "groups[0].ready", `got "now"`},
		{"strategy", group(`"restart_strategy": §"all"`), "groups[0].restart_strategy", `want "rolling" or "parallel"`},
		{"restart", group(`"restart": §"sometimes"`), "groups[0].restart", `want "always", "on-failure" or "never", got "sometimes"`},
		{"restart bool", group(`"restart": §true`), "groups[0].restart", "want a string, got true"},
		{"duration word", group(`"heartbeat": §"ten"`), "groups[0].heartbeat", `want a duration like "10s", got "ten"`},
		{"duration number", group(`"shutdown_timeout": §10`), "groups[0].shutdown_timeout", `want a duration like "10s", got 10`},
		{"duration negative", group(`"start_timeout": §"-1s"`), "groups[0].start_timeout", `want a duration from 0 to 24h0m0s, got "-1s"`},
		{"duration too long", group(`"shutdown_timeout": §"25h"`), "groups[0].shutdown_timeout", "from 0 to 24h0m0s"},
		{"heartbeat too long", group(`"heartbeat": §"2h"`), "groups[0].heartbeat", "from 0 to 1h0m0s"},
		{"max running time", group(`"max_running_time": §"9000h"`), "groups[0].max_running_time", "from 0 to 8784h0m0s"},
		{"max running time too short", group(`"max_running_time": §"500ms"`), "groups[0].max_running_time", "want 0 (off) or at least 1s, got \"500ms\""},
		{"heartbeat too short", group(`"heartbeat": §"1ms"`), "groups[0].heartbeat", "want 0 (off) or at least 10ms"},
		{"suspended string", group(`"suspended": §"yes"`), "groups[0].suspended", `want true or false, got "yes"`},
		{"backoff not object", group(`"backoff": §1`), "groups[0].backoff", "want an object"},
		{"backoff unknown", group(`"backoff": {§"jitter": 0.1}`), "groups[0].backoff.jitter", `unknown key "jitter"`},
		{"backoff burst", group(`"backoff": {"burst": §-2}`), "groups[0].backoff.burst", "from -1 to 1000"},
		{"backoff window", group(`"backoff": {"window": §"1d"}`), "groups[0].backoff.window", `got "1d"`},
		{"backoff max below min", group(`"backoff": {"max": §"1s", "min": "2s"}`), "groups[0].backoff.max", "below min"},
		{"backoff max below default min", group(`"backoff": {"max": §"10ms"}`), "groups[0].backoff.max", `max 10ms is below the default min 1s (set "min" too)`},
		{"backoff min above default max", group(`"backoff": {"min": §"1h"}`), "groups[0].backoff.min", `min 1h0m0s is above the default max 30s (set "max" too)`},
		{"shutdown timeout too short", group(`"shutdown_timeout": §"1ns"`), "groups[0].shutdown_timeout", `want 0 (the default) or at least 100ms, got "1ns"`},
		{"start timeout too short", group(`"start_timeout": §"99ms"`), "groups[0].start_timeout", `want 0 (the default) or at least 100ms, got "99ms"`},
		{"remote not array", group(`"remote": §{}`), "groups[0].remote", "want an array of remote hosts"},
		{"remote too many", group(`"remote": [` + strings.Repeat(`{},`, 256) + `§{}]`), "groups[0].remote[256]", "too many remote hosts (at most 256)"},
		{"too many workers local and remote", `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0"], "count": 4000,
			"remote": [{"ssh": "h", "count": §97, "identity": "/i", "known_hosts": "/k"}]}]}`, "groups[0].remote[0].count", "more than 4096 workers"},
		{"remote not object", group(`"remote": [§"h"]`), "groups[0].remote[0]", `want an object, got "h"`},
		{"remote unknown", remote(`§"user": "u"`), "groups[0].remote[0].user", `unknown key "user"`},
		{"remote missing ssh", group(`"remote": [§{` + remoteOK + `}]`), "groups[0].remote[0].ssh", "missing"},
		{"remote missing count", group(`"remote": [§{"ssh": "h", "identity": "/i", "known_hosts": "/k"}]`), "groups[0].remote[0].count", "missing"},
		{"remote missing identity", group(`"remote": [§{"ssh": "h", "count": 1, "known_hosts": "/k"}]`), "groups[0].remote[0].identity", "missing"},
		{"remote missing known_hosts", group(`"remote": [§{"ssh": "h", "count": 1, "identity": "/i"}]`), "groups[0].remote[0].known_hosts", "host keys are always checked"},
		{"ssh option", group(`"remote": [{"ssh": §"-oProxyCommand=x", ` + remoteOK + `}]`), "groups[0].remote[0].ssh", "invalid target"},
		{"ssh space", group(`"remote": [{"ssh": §"u@h x", ` + remoteOK + `}]`), "groups[0].remote[0].ssh", "invalid target"},
		{"ssh empty", group(`"remote": [{"ssh": §"", ` + remoteOK + `}]`), "groups[0].remote[0].ssh", "invalid target"},
		{"port zero", remote(remoteOK + `, "port": §0`), "groups[0].remote[0].port", "from 1 to 65535, got 0"},
		{"port big", remote(remoteOK + `, "port": §65536`), "groups[0].remote[0].port", "got 65536"},
		{"remote count zero", remote(`"count": §0`), "groups[0].remote[0].count", "from 1 to 4096, got 0"},
		{"identity relative", remote(`"count": 1, "identity": §"id", "known_hosts": "/k"`), "groups[0].remote[0].identity", `want an absolute path, got "id"`},
		{"known_hosts space", remote(`"count": 1, "identity": "/i", "known_hosts": §"/a b"`), "groups[0].remote[0].known_hosts", "unusable with ssh"},
		{"identity percent", remote(`"count": 1, "identity": §"/%d", "known_hosts": "/k"`), "groups[0].remote[0].identity", "unusable with ssh"},
		{"binary option", remote(remoteOK + `, "binary": §"-x"`), "groups[0].remote[0].binary", "leading '-'"},
		{"binary empty", remote(remoteOK + `, "binary": §""`), "groups[0].remote[0].binary", "not empty"},
		{"binary newline", remote(remoteOK + `, "binary": §"a\nb"`), "groups[0].remote[0].binary", "control characters"},
		{"second remote", remote(remoteOK + `}, {"ssh": "h2", "count": 1, "identity": "/i", "known_hosts": §5`), "groups[0].remote[1].known_hosts", "want a string, got 5"},
		{"ssh port", group(`"remote": [{"ssh": §"u@h:2222", ` + remoteOK + `}]`), "groups[0].remote[0].ssh", `want the port in "port"`},
		{"reuseport unix", `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0", §"unix:///run/x.sock"], "mode": "reuseport"}]}`, "groups[0].listen[1]", "SO_REUSEPORT"},
		{"handoff udp", `{"groups": [{"name": "a", "command": ["p"], "mode": "handoff", "listen": [§"udp://127.0.0.1:53"]}]}`, "groups[0].listen[0]", "no connections to hand off"},
		{"escaped key unknown", group(`§"\u0063nt": 1`), "groups[0].cnt", `unknown key "cnt"`},
		// One machine cannot bind an address for two groups or two
		// agents: the second bind fails, remotely only once connected.
		{"listen shared by two local groups", `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:80"]},
			{"name": "b", "command": ["p"], "listen": ["127.0.0.1:0", §"tcp://127.0.0.1:80"]}]}`, "groups[1].listen[1]",
			`this machine would bind "tcp://127.0.0.1:80" twice (also for the local workers of groups[0] ("a"))`},
		{"same remote host twice", `{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:80"],
			"remote": [{"ssh": "h", ` + remoteOK + `}, {"ssh": §"u@h", ` + remoteOK + `}]}]}`, "groups[0].remote[1].ssh",
			`host "h" would bind "tcp://127.0.0.1:80" twice (also for groups[0].remote[0])`},
		{"remote host in two groups", `{"groups": [{"name": "a", "command": ["p"], "listen": ["unix:///run/a.sock"], "remote": [{"ssh": "H", ` + remoteOK + `}]},
			{"name": "b", "command": ["p"], "listen": ["unix:///run/a.sock"], "remote": [{"ssh": §"u@h", "port": 2222, ` + remoteOK + `}]}]}`,
			"groups[1].remote[0].ssh", `host "h" would bind "unix:///run/a.sock" twice (also for groups[0].remote[0])`},
		// The locator skips earlier values whose strings hold quotes,
		// brackets and backslashes, and keys written with escapes.
		{"locate past tricky strings", `{"gr\u006fups": [{"name": "a", "command": ["p\"]}{[\\", "\\"], "listen": ["127.0.0.1:0"],
			"params": {"x]": ["}", {"\"": "\\\""}]}}, {"name": "b", "command": ["p"], "listen": ["127.0.0.1:0"], "c\u006fu\u006et": §"1"}]}`,
			"groups[1].count", `got "1"`},
		// Columns count bytes: "ü" and "é" are two each.
		{"column after multi-byte", `{"control": "/ü/é", "pid_file": §"", "groups": []}`, "pid_file", "empty path"},
		{"crlf schema error", "{\r\n\"groups\": [\r\n  {\"name\": \"a\", \"command\": [\"p\"], \"listen\": [\"127.0.0.1:0\"], \"count\": §-1}]}\r\n",
			"groups[0].count", "got -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkConfigError(t, tt.in, tt.path, tt.msg)
		})
	}
}

// envVars returns n distinct "env" members, each followed by a comma.
func envVars(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `"V%d": "",`, i)
	}
	return b.String()
}

// checkConfigError parses in without its mark and checks that the error
// sits exactly at the mark with the given path and message part.
func checkConfigError(t *testing.T, in, path, msg string) {
	t.Helper()
	before, after, ok := strings.Cut(in, mark)
	if !ok {
		t.Fatalf("test input has no %s mark", mark)
	}
	data := []byte(before + after)
	line := 1 + strings.Count(before, "\n")
	col := len(before) - strings.LastIndexByte(before, '\n')
	_, err := cluster.ParseConfig(data)
	var ce *cluster.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("ParseConfig error = %v, want a *ConfigError", err)
	}
	if !errors.Is(err, cluster.ErrConfig) {
		t.Errorf("errors.Is(%v, ErrConfig) = false", err)
	}
	type where struct {
		Line, Column int
		Path         string
	}
	if diff := cmp.Diff(where{line, col, path}, where{ce.Line, ce.Column, ce.Path}); diff != "" {
		t.Errorf("error %q at (-want +got):\n%s", cut(err.Error()), diff)
	}
	if !strings.Contains(ce.Msg, msg) {
		t.Errorf("message %q does not contain %q", cut(ce.Msg), msg)
	}
	checkFuzzError(t, data, err)
}

func cut(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

func TestParseConfigSyntaxErrors(t *testing.T) {
	deep := `{"x":` + strings.Repeat("[", 70)
	tests := []struct {
		name      string
		in        string
		line, col int
		msg       string
	}{
		{"empty", "", 1, 1, "empty file"},
		{"blank", "  \n  ", 2, 3, "empty file"},
		{"unterminated object", "{", 1, 1, "unterminated object"},
		{"trailing comma", `{"a":1,}`, 1, 8, "trailing comma"},
		{"trailing comma array", `{"a":[1,]}`, 1, 9, "trailing comma"},
		{"no colon", `{"a" 1}`, 1, 6, "want ':'"},
		{"key not string", `{a:1}`, 1, 2, "want a string key"},
		{"duplicate key", "{\n  \"groups\": [\n    {\"name\": \"a\", \"name\": \"b\"}\n  ]\n}", 3, 19, `duplicate key "name"`},
		{"duplicate escaped key", `{"a":1, "\u0061":2}`, 1, 9, `duplicate key "a"`},
		{"duplicate key in params", `{"p": {"q": {"x": 1, "x": 2}}}`, 1, 22, `duplicate key "x"`},
		{"bad literal", `{"x": tru}`, 1, 7, "want true"},
		{"literal suffix", `{"x": nullx}`, 1, 7, "want null"},
		{"nan", `{"x": NaN}`, 1, 7, "unexpected 'N'"},
		{"leading zero", `{"x": 01}`, 1, 7, "invalid number"},
		{"plus", `{"x": +1}`, 1, 7, "unexpected '+'"},
		{"dot", `{"x": 1.}`, 1, 7, "after '.'"},
		{"exponent", `{"x": 1e}`, 1, 7, "exponent"},
		{"hex", `{"x": 0x10}`, 1, 7, "invalid number"},
		{"bad escape", `{"x": "a\qb"}`, 1, 9, `invalid escape \q`},
		// Named as bytes, never echoed raw (half a UTF-8 sequence, ESC).
		{"bad escape non-ASCII", `{"x": "a\é"}`, 1, 9, `invalid escape: '\' before byte 0xc3`},
		{"bad escape control", "{\"x\": \"a\\\x1b\"}", 1, 9, `invalid escape: '\' before byte 0x1b`},
		{"too many values", `{"x": [` + strings.Repeat("0,", 1<<16-2) + `0]}`, 1, len(`{"x": [`) + 2*(1<<16-2) + 1, "more than 65536 JSON values"},
		{"short unicode", `{"x": "\u12"}`, 1, 8, "4 hex digits"},
		{"lone surrogate", `{"x": "\ud800"}`, 1, 8, "surrogate"},
		{"low surrogate", `{"x": "\udc00\ud800"}`, 1, 8, "surrogate"},
		{"bad pair", `{"x": "\ud800\u0041"}`, 1, 8, "surrogate"},
		{"invalid utf8", "{\"x\": \"\xff\"}", 1, 8, "invalid UTF-8"},
		{"utf8 surrogate", "{\"x\": \"\xed\xa0\x80\"}", 1, 8, "invalid UTF-8"},
		{"control char", "{\"x\": \"a\tb\"}", 1, 9, "control character 0x09"},
		{"unterminated string", "{\"x\": \"abc", 1, 7, "unterminated string"},
		{"bom", "\xef\xbb\xbf{}", 1, 1, "byte order mark"},
		{"two values", `{} {}`, 1, 4, "after the top-level value"},
		{"unterminated array", `[1,2`, 1, 1, "unterminated array"},
		{"missing comma", `{"a":[1 2]}`, 1, 9, "want ',' or ']'"},
		{"missing comma object", "{\"a\":1\n\"b\":2}", 2, 1, "want ',' or '}'"},
		{"crlf", "{\r\n\"a\":\r\n x}", 3, 2, "want a value"},
		{"nul byte", "{\"a\":\x00}", 1, 6, "byte 0x00"},
		{"deep", deep, 1, len(`{"x":`) + 64, "nested deeper than 64"},
		{"eof after colon", `{"a":`, 1, 6, "end of file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cluster.ParseConfig([]byte(tt.in))
			var ce *cluster.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("ParseConfig error = %v, want a *ConfigError", err)
			}
			want := cluster.ConfigError{Line: tt.line, Column: tt.col}
			got := cluster.ConfigError{Line: ce.Line, Column: ce.Column, Path: ce.Path}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("error %q at (-want +got):\n%s", err, diff)
			}
			if !strings.Contains(ce.Msg, tt.msg) {
				t.Errorf("message %q does not contain %q", ce.Msg, tt.msg)
			}
			checkFuzzError(t, []byte(tt.in), err)
		})
	}
}

// TestParseConfigSharedBindsOK: an address may repeat on different
// machines, and port 0 anywhere.
func TestParseConfigSharedBindsOK(t *testing.T) {
	for _, in := range []string{
		`{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:80"], "remote": [{"ssh": "h1", ` + remoteOK + `}, {"ssh": "h2", ` + remoteOK + `}]},
			{"name": "b", "command": ["p"], "listen": ["127.0.0.1:80"], "remote": [{"ssh": "h3", ` + remoteOK + `}]}]}`,
		`{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0", "udp://127.0.0.1:80"]},
			{"name": "b", "command": ["p"], "listen": ["127.0.0.1:0", "127.0.0.1:80"], "remote": [{"ssh": "h", ` + remoteOK + `}, {"ssh": "g", ` + remoteOK + `}]}]}`,
	} {
		if _, err := cluster.ParseConfig([]byte(in)); err != nil {
			t.Errorf("ParseConfig(%s): %v", in, err)
		}
	}
}

func TestParseConfigLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"groups": [`)
	for i := range 256 {
		b.WriteString(`{"name": "g` + string(rune('a'+i%26)) + strings.Repeat("x", i/26) + `", "command": ["p"], "listen": ["127.0.0.1:0"]},`)
	}
	ok := strings.TrimSuffix(b.String(), ",") + `]}`
	fc, err := cluster.ParseConfig([]byte(ok))
	if err != nil {
		t.Fatalf("256 groups: %v", err)
	}
	if len(fc.Groups) != 256 {
		t.Fatalf("256 groups: got %d", len(fc.Groups))
	}
	checkConfigError(t, b.String()+`§{"name": "z"}]}`, "groups[256]", "too many groups (at most 256)")

	// 65536 values in all (the object, the array and its elements) are
	// fine: the error is about the content.
	checkConfigError(t, `{§"x": [`+strings.Repeat("0,", 1<<16-3)+`0]}`, "x", `unknown key "x"`)

	big := make([]byte, cluster.MaxConfigFile+1)
	_, err = cluster.ParseConfig(big)
	var ce *cluster.ConfigError
	if !errors.As(err, &ce) || ce.Line != 1 || ce.Column != 1 || !strings.Contains(ce.Msg, "larger than") {
		t.Errorf("ParseConfig(1 MiB + 1) = %v, want a 1:1 size error", err)
	}
}

func TestParseConfigErrorString(t *testing.T) {
	_, err := cluster.ParseConfig([]byte("{\"groups\": [\n {\"name\": \"a\", \"command\": [\"p\"], \"heartbeat\": \"ten\"}]}"))
	want := `2:47: groups[0].heartbeat: want a duration like "10s", got "ten"`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.json", docExample(t))
	bad := write("bad.json", []byte("{\n  \"groups\": [{\"name\": \"a\", \"command\": [\"p\"], \"count\": \"2\"}]\n}\n"))
	huge := write("huge.json", append([]byte(`{"groups": []}`), bytes.Repeat([]byte(" "), cluster.MaxConfigFile)...))
	exact := write("exact.json", append(docExample(t), bytes.Repeat([]byte("\n"), cluster.MaxConfigFile-len(docExample(t)))...))
	missing := filepath.Join(dir, "missing.json")
	link := filepath.Join(dir, "link.json")
	dangling := filepath.Join(dir, "dangling.json")
	devLink := filepath.Join(dir, "dev.json")
	for _, l := range []struct{ target, name string }{{good, link}, {missing, dangling}, {os.DevNull, devLink}} {
		if err := os.Symlink(l.target, l.name); err != nil {
			t.Fatal(err)
		}
	}
	// A pipe as /dev/fd/N, as "-config <(generate)" passes it: refused
	// before it is opened (a FIFO without a writer would block the open).
	// The writer stays open, so reading it would hang the test.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	pipe := fmt.Sprintf("/dev/fd/%d", r.Fd())

	if fc, err := cluster.LoadConfig(good); err != nil || len(fc.Groups) != 1 || fc.Groups[0].Name != "web" {
		t.Errorf("LoadConfig(good) = %+v, %v", fc, err)
	}
	if _, err := cluster.LoadConfig(exact); err != nil {
		t.Errorf("LoadConfig(exactly 1 MiB) = %v", err)
	}
	if fc, err := cluster.LoadConfig(link); err != nil || len(fc.Groups) != 1 {
		t.Errorf("LoadConfig(symlink to a good file) = %+v, %v", fc, err)
	}
	tests := []struct {
		name string
		path string
		want cluster.ConfigError
	}{
		{"syntax", bad, cluster.ConfigError{File: bad, Line: 2, Column: 55, Path: "groups[0].count", Msg: `want an integer from 0 to 4096, got "2"`}},
		{"missing", missing, cluster.ConfigError{File: missing, Line: 1, Column: 1, Msg: "stat: no such file or directory"}},
		{"directory", dir, cluster.ConfigError{File: dir, Line: 1, Column: 1, Msg: "is a directory, not a file"}},
		{"too large", huge, cluster.ConfigError{File: huge, Line: 1, Column: 1, Msg: "file larger than 1048576 bytes"}},
		{"dangling symlink", dangling, cluster.ConfigError{File: dangling, Line: 1, Column: 1, Msg: "stat: no such file or directory"}},
		{"device", os.DevNull, cluster.ConfigError{File: os.DevNull, Line: 1, Column: 1, Msg: "is a device, not a regular file"}},
		{"symlink to a device", devLink, cluster.ConfigError{File: devLink, Line: 1, Column: 1, Msg: "is a device, not a regular file"}},
		{"pipe", pipe, cluster.ConfigError{File: pipe, Line: 1, Column: 1, Msg: "is a pipe or FIFO, not a regular file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := os.Stat(tt.path); tt.name == "pipe" && err != nil {
				t.Skipf("no %s on this system: %v", tt.path, err)
			}
			_, err := cluster.LoadConfig(tt.path)
			var ce *cluster.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("LoadConfig error = %v, want a *ConfigError", err)
			}
			if !errors.Is(err, cluster.ErrConfig) {
				t.Errorf("errors.Is(%v, ErrConfig) = false", err)
			}
			if diff := cmp.Diff(tt.want, *ce); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
