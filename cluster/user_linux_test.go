//go:build linux

package cluster_test

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/supervise"
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

// TestBindPolicyAs: with workers of another user, a unix path a worker
// asks the master to bind must be in a directory that user may write, by
// its uid or one of its groups, however the root master could write
// anywhere (what a worker may have the master bind gains it sharing,
// never privilege).
func TestBindPolicyAs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to check for another user")
	}
	fdcensus.Verify(t)
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
	mkdir := func(name string, mode os.FileMode, uid, gid int) string {
		d := filepath.Join(tmp, name)
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
	rootOnly := mkdir("root", 0o755, 0, 0)
	theirs := mkdir("theirs", 0o755, 65534, 65534)
	group := mkdir("group", 0o770, 0, 4242)
	closed := mkdir("closed", 0o700, 0, 0)
	inClosed := filepath.Join(closed, "sub")
	if err := os.Mkdir(inClosed, 0o777); err != nil {
		t.Fatal(err)
	}
	nobody := &supervise.Credential{UID: 65534, GID: 65534, Groups: []uint32{65534}}
	inGroup := &supervise.Credential{UID: 65534, GID: 65534, Groups: []uint32{65534, 4242}}
	tests := []struct {
		name string
		dir  string
		cred *supervise.Credential
		ok   bool
	}{
		{"root's directory", rootOnly, nobody, false},
		{"their directory", theirs, nobody, true},
		{"supplementary group's", group, inGroup, true},
		{"group not theirs", group, nobody, false},
		{"under a directory they cannot search", inClosed, nobody, false},
		{"root's directory for root's workers", rootOnly, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := cluster.BindPolicyAs("unix://"+filepath.Join(tt.dir, "s"), tt.cred)
			if tt.ok != (err == nil) {
				t.Errorf("BindPolicyAs: %v, want ok %v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, cluster.ErrListen) {
				t.Errorf("error %v does not match ErrListen", err)
			}
		})
	}
	// The checks ran on threads of their own: this process's credentials
	// are root's still.
	if os.Geteuid() != 0 || os.Getegid() != 0 {
		t.Errorf("euid %d egid %d after the checks", os.Geteuid(), os.Getegid())
	}
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
