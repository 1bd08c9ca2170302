//go:build linux

// Package helperproc runs the test binary itself as a child process in a
// named role, the pattern os/exec's own tests use, so cross-process behaviour
// is tested in Go rather than in shell scripts.
//
// A test package routes its TestMain through Main:
//
//	func TestMain(m *testing.M) {
//		helperproc.Main(m, map[string]func() int{"sender": sender})
//	}
//
// When the role variable names a registered role, Main runs that function
// and exits with its result instead of running tests. Otherwise it runs the
// tests and, afterwards, fails the run if this process leaked descriptors
// (compared with a census taken before the first test).
//
// Command builds an *exec.Cmd for a role, optionally running it as user
// nobody (uid/gid 65534) when the test runs as root. For that the test
// binary is copied once per process into a fresh 0755 directory that user
// nobody can reach (go test builds into a 0700 one, and TMPDIR may be 0700
// too); Main removes the copy after the tests.
//
// Start starts a command and kills whatever of it is left when the test
// ends: the child, and its process group when the child leads one.
package helperproc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
)

// RoleVar selects the helper role in a re-executed test binary.
const RoleVar = "HANDOFF_HELPER_ROLE"

// Main runs the selected helper role, or the tests followed by a process-wide
// descriptor census. It never returns.
func Main(m *testing.M, roles map[string]func() int) {
	if role := os.Getenv(RoleVar); role != "" {
		fn, ok := roles[role]
		if !ok {
			fmt.Fprintf(os.Stderr, "helperproc: unknown role %q\n", role)
			os.Exit(2)
		}
		os.Exit(fn())
	}
	before, err := fdcensus.Take(0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "helperproc: fd census: %v\n", err)
		os.Exit(2)
	}
	code := m.Run()
	removeNobodyCopy()
	if code == 0 {
		if err := fdcensus.Compare(0, before); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: the test run leaked descriptors: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Options adjusts a helper command. The zero value runs the helper as the
// current user with the current environment.
type Options struct {
	// Env entries are appended to the inherited environment.
	Env []string
	// ExtraFiles become descriptors 3, 4, ... in the child.
	ExtraFiles []*os.File
	// AsNobody runs the child as uid/gid 65534. The test is skipped when
	// it does not run as root, or when neither os.TempDir nor /tmp is
	// searchable by others all the way down (user nobody must reach the
	// copy of the test binary).
	AsNobody bool
	// Args are passed to the role after the test-binary flags; the role
	// reads them with os.Args[1:] minus the flags (see Args).
	Args []string
}

// Command returns a command that runs role in a re-executed test binary. Its
// stderr is the test's stderr so a crashing helper is visible in the test
// log; set cmd.Stderr to nil before calling cmd.StderrPipe, which refuses a
// command whose Stderr is already set.
func Command(t testing.TB, role string, opts *Options) *exec.Cmd {
	t.Helper()
	if opts == nil {
		opts = &Options{}
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatalf("helperproc: %v", err)
	}
	if opts.AsNobody {
		if os.Getuid() != 0 {
			t.Skip("needs root to run a helper as nobody")
		}
		nobody.once.Do(func() { nobody.bin, nobody.err = copyForNobody(bin) })
		if errors.Is(nobody.err, errNoSearchableDir) {
			t.Skipf("helperproc: %v", nobody.err)
		}
		if nobody.err != nil {
			t.Fatalf("helperproc: %v", nobody.err)
		}
		bin = nobody.bin
	}
	args := append([]string{"-test.run=^$", "--"}, opts.Args...)
	cmd := exec.Command(bin, args...)
	// A race-enabled binary sleeps 1 s at exit by default; helpers are
	// short-lived and many.
	cmd.Env = append(append(os.Environ(), RoleVar+"="+role, "GORACE=atexit_sleep_ms=0"), opts.Env...)
	cmd.ExtraFiles = opts.ExtraFiles
	cmd.Stderr = os.Stderr
	if opts.AsNobody {
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}},
		}
		cmd.Dir = filepath.Dir(bin)
	}
	return cmd
}

// Args returns the arguments a helper role was given through Options.Args.
func Args() []string {
	for i, a := range os.Args {
		if a == "--" {
			return os.Args[i+1:]
		}
	}
	return nil
}

// nobody holds the one copy of the test binary that user nobody runs.
var nobody struct {
	once sync.Once
	bin  string
	err  error
}

var errNoSearchableDir = errors.New("no temporary directory that user nobody can search holds a copy of the test binary")

// searchable reports whether every directory from / down to dir lets
// others search it, as user nobody must to execute a file inside.
func searchable(dir string) bool {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == "/" {
			return true
		}
	}
}

// copyForNobody copies the test binary into a new 0755 directory under the
// first of os.TempDir and /tmp that others can search.
func copyForNobody(bin string) (string, error) {
	parent := ""
	for _, d := range []string{os.TempDir(), "/tmp"} {
		if searchable(d) {
			parent = d
			break
		}
	}
	if parent == "" {
		return "", fmt.Errorf("%w (TMPDIR %s)", errNoSearchableDir, os.TempDir())
	}
	sweepNobodyCopies(parent)
	dir, err := os.MkdirTemp(parent, "helperproc-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return "", err
	}
	dst, err := copyBinary(bin, dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dst, nil
}

func copyBinary(bin, dir string) (string, error) {
	// MkdirTemp makes the directory 0700.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "helper.test")
	in, err := os.Open(bin)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return "", err
	}
	return dst, out.Close()
}

// sweepNobodyCopies removes the copies left in parent by test binaries that
// died before Main could remove theirs (a panic, -test.timeout, SIGKILL):
// directories helperproc-PID-* of this user whose PID is gone.
func sweepNobodyCopies(parent string) {
	ents, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "helperproc-")
		if !ok || !e.IsDir() {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		var st unix.Stat_t
		dir := filepath.Join(parent, e.Name())
		if unix.Lstat(dir, &st) != nil || int(st.Uid) != os.Geteuid() {
			continue
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			os.RemoveAll(dir)
		}
	}
}

func removeNobodyCopy() {
	if nobody.bin != "" {
		os.RemoveAll(filepath.Dir(nobody.bin))
	}
}

// Start starts cmd and registers a cleanup that kills and reaps it unless
// the test waited for it, so a test that fails half-way leaves neither a
// process nor a zombie behind. When the child leads its own process group
// (SysProcAttr.Setpgid or Setsid, or it called setpgid itself), the whole
// group is killed, since its children would otherwise outlive it.
func Start(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("helperproc: start %v: %v", cmd.Args, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState != nil {
			return
		}
		// The child is not reaped yet, so its pid, and with it a group
		// named by that pid, cannot have been reused.
		pid := cmd.Process.Pid
		if pgid, err := unix.Getpgid(pid); err == nil && pgid == pid {
			_ = unix.Kill(-pid, unix.SIGKILL)
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}
