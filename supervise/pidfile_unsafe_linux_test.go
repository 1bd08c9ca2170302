package supervise_test

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

const nobodyUID = 65534

// refusedPath returns the path an ErrUnsafePIDFile refusal names, or "" for
// nil; any other error fails the test.
func refusedPath(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var ue *supervise.UnsafePIDFileError
	if !errors.As(err, &ue) || !errors.Is(err, supervise.ErrUnsafePIDFile) {
		t.Fatalf("error %v (%T) is not an *UnsafePIDFileError matching ErrUnsafePIDFile", err, err)
	}
	return ue.Path
}

// fileState is what a refused CreatePIDFile must leave alone.
type fileState struct {
	Mode  os.FileMode
	Links uint64
	Data  string
}

func stateOf(t *testing.T, path string) fileState {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileState{Mode: fi.Mode(), Links: uint64(fi.Sys().(*syscall.Stat_t).Nlink), Data: string(b)}
}

func mkdir(t *testing.T, path string, mode os.FileMode, uid int) {
	t.Helper()
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	// Chmod after Mkdir: the umask would clear bits, and Mkdir ignores
	// the sticky bit.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if uid >= 0 {
		if err := os.Lchown(path, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPIDFileHardLinks: a hard link planted at the lock file's or the pid
// file's path, to a 0600 file of the caller's (for root, any file: the
// reported attack turned a root secret 0644 through fchmod of the lock),
// is refused by its link count, in a private and in a sticky root-owned
// directory, and the linked file keeps its mode, content and links
// (TESTPLAN D3).
func TestPIDFileHardLinks(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name   string
		suffix string // where the link is planted: path + suffix
		sticky bool   // in a 1777 root-owned directory
	}{
		{"lock file", ".lock", false},
		{"pid file", "", false},
		{"lock file in a sticky directory", ".lock", true},
		{"pid file in a sticky directory", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.sticky {
				if os.Geteuid() != 0 {
					t.Skip("needs root for a root-owned sticky directory")
				}
				dir = filepath.Join(dir, "sticky")
				mkdir(t, dir, 0o777|os.ModeSticky, 0)
			}
			secret := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(secret, []byte("secret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(secret, 0o600); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "app.pid")
			// Root may link any file whatever fs.protected_hardlinks
			// says; the code must refuse by link count alone.
			if err := os.Link(secret, path+tc.suffix); err != nil {
				t.Fatal(err)
			}
			want := fileState{Mode: 0o600, Links: 2, Data: "secret\n"}
			p, err := supervise.CreatePIDFile(path)
			if p != nil {
				p.Close()
			}
			if got := refusedPath(t, err); got != path+tc.suffix {
				t.Errorf("CreatePIDFile refused %q (err %v), want %q", got, err, path+tc.suffix)
			}
			if tc.suffix == "" {
				if _, _, err := supervise.ReadPIDFile(path); refusedPath(t, err) != path {
					t.Errorf("ReadPIDFile: %v, want %s refused", err, path)
				}
			}
			if d := cmp.Diff(want, stateOf(t, secret)); d != "" {
				t.Errorf("linked file changed (-want +got):\n%s", d)
			}
		})
	}
}

// TestPIDFileExistingLockKept: an existing lock file is used as it is, not
// chmod'ed (it could be another file in disguise); a new one is 0644
// whatever the umask, so other users can test it (TESTPLAN D3).
func TestPIDFileExistingLockKept(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name     string
		existing bool
		want     os.FileMode
	}{
		{"new lock file", false, 0o644},
		{"existing 0600 lock file", true, 0o600},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := pidPath(t)
			if tc.existing {
				if err := os.WriteFile(path+".lock", nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			old := unix.Umask(0o077)
			p, err := supervise.CreatePIDFile(path)
			unix.Umask(old)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			fi, err := os.Stat(path + ".lock")
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode(); got != tc.want {
				t.Errorf("lock file mode %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPIDFileDirectoriesAsRoot: run as root, CreatePIDFile checks every
// directory and symlink from / to the pid file: any owned by another user,
// or writable by group or others without the sticky bit, is refused and
// named; sticky root-owned directories (as /tmp) and root-owned symlinks
// are accepted, and a pid file works there (TESTPLAN D3).
func TestPIDFileDirectoriesAsRoot(t *testing.T) {
	fdcensus.Verify(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	// Each setup builds under base and returns the pid file path and the
	// path that must be refused ("" if none).
	tests := []struct {
		name  string
		setup func(t *testing.T, base string) (path, refused string)
	}{
		{"directory owned by nobody", func(t *testing.T, base string) (string, string) {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o755, nobodyUID)
			return filepath.Join(d, "app.pid"), d
		}},
		{"parent owned by nobody", func(t *testing.T, base string) (string, string) {
			p := filepath.Join(base, "p")
			mkdir(t, p, 0o755, nobodyUID)
			mkdir(t, filepath.Join(p, "d"), 0o755, 0)
			return filepath.Join(p, "d", "app.pid"), p
		}},
		{"grandparent writable by others, not sticky", func(t *testing.T, base string) (string, string) {
			g := filepath.Join(base, "g")
			mkdir(t, g, 0o777, 0)
			mkdir(t, filepath.Join(g, "p"), 0o755, 0)
			mkdir(t, filepath.Join(g, "p", "d"), 0o755, 0)
			return filepath.Join(g, "p", "d", "app.pid"), g
		}},
		{"parent writable by its group", func(t *testing.T, base string) (string, string) {
			p := filepath.Join(base, "p")
			mkdir(t, p, 0o775, 0)
			mkdir(t, filepath.Join(p, "d"), 0o755, 0)
			return filepath.Join(p, "d", "app.pid"), p
		}},
		{"sticky directory owned by nobody", func(t *testing.T, base string) (string, string) {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o777|os.ModeSticky, nobodyUID)
			return filepath.Join(d, "app.pid"), d
		}},
		{"symlink to a directory owned by nobody", func(t *testing.T, base string) (string, string) {
			n := filepath.Join(base, "n")
			mkdir(t, n, 0o755, nobodyUID)
			mkdir(t, filepath.Join(n, "d"), 0o755, 0)
			if err := os.Symlink("n/d", filepath.Join(base, "link")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(base, "link", "app.pid"), n
		}},
		{"symlink owned by nobody in a sticky directory", func(t *testing.T, base string) (string, string) {
			s := filepath.Join(base, "s")
			mkdir(t, s, 0o777|os.ModeSticky, 0)
			mkdir(t, filepath.Join(base, "d"), 0o755, 0)
			link := filepath.Join(s, "link")
			if err := os.Symlink("../d", link); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(link, nobodyUID, nobodyUID); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(link, "app.pid"), link
		}},
		{"lock file planted by nobody in a sticky directory", func(t *testing.T, base string) (string, string) {
			s := filepath.Join(base, "s")
			mkdir(t, s, 0o777|os.ModeSticky, 0)
			path := filepath.Join(s, "app.pid")
			if err := os.WriteFile(path+".lock", nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(path+".lock", nobodyUID, nobodyUID); err != nil {
				t.Fatal(err)
			}
			return path, path + ".lock"
		}},
		{"sticky root-owned directory", func(t *testing.T, base string) (string, string) {
			s := filepath.Join(base, "s")
			mkdir(t, s, 0o777|os.ModeSticky, 0)
			return filepath.Join(s, "app.pid"), ""
		}},
		{"directory in a sticky root-owned directory", func(t *testing.T, base string) (string, string) {
			s := filepath.Join(base, "s")
			mkdir(t, s, 0o777|os.ModeSticky, 0)
			mkdir(t, filepath.Join(s, "d"), 0o755, 0)
			return filepath.Join(s, "d", "app.pid"), ""
		}},
		{"root-owned relative symlinks to a root-owned directory", func(t *testing.T, base string) (string, string) {
			mkdir(t, filepath.Join(base, "a"), 0o755, 0)
			mkdir(t, filepath.Join(base, "b"), 0o755, 0)
			if err := os.Symlink("../b/./", filepath.Join(base, "a", "up")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("a/up", filepath.Join(base, "link")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(base, "link", "app.pid"), ""
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path, want := tc.setup(t, t.TempDir())
			p, err := supervise.CreatePIDFile(path)
			if p != nil {
				defer p.Close()
			}
			if got := refusedPath(t, err); got != want {
				t.Fatalf("CreatePIDFile refused %q (err %v), want %q", got, err, want)
			}
			if p == nil {
				return
			}
			if err := p.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			pid, live, err := supervise.ReadPIDFile(path)
			if d := cmp.Diff([]any{os.Getpid(), true}, []any{pid, live}); d != "" || err != nil {
				t.Errorf("ReadPIDFile (-want +got):\n%s err %v", d, err)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pid file after Close: %v", err)
			}
		})
	}
}

// TestPIDFileDirectoryAsOtherUser: a process not running as root checks
// the pid file's own directory only: one of its own is accepted, a sticky
// one owned by another unprivileged user (who may remove its files) is
// refused (TESTPLAN D3).
func TestPIDFileDirectoryAsOtherUser(t *testing.T) {
	fdcensus.Verify(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a helper as nobody")
	}
	tests := []struct {
		name  string
		owner int
		mode  os.FileMode
		want  string // the helper's first output line, up to its first space
	}{
		{"own directory", nobodyUID, 0o755, "READY"},
		{"sticky directory of another user", 1, 0o777 | os.ModeSticky, "ERROR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := proccensus.New(t)
			base := t.TempDir()
			for _, d := range []string{base, filepath.Dir(base)} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			dir := filepath.Join(base, "d")
			mkdir(t, dir, tc.mode, tc.owner)
			path := filepath.Join(dir, "app.pid")
			cmd := helperproc.Command(t, "pidfile", &helperproc.Options{AsNobody: true, Env: []string{c.Env(), noRaceExitSleep}, Args: []string{path}})
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, _ := bufio.NewReader(out).ReadString('\n')
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if got, _, _ := strings.Cut(strings.TrimSpace(line), " "); got != tc.want {
				t.Errorf("helper said %q, want %s", line, tc.want)
			}
			if tc.want == "ERROR" && !strings.Contains(line, dir+" is a directory owned by uid 1") {
				t.Errorf("helper said %q, want the directory named", line)
			}
		})
	}
}

// TestReadPIDFileUnsafeLock: a reader applies the owner's checks to the
// lock file too; a FIFO planted there is refused without blocking the
// reader in open(2) (TESTPLAN D3).
func TestReadPIDFileUnsafeLock(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name  string
		plant func(lock string) error
	}{
		{"fifo", func(lock string) error { return unix.Mkfifo(lock, 0o644) }},
		{"symlink", func(lock string) error { return os.Symlink("/etc/passwd", lock) }},
		{"hard link", func(lock string) error {
			other := lock + ".other"
			if err := os.WriteFile(other, nil, 0o644); err != nil {
				return err
			}
			return os.Link(other, lock)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := pidPath(t)
			if err := os.WriteFile(path, []byte("4000000\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := tc.plant(path + ".lock"); err != nil {
				t.Fatal(err)
			}
			pid, live, err := supervise.ReadPIDFile(path)
			if got := refusedPath(t, err); got != path+".lock" || live {
				t.Errorf("ReadPIDFile = %d, %v, %v; want %s.lock refused", pid, live, err, path)
			}
		})
	}
}
