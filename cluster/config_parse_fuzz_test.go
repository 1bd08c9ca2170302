package cluster_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/handoff-go/handoff/cluster"
	"github.com/valyala/fastjson"
)

// configSeeds are added to the committed corpus in
// testdata/fuzz/FuzzParseConfig.
var configSeeds = []string{
	`{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0"]}]}`,
	`{"control": "/c", "pid_file": "/p", "groups": [{"name": "a", "command": ["p", "x"], "count": 0, "listen": ["udp://[::1]:53"],
	  "params": {"k": [1, {"\u00e9": null}]}, "env": {"A": "b"}, "mode": "reuseport", "ready": "started",
	  "restart_strategy": "parallel", "restart": "never", "backoff": {"min": "1s", "max": "2s", "burst": -1},
	  "heartbeat": "1s", "max_running_time": "1h", "suspended": true,
	  "remote": [{"ssh": "u@h", "port": 2222, "count": 2, "identity": "/i", "known_hosts": "/k", "binary": "/bin/mc"}]}]}`,
	`{"groups": [{"name": "a", "command": ["p"], "count": "2"}]}`,
	`{"user": "root:0", "groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0"]}]}`,
	"{\"a\":\n\"\\ud800\"}",
	`{"a": 1, "\u0061": 2}`,
	`[[[[[[[[[[[[[[[[`,
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range configSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fc, err := cluster.ParseConfig(data)
		fc2, err2 := cluster.ParseConfig(data)
		if diff := cmp.Diff(fc, fc2, cmpopts.IgnoreUnexported(cluster.FileConfig{})); diff != "" {
			t.Fatalf("not deterministic (-first +second):\n%s", diff)
		}
		if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() {
			t.Fatalf("not deterministic: %v, then %v", err, err2)
		}
		if err != nil {
			checkFuzzError(t, data, err)
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
		checkFileConfig(t, fc)
	})
}

func checkFuzzError(t *testing.T, data []byte, err error) {
	var ce *cluster.ConfigError
	if !errors.As(err, &ce) || !errors.Is(err, cluster.ErrConfig) {
		t.Fatalf("error %v (%T) is not a *ConfigError matching ErrConfig", err, err)
	}
	lines := bytes.Split(data, []byte("\n"))
	if ce.Line < 1 || ce.Line > len(lines) {
		t.Fatalf("error %v: line %d outside 1..%d", err, ce.Line, len(lines))
	}
	if ce.Column < 1 || ce.Column > len(lines[ce.Line-1])+1 {
		t.Fatalf("error %v: column %d outside 1..%d", err, ce.Column, len(lines[ce.Line-1])+1)
	}
	if ce.Msg == "" {
		t.Fatalf("error at %d:%d has no message", ce.Line, ce.Column)
	}
	// The message reaches a terminal: bytes from the file are quoted,
	// never echoed raw (an ESC sequence, half a UTF-8 character).
	if msg := err.Error(); !utf8.ValidString(msg) || strings.ContainsFunc(msg, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		t.Fatalf("error %q holds raw control characters or invalid UTF-8", cut(msg))
	}
	if strings.HasPrefix(ce.Msg, "invalid JSON") {
		t.Fatalf("fastjson refused what the checker accepted: %v", err)
	}
	if ce.Path != "" {
		// A schema error points at a value or a key.
		off := 0
		for _, l := range lines[:ce.Line-1] {
			off += len(l) + 1
		}
		off += ce.Column - 1
		if off >= len(data) || !strings.ContainsRune(`{["-0123456789tfn`+"\"", rune(data[off])) {
			t.Fatalf("error %v does not point at a value", err)
		}
		return
	}
	// Syntax errors that encoding/json would not see: what the checker
	// is stricter about.
	if json.Valid(data) {
		ok := false
		for _, s := range []string{"duplicate key", "surrogate", "UTF-8", "nested deeper", "JSON values", "want an object"} {
			ok = ok || strings.Contains(ce.Msg, s)
		}
		if !ok {
			t.Fatalf("valid JSON %q refused: %v", cut(string(data)), err)
		}
	}
}

func checkFileConfig(t *testing.T, fc *cluster.FileConfig) {
	if (fc.User == "") != (fc.Credential == nil) {
		t.Fatalf("user %q resolved to %+v", fc.User, fc.Credential)
	}
	if n := len(fc.Groups); n < 1 || n > 256 {
		t.Fatalf("%d groups", n)
	}
	names := map[string]bool{}
	localBinds := map[cluster.Addr]bool{}
	total := 0
	for _, g := range fc.Groups {
		if g.Name == "" || len(g.Name) > 64 || strings.Trim(g.Name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
			t.Fatalf("bad name %q", g.Name)
		}
		if names[g.Name] {
			t.Fatalf("duplicate name %q", g.Name)
		}
		names[g.Name] = true
		if g.Program == "" || len(g.Args) >= 4096 {
			t.Fatalf("group %s: program %q, %d args", g.Name, g.Program, len(g.Args))
		}
		if g.Count < 0 || g.Size() < 1 || g.Size() > cluster.MaxConfigWorkers {
			t.Fatalf("group %s: count %d, size %d", g.Name, g.Count, g.Size())
		}
		total += g.Size()
		if len(g.Params) == 0 || g.Params[0] != '{' || fastjson.ValidateBytes(g.Params) != nil || !json.Valid(g.Params) {
			t.Fatalf("group %s: params %q not a JSON object", g.Name, g.Params)
		}
		for _, kv := range g.Env {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || k == "" || strings.IndexByte(kv, 0) >= 0 || strings.HasPrefix(k, "HANDOFF_") {
				t.Fatalf("group %s: env %q", g.Name, kv)
			}
		}
		if len(g.Listen) == 0 {
			t.Fatalf("group %s: no listen", g.Name)
		}
		for _, l := range g.Listen {
			a, err := cluster.ParseAddr(l)
			if err != nil {
				t.Fatalf("group %s: listen %v", g.Name, err)
			}
			if g.Count > 0 && (a.Network == "unix" || !strings.HasSuffix(a.Address, ":0")) {
				if localBinds[a] {
					t.Fatalf("group %s: %s bound twice on this machine", g.Name, a)
				}
				localBinds[a] = true
			}
		}
		if g.Heartbeat < 0 || g.ShutdownTimeout < 0 || g.StartTimeout < 0 || g.MaxRunningTime < 0 ||
			g.Backoff.Min < 0 || g.Backoff.Max < 0 || g.Backoff.ResetAfter < 0 || g.Backoff.Window < 0 || g.Backoff.Burst < -1 {
			t.Fatalf("group %s: negative duration or burst: %+v", g.Name, g)
		}
		for _, r := range g.Remote {
			if r.SSH == "" || r.Port < 1 || r.Port > 65535 || r.Count < 1 || r.Binary == "" ||
				!strings.HasPrefix(r.Identity, "/") || !strings.HasPrefix(r.KnownHosts, "/") {
				t.Fatalf("group %s: remote %+v", g.Name, r)
			}
		}
	}
	if total > cluster.MaxConfigWorkers {
		t.Fatalf("%d workers in all", total)
	}
}
