package cluster

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/handoff-go/handoff/supervise"
)

// FileConfig is a parsed mini-cluster configuration file (-config): the
// settings of the master process and the groups it runs. ParseConfig and
// LoadConfig build it; every field is already validated and defaulted.
type FileConfig struct {
	// Control and PIDFile are the "control" and "pid_file" paths (empty:
	// none); the command line's -control and -pid-file override them.
	Control, PIDFile string
	// User is "user" as written, "USER[:GROUP]" (empty: none), and
	// Credential what LookupUser resolved it to when the file was parsed:
	// every group's local workers run as that user (Config.Credential).
	// Remote hosts' workers run as their ssh user.
	User       string
	Credential *supervise.Credential
	// Groups in file order. Names are unique.
	Groups []GroupConfig

	// source is the file LoadConfig read: the fleet warns on SIGHUP when
	// it changed, since nothing re-reads it.
	source *configSource
}

// configSource is a configuration file as LoadConfig read it.
type configSource struct {
	path string
	sum  [sha256.Size]byte
}

// GroupConfig is one group of workers running one program: Count workers
// on this machine plus the workers of each Remote host. Every worker of
// the group gets a global id unique within the master (HANDOFF_WORKER_ID),
// its index in the group (HANDOFF_GROUP_INDEX, 0..Size()-1, local workers
// first, then each remote host's in file order), the group's size
// (HANDOFF_GROUP_SIZE), its name (HANDOFF_GROUP) and Params
// (HANDOFF_PARAMS).
type GroupConfig struct {
	// Name is the group's name: 1 to 64 bytes of [A-Za-z0-9._-], starting
	// with a letter or digit, unique.
	Name string
	// Program and Args are the worker's command ("command": an array of
	// strings, program first).
	Program string
	Args    []string
	// Count is the number of local workers ("count", default 1 when the
	// group has no remote hosts, else 0).
	Count int
	// Params is the group's "params" value, compact JSON (an object; "{}"
	// when absent), handed to every worker verbatim as HANDOFF_PARAMS.
	Params []byte
	// Env holds extra "env" entries (KEY=VALUE, from a JSON object of
	// strings, in file order), added to the workers' environment. The
	// parser refuses names mini-cluster sets itself (HANDOFF_*, LISTEN_*,
	// WATCHDOG_*, NOTIFY_SOCKET).
	Env []string
	// Listen holds "listen" addresses as -listen takes them; at least one
	// (the master binds them for local workers, each remote host's agent
	// for its own).
	Listen []string
	// Mode, Ready and Strategy are "mode", "ready" and "restart_strategy"
	// (defaults shared, notify, rolling).
	Mode     Mode
	Ready    ReadyMode
	Strategy supervise.Strategy
	// Restart is "restart": "always" (default), "on-failure" or "never".
	Restart supervise.Policy
	// Backoff is "backoff": {"min", "max", "reset_after", "window" as Go
	// durations, "burst" as a count, -1 for no limit}; zero fields mean
	// supervise's defaults.
	Backoff supervise.Backoff
	// Heartbeat, ShutdownTimeout, StartTimeout and MaxRunningTime are
	// "heartbeat", "shutdown_timeout", "start_timeout" and
	// "max_running_time", Go durations ("1m30s"); 0 means the default
	// (heartbeats off, 10 s, 30 s, no limit).
	Heartbeat, ShutdownTimeout, StartTimeout, MaxRunningTime time.Duration
	// Suspended starts the group suspended ("suspended": true): its
	// workers start only on resume.
	Suspended bool
	// Remote lists the "remote" hosts that run workers of this group.
	Remote []RemoteHost
}

// Size is the number of workers of the group as configured, local and
// remote.
func (g *GroupConfig) Size() int {
	n := g.Count
	for _, r := range g.Remote {
		n += r.Count
	}
	return n
}

// RemoteHost is one "remote" entry of a group: workers started over SSH by
// a mini-cluster agent on that host.
type RemoteHost struct {
	// SSH is "user@host" (user optional), Port the ssh port (default 22).
	SSH  string
	Port int
	// Count is the number of workers on that host (at least 1).
	Count int
	// Identity is the private key file ssh offers; KnownHosts the file
	// holding the host's key. Both are required: host-key checking is
	// never turned off.
	Identity, KnownHosts string
	// Binary is the mini-cluster executable on the remote host (default
	// "mini-cluster", looked up in the remote user's PATH).
	Binary string
	// HeartbeatTimeout is how long the session with the host's agent may
	// go without a frame before it is ended and redone, restarting the
	// host's workers ("heartbeat_timeout"; 0 means 15 s, else 3 s to
	// 10 min); the agent allows the master's pings as long plus 2 s.
	HeartbeatTimeout time.Duration
}

// ErrConfig is matched by every configuration error (errors.Is).
var ErrConfig = errors.New("cluster: invalid configuration")

// ConfigError is a configuration error at a place in the file: Line and
// Column (1-based, in bytes: a tab or a multi-byte UTF-8 character counts
// as its bytes; lines end at '\n') of the offending value (of its key for
// an unknown key or a bad "env" name, of the enclosing object for a
// missing one), or of the syntax error, and Path, the JSON path of the
// value ("groups[1].count", `groups[0].env["A B"]`). Path is empty for a
// syntax error and a top level that is not an object; a file that cannot
// be read has no Path either and is reported at 1:1. File is set by
// LoadConfig. It matches ErrConfig.
type ConfigError struct {
	File         string
	Line, Column int
	Path         string
	Msg          string
}

func (e *ConfigError) Error() string {
	where := fmt.Sprintf("%d:%d", e.Line, e.Column)
	if e.File != "" {
		where = e.File + ":" + where
	}
	if e.Path != "" {
		return where + ": " + e.Path + ": " + e.Msg
	}
	return where + ": " + e.Msg
}

// Is reports whether target is ErrConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }
