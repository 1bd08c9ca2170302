//go:build linux

package cluster_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestFleetNewValidatesSettings: NewFleet holds every group built in Go to
// the rules ParseConfig applies to each value. Without them a maximum
// running time of 500 ms made a remote host's agent end its session at
// its first status frame, every time, and a local group's status
// undecodable for clients; params over 64 KiB on a remote-only group were
// refused by the agent at every session, retried for ever. Zero values
// keep their Go meaning (the defaults) and the bounds themselves pass.
func TestFleetNewValidatesSettings(t *testing.T) {
	fdcensus.Verify(t)
	// Remote groups look ssh up at NewFleet; it is never run here.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "ssh"), []byte("#!/bin/sh\nexit 1\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))

	local := func(edit func(g *cluster.GroupConfig)) cluster.GroupConfig {
		g := shGroup("a", 1)
		edit(&g)
		return g
	}
	remote := func(edit func(g *cluster.GroupConfig)) cluster.GroupConfig {
		g := cluster.GroupConfig{Name: "a", Program: "srv", Listen: []string{"127.0.0.1:0"},
			Remote: []cluster.RemoteHost{{SSH: "u@h", Count: 1, Identity: "/i", KnownHosts: "/k"}}}
		edit(&g)
		return g
	}
	host := func(edit func(h *cluster.RemoteHost)) cluster.GroupConfig {
		return remote(func(g *cluster.GroupConfig) { edit(&g.Remote[0]) })
	}
	params := func(n int) []byte { return []byte(`{"k":"` + strings.Repeat("x", n-8) + `"}`) }
	const day = 24 * time.Hour
	longKey := strings.Repeat("K", 64<<10)
	many := func(n int, s string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = s
		}
		return out
	}

	for _, tc := range []struct {
		name  string
		group cluster.GroupConfig
		// path and a part of the message; "" path: accepted.
		path, msg string
	}{
		{"max running time 500ms", local(func(g *cluster.GroupConfig) { g.MaxRunningTime = 500 * time.Millisecond }),
			"groups[0].max_running_time", "want 0 (off) or 1s to"},
		{"max running time 500ms remote", remote(func(g *cluster.GroupConfig) { g.MaxRunningTime = 500 * time.Millisecond }),
			"groups[0].max_running_time", "want 0 (off) or 1s to"},
		{"max running time 367 days", local(func(g *cluster.GroupConfig) { g.MaxRunningTime = 367 * day }),
			"groups[0].max_running_time", "1s to"},
		{"negative max running time", remote(func(g *cluster.GroupConfig) { g.MaxRunningTime = -time.Second }),
			"groups[0].max_running_time", "1s to"},
		{"params 70 KiB remote", remote(func(g *cluster.GroupConfig) { g.Params = params(70 << 10) }),
			"groups[0].params", "want at most 65536"},
		{"params 70 KiB local", local(func(g *cluster.GroupConfig) { g.Params = params(70 << 10) }),
			"groups[0].params", "want at most 65536"},
		{"params not JSON", remote(func(g *cluster.GroupConfig) { g.Params = []byte(`{"a":`) }),
			"groups[0].params", "invalid JSON"},
		{"params with a key twice", remote(func(g *cluster.GroupConfig) { g.Params = []byte(`{"a":1,"a":2}`) }),
			"groups[0].params", "invalid JSON"},
		{"params not an object", remote(func(g *cluster.GroupConfig) { g.Params = []byte(` [1]`) }),
			"groups[0].params", "want a JSON object"},
		{"heartbeat 1ms", remote(func(g *cluster.GroupConfig) { g.Heartbeat = time.Millisecond }),
			"groups[0].heartbeat", "10ms to 1h0m0s"},
		{"negative shutdown timeout", local(func(g *cluster.GroupConfig) { g.ShutdownTimeout = -time.Second }),
			"groups[0].shutdown_timeout", "100ms to"},
		{"start timeout 25h", remote(func(g *cluster.GroupConfig) { g.StartTimeout = 25 * time.Hour }),
			"groups[0].start_timeout", "100ms to 24h0m0s"},
		{"negative backoff min", local(func(g *cluster.GroupConfig) { g.Backoff.Min = -time.Second }),
			"groups[0].backoff.min", "from 0 to 24h0m0s"},
		{"backoff window 25h", remote(func(g *cluster.GroupConfig) { g.Backoff.Window = 25 * time.Hour }),
			"groups[0].backoff.window", "from 0 to 24h0m0s"},
		{"backoff burst 1001", local(func(g *cluster.GroupConfig) { g.Backoff.Burst = 1001 }),
			"groups[0].backoff.burst", "from -1 to 1000"},
		{"backoff max below min", remote(func(g *cluster.GroupConfig) { g.Backoff.Min, g.Backoff.Max = 5*time.Second, 2*time.Second }),
			"groups[0].backoff.max", "below min"},
		{"backoff min above the default max", local(func(g *cluster.GroupConfig) { g.Backoff.Min = time.Minute }),
			"groups[0].backoff.min", "default max"},
		{"mode 9", remote(func(g *cluster.GroupConfig) { g.Mode = 9 }), "groups[0].mode", "want shared"},
		{"ready 7", remote(func(g *cluster.GroupConfig) { g.Ready = 7 }), "groups[0].ready", "want notify"},
		{"strategy 5", local(func(g *cluster.GroupConfig) { g.Strategy = 5 }), "groups[0].restart_strategy", "want rolling"},
		{"restart 9", remote(func(g *cluster.GroupConfig) { g.Restart = 9 }), "groups[0].restart", "want always"},
		{"NUL in an argument", local(func(g *cluster.GroupConfig) { g.Args = []string{"-c", "a\x00b"} }),
			"groups[0].command[2]", "NUL"},
		{"argument over 64 KiB", remote(func(g *cluster.GroupConfig) { g.Args = []string{strings.Repeat("x", 65<<10)} }),
			"groups[0].command[1]", "longer than 65536"},
		{"4096 arguments", local(func(g *cluster.GroupConfig) { g.Args = many(4096, "x") }),
			"groups[0].command[4096]", "too many command arguments"},
		{"env without =", local(func(g *cluster.GroupConfig) { g.Env = []string{"A=1", "B"} }),
			"groups[0].env[1]", "want KEY=VALUE"},
		{"env without a name", remote(func(g *cluster.GroupConfig) { g.Env = []string{"=1"} }),
			"groups[0].env[0]", "want KEY=VALUE"},
		{"NUL in an env value", remote(func(g *cluster.GroupConfig) { g.Env = []string{"K=a\x00"} }),
			"groups[0].env.K", "NUL"},
		{"env beyond execve's limit", local(func(g *cluster.GroupConfig) { g.Env = []string{longKey + "=" + strings.Repeat("v", 64<<10)} }),
			"groups[0].env." + longKey, "execve's limit"},
		{"4097 env variables", local(func(g *cluster.GroupConfig) { g.Env = many(4097, "A=1") }),
			"groups[0].env", "too many variables"},
		{"257 listen addresses", local(func(g *cluster.GroupConfig) { g.Listen = many(257, "127.0.0.1:0") }),
			"groups[0].listen[256]", "too many listen addresses"},
		{"port in ssh", host(func(h *cluster.RemoteHost) { h.SSH = "u@h:2222" }),
			"groups[0].remote[0].ssh", `want the port in "port"`},
		{"port 70000", host(func(h *cluster.RemoteHost) { h.Port = 70000 }),
			"groups[0].remote[0].port", "1 to 65535"},
		{"no identity", host(func(h *cluster.RemoteHost) { h.Identity = "" }),
			"groups[0].remote[0].identity", "want an absolute path"},
		{"relative known_hosts", host(func(h *cluster.RemoteHost) { h.KnownHosts = "k" }),
			"groups[0].remote[0].known_hosts", "want an absolute path"},
		{"known_hosts with a space", host(func(h *cluster.RemoteHost) { h.KnownHosts = "/a b" }),
			"groups[0].remote[0].known_hosts", "unusable with ssh"},
		{"binary with a leading dash", host(func(h *cluster.RemoteHost) { h.Binary = "-oProxyCommand=x" }),
			"groups[0].remote[0].binary", "no leading '-'"},

		{"bounds local", local(func(g *cluster.GroupConfig) {
			g.MaxRunningTime, g.Heartbeat, g.StartTimeout = 366*day, 10*time.Millisecond, 24*time.Hour
			g.Params = []byte(" {\"a\": [1, 2]}\n")
			g.Env = []string{"A=", "HANDOFF_OWN=1"} // reserved names are a file's rule only
			g.Backoff = supervise.Backoff{Min: 2 * time.Second, Burst: -1, Jitter: 1e300, QuickFailures: -7}
		}), "", ""},
		{"bounds remote", remote(func(g *cluster.GroupConfig) {
			g.MaxRunningTime, g.ShutdownTimeout = time.Second, 100*time.Millisecond
			g.Params = params(64 << 10)
			g.Remote[0].Port, g.Remote[0].Binary = 0, ""
		}), "", ""},
		{"zero values", remote(func(g *cluster.GroupConfig) { g.Program, g.Count = "/bin/sh", 1 }), "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{tc.group}},
				&cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler)})
			if f != nil {
				f.Close()
			}
			switch {
			case tc.path == "":
				if err != nil {
					t.Errorf("NewFleet: %v, want nil", err)
				}
			case !errors.Is(err, cluster.ErrConfig) || !strings.Contains(err.Error(), tc.path+": ") || !strings.Contains(err.Error(), tc.msg):
				t.Errorf("NewFleet: %.300v, want ErrConfig naming %.100s, saying %q", err, tc.path, tc.msg)
			}
		})
	}
}
