//go:build linux

package cluster_test

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// userIDs returns name's uid, primary gid and getgrouplist(3) groups from
// the user database, skipping the test when there is no such user.
func userIDs(t *testing.T, name string) (uid, gid uint32, groups []uint32) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Skipf("no user %s: %v", name, err)
	}
	ids, err := u.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	num := func(s string) uint32 {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			t.Fatal(err)
		}
		return uint32(n)
	}
	for _, s := range ids {
		groups = append(groups, num(s))
	}
	slices.Sort(groups)
	return num(u.Uid), num(u.Gid), slices.Compact(groups)
}

// TestLookupUser resolves USER[:GROUP] as initgroups(3) would: a name or a
// number each, the primary group by default, the user's supplementary
// groups with GROUP as the base group; everything else fails with ErrUser.
func TestLookupUser(t *testing.T) {
	nuid, ngid, ngroups := userIDs(t, "nobody")
	_, _, rgroups := userIDs(t, "root")
	// root with base group nobody's: root's groups minus its primary one,
	// plus the base group.
	rootAsNobodyGroup := []uint32{ngid}
	for _, g := range rgroups {
		if g != 0 {
			rootAsNobodyGroup = append(rootAsNobodyGroup, g)
		}
	}
	slices.Sort(rootAsNobodyGroup)
	tests := []struct {
		spec    string
		want    *supervise.Credential
		wantErr string
	}{
		{spec: "nobody", want: &supervise.Credential{UID: nuid, GID: ngid, Groups: ngroups}},
		{spec: strconv.Itoa(int(nuid)), want: &supervise.Credential{UID: nuid, GID: ngid, Groups: ngroups}},
		{spec: "root", want: &supervise.Credential{UID: 0, GID: 0, Groups: rgroups}},
		{spec: "root:" + strconv.Itoa(int(ngid)), want: &supervise.Credential{UID: 0, GID: ngid, Groups: slices.Compact(rootAsNobodyGroup)}},
		// A uid and gid without entries: taken as they are, no other group.
		{spec: "4242424:4242425", want: &supervise.Credential{UID: 4242424, GID: 4242425, Groups: []uint32{4242425}}},
		{spec: "4242424", wantErr: "no passwd entry"},
		{spec: "", wantErr: "want USER[:GROUP]"},
		{spec: ":0", wantErr: "want USER[:GROUP]"},
		{spec: "root:", wantErr: "want USER[:GROUP]"},
		{spec: "root:0:0", wantErr: "one colon at most"},
		{spec: "ro\x00ot", wantErr: "want USER[:GROUP]"},
		{spec: strings.Repeat("u", 300), wantErr: "longer than 256 bytes"},
		{spec: "no-such-user-x", wantErr: `unknown user "no-such-user-x"`},
		{spec: "root:no-such-group-x", wantErr: `unknown group "no-such-group-x"`},
		{spec: "0:4294967295", wantErr: `unknown group "4294967295"`},
	}
	for _, tt := range tests {
		name := tt.spec
		if len(name) > 24 {
			name = name[:24] + "..."
		}
		t.Run(name, func(t *testing.T) {
			got, err := cluster.LookupUser(tt.spec)
			if tt.wantErr != "" {
				if !errors.Is(err, cluster.ErrUser) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("LookupUser(%q) = %+v, %v; want an ErrUser saying %q", tt.spec, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("LookupUser(%q) (-want +got):\n%s", tt.spec, diff)
			}
		})
	}
}

// TestParseConfigUser: "user" is resolved when the file is parsed.
func TestParseConfigUser(t *testing.T) {
	uid, gid, groups := userIDs(t, "nobody")
	fc, err := cluster.ParseConfig([]byte(`{"user": "nobody", "groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &supervise.Credential{UID: uid, GID: gid, Groups: groups}
	if diff := cmp.Diff(want, fc.Credential); fc.User != "nobody" || diff != "" {
		t.Errorf("user %q, credential (-want +got):\n%s", fc.User, diff)
	}
}

// othersTempDir returns t.TempDir(), made (with its parent) searchable by
// other users, skipping the test when a directory further up is not.
func othersTempDir(t *testing.T) string {
	t.Helper()
	tmp := t.TempDir()
	for _, p := range []string{filepath.Dir(tmp), tmp} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	for p := filepath.Dir(filepath.Dir(tmp)); p != "/"; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is not searchable by others", p)
		}
	}
	return tmp
}

// mkdirOwned makes directory d with mode (whatever the umask) and owner.
func mkdirOwned(t *testing.T, d string, mode os.FileMode, uid, gid int) string {
	t.Helper()
	if err := os.Mkdir(d, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d, uid, gid); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestBindPolicyAs: with workers of another user, a unix path a worker
// asks the master to bind must be in a directory that user may write, by
// its uid or one of its groups, however the root master could write
// anywhere (what a worker may have the master bind gains it sharing,
// never privilege); and, for every master, absolute and clean: a ".."
// after a symlink leaves the directory the check saw.
func TestBindPolicyAs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to check for another user")
	}
	fdcensus.Verify(t)
	want := threadCreds(t)
	tmp := othersTempDir(t)
	mkdir := func(name string, mode os.FileMode, uid, gid int) string {
		return mkdirOwned(t, filepath.Join(tmp, name), mode, uid, gid)
	}
	rootOnly := mkdir("root", 0o755, 0, 0)
	theirs := mkdir("theirs", 0o755, 65534, 65534)
	group := mkdir("group", 0o770, 0, 4242)
	closed := mkdir("closed", 0o700, 0, 0)
	inClosed := filepath.Join(closed, "sub")
	if err := os.Mkdir(inClosed, 0o777); err != nil {
		t.Fatal(err)
	}
	// theirs/link/.. is closed/, not theirs/: the kernel resolves ".."
	// from the symlink's target.
	if err := os.Symlink(inClosed, filepath.Join(theirs, "link")); err != nil {
		t.Fatal(err)
	}
	nobody := &supervise.Credential{UID: 65534, GID: 65534, Groups: []uint32{65534}}
	inGroup := &supervise.Credential{UID: 65534, GID: 65534, Groups: []uint32{65534, 4242}}
	tests := []struct {
		name string
		path string
		cred *supervise.Credential
		ok   bool
	}{
		{"root's directory", filepath.Join(rootOnly, "s"), nobody, false},
		{"their directory", filepath.Join(theirs, "s"), nobody, true},
		{"supplementary group's", filepath.Join(group, "s"), inGroup, true},
		{"group not theirs", filepath.Join(group, "s"), nobody, false},
		{"under a directory they cannot search", filepath.Join(inClosed, "s"), nobody, false},
		{"root's directory for root's workers", filepath.Join(rootOnly, "s"), nil, true},
		{"dot-dot after their symlink", theirs + "/link/../s", nobody, false},
		{"dot-dot after their symlink, root's workers", theirs + "/link/../s", nil, false},
		{"dot in their directory", theirs + "/./s", nobody, false},
		{"double slash in their directory", theirs + "//s", nobody, false},
		{"trailing slash", theirs + "/s/", nobody, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := cluster.BindPolicyAs("unix://"+tt.path, tt.cred)
			if tt.ok != (err == nil) {
				t.Errorf("BindPolicyAs: %v, want ok %v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, cluster.ErrListen) {
				t.Errorf("error %v does not match ErrListen", err)
			}
		})
	}
	// The checks ran on threads of their own, all ended.
	waitNoChangedTasks(t, want)
}

// FuzzLookupUser: any string either resolves to a credential whose groups
// hold its gid, sorted and unique, or fails with ErrUser; never a panic.
func FuzzLookupUser(f *testing.F) {
	for _, s := range []string{"root", "nobody", "0:0", "65534:nogroup", "root:", ":", "a:b:c", "4294967295", "1:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		c, err := cluster.LookupUser(spec)
		if err != nil {
			if !errors.Is(err, cluster.ErrUser) {
				t.Fatalf("LookupUser(%q): %v does not match ErrUser", spec, err)
			}
			return
		}
		if strings.Count(spec, ":") > 1 || strings.HasPrefix(spec, ":") || strings.HasSuffix(spec, ":") {
			t.Fatalf("LookupUser(%q) accepted", spec)
		}
		if !slices.Contains(c.Groups, c.GID) || !slices.IsSorted(c.Groups) || len(slices.Compact(slices.Clone(c.Groups))) != len(c.Groups) {
			t.Fatalf("LookupUser(%q) = %+v: groups not sorted and unique with the gid", spec, c)
		}
		if c.UID == 1<<32-1 || c.GID == 1<<32-1 {
			t.Fatalf("LookupUser(%q) = %+v: (uid_t)-1", spec, c)
		}
	})
}

// fileID is what TestWorkerBindAs compares of a file.
type fileID struct {
	Mode     os.FileMode
	Ino      uint64
	UID, GID uint32
}

// dirSnapshot maps each name in dir to its fileID.
func dirSnapshot(t *testing.T, dir string) map[string]fileID {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]fileID)
	for _, e := range ents {
		out[e.Name()] = lstatID(t, filepath.Join(dir, e.Name()))
	}
	return out
}

func lstatID(t *testing.T, p string) fileID {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fileID{Mode: fi.Mode(), Ino: st.Ino, UID: st.Uid, GID: st.Gid}
}

// staleSocket leaves a socket file nobody listens on at p, with mode and
// owner.
func staleSocket(t *testing.T, p string, mode os.FileMode, uid int) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
}

// TestWorkerBindAs: with workers of another user, the master creates the
// unix socket a worker asks for with that user's rights at every step (the
// lock, the stale-socket check and unlink, the bind, the chmod): a symlink
// swapped in after bindPolicy's checks, or a ".." after one, leads
// nowhere that user could not go itself, and root's directory is left as
// it was; what is created is the user's socket, mode 0666. The existing
// rules hold as that user: a live socket is never replaced, its own stale
// one is.
func TestWorkerBindAs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind for another user")
	}
	fdcensus.Verify(t)
	want := threadCreds(t)
	tmp := othersTempDir(t)
	theirs := mkdirOwned(t, filepath.Join(tmp, "theirs"), 0o755, 65534, 65534)
	rootDir := mkdirOwned(t, filepath.Join(tmp, "root"), 0o755, 0, 0)
	mkdirOwned(t, filepath.Join(rootDir, "sub"), 0o755, 0, 0)
	// Root's stale socket, mode 0666 so only the directory protects it,
	// with a lock file of theirs beside it (so the lock is no obstacle).
	staleSocket(t, filepath.Join(rootDir, "stale.sock"), 0o666, 0)
	lockPath := filepath.Join(rootDir, "stale.sock.lock")
	if err := os.WriteFile(lockPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(lockPath, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	staleSocket(t, filepath.Join(theirs, "old.sock"), 0o600, 65534)
	live, err := net.Listen("unix", filepath.Join(theirs, "live.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := os.Chmod(filepath.Join(theirs, "live.sock"), 0o666); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"link": rootDir, "sublink": filepath.Join(rootDir, "sub")} {
		if err := os.Symlink(target, filepath.Join(theirs, link)); err != nil {
			t.Fatal(err)
		}
	}
	nobody := &supervise.Credential{UID: 65534, GID: 65534, Groups: []uint32{65534}}
	tests := []struct {
		name    string
		path    string
		cred    *supervise.Credential
		wantErr error  // nil: bound
		want    fileID // the socket bound (Ino ignored)
		rootDir bool   // the path is in rootDir, which must change only then
	}{
		{name: "their directory", path: filepath.Join(theirs, "s"), cred: nobody, want: fileID{Mode: os.ModeSocket | 0o666, UID: 65534, GID: 65534}},
		{name: "their stale socket", path: filepath.Join(theirs, "old.sock"), cred: nobody, want: fileID{Mode: os.ModeSocket | 0o666, UID: 65534, GID: 65534}},
		{name: "a live socket", path: filepath.Join(theirs, "live.sock"), cred: nobody, wantErr: sockfile.ErrInUse},
		{name: "through their symlink into root's directory", path: filepath.Join(theirs, "link", "s"), cred: nobody, wantErr: os.ErrPermission},
		{name: "root's stale socket through their symlink", path: filepath.Join(theirs, "link", "stale.sock"), cred: nobody, wantErr: os.ErrPermission},
		{name: "dot-dot after their symlink", path: theirs + "/sublink/../dd.sock", cred: nobody, wantErr: os.ErrPermission},
		{name: "root's directory for root's workers", path: filepath.Join(rootDir, "r.sock"), want: fileID{Mode: os.ModeSocket | 0o666}, rootDir: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dirSnapshot(t, rootDir)
			release, err := cluster.BindForWorker("unix://"+tt.path, tt.cred)
			if err == nil {
				got := lstatID(t, tt.path)
				got.Ino = 0
				release()
				if diff := cmp.Diff(tt.want, got); tt.wantErr != nil || diff != "" {
					t.Errorf("bound %s, want error %v; socket (-want +got):\n%s", tt.path, tt.wantErr, diff)
				}
				if _, err := os.Lstat(tt.path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("after close: %v, want the socket file removed", err)
				}
			} else if tt.wantErr == nil || !errors.Is(err, tt.wantErr) {
				t.Errorf("BindForWorker: %v, want %v", err, tt.wantErr)
			}
			if tt.rootDir {
				return
			}
			if diff := cmp.Diff(before, dirSnapshot(t, rootDir)); diff != "" {
				t.Errorf("root's directory changed (-before +after):\n%s", diff)
			}
		})
	}
	waitNoChangedTasks(t, want)
}

// TestWorkerBindWithoutCaps: a worker's unix socket is created, when
// workers run as the master's own user, on a thread without effective
// capabilities, so a master with file capabilities (CAP_DAC_OVERRIDE,
// say) creates nothing its workers could not; the rest of the process
// keeps them.
func TestWorkerBindWithoutCaps(t *testing.T) {
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	if data[0].Effective == 0 {
		t.Skip("no effective capabilities to drop")
	}
	got, err := cluster.EffectiveCapsAsWorker()
	if err != nil || got != 0 {
		t.Errorf("effective capabilities on the worker's thread: %#x, %v; want none", got, err)
	}
	if err := unix.Capget(&hdr, &data[0]); err != nil || data[0].Effective == 0 {
		t.Errorf("this thread's effective capabilities after: %#x, %v; want kept", data[0].Effective, err)
	}
}

// TestShimExecutableByUser: New refuses workers of a user that cannot
// execute the exec shim (ErrUser at start-up, not a respawn loop of
// failing spawns); one it can execute is fine.
func TestShimExecutableByUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workers as another user")
	}
	fdcensus.Verify(t)
	tmp := othersTempDir(t)
	nobody := &supervise.Credential{UID: 65534, GID: 65534, Groups: []uint32{65534}}
	tests := []struct {
		name string
		mode os.FileMode
		ok   bool
	}{
		{"root only", 0o700, false},
		{"everyone", 0o755, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			shim := filepath.Join(tmp, strings.ReplaceAll(tt.name, " ", "-"))
			if err := os.WriteFile(shim, []byte("#!/bin/sh\nexit 1\n"), tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(shim, tt.mode); err != nil {
				t.Fatal(err)
			}
			m, err := cluster.New(&cluster.Config{
				Program: "true", Workers: 1, Listen: []string{"127.0.0.1:0"}, Shim: shim, Credential: nobody,
				Logger: slog.New(slog.DiscardHandler),
			})
			if err == nil {
				m.Close()
			}
			switch {
			case tt.ok && err != nil:
				t.Errorf("New: %v, want success", err)
			case !tt.ok && (!errors.Is(err, cluster.ErrUser) || !strings.Contains(err.Error(), "cannot execute "+shim)):
				t.Errorf("New: %v, want ErrUser saying it cannot execute %s", err, shim)
			}
		})
	}
}

// TestWorkerBindSwapRace: a worker that keeps swapping a symlink on the
// requested path between its own directory and a root-only one (0700,
// with a live 0600 socket of root's at the same name) never gets the
// master to chmod or remove root's socket: each step runs with the
// worker's rights, so whichever target a step meets, root's directory
// cannot be reached. Bounded by a count and a deadline; on the bug
// (steps run as root) a hit came within a few thousand attempts.
func TestWorkerBindSwapRace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind for another user")
	}
	fdcensus.Verify(t)
	tmp := othersTempDir(t)
	mine := mkdirOwned(t, filepath.Join(tmp, "A"), 0o755, 65534, 65534)
	private := mkdirOwned(t, filepath.Join(tmp, "B"), 0o700, 0, 0)
	home := mkdirOwned(t, filepath.Join(tmp, "home"), 0o755, 65534, 65534)
	victim := filepath.Join(private, "v.sock")
	vl, err := net.Listen("unix", victim)
	if err != nil {
		t.Fatal(err)
	}
	defer vl.Close()
	if err := os.Chmod(victim, 0o600); err != nil {
		t.Fatal(err)
	}
	want := lstatID(t, victim)
	d := filepath.Join(home, "d")
	if err := os.Symlink(mine, d); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		ta, tb := filepath.Join(home, "ta"), filepath.Join(home, "tb")
		for i := 0; i < 1_000_000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			os.Symlink(private, tb)
			os.Rename(tb, d)
			os.Symlink(mine, ta)
			os.Rename(ta, d)
		}
	}()
	defer func() {
		close(stop)
		<-done
	}()
	nobody := &supervise.Credential{UID: 65534, GID: 65534, Groups: []uint32{65534}}
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; i < 5000 && time.Now().Before(deadline); i++ {
		os.Remove(filepath.Join(mine, "v.sock"))
		if release, err := cluster.BindForWorker("unix://"+filepath.Join(d, "v.sock"), nobody); err == nil {
			release()
		}
		fi, err := os.Lstat(victim)
		if err != nil {
			t.Fatalf("after %d attempts root's socket is gone: %v", i+1, err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if got := (fileID{Mode: fi.Mode(), Ino: st.Ino, UID: st.Uid, GID: st.Gid}); got != want {
			t.Fatalf("after %d attempts root's socket is %+v, was %+v", i+1, got, want)
		}
	}
}

// credLines returns the credential lines (Uid, Gid, Groups, CapEff) of a
// /proc/PID/task/TID/status file.
func credLines(b []byte) string {
	var out []string
	for line := range strings.Lines(string(b)) {
		for _, k := range []string{"Uid:", "Gid:", "Groups:", "CapEff:"} {
			if strings.HasPrefix(line, k) {
				out = append(out, strings.Join(strings.Fields(line), " "))
			}
		}
	}
	return strings.Join(out, "; ")
}

// changedTasks returns the threads of this process whose credentials are
// not want, with theirs.
func changedTasks(t *testing.T, want string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", e.Name(), "status"))
		if err != nil {
			continue // exited meanwhile
		}
		if got := credLines(b); got != want {
			out[e.Name()] = got
		}
	}
	return out
}

// TestAsUserLeavesNoThread: the threads the master changes credentials
// on for workers all end; none is left, the main thread least of all (the
// runtime parks a locked main thread instead of ending it, and the lead
// thread of the master would keep a worker's ids). Threads are still
// ending when the calls return, so the census waits for them, bounded.
func TestAsUserLeavesNoThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run as another user")
	}
	want := threadCreds(t)
	nobody := &supervise.Credential{UID: 65534, GID: 65534, Groups: []uint32{65534}}
	for i := 0; i < 200; i++ {
		c := nobody
		if i%2 == 1 {
			c = nil
		}
		if err := cluster.AsUser(c, func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	waitNoChangedTasks(t, want)
}

// threadCreds returns the credential lines of the calling thread, which
// runs no asUser work: the process's own.
func threadCreds(t *testing.T) string {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		t.Fatal(err)
	}
	return credLines(b)
}

// waitNoChangedTasks fails t unless, within a bounded wait, every thread
// of this process has credentials want: the threads asUser changed end
// just after it returns.
func waitNoChangedTasks(t *testing.T, want string) {
	t.Helper()
	var left map[string]string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if left = changedTasks(t, want); len(left) == 0 {
			return
		}
	}
	t.Errorf("threads with changed credentials left (main thread %d), want %q:\n%v", os.Getpid(), want, left)
}

// peerUID returns the uid and gid SO_PEERCRED reports for c.
func peerUID(t *testing.T, c net.Conn) (uid, gid uint32) {
	t.Helper()
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return cred.Uid, cred.Gid
}

// TestWorkerBindPeerCred: a unix socket the master creates for workers
// of another user is that user's to its clients too (SO_PEERCRED, taken
// at listen(2)), and the stale-socket probe of a live socket connects as
// that user, not as root.
func TestWorkerBindPeerCred(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind for another user")
	}
	fdcensus.Verify(t)
	tmp := othersTempDir(t)
	theirs := mkdirOwned(t, filepath.Join(tmp, "theirs"), 0o755, 65534, 65534)
	nobody := &supervise.Credential{UID: 65534, GID: 65534, Groups: []uint32{65534}}
	type ids struct{ UID, GID uint32 }
	want := ids{65534, 65534}

	p := filepath.Join(theirs, "s")
	release, err := cluster.BindForWorker("unix://"+p, nobody)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", p)
	if err != nil {
		release()
		t.Fatal(err)
	}
	var got ids
	got.UID, got.GID = peerUID(t, c)
	c.Close()
	release()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("client's view of the listener (-want +got):\n%s", diff)
	}

	live := filepath.Join(theirs, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(live, 0o666); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	if release, err := cluster.BindForWorker("unix://"+live, nobody); !errors.Is(err, sockfile.ErrInUse) {
		if err == nil {
			release()
		}
		t.Fatalf("BindForWorker on a live socket: %v, want ErrInUse", err)
	}
	select {
	case c, ok := <-accepted:
		if !ok {
			t.Fatal("accept failed")
		}
		got.UID, got.GID = peerUID(t, c)
		c.Close()
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("live server's view of the probe (-want +got):\n%s", diff)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the probe never connected")
	}
}
