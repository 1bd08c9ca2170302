//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// nobodyTemp returns a fresh directory under the test's temporary
// directory that user nobody can search all the way down (t.TempDir and
// its parent are made 0711), for a master's TMPDIR under -user nobody:
// the notify socket goes there. The test is skipped when TMPDIR itself is
// not searchable by others.
func nobodyTemp(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	for p := filepath.Dir(filepath.Dir(d)); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is not searchable by user nobody", p)
		}
		if p == "/" {
			return d
		}
	}
}

// nobodyIDs is "uid:gid:[groups]" as the fake worker reports it (IDS) for
// spec, from the user database.
func nobodyIDs(t *testing.T, spec string) string {
	t.Helper()
	name, group, hasGroup := strings.Cut(spec, ":")
	u, err := user.Lookup(name)
	if err != nil {
		t.Skipf("no user %s: %v", name, err)
	}
	gid := u.Gid
	if hasGroup {
		g, err := user.LookupGroup(group)
		if err != nil {
			t.Skipf("no group %s: %v", group, err)
		}
		gid = g.Gid
	}
	ids, err := u.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	var groups []int
	for _, s := range append(ids, gid) {
		g, _ := strconv.Atoi(s)
		if hasGroup && s == u.Gid {
			continue // initgroups(3) with GROUP as the base group
		}
		groups = append(groups, g)
	}
	slices.Sort(groups)
	return fmt.Sprintf("%s:%s:%v", u.Uid, gid, slices.Compact(groups))
}

// TestUserWorkers runs the workers as user nobody under a root master
// (-user): the worker and its program have nobody's uid, gid and groups,
// become ready through NOTIFY_SOCKET (a 0600 socket of theirs in a 0710
// directory that stays root's), may have the master bind a unix socket
// only where nobody could (a root-only directory is refused, and so is a
// ".." after a symlink into one) and then owned by nobody, and still
// die within a second of a master SIGKILL (the parent-death signal
// survives the credential change; TESTPLAN C8). Shared and handoff modes;
// the handoff master is upgraded in place (SIGUSR2) and keeps -user.
func TestUserWorkers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workers as nobody")
	}
	tests := []struct {
		name, mode, user string
		kill             bool // end with a master SIGKILL, else SIGTERM
	}{
		{name: "shared", mode: "shared", user: "nobody", kill: true},
		{name: "handoff", mode: "handoff", user: "65534:daemon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fdcensus.Verify(t)
			want := nobodyIDs(t, strings.Replace(tt.user, "65534", "nobody", 1))
			wantGID, _ := strconv.Atoi(strings.Split(want, ":")[1])
			pc := proccensus.New(t)
			tmp := nobodyTemp(t)
			rootOnly := filepath.Join(tmp, "root")
			theirs := filepath.Join(tmp, "theirs")
			for _, d := range []string{rootOnly, theirs} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chown(theirs, 65534, wantGID); err != nil {
				t.Fatal(err)
			}
			// theirs/link/.. is rootOnly: the kernel resolves ".." from
			// the symlink's target.
			if err := os.Mkdir(filepath.Join(rootOnly, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(rootOnly, "sub"), filepath.Join(theirs, "link")); err != nil {
				t.Fatal(err)
			}
			refused, granted := filepath.Join(rootOnly, "s"), filepath.Join(theirs, "s")
			escape := theirs + "/link/../e"
			// The worker is this test binary through the magic link:
			// nobody cannot search go test's 0700 build directory, but
			// exec of /proc/self/exe does not walk it.
			cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{
				Env:  []string{pc.Env(), "SRV_TRY_LISTEN=" + refused + "," + granted + "," + escape},
				Args: []string{"-n", "1", "-mode", tt.mode, "-user", tt.user, "-start-timeout", "10s", "-listen", "127.0.0.1:0", "--", "/proc/self/exe", fakeSrvArg},
			})
			m := startCmdIn(t, cmd, tmp)
			addr := m.waitReady() // -ready notify: READY=1 reached the master
			body, _, err := get(addr, "/env")
			if err != nil {
				t.Fatal(err)
			}
			env := envOf(body)
			if got := env["IDS"]; got != want {
				t.Errorf("worker's uid:gid:groups %q, want %q", got, want)
			}
			// The notify socket: nobody's, 0600, in a directory of root
			// that nobody's group may only search.
			sock := env["NOTIFY_SOCKET"]
			type perm struct {
				Mode     os.FileMode
				UID, GID uint32
			}
			stat := func(p string) perm {
				fi, err := os.Lstat(p)
				if err != nil {
					t.Fatal(err)
				}
				st := fi.Sys().(*syscall.Stat_t)
				return perm{fi.Mode(), st.Uid, st.Gid}
			}
			gotPerms := []perm{stat(filepath.Dir(sock)), stat(sock)}
			wantPerms := []perm{{os.ModeDir | 0o710, 0, uint32(wantGID)}, {os.ModeSocket | 0o600, 65534, uint32(wantGID)}}
			if diff := cmp.Diff(wantPerms, gotPerms); diff != "" {
				t.Errorf("notify directory and socket (-want +got):\n%s", diff)
			}
			if got := env["TRY_LISTEN "+granted]; got != "ok" {
				t.Errorf("Listen %s (nobody's directory): %q, want ok", granted, got)
			} else if diff := cmp.Diff(perm{os.ModeSocket | 0o666, 65534, uint32(wantGID)}, stat(granted)); diff != "" {
				// Created by the master with nobody's rights (its
				// filesystem ids), held by the master.
				t.Errorf("socket bound for the worker (-want +got):\n%s", diff)
			}
			if got := env["TRY_LISTEN "+escape]; !strings.Contains(got, "not an absolute, clean path") {
				t.Errorf("Listen %s (.. after a symlink into root's directory): %q, want refused as not clean", escape, got)
			}
			if _, err := os.Lstat(filepath.Join(rootOnly, "e")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %v, want nothing bound there", filepath.Join(rootOnly, "e"), err)
			}
			if got := env["TRY_LISTEN "+refused]; !strings.Contains(got, "not writable by the workers' user") {
				t.Errorf("Listen %s (root's directory): %q, want refused as not writable by the workers' user", refused, got)
			}
			if _, err := os.Lstat(refused); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %v, want nothing bound there", refused, err)
			}
			if !tt.kill {
				// An upgrade re-executes the master with its arguments,
				// -user included: the new workers are nobody's too.
				m.signal(syscall.SIGUSR2)
				if !waitFor(15*time.Second, func() bool { return strings.Contains(m.log.String(), `msg="upgrade: done"`) }) {
					t.Fatal("no upgrade within 15 s")
				}
				body, _, err := get(addr, "/env")
				if err != nil {
					t.Fatal(err)
				}
				env := envOf(body)
				if got := env["HANDOFF_WORKER_GENERATION"] + " " + env["IDS"]; got != "2 "+want {
					t.Errorf("after the upgrade: generation and ids %q, want %q", got, "2 "+want)
				}
				stopClean(t, m)
				return
			}
			m.signal(syscall.SIGKILL)
			m.wait(5 * time.Second)
			if err := pc.WaitGone(time.Second); err != nil {
				t.Errorf("workers of another user outlived the master by more than 1 s: %v", err)
			}
		})
	}
}

// TestUserNotRoot: a master that is not root refuses -user naming another
// user at start-up (exit 1, before binding anything), and takes its own
// user as a no-op.
func TestUserNotRoot(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{
		AsNobody: true,
		Env:      []string{pc.Env()},
		Args:     []string{"-user", "root", "-listen", "127.0.0.1:0", "--", "/bin/true"},
	})
	cmd.Stderr = nil
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFailure {
		t.Errorf("master as nobody with -user root: %v, want exit %d", err, exitFailure)
	}
	if want := "start the master as root"; !strings.Contains(string(out), want) {
		t.Errorf("output %q, want it to say %q", out, want)
	}
}

// TestUserFlag: an unknown user or group, or a malformed -user, is a
// command-line error (exit 2) found by parsing alone, as the upgrade probe
// parses; a known one reaches the master's Config (and a -config file's
// groups, replacing its "user").
func TestUserFlag(t *testing.T) {
	fdcensus.Verify(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "c.json")
	if err := os.WriteFile(conf, []byte(`{"user": "root", "groups": [{"name": "g", "command": ["/bin/true"], "listen": ["127.0.0.1:0"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		wantErr  string // "" for success
		wantUser uint32
	}{
		{name: "unknown user", args: []string{"-user", "no-such-user-x", "--", "/bin/true"}, wantErr: `unknown user "no-such-user-x"`},
		{name: "unknown group", args: []string{"-user", "root:no-such-group-x", "--", "/bin/true"}, wantErr: `unknown group "no-such-group-x"`},
		{name: "empty group", args: []string{"-user", "root:", "--", "/bin/true"}, wantErr: "want USER[:GROUP]"},
		{name: "uid without entry", args: []string{"-user", "4242424", "--", "/bin/true"}, wantErr: "no passwd entry"},
		{name: "config unknown", args: []string{"-config", conf, "-user", "no-such-user-x"}, wantErr: `unknown user "no-such-user-x"`},
		{name: "root", args: []string{"-user", "0", "--", "/bin/true"}, wantUser: 0},
		{name: "config flag wins", args: []string{"-config", conf, "-user", "nobody"}, wantUser: 65534},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseStart(tt.args, io.Discard, io.Discard)
			if tt.wantErr != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !errors.Is(err, cluster.ErrUser) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("parseStart: %v, want a usage error (exit 2) matching cluster.ErrUser with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var cred *supervise.Credential
			if st.fc != nil {
				cred = st.fc.Credential
			} else {
				cred = st.cfg.Credential
			}
			if cred == nil || cred.UID != tt.wantUser {
				t.Errorf("credential %+v, want uid %d", cred, tt.wantUser)
			}
		})
	}
}

// TestUserConfig: a -config file's "user" runs the groups' local workers
// as that user, ready through NOTIFY_SOCKET (systemd-notify, a child of
// the worker's shell).
func TestUserConfig(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workers as nobody")
	}
	fdcensus.Verify(t)
	want := nobodyIDs(t, "nobody")
	pc := proccensus.New(t)
	tmp := nobodyTemp(t)
	dir := filepath.Join(tmp, "report")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 0); err != nil {
		t.Fatal(err)
	}
	worker := `echo "$(id -u):$(id -g):[$(id -G | tr ' ' '\n' | sort -n | tr '\n' ' ' | sed 's/ $//')]" > "$DIR/$$.tmp" && mv "$DIR/$$.tmp" "$DIR/$$.ids" && systemd-notify --ready && exec sleep 300`
	cfg := writeConfig(t, `{"user": "nobody", "groups": [{"name": "g", "command": ["/bin/sh", "-c", `+jsonStr(worker)+`], "count": 2,
		"listen": ["127.0.0.1:0"], "start_timeout": "10s", "env": {"DIR": `+jsonStr(dir)+`}}]}`)
	cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{Env: []string{pc.Env()}, Args: []string{"-config", cfg}})
	m := startCmdIn(t, cmd, tmp)
	m.waitGroupsReady()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, strings.TrimSpace(string(b)))
	}
	if diff := cmp.Diff([]string{want, want}, got); diff != "" {
		t.Errorf("workers' uid:gid:[groups] (-want +got):\n%s", diff)
	}
	stopClean(t, m)
}

// TestUserShimNotExecutable: a mini-cluster binary that USER cannot
// execute (mode 0700: every worker starts by executing it as USER, as the
// exec shim) fails at start-up, exit 1, saying so, instead of looping on
// failing spawns.
func TestUserShimNotExecutable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workers as nobody")
	}
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	tmp := nobodyTemp(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "mini-cluster")
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{
		Env:  []string{pc.Env(), "TMPDIR=" + tmp},
		Args: []string{"-n", "1", "-user", "nobody", "-listen", "127.0.0.1:0", "--", "/bin/true"},
	})
	cmd.Path, cmd.Args[0] = bin, bin
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		err = <-done
		t.Errorf("still running after 10 s")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFailure {
		t.Errorf("master with a binary nobody cannot execute: %v, want exit %d", err, exitFailure)
	}
	if want := "cannot execute " + bin; !strings.Contains(log.String(), want) {
		t.Errorf("output %q, want it to say %q", log.String(), want)
	}
}

// TestListenNotRoot: a master that is not root creates the unix socket a
// worker asks for on a thread without its effective capabilities (it may
// hold file capabilities its workers lose at exec): where its user may
// write it works, the socket is that user's; a ".." path is refused.
func TestListenNotRoot(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	tmp := nobodyTemp(t)
	theirs := filepath.Join(tmp, "theirs")
	if err := os.Mkdir(theirs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	granted, dotdot := filepath.Join(theirs, "s"), theirs+"/../s"
	cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{
		AsNobody: true,
		Env:      []string{pc.Env(), "SRV_TRY_LISTEN=" + granted + "," + dotdot},
		Args:     []string{"-n", "1", "-start-timeout", "10s", "-listen", "127.0.0.1:0", "--", "/proc/self/exe", fakeSrvArg},
	})
	// TMPDIR holds the notify socket's directory: nobody's.
	m := startCmdIn(t, cmd, theirs)
	addr := m.waitReady()
	body, _, err := get(addr, "/env")
	if err != nil {
		t.Fatal(err)
	}
	env := envOf(body)
	if got := env["TRY_LISTEN "+granted]; got != "ok" {
		t.Errorf("Listen %s: %q, want ok", granted, got)
	} else if fi, err := os.Lstat(granted); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 65534 || fi.Mode() != os.ModeSocket|0o666 {
		t.Errorf("socket bound for the worker: %v, %v; want nobody's, mode 0666", fi, err)
	}
	if got := env["TRY_LISTEN "+dotdot]; !strings.Contains(got, "not an absolute, clean path") {
		t.Errorf("Listen %s: %q, want refused as not clean", dotdot, got)
	}
	stopClean(t, m)
}
