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

// staffGID is Debian's group "staff", owner of /var/local (2775).
const staffGID = 50

// mkdirGroup makes a root-owned directory of group gid with mode.
func mkdirGroup(t *testing.T, path string, mode os.FileMode, gid int) {
	t.Helper()
	mkdir(t, path, 0o700, -1)
	if err := os.Lchown(path, 0, gid); err != nil {
		t.Fatal(err)
	}
	// Chmod after Lchown, which may clear the setgid bit.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// plantSymlink makes a symlink at link to target owned by nobody, as
// nobody would plant it.
func plantSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, nobodyUID, nobodyUID); err != nil {
		t.Fatal(err)
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

// TestPIDFileDirectoriesAsRoot: run as root, CreatePIDFile follows
// systemd's rule on the way from / to the pid file's directory: a step
// from an entry owned by a user other than root to one owned by another
// user (a directory of nobody's holding root's, a symlink there leading
// to root's) is refused and named; leaving a root-owned directory for any
// owner's is accepted (/run/app of the service's user), and so is a
// group-writable directory on the way (/var/local, 2775 root:staff). The
// last directory may be sticky (/tmp), not writable by group or others
// without the sticky bit. A pid file works
// wherever it is accepted (TESTPLAN D3).
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
		{"group-writable setgid directory of root:staff (/var/local) as the last", func(t *testing.T, base string) (string, string) {
			d := filepath.Join(base, "local")
			mkdirGroup(t, d, 0o775|os.ModeSetgid, staffGID)
			return filepath.Join(d, "app.pid"), d
		}},
		{"directory under a group-writable one (/var/local/r8b)", func(t *testing.T, base string) (string, string) {
			l := filepath.Join(base, "local")
			mkdirGroup(t, l, 0o775|os.ModeSetgid, staffGID)
			mkdir(t, filepath.Join(l, "r8b"), 0o755, 0)
			return filepath.Join(l, "r8b", "app.pid"), ""
		}},
		{"directory of another user under root's (/run/app)", func(t *testing.T, base string) (string, string) {
			d := filepath.Join(base, "app")
			mkdir(t, d, 0o755, nobodyUID)
			return filepath.Join(d, "app.pid"), ""
		}},
		{"directory of nobody holding root's", func(t *testing.T, base string) (string, string) {
			p := filepath.Join(base, "p")
			mkdir(t, p, 0o755, nobodyUID)
			mkdir(t, filepath.Join(p, "d"), 0o755, 0)
			return filepath.Join(p, "d", "app.pid"), filepath.Join(p, "d")
		}},
		{"root's symlink in a directory of nobody", func(t *testing.T, base string) (string, string) {
			n := filepath.Join(base, "n")
			mkdir(t, n, 0o755, nobodyUID)
			mkdir(t, filepath.Join(base, "d"), 0o755, 0)
			if err := os.Symlink("../d", filepath.Join(n, "link")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(n, "link", "app.pid"), filepath.Join(n, "link")
		}},
		{"nobody's relative symlink in a directory of nobody", func(t *testing.T, base string) (string, string) {
			n := filepath.Join(base, "n")
			mkdir(t, n, 0o755, nobodyUID)
			mkdir(t, filepath.Join(base, "d"), 0o755, 0)
			plantSymlink(t, "../d", filepath.Join(n, "link"))
			// The symlink's target is resolved from n: its ".." leaves
			// n (nobody's) for base (root's).
			return filepath.Join(n, "link", "app.pid"), base
		}},
		{"nobody's absolute symlink in a directory of nobody", func(t *testing.T, base string) (string, string) {
			n := filepath.Join(base, "n")
			mkdir(t, n, 0o755, nobodyUID)
			mkdir(t, filepath.Join(base, "d"), 0o755, 0)
			plantSymlink(t, filepath.Join(base, "d"), filepath.Join(n, "link"))
			return filepath.Join(n, "link", "app.pid"), filepath.Join(n, "link")
		}},
		{"directory writable by others, not sticky", func(t *testing.T, base string) (string, string) {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o777, 0)
			return filepath.Join(d, "app.pid"), d
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
		{"sticky root-owned directory (/tmp)", func(t *testing.T, base string) (string, string) {
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
// the pid file's own directory only, by its mode, not its owner (as
// systemd): its own is accepted, and a sticky one of another unprivileged
// user; one writable by others without the sticky bit is refused
// (TESTPLAN D3).
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
		msg   string // what an ERROR line must say after the directory
	}{
		{"own directory", nobodyUID, 0o755, "READY", ""},
		{"sticky directory of another user", 1, 0o777 | os.ModeSticky, "READY", ""},
		{"own directory writable by others, not sticky", nobodyUID, 0o777, "ERROR", " is a directory writable by group or others and not sticky"},
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
			if tc.want == "ERROR" && !strings.Contains(line, dir+tc.msg) {
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

// TestReadPIDFileUnsafeTransitionAsRoot: run as root, ReadPIDFile refuses
// a path through a symlink or directory planted by another user that
// leads to a root daemon's live pid file (CVE-2018-16888), which it
// reports live by its own path (TESTPLAN D3).
func TestReadPIDFileUnsafeTransitionAsRoot(t *testing.T) {
	fdcensus.Verify(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	// Each plant gets the daemon's directory d and returns the path root
	// is made to read and the path that must be refused.
	tests := []struct {
		name  string
		plant func(t *testing.T, base, d string) (path, refused string)
	}{
		{"nobody's relative symlink in nobody's directory", func(t *testing.T, base, d string) (string, string) {
			n := filepath.Join(base, "n")
			mkdir(t, n, 0o755, nobodyUID)
			plantSymlink(t, "../d", filepath.Join(n, "link"))
			return filepath.Join(n, "link", "app.pid"), base
		}},
		{"nobody's absolute symlink in nobody's directory", func(t *testing.T, base, d string) (string, string) {
			n := filepath.Join(base, "n")
			mkdir(t, n, 0o755, nobodyUID)
			plantSymlink(t, d, filepath.Join(n, "link"))
			return filepath.Join(n, "link", "app.pid"), filepath.Join(n, "link")
		}},
		{"root's symlink in nobody's directory", func(t *testing.T, base, d string) (string, string) {
			n := filepath.Join(base, "n")
			mkdir(t, n, 0o755, nobodyUID)
			if err := os.Symlink(d, filepath.Join(n, "link")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(n, "link", "app.pid"), filepath.Join(n, "link")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o755, 0)
			daemon := filepath.Join(d, "app.pid")
			p, err := supervise.CreatePIDFile(daemon)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if err := p.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			path, want := tc.plant(t, base, d)
			pid, live, err := supervise.ReadPIDFile(path)
			if got := refusedPath(t, err); got != want || live || pid != 0 {
				t.Errorf("ReadPIDFile(%s) = %d, %v, %v; want %s refused", path, pid, live, err, want)
			}
			pid, live, err = supervise.ReadPIDFile(daemon)
			if d := cmp.Diff([]any{os.Getpid(), true}, []any{pid, live}); d != "" || err != nil {
				t.Errorf("ReadPIDFile(%s) (-want +got):\n%s err %v", daemon, d, err)
			}
		})
	}
}

// TestAdoptPIDFileRefusedDirectory: across an upgrade, AdoptPIDFile keeps
// a lock this process holds (its inherited descriptor) in a directory
// CreatePIDFile now refuses, returning the refusal as the PIDFile's
// Warning, and leaves the pid file in place; a lock that was free (a new
// open of the lock file) is refused there, and left free (TESTPLAN D2,
// D3).
func TestAdoptPIDFileRefusedDirectory(t *testing.T) {
	fdcensus.Verify(t)
	// Each case builds base/p/d, creates the pid file in d, then makes the
	// directories refused; restore makes them accepted again.
	tests := []struct {
		name     string
		root     bool // needs root
		inherit  bool // adopt a duplicate of the owner's descriptor
		refuse   func(t *testing.T, p, d string)
		restore  func(t *testing.T, p, d string)
		refusedD bool // the refused path is d, else p
	}{
		{"inherited, directory writable by others", false, true, chmodDir(0o777), chmodDir(0o755), true},
		{"inherited, through a directory of nobody", true, true, chownParent(nobodyUID), chownParent(0), true},
		{"free lock, directory writable by others", false, false, chmodDir(0o777), chmodDir(0o755), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("needs root")
			}
			p := filepath.Join(t.TempDir(), "p")
			d := filepath.Join(p, "d")
			mkdir(t, p, 0o755, -1)
			mkdir(t, d, 0o755, -1)
			path := filepath.Join(d, "app.pid")
			orig, err := supervise.CreatePIDFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := orig.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			var lock *os.File
			if tc.inherit {
				held, err := orig.LockFile()
				if err != nil {
					t.Fatal(err)
				}
				fd, err := unix.FcntlInt(uintptr(rawFD(held)), unix.F_DUPFD_CLOEXEC, 3)
				if err != nil {
					t.Fatal(err)
				}
				lock = os.NewFile(uintptr(fd), held.Name())
			} else {
				// The owner is gone; its pid file and lock file stay.
				if err := orig.Close(); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				if lock, err = os.OpenFile(path+".lock", os.O_RDWR, 0); err != nil {
					t.Fatal(err)
				}
			}
			defer orig.Close()
			tc.refuse(t, p, d)
			refused := p
			if tc.refusedD {
				refused = d
			}
			if _, err := supervise.CreatePIDFile(path); refusedPath(t, err) != refused {
				t.Fatalf("CreatePIDFile in the refused directory: %v, want %s refused", err, refused)
			}
			pf, err := supervise.AdoptPIDFile(path, lock)
			if !tc.inherit {
				if got := refusedPath(t, err); got != refused {
					t.Errorf("AdoptPIDFile of a free lock: %v, want %s refused", err, refused)
				}
				if pf != nil {
					pf.Close()
				}
				tc.restore(t, p, d)
				// lock is still open: its ownerByte must have been
				// released for a new owner to start.
				np, err := supervise.CreatePIDFile(path)
				lock.Close()
				if err != nil {
					t.Fatalf("CreatePIDFile after a refused adoption: %v", err)
				}
				np.Close()
				return
			}
			if err != nil {
				lock.Close()
				t.Fatalf("AdoptPIDFile: %v, want the lock kept", err)
			}
			defer pf.Close()
			if got := refusedPath(t, pf.Warning()); got != refused {
				t.Errorf("Warning() = %v, want %s refused", pf.Warning(), refused)
			}
			tc.restore(t, p, d)
			pid, live, err := supervise.ReadPIDFile(path)
			if d := cmp.Diff([]any{os.Getpid(), true}, []any{pid, live}); d != "" || err != nil {
				t.Errorf("ReadPIDFile after adopting (-want +got):\n%s err %v", d, err)
			}
			if _, err := supervise.CreatePIDFile(path); !errors.Is(err, supervise.ErrPIDFileLocked) {
				t.Errorf("second owner: %v, want ErrPIDFileLocked", err)
			}
		})
	}
}

func chmodDir(mode os.FileMode) func(t *testing.T, p, d string) {
	return func(t *testing.T, p, d string) {
		t.Helper()
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
	}
}

func chownParent(uid int) func(t *testing.T, p, d string) {
	return func(t *testing.T, p, d string) {
		t.Helper()
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
}
