//go:build linux

package sockfile_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sockfile"
)

// withUmask runs the test body under umask mask, so modes prove they do not
// depend on it.
func withUmask(t *testing.T, mask int) {
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

// B5 (mode half), plus the basic life cycle: the socket has the requested
// mode under umask 000, accepts connections, and Close removes it while the
// lock file stays and does not block the next start.
func TestListenModeAndLifecycle(t *testing.T) {
	fdcensus.Verify(t)
	withUmask(t, 0)
	tests := []struct {
		name     string
		opts     *sockfile.Options
		wantMode os.FileMode
	}{
		{"nil options", nil, 0o600},
		{"stream", &sockfile.Options{Network: "unix"}, 0o600},
		{"seqpacket", &sockfile.Options{Network: "unixpacket"}, 0o600},
		{"mode 0660", &sockfile.Options{Mode: 0o660}, 0o660},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s")
			for round := range 2 {
				l, err := sockfile.Listen(path, tt.opts)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				fi, err := os.Lstat(path)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tt.wantMode|os.ModeSocket, fi.Mode()); diff != "" {
					t.Errorf("mode (-want +got):\n%s", diff)
				}
				network := "unix"
				if tt.opts != nil && tt.opts.Network != "" {
					network = tt.opts.Network
				}
				acceptOne(t, l, network, path)
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				if err := l.Close(); !errors.Is(err, net.ErrClosed) {
					t.Errorf("second Close = %v, want net.ErrClosed", err)
				}
				if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("after Close, %s: %v; want it removed", path, err)
				}
				if _, err := os.Lstat(path + ".lock"); err != nil {
					t.Errorf("lock file: %v; want it kept", err)
				}
			}
		})
	}
}

// Close unblocks a pending Accept with net.ErrClosed, and Addr reports the
// path (the socket is bound there, not under a temporary name).
func TestCloseUnblocksAccept(t *testing.T) {
	fdcensus.Verify(t)
	path := filepath.Join(t.TempDir(), "s")
	l, err := sockfile.Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(path, l.Addr().String()); diff != "" {
		t.Errorf("Addr (-want +got):\n%s", diff)
	}
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not unblock Accept")
	}
}

func TestListenBadOptions(t *testing.T) {
	fdcensus.Verify(t)
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
		opts *sockfile.Options
		want error
	}{
		{"path too long", filepath.Join(dir, strings.Repeat("x", 110)), nil, sockfile.ErrPathTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := sockfile.Listen(tt.path, tt.opts)
			if !errors.Is(err, tt.want) {
				if l != nil {
					l.Close()
				}
				t.Fatalf("Listen = %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := sockfile.Listen("", nil); err == nil {
		t.Fatal("Listen with an empty path succeeded")
	}
	if _, err := sockfile.Listen(filepath.Join(dir, "s"), &sockfile.Options{Network: "tcp"}); err == nil {
		t.Fatal("Listen with network tcp succeeded")
	}
	if _, err := sockfile.Listen(filepath.Join(dir, "missing", "s"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Listen in a missing directory = %v, want ErrNotExist", err)
	}
}

// B1: a stale socket, left by a process that died without unlinking it, is
// replaced; so is one left by a SIGKILLed starter, whose lock died with it.
func TestStaleSocketReplaced(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	t.Run("left by close", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s")
		staleSocket(t, path)
		l, err := sockfile.Listen(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go servePID(l)
		if got := dialPID(t, path); got != os.Getpid() {
			t.Errorf("answered by pid %d, want %d", got, os.Getpid())
		}
	})
	t.Run("owner SIGKILLed", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s")
		cmd := helperproc.Command(t, "starter", &helperproc.Options{Args: []string{path}, Env: childEnv(pc)})
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		defer stdin.Close()
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		helperproc.Start(t, cmd)
		line, err := readLine(bufio.NewReader(out), 10*time.Second)
		if err != nil || !strings.HasPrefix(line, "won ") {
			t.Fatalf("starter said %q, %v", line, err)
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		l, err := sockfile.Listen(path, nil)
		if err != nil {
			t.Fatalf("Listen after the owner was killed: %v", err)
		}
		defer l.Close()
		go servePID(l)
		if got := dialPID(t, path); got != os.Getpid() {
			t.Errorf("answered by pid %d, want %d", got, os.Getpid())
		}
	})
}

// B2: a live socket is never unlinked, whether its owner holds the lock
// (another sockfile Listener) or not (a plain net listener).
func TestLiveSocketKept(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name   string
		listen func(t *testing.T, path string) io.Closer
	}{
		{"sockfile owner", func(t *testing.T, path string) io.Closer {
			l, err := sockfile.Listen(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			go servePID(l)
			return l
		}},
		{"plain listener without the lock", func(t *testing.T, path string) io.Closer {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			go servePID(l)
			return l
		}},
		{"seqpacket listener", func(t *testing.T, path string) io.Closer {
			l, err := net.Listen("unixpacket", path)
			if err != nil {
				t.Fatal(err)
			}
			return l
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s")
			first := tt.listen(t, path)
			defer first.Close()
			before := inode(t, path)
			l, err := sockfile.Listen(path, nil)
			if err == nil {
				l.Close()
				t.Fatal("second Listen on a live socket succeeded")
			}
			if !errors.Is(err, sockfile.ErrInUse) {
				t.Fatalf("second Listen = %v, want ErrInUse", err)
			}
			if got := inode(t, path); got != before {
				t.Errorf("socket file replaced: inode %d -> %d", before, got)
			}
			c, err := net.Dial(first.(net.Listener).Addr().Network(), path)
			if err != nil {
				t.Fatalf("first instance unreachable: %v", err)
			}
			c.Close()
		})
	}
}

// Anything that is not a socket, at the path or at the lock path, is refused
// and left exactly as it was.
func TestNotSocketUntouched(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("data"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{"dangling symlink", func(t *testing.T, path string) {
			if err := os.Symlink(path+".nowhere", path); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink to a stale socket", func(t *testing.T, path string) {
			staleSocket(t, path+".target")
			if err := os.Symlink(path+".target", path); err != nil {
				t.Fatal(err)
			}
		}},
		{"FIFO", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink at the lock path", func(t *testing.T, path string) {
			if err := os.Symlink(path+".elsewhere", path+".lock"); err != nil {
				t.Fatal(err)
			}
		}},
		{"FIFO at the lock path", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path+".lock", 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory at the lock path", func(t *testing.T, path string) {
			if err := os.Mkdir(path+".lock", 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "s")
			tt.setup(t, path)
			before := listDir(t, dir)
			l, err := sockfile.Listen(path, nil)
			if err == nil {
				l.Close()
				t.Fatal("Listen succeeded")
			}
			if !errors.Is(err, sockfile.ErrNotSocket) {
				t.Fatalf("Listen = %v, want ErrNotSocket", err)
			}
			if diff := cmp.Diff(before, listDir(t, dir)); diff != "" {
				t.Errorf("directory changed (-before +after):\n%s", diff)
			}
		})
	}
}

// listDir describes every entry of dir except the lock file Listen may
// create: name, mode and inode.
func listDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if e.Name() == "s.lock" {
			if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
				continue
			}
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fi.Mode().String() + " " + strconv.FormatUint(fi.Sys().(*syscall.Stat_t).Ino, 10)
	}
	return out
}

// B3: two starters race on the same stale path, round after round. Exactly
// one wins, the other exits with ErrInUse, and the path reaches the winner.
func TestRacingStarters(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	rounds := 50
	if testing.Short() {
		rounds = 10
	}
	deadline := time.Now().Add(60 * time.Second)
	dir := t.TempDir()
	for round := range rounds {
		if time.Now().After(deadline) {
			t.Fatalf("only %d rounds before the deadline", round)
		}
		path := filepath.Join(dir, "s"+strconv.Itoa(round))
		staleSocket(t, path)
		type starter struct {
			cmd   *exec.Cmd
			stdin io.WriteCloser
			out   *bufio.Reader
		}
		var ss [2]starter
		for i := range ss {
			cmd := helperproc.Command(t, "starter", &helperproc.Options{Args: []string{path}, Env: childEnv(pc)})
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			ss[i] = starter{cmd, stdin, bufio.NewReader(out)}
		}
		for i := range ss {
			helperproc.Start(t, ss[i].cmd)
		}
		winner := -1
		var lines []string
		for i := range ss {
			line, err := readLine(ss[i].out, 20*time.Second)
			if err != nil {
				t.Fatalf("round %d: starter %d: %v", round, i, err)
			}
			lines = append(lines, line)
			if strings.HasPrefix(line, "won ") {
				winner = i
			}
		}
		said := strings.Join(lines, ",")
		if said != "won "+strconv.Itoa(ss[0].cmd.Process.Pid)+",inuse" && said != "inuse,won "+strconv.Itoa(ss[1].cmd.Process.Pid) {
			t.Fatalf("round %d: starters said %q, want exactly one winner", round, lines)
		}
		loser := 1 - winner
		err := ss[loser].cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitInUse {
			t.Fatalf("round %d: loser exited with %v, want status %d", round, err, exitInUse)
		}
		if got, want := dialPID(t, path), ss[winner].cmd.Process.Pid; got != want {
			t.Fatalf("round %d: path answered by pid %d, want the winner %d", round, got, want)
		}
		ss[loser].stdin.Close()
		ss[winner].stdin.Close()
		if err := ss[winner].cmd.Wait(); err != nil {
			t.Fatalf("round %d: winner: %v", round, err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: winner's Close left %s: %v", round, path, err)
		}
	}
}

// B4: with SetUnlinkOnClose(false) the old owner's Close leaves the path to
// the successor that inherited the socket; and Close never unlinks a socket
// file that is no longer its own.
func TestSuccessorKeepsPath(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	t.Run("inherited by a child", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s")
		l, err := sockfile.Listen(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		f, err := l.UnixListener().File()
		if err != nil {
			l.Close()
			t.Fatal(err)
		}
		cmd := helperproc.Command(t, "adopt", &helperproc.Options{ExtraFiles: []*os.File{f}, Env: childEnv(pc)})
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		helperproc.Start(t, cmd)
		f.Close()
		if line, err := readLine(bufio.NewReader(out), 10*time.Second); err != nil || !strings.HasPrefix(line, "adopted ") {
			t.Fatalf("successor said %q, %v", line, err)
		}
		l.SetUnlinkOnClose(false)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if got, want := dialPID(t, path), cmd.Process.Pid; got != want {
			t.Errorf("after the old owner closed, answered by %d, want the successor %d", got, want)
		}
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		os.Remove(path)
	})
	t.Run("replaced by another socket", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "s")
		l, err := sockfile.Listen(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		other, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "other"), Net: "unix"})
		if err != nil {
			l.Close()
			t.Fatal(err)
		}
		defer other.Close()
		other.SetUnlinkOnClose(false)
		if err := os.Rename(filepath.Join(dir, "other"), path); err != nil {
			t.Fatal(err)
		}
		want := inode(t, path)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if got := inode(t, path); got != want {
			t.Errorf("inode at the path %d, want the replacement's %d", got, want)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("replacement unreachable: %v", err)
		}
		c.Close()
	})
}

// B5: under umask 000 in a world-writable directory, user nobody cannot
// connect (EACCES); with Mode 0666 it can, which shows the check would
// notice a looser mode.
func TestOtherUserCannotDial(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	withUmask(t, 0)
	tests := []struct {
		name string
		mode os.FileMode
		want string
	}{
		{"default mode", 0, "EACCES"},
		{"mode 0666", 0o666, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, d := range []string{dir, filepath.Dir(dir)} {
				if err := os.Chmod(d, 0o777); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(dir, "s")
			l, err := sockfile.Listen(path, &sockfile.Options{Mode: tt.mode})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			cmd := helperproc.Command(t, "dial", &helperproc.Options{AsNobody: true, Args: []string{path}, Env: childEnv(pc)})
			var out strings.Builder
			cmd.Stdout = &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("dial helper: %v", err)
			}
			if diff := cmp.Diff(tt.want, strings.TrimSpace(out.String())); diff != "" {
				t.Errorf("dial as nobody (-want +got):\n%s", diff)
			}
		})
	}
}

// B1, racing variant: between the Lstat that finds a stale socket and the
// connect that probes it, the file goes away (systemd-tmpfiles) or is
// replaced by another program that does not use the lock. Gone: Listen
// proceeds as if nothing had been there. Replaced: the replacement is
// neither unlinked nor taken over.
func TestStaleSocketChangesBeforeProbe(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name string
		// change runs in the window; it returns what to close afterwards.
		change  func(t *testing.T, path string) io.Closer
		wantErr error // nil: Listen succeeds and serves the path
	}{
		{"removed", func(t *testing.T, path string) io.Closer {
			if err := os.Remove(path); err != nil {
				t.Error(err)
			}
			return io.NopCloser(nil)
		}, nil},
		{"replaced by a regular file", func(t *testing.T, path string) io.Closer {
			if err := os.Remove(path); err != nil {
				t.Error(err)
			}
			if err := os.WriteFile(path, []byte("data"), 0o644); err != nil {
				t.Error(err)
			}
			return io.NopCloser(nil)
		}, sockfile.ErrInUse},
		{"replaced by a live socket", func(t *testing.T, path string) io.Closer {
			if err := os.Remove(path); err != nil {
				t.Error(err)
			}
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Error(err)
				return io.NopCloser(nil)
			}
			go servePID(ln)
			return ln
		}, sockfile.ErrInUse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "s")
			staleSocket(t, path)
			var (
				calls  int
				closer io.Closer = io.NopCloser(nil)
				after  map[string]string
			)
			restore := sockfile.SetBeforeConnect(func(p string) {
				calls++
				closer = tt.change(t, p)
				after = listDir(t, dir)
			})
			l, err := sockfile.Listen(path, nil)
			restore()
			defer closer.Close()
			if calls != 1 {
				t.Errorf("the hook ran %d times, want 1", calls)
			}
			if tt.wantErr != nil {
				if err == nil {
					l.Close()
					t.Fatalf("Listen succeeded, want %v", tt.wantErr)
				}
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Listen = %v, want %v", err, tt.wantErr)
				}
				if diff := cmp.Diff(after, listDir(t, dir)); diff != "" {
					t.Errorf("the replacement was touched (-before +after):\n%s", diff)
				}
				return
			}
			if err != nil {
				t.Fatalf("Listen = %v, want success", err)
			}
			defer l.Close()
			go servePID(l)
			if got := dialPID(t, path); got != os.Getpid() {
				t.Errorf("answered by pid %d, want %d", got, os.Getpid())
			}
		})
	}
}
