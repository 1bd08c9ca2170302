//go:build linux

package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sockfile"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
	"golang.org/x/sys/unix"
)

// controlMaster is an in-process master with a control socket and sh
// workers that sleep.
type controlMaster struct {
	m    *cluster.Master
	path string
	done chan error
}

// startControlMaster starts n workers under a master serving the control
// socket at path, and stops it at cleanup.
func startControlMaster(t *testing.T, pc *proccensus.Census, path string, n int) *controlMaster {
	t.Helper()
	m, err := cluster.New(&cluster.Config{
		Program: "sh",
		Args:    []string{"-c", "exec sleep 60"},
		Workers: n,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Env:     append(os.Environ(), pc.Env()),
		Control: path,
		Logger:  quietLogger(t),
		// Kills in these tests must be followed by a quick respawn.
		Backoff: supervise.Backoff{Min: 50 * time.Millisecond, Max: 100 * time.Millisecond, Burst: 100, Window: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	cm := &controlMaster{m: m, path: path, done: make(chan error, 1)}
	go func() { cm.done <- m.Run(context.Background()) }()
	t.Cleanup(func() {
		_ = m.Stop()
		select {
		case err := <-cm.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			_ = m.Kill()
			t.Errorf("master did not stop within 20 s")
			<-cm.done
		}
	})
	select {
	case <-m.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("cluster not ready")
	}
	return cm
}

// quietLogger collects the master's log and prints it if the test failed.
func quietLogger(t *testing.T) *slog.Logger {
	var buf syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("master log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// dial connects to the control socket, closed at cleanup.
func dialControl(t *testing.T, path string) *cluster.ControlClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cluster.DialControl(ctx, path, &cluster.ControlOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitStatus polls status until ok accepts it (10 s at most).
func waitStatus(t *testing.T, c *cluster.ControlClient, what string, ok func(*cluster.ControlStatus) bool) *cluster.ControlStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var st *cluster.ControlStatus
	var err error
	for i := 0; i < 1000 && time.Now().Before(deadline); i++ {
		if st, err = c.Status(); err != nil {
			t.Fatalf("status: %v", err)
		}
		if ok(st) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("status never showed %s; last: %+v", what, st)
	return nil
}

func allReady(gen, n int) func(*cluster.ControlStatus) bool {
	return func(st *cluster.ControlStatus) bool {
		if st.Workers != n || st.ReadyWorkers != n || st.Restarting || len(st.Slots) != n {
			return false
		}
		for _, s := range st.Slots {
			if s.State != supervise.SlotReady || s.Generation != gen || s.PID == 0 {
				return false
			}
		}
		return true
	}
}

// slotView is what a test compares of a slot: the fields that do not
// depend on timing.
type slotView struct {
	Slot, Generation, Restarts int
	State                      string
	Running                    bool
	LastExit                   *cluster.ControlExit
}

func view(st *cluster.ControlStatus) []slotView {
	out := make([]slotView, len(st.Slots))
	for i, s := range st.Slots {
		var x *cluster.ControlExit
		if s.LastExit != nil {
			c := *s.LastExit
			c.Time = time.Time{}
			x = &c
		}
		out[i] = slotView{s.Slot, s.Generation, s.Restarts, s.State.String(), s.PID > 0, x}
	}
	return out
}

// killPID SIGKILLs a worker of this process through a pidfd and waits for
// its death.
func killPID(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatalf("pidfd_send_signal %d: %v", pid, err)
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for i := 0; i < 100; i++ {
		if n, err := unix.Poll(pfd, 100); err == nil && n > 0 {
			return
		}
	}
	t.Fatalf("pid %d alive 10 s after SIGKILL", pid)
}

// shortDir returns a fresh directory with a short path (unix socket paths
// hold 107 bytes), that user nobody may traverse.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestControlCommands drives every command against a real master: status
// after start, after a worker kill (restarts +1, last exit), after a
// restart (generation +1), scale up and down, and stop.
func TestControlCommands(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(shortDir(t), "run", "ctl.sock")
	cm := startControlMaster(t, pc, path, 2)
	c := dialControl(t, path)

	st := waitStatus(t, c, "2 ready workers", allReady(1, 2))
	if st.PID != os.Getpid() {
		t.Errorf("status pid %d, want the master's %d", st.PID, os.Getpid())
	}
	want := []slotView{
		{Slot: 0, Generation: 1, State: "ready", Running: true},
		{Slot: 1, Generation: 1, State: "ready", Running: true},
	}
	if diff := cmp.Diff(want, view(st)); diff != "" {
		t.Errorf("status after start (-want +got):\n%s", diff)
	}

	// A killed worker: replaced, restarts +1, its exit recorded.
	killed := st.Slots[0].PID
	killPID(t, killed)
	st = waitStatus(t, c, "slot 0 replaced", func(st *cluster.ControlStatus) bool {
		return allReady(1, 2)(st) && st.Slots[0].PID != killed && st.Slots[0].LastExit != nil
	})
	want[0].Restarts = 1
	want[0].LastExit = &cluster.ControlExit{PID: killed, Code: -1, Signal: syscall.SIGKILL}
	if diff := cmp.Diff(want, view(st)); diff != "" {
		t.Errorf("status after a worker kill (-want +got):\n%s", diff)
	}
	if x := st.Slots[0].LastExit; time.Since(x.Time) > time.Minute || time.Since(x.Time) < -time.Second {
		t.Errorf("last exit time %v is not about now", x.Time)
	}

	// A graceful restart: generation +1 everywhere.
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	// The old workers' exits are recorded once they are reaped, which
	// may follow the new generation's readiness.
	waitStatus(t, c, "generation 2 and the requested exits of generation 1", func(st *cluster.ControlStatus) bool {
		if st.Generation != 2 || !allReady(2, 2)(st) {
			return false
		}
		for _, s := range st.Slots {
			if s.LastExit == nil || !s.LastExit.Requested {
				return false
			}
		}
		return true
	})

	if err := c.Scale(3); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, "3 workers", allReady(2, 3))
	if err := c.Scale(1); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, "1 worker", allReady(2, 1))
	if err := c.Scale(5000); !errors.Is(err, cluster.ErrControlInvalid) {
		t.Errorf("Scale(5000) = %v, want ErrControlInvalid", err)
	}

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-cm.done:
		cm.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("master did not stop after a stop request")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left after stop: %v", err)
	}
	if _, err := c.Status(); !errors.Is(err, cluster.ErrControlClosed) && !errors.Is(err, syscall.EPIPE) {
		t.Errorf("status after stop: %v, want ErrControlClosed", err)
	}
}

// header builds an ipcframe header.
func header(magic, version, nfds byte, n uint32) []byte {
	return []byte{magic, version, nfds, 0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}

// TestControlGarbage: malformed frames and messages get a typed error
// reply (or, when the stream cannot continue, a reply and a close), and
// leave the master and its workers as they were.
func TestControlGarbage(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(shortDir(t), "ctl", "sock")
	startControlMaster(t, pc, path, 2)
	c := dialControl(t, path)
	before := waitStatus(t, c, "2 ready workers", allReady(1, 2))

	frame := func(s string) []byte { return ipcframe.AppendFrame(nil, []byte(s)) }
	for _, tc := range []struct {
		name   string
		send   []byte
		code   string // "" for an ordinary status reply
		closed bool   // the master closes the connection after the reply
		fds    bool   // a descriptor rides on the first byte (SCM_RIGHTS)
	}{
		{"not json", frame("hello"), cluster.ControlCodeBadRequest, false, false},
		{"array", frame(`[1,2]`), cluster.ControlCodeBadRequest, false, false},
		{"no type", frame(`{"workers":3}`), cluster.ControlCodeBadRequest, false, false},
		{"unknown type", frame(`{"type":"reboot"}`), cluster.ControlCodeBadRequest, false, false},
		{"response as request", frame(`{"type":"ok"}`), cluster.ControlCodeBadRequest, false, false},
		{"scale without count", frame(`{"type":"scale"}`), cluster.ControlCodeBadRequest, false, false},
		{"scale negative", frame(`{"type":"scale","workers":-1}`), cluster.ControlCodeBadRequest, false, false},
		{"scale huge", frame(`{"type":"scale","workers":99999999999999999999}`), cluster.ControlCodeBadRequest, false, false},
		{"scale string", frame(`{"type":"scale","workers":"3"}`), cluster.ControlCodeBadRequest, false, false},
		{"invalid utf-8", frame("{\"type\":\"st\xffatus\"}"), cluster.ControlCodeBadRequest, false, false},
		{"deep nesting", frame(`{"type":"status","x":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`), cluster.ControlCodeBadRequest, false, false},
		{"declares descriptors", append(header(ipcframe.Magic, ipcframe.Version, 1, 2), "{}"...), cluster.ControlCodeBadRequest, false, false},
		{"bad magic", header('X', ipcframe.Version, 0, 2), cluster.ControlCodeBadRequest, true, false},
		{"bad version", header(ipcframe.Magic, 9, 0, 2), cluster.ControlCodeBadRequest, true, false},
		{"oversized", header(ipcframe.Magic, ipcframe.Version, 0, 1<<20), cluster.ControlCodeBadRequest, true, false},
		// TESTPLAN A8/A13: descriptors on a frame that declares none, and
		// on one that declares one. The kernel discards them (the master
		// reads with plain reads); the fd census proves none is installed.
		{"undeclared descriptor", frame(`{"type":"status"}`), "", false, true},
		{"declared descriptor sent", append(header(ipcframe.Magic, ipcframe.Version, 1, 2), "{}"...), cluster.ControlCodeBadRequest, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.DialTimeout("unix", path, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.fds {
				var p [2]int
				if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
					t.Fatal(err)
				}
				_, _, err = conn.(*net.UnixConn).WriteMsgUnix(tc.send, unix.UnixRights(p[0]), nil)
				unix.Close(p[0])
				unix.Close(p[1])
			} else {
				_, err = conn.Write(tc.send)
			}
			if err != nil {
				t.Fatal(err)
			}
			r := ipcframe.NewReader(conn, nil)
			reply, err := r.ReadFrame(nil)
			if err != nil {
				t.Fatalf("no reply: %v", err)
			}
			if tc.code == "" {
				if got := string(reply); !strings.HasPrefix(got, `{"type":"status","pid":`) {
					t.Errorf("reply %s, want a status", got)
				}
			} else if got := string(reply); !strings.HasPrefix(got, `{"type":"error","code":"`+tc.code+`"`) {
				t.Errorf("reply %s, want an error with code %s", got, tc.code)
			}
			if tc.closed {
				if _, err := r.ReadFrame(nil); !errors.Is(err, io.EOF) {
					t.Errorf("after the reply: %v, want EOF", err)
				}
				return
			}
			// The connection still serves.
			if _, err := conn.Write(frame(`{"type":"status"}`)); err != nil {
				t.Fatal(err)
			}
			reply, err = r.ReadFrame(nil)
			if err != nil || !strings.HasPrefix(string(reply), `{"type":"status","pid":`) {
				t.Errorf("status after garbage: %q, %v", reply, err)
			}
		})
	}
	after := waitStatus(t, c, "the same workers", allReady(1, 2))
	if diff := cmp.Diff(before.Slots, after.Slots, cmp.Comparer(func(a, b time.Duration) bool { return true })); diff != "" {
		t.Errorf("workers changed (-before +after):\n%s", diff)
	}
}

// TestControlPeerRejected (TESTPLAN A16): a client of another uid is
// closed on before any byte of its request is read, and nothing changes.
// The socket's file permissions are loosened first, so that only the
// SO_PEERCRED check stands in the way.
func TestControlPeerRejected(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as nobody")
	}
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := shortDir(t)
	path := filepath.Join(dir, "ctl", "sock")
	startControlMaster(t, pc, path, 1)
	c := dialControl(t, path)
	before := waitStatus(t, c, "1 ready worker", allReady(1, 1))
	if err := os.Chmod(filepath.Dir(path), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		out := runControlHelper(t, pc, "control-intruder", path)
		// EPIPE: closed before the request was even written; ECONNRESET:
		// closed with the request unread in the socket. "EOF" would mean
		// the request was read; "reply" that it was answered.
		if out != "write EPIPE" && out != "read ECONNRESET" {
			t.Errorf("intruder %d: %q, want write EPIPE or read ECONNRESET", i, out)
		}
	}
	after, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before.Slots, after.Slots, cmp.Comparer(func(a, b time.Duration) bool { return true })); diff != "" {
		t.Errorf("intruder changed the workers (-before +after):\n%s", diff)
	}
	if after.Workers != 1 || after.Generation != 1 {
		t.Errorf("after the intruder: %d workers, generation %d", after.Workers, after.Generation)
	}
}

// TestControlUmask (TESTPLAN B5): under umask 000 the directory is 0700 and
// the socket 0600, and user nobody cannot connect.
func TestControlUmask(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as nobody")
	}
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(shortDir(t), "ctl", "sock")
	old := unix.Umask(0)
	startControlMaster(t, pc, path, 1)
	unix.Umask(old)
	for _, tc := range []struct {
		path string
		want os.FileMode
	}{{filepath.Dir(path), os.ModeDir | 0o700}, {path, os.ModeSocket | 0o600}} {
		fi, err := os.Lstat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tc.want {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode(), tc.want)
		}
	}
	if out := runControlHelper(t, pc, "control-intruder", path); out != "dial EACCES" {
		t.Errorf("nobody: %q, want dial EACCES", out)
	}
}

// runControlHelper runs role as nobody with path and returns its one line.
func runControlHelper(t *testing.T, pc *proccensus.Census, role, path string) string {
	t.Helper()
	cmd := helperproc.Command(t, role, &helperproc.Options{AsNobody: true, Env: []string{pc.Env()}, Args: []string{path}})
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", role, err)
	}
	return strings.TrimSpace(string(out))
}

// controlIntruder connects to the control socket at its argument, sends a
// stop request and reports what happened: "dial ERRNO", "write ERRNO",
// "read ERRNO", "read EOF" or "reply".
func controlIntruder() int {
	path := helperproc.Args()[0]
	errno := func(err error) string {
		var e syscall.Errno
		if errors.As(err, &e) {
			return unix.ErrnoName(e)
		}
		if errors.Is(err, io.EOF) {
			return "EOF"
		}
		return err.Error()
	}
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		fmt.Println("dial", errno(err))
		return 0
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(ipcframe.AppendFrame(nil, []byte(`{"type":"stop"}`))); err != nil {
		fmt.Println("write", errno(err))
		return 0
	}
	var b [64]byte
	n, err := conn.Read(b[:])
	if n > 0 {
		fmt.Println("reply")
		return 0
	}
	fmt.Println("read", errno(err))
	return 0
}

// TestControlSocketFile covers the path's life: a stale socket is replaced
// (B1), a live one is neither replaced nor unlinked by a second master (B2),
// and unsafe directories are refused.
func TestControlSocketFile(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := shortDir(t)
	private := filepath.Join(dir, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}

	t.Run("stale", func(t *testing.T) {
		path := filepath.Join(private, "stale")
		ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ul.SetUnlinkOnClose(false)
		ul.Close() // as a SIGKILLed master leaves it
		startControlMaster(t, pc, path, 1)
		if _, err := dialControl(t, path).Status(); err != nil {
			t.Fatalf("status through the replaced socket: %v", err)
		}
	})

	t.Run("live", func(t *testing.T) {
		path := filepath.Join(private, "live")
		startControlMaster(t, pc, path, 1)
		ino := inodeOf(t, path)
		_, err := cluster.New(&cluster.Config{Program: "sh", Workers: 1, Listen: []string{"127.0.0.1:0"}, Control: path, Logger: quietLogger(t)})
		if !errors.Is(err, sockfile.ErrInUse) {
			t.Fatalf("second master: %v, want ErrInUse", err)
		}
		if got := inodeOf(t, path); got != ino {
			t.Errorf("socket file replaced: inode %d, was %d", got, ino)
		}
		if _, err := dialControl(t, path).Status(); err != nil {
			t.Fatalf("first master unreachable: %v", err)
		}
	})

	t.Run("close without run", func(t *testing.T) {
		path := filepath.Join(private, "unused")
		m, err := cluster.New(&cluster.Config{Program: "sh", Workers: 1, Listen: []string{"127.0.0.1:0"}, Control: path, Logger: quietLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("New created no socket: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left after Close: %v", err)
		}
	})

	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) string // returns the control path
	}{
		{"group-readable dir", func(t *testing.T) string {
			d := filepath.Join(dir, "open")
			if err := os.Mkdir(d, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, 0o750); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(d, "s")
		}},
		{"symlinked dir", func(t *testing.T) string {
			d := filepath.Join(dir, "real")
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(d, filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(dir, "link", "s")
		}},
		{"dir of another user", func(t *testing.T) string {
			if os.Getuid() != 0 {
				t.Skip("needs root to chown")
			}
			d := filepath.Join(dir, "other")
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(d, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(d, "s")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.setup(t)
			m, err := cluster.New(&cluster.Config{Program: "sh", Workers: 1, Listen: []string{"127.0.0.1:0"}, Control: path, Logger: quietLogger(t)})
			if err == nil {
				m.Close()
			}
			if !errors.Is(err, cluster.ErrUnsafeControlDir) {
				t.Fatalf("New: %v, want ErrUnsafeControlDir", err)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("something was created at %s: %v", path, err)
			}
		})
	}
}

func inodeOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestControlSendBroadcast: messages sent through the control socket reach
// the workers' cluster.Messages (the go-worker helper echoes them back
// through cluster.Send), and a slot without a worker is a typed error.
func TestControlSendBroadcast(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(shortDir(t), "ctl", "sock")
	msgs := make(chan cluster.Message, 64)
	m, err := cluster.New(&cluster.Config{
		Program: bin,
		Args:    []string{"-test.run=^$"},
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Env:     append(os.Environ(), pc.Env(), "GORACE=atexit_sleep_ms=0", helperproc.RoleVar+"=go-worker"),
		Control: path,
		Logger:  quietLogger(t),
		OnMessage: func(msg cluster.Message) {
			select {
			case msgs <- msg:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(context.Background()) }()
	t.Cleanup(func() {
		_ = m.Stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-m.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("cluster not ready")
	}
	c := dialControl(t, path)
	// echoes collects n "echo:" messages by slot.
	echoes := func(n int) map[int]string {
		got := map[int]string{}
		deadline := time.After(10 * time.Second)
		for len(got) < n {
			select {
			case msg := <-msgs:
				if p := string(msg.Payload); strings.HasPrefix(p, "echo:") {
					got[msg.Slot] = p
				}
			case <-deadline:
				t.Fatalf("echoes so far: %v, want %d", got, n)
			}
		}
		return got
	}
	if err := c.Send(1, []byte("to one")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int]string{1: "echo:to one"}, echoes(1)); diff != "" {
		t.Errorf("send (-want +got):\n%s", diff)
	}
	if err := c.Broadcast([]byte("to all")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[int]string{0: "echo:to all", 1: "echo:to all"}, echoes(2)); diff != "" {
		t.Errorf("broadcast (-want +got):\n%s", diff)
	}
	if err := c.Send(7, []byte("nobody")); !errors.Is(err, cluster.ErrNoWorker) {
		t.Errorf("send to an empty slot: %v, want ErrNoWorker", err)
	}
	if err := c.Send(0, make([]byte, cluster.MaxMessage+1)); !errors.Is(err, cluster.ErrControlInvalid) {
		t.Errorf("send of an oversized message: %v, want ErrControlInvalid", err)
	}
}

// controlAdopt is a master started the way the in-place upgrade restarts
// one: HANDOFF_CONTROL_LISTEN names an inherited control socket. It prints
// "ready" and runs until stdin reaches EOF.
func controlAdopt() int {
	m, err := cluster.New(&cluster.Config{
		Program: "sh",
		Args:    []string{"-c", "exec sleep 60"},
		Workers: 1,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Control: helperproc.Args()[0],
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(context.Background()) }()
	<-m.Ready()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = m.Stop()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestControlAdopt: a master given the control socket's listening
// descriptor across exec (HANDOFF_CONTROL_LISTEN=FD:DEV:INO, what the
// upgrade path passes) serves it without re-binding, and removes the file
// when it stops; a descriptor that does not match the file is not adopted,
// and the live socket is left alone; a descriptor whose file was removed is
// closed, and the master serves a new socket at the path.
func TestControlAdopt(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := filepath.Join(shortDir(t), "ctl")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		badIno  bool
		removed bool   // the socket file is gone before the master starts
		wantErr string // the master's failure; "" if it serves
	}{
		{"adopted", false, false, ""},
		{"wrong inode", true, false, "socket path in use"},
		{"file removed", false, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "sock")
			f, st := inheritedControl(t, path)
			defer os.Remove(path)
			ino := st.Ino
			if tc.badIno {
				ino++
			}
			sockIno := fileSocketInode(t, f)
			if tc.removed {
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
			}
			cmd := helperproc.Command(t, "control-adopt", &helperproc.Options{
				Env:        []string{pc.Env(), fmt.Sprintf("HANDOFF_CONTROL_LISTEN=3:%d:%d", st.Dev, ino)},
				ExtraFiles: []*os.File{f},
				Args:       []string{path},
			})
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr syncBuffer
			cmd.Stderr = &stderr
			helperproc.Start(t, cmd)
			line := make([]byte, 6)
			_, rerr := io.ReadFull(stdout, line)
			if tc.wantErr != "" {
				stdin.Close()
				if err := cmd.Wait(); err == nil || !strings.Contains(stderr.String(), tc.wantErr) {
					t.Fatalf("master: %v, stderr:\n%s\nwant a failure saying %q", err, stderr.String(), tc.wantErr)
				}
				if inodeOf(t, path) != st.Ino {
					t.Errorf("socket file replaced")
				}
				return
			}
			if rerr != nil || string(line) != "ready\n" {
				t.Fatalf("master not ready (%q, %v):\n%s", line, rerr, stderr.String())
			}
			got, err := dialControl(t, path).Status()
			if err != nil {
				t.Fatal(err)
			}
			if got.PID != cmd.Process.Pid {
				t.Errorf("status from pid %d, want the adopting master %d", got.PID, cmd.Process.Pid)
			}
			if tc.removed {
				if holdsSocket(t, cmd.Process.Pid, sockIno) {
					t.Errorf("the master kept the inherited socket, whose file was removed")
				}
			} else if inodeOf(t, path) != st.Ino {
				t.Errorf("socket file replaced instead of adopted")
			}
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Fatalf("master: %v\n%s", err, stderr.String())
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket file left after the adopting master stopped: %v", err)
			}
		})
	}
}

// TestControlClientAfterTimeout: once a request timed out, its answer may
// still arrive; the client must not take it for the next request's. The
// fake master answers the timed-out restart late with "ok" and would
// refuse the scale that follows; the scale must fail, not succeed.
func TestControlClientAfterTimeout(t *testing.T) {
	fdcensus.Verify(t)
	path := filepath.Join(shortDir(t), "s")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	late := make(chan struct{})     // the client gave up on the restart
	answered := make(chan error, 1) // the late answer is written
	served := make(chan []string, 1)
	go func() {
		var got []string
		defer func() { served <- got }()
		conn, err := ul.AcceptUnix()
		if err != nil {
			answered <- err
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		r := ipcframe.NewReader(conn, nil)
		w := ipcframe.NewWriter(conn, nil)
		req, err := r.ReadFrame(nil)
		if err != nil {
			answered <- err
			return
		}
		got = append(got, string(req))
		<-late
		// Fails (EPIPE) if the client closed the connection on its timeout.
		_ = w.WriteFrame([]byte(`{"type":"ok"}`))
		answered <- nil
		// A request after that would be refused.
		if req, err = r.ReadFrame(nil); err == nil {
			got = append(got, string(req))
			_ = w.WriteFrame([]byte(`{"type":"error","code":"invalid","error":"refused"}`))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cluster.DialControl(ctx, path, &cluster.ControlOptions{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Restart(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("restart with no answer: %v, want a timeout", err)
	}
	close(late)
	if err := <-answered; err != nil {
		t.Fatalf("fake master: %v", err)
	}
	if err := c.Scale(3); !errors.Is(err, net.ErrClosed) {
		t.Errorf("scale after a timed-out request: %v, want an error matching net.ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case got := <-served:
		if diff := cmp.Diff([]string{`{"type":"restart"}`}, got); diff != "" {
			t.Errorf("requests the master read (-want +got):\n%s", diff)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fake master still running")
	}
}

// TestControlIdleClientsMakeRoom: clients that keep idle connections open
// do not lock others out. With every place taken by an idle connection, a
// new client is answered at once and the longest idle connection is
// closed; a ControlClient whose idle connection was closed sends its next
// request on a new one.
func TestControlIdleClientsMakeRoom(t *testing.T) {
	fdcensus.Verify(t)
	path := controlPath(t)
	var statuses atomic.Int64
	stop, err := cluster.ServeControlSocket(path, func() *cluster.ControlStatus {
		statuses.Add(1)
		return &cluster.ControlStatus{PID: 1, Generation: 1, Slots: []cluster.ControlSlot{}}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	status := func(what string, c *cluster.ControlClient) {
		t.Helper()
		if _, err := c.Status(); err != nil {
			t.Fatalf("%s: status: %v", what, err)
		}
	}

	// The oldest idle connection: a raw one, to see it closed.
	raw, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	r, w := ipcframe.NewReader(raw, nil), ipcframe.NewWriter(raw, nil)
	if err := w.WriteFrame([]byte(`{"type":"status"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadFrame(nil); err != nil {
		t.Fatalf("raw status: %v", err)
	}
	const places = 8 // maxControlClients
	var cs []*cluster.ControlClient
	for i := range places - 1 {
		cs = append(cs, dialControl(t, path))
		status(fmt.Sprintf("client %d", i), cs[i])
	}
	// Every place is idle: without room made, this one would wait for the
	// 30 s idle timeout, past its 5 s.
	cs = append(cs, dialControl(t, path))
	status("client beyond the limit", cs[places-1])
	if _, err := r.ReadFrame(nil); !errors.Is(err, io.EOF) {
		t.Fatalf("longest idle connection: read %v, want EOF (closed for the new client)", err)
	}
	// cs[0] is now the longest idle: one more client closes it, and cs[0]
	// dials again for its next request (closing cs[1]'s, and so on).
	cs = append(cs, dialControl(t, path))
	status("second client beyond the limit", cs[places])
	for i, c := range cs {
		status(fmt.Sprintf("client %d after its connection was closed", i), c)
	}
	if got, want := statuses.Load(), int64(1+2*len(cs)); got != want {
		t.Errorf("status requests answered: %d, want %d", got, want)
	}
}

// TestControlBusyClientsKeepTheirPlaces: clients polling the master back to
// back are never closed for a newcomer: only a connection idle for a while
// with no request queued gives its place up. A ninth client then waits (and
// here gives up); none of the eight fails a request.
func TestControlBusyClientsKeepTheirPlaces(t *testing.T) {
	fdcensus.Verify(t)
	path := controlPath(t)
	stop, err := cluster.ServeControlSocket(path, func() *cluster.ControlStatus {
		return &cluster.ControlStatus{PID: 1, Generation: 1, Slots: []cluster.ControlSlot{}}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	const places = 8 // maxControlClients
	var (
		wg           sync.WaitGroup
		ok, failures atomic.Int64
		firstErr     atomic.Value
	)
	end := time.Now().Add(1500 * time.Millisecond)
	for range places {
		c := dialControl(t, path)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1<<20 && time.Now().Before(end); i++ {
				if _, err := c.Status(); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				ok.Add(1)
			}
		}()
	}
	// Newcomers during the polling: each gives up after 200 ms.
	for i := 0; i < 50 && time.Now().Before(end); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := cluster.DialControl(ctx, path, &cluster.ControlOptions{Timeout: 200 * time.Millisecond})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Status()
		c.Close()
	}
	wg.Wait()
	if n := failures.Load(); n != 0 || ok.Load() == 0 {
		t.Errorf("polling clients: %d requests answered, %d failed (first: %v); want none failed", ok.Load(), n, firstErr.Load())
	}
}

// fileSocketInode returns the socket inode of f (what /proc/PID/fd shows
// as socket:[N]).
func fileSocketInode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	raw, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return st.Ino
}

// holdsSocket reports whether process pid has a descriptor of socket inode
// ino.
func holdsSocket(t *testing.T, pid int, ino uint64) bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("socket:[%d]", ino)
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == want {
			return true
		}
	}
	return false
}
