//go:build linux

// The tests run worker.py as systemd or mini-cluster would: the listener as
// descriptor 3, LISTEN_FDS and LISTEN_PID, NOTIFY_SOCKET (a datagram socket
// the test reads) and WATCHDOG_USEC/WATCHDOG_PID.

package pyworker_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/syncbuf"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{"activate": roleActivate})
}

// reserved are the variables roleActivate sets itself; inherited values
// (the test may run under systemd) are dropped.
var reserved = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", helperproc.RoleVar}

// roleActivate does what systemd does between fork and exec: it execs
// PROGRAM ARGS... with descriptor 3 kept and LISTEN_PID naming its own pid,
// which execve keeps (worker.py ignores LISTEN_FDS meant for another
// process). Its arguments are KEY=VALUE... -- PROGRAM ARGS...; a value
// "self" becomes the pid too, and a LISTEN_PID there replaces the default.
func roleActivate() int {
	args := helperproc.Args()
	i := slices.Index(args, "--")
	if i < 0 || i == len(args)-1 {
		fmt.Fprintln(os.Stderr, "activate: usage: KEY=VALUE... -- PROGRAM ARGS...")
		return 2
	}
	pid := strconv.Itoa(os.Getpid())
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return slices.Contains(reserved, k)
	})
	listenPID := "LISTEN_PID=" + pid
	for _, kv := range args[:i] {
		k, v, _ := strings.Cut(kv, "=")
		if v == "self" {
			kv = k + "=" + pid
		}
		if k == "LISTEN_PID" {
			// One entry only: with duplicates, which one a program sees
			// depends on its libc or runtime.
			listenPID = kv
			continue
		}
		env = append(env, kv)
	}
	env = append(env, listenPID)
	err := unix.Exec(args[i+1], args[i+1:], env)
	fmt.Fprintf(os.Stderr, "activate: exec %s: %v\n", args[i+1], err)
	return 127
}

type syncBuffer = syncbuf.Buffer

// notes receives sd_notify datagrams.
type notes struct {
	conn *net.UnixConn
	done chan struct{}
	mu   sync.Mutex
	got  []string
}

func listenNotify(t *testing.T, path string) *notes {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notes{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return // closed
			}
			n.mu.Lock()
			n.got = append(n.got, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	t.Cleanup(n.close)
	return n
}

// close closes the socket, as a master that is gone does, and waits for
// the reader. It is idempotent.
func (n *notes) close() {
	n.conn.Close()
	<-n.done
}

// count returns how many datagrams carry the line want.
func (n *notes) count(want string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, d := range n.got {
		if slices.Contains(strings.Split(d, "\n"), want) {
			c++
		}
	}
	return c
}

// worker is worker.py run by roleActivate.
type worker struct {
	cmd            *exec.Cmd
	addr           string
	stdout, stderr *syncBuffer
	exited         chan struct{}
	waitErr        error
}

// startWorker runs worker.py with a fresh loopback listener as descriptor 3
// and settings (KEY=VALUE) in its environment; LISTEN_FDS is 1 unless
// settings say otherwise.
func startWorker(t *testing.T, pc *proccensus.Census, settings ...string) *worker {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found in PATH; worker.py cannot run (CI installs it: .ci/install-deps)")
	}
	script, err := filepath.Abs("worker.py")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.File()
	ln.Close() // f keeps the socket listening
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the child has its copy
	args := append([]string{}, settings...)
	if !slices.ContainsFunc(settings, func(kv string) bool { return strings.HasPrefix(kv, "LISTEN_FDS=") }) {
		args = append(args, "LISTEN_FDS=1")
	}
	args = append(append(args, "--"), py, script)
	w := &worker{
		cmd:    helperproc.Command(t, "activate", &helperproc.Options{Env: []string{pc.Env()}, ExtraFiles: []*os.File{f}, Args: args}),
		addr:   ln.Addr().String(),
		stdout: &syncBuffer{},
		stderr: &syncBuffer{},
		exited: make(chan struct{}),
	}
	w.cmd.Stdout = w.stdout
	w.cmd.Stderr = w.stderr
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		w.waitErr = w.cmd.Wait()
		close(w.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-w.exited:
		default:
			_ = w.cmd.Process.Kill()
			<-w.exited
		}
	})
	return w
}

// get sends one request and returns the answer.
func (w *worker) get() (string, error) {
	c, err := net.DialTimeout("tcp", w.addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(bufio.NewReader(c))
	return string(b), err
}

// mustServe checks that the worker answers a request itself.
func (w *worker) mustServe(t *testing.T) {
	t.Helper()
	got, err := w.get()
	want := fmt.Sprintf("hello from python pid %d ", w.cmd.Process.Pid)
	if err != nil || !strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n") || !strings.Contains(got, want) {
		t.Fatalf("request: %q, %v; want a 200 containing %q (stderr: %s)", got, err, want, w.stderr)
	}
}

// stop sends SIGTERM and returns the exit code.
func (w *worker) stop(t *testing.T) int {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("worker.py ignored SIGTERM for 15 s (stderr: %s)", w.stderr)
	}
	var ee *exec.ExitError
	if w.waitErr != nil && !errors.As(w.waitErr, &ee) {
		t.Fatal(w.waitErr)
	}
	return w.cmd.ProcessState.ExitCode()
}

// waitFor polls cond every 10 ms for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// shortDir returns a fresh directory with a short path: unix socket paths
// hold 107 bytes, and t.TempDir embeds the test name.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pyw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

const notifyFailure = "worker.py: NOTIFY_SOCKET="

// TestWorker runs worker.py under the variables systemd and mini-cluster
// set, and checks what it sends on NOTIFY_SOCKET, that it serves, and that
// SIGTERM ends it with status 0.
func TestWorker(t *testing.T) {
	tests := []struct {
		name     string
		settings []string // KEY=VALUE; NOTIFY_SOCKET is added unless notify is "missing"
		notify   string   // "listen", "missing" (the path does not exist), "gone" (closed before SIGTERM)
		// wantPings: WATCHDOG=1 arrives again and again; otherwise never.
		wantPings bool
		// wantLogged: lines on stderr reporting a failed notification (logged once, however many fail).
		wantLogged int
	}{
		{name: "watchdog", settings: []string{"WATCHDOG_USEC=300000", "WATCHDOG_PID=self"}, notify: "listen", wantPings: true},
		// A period (10 ms) far below worker.py's 0.2 s poll.
		{name: "short watchdog", settings: []string{"WATCHDOG_USEC=30000", "WATCHDOG_PID=self"}, notify: "listen", wantPings: true},
		{name: "watchdog without WATCHDOG_PID", settings: []string{"WATCHDOG_USEC=300000"}, notify: "listen", wantPings: true},
		{name: "WATCHDOG_PID names another process", settings: []string{"WATCHDOG_USEC=300000", "WATCHDOG_PID=1"}, notify: "listen"},
		{name: "WATCHDOG_USEC=0", settings: []string{"WATCHDOG_USEC=0", "WATCHDOG_PID=self"}, notify: "listen"},
		{name: "no watchdog", notify: "listen"},
		{name: "NOTIFY_SOCKET missing", settings: []string{"WATCHDOG_USEC=300000", "WATCHDOG_PID=self"}, notify: "missing", wantLogged: 1},
		{name: "NOTIFY_SOCKET relative", settings: []string{"WATCHDOG_USEC=300000", "WATCHDOG_PID=self", "NOTIFY_SOCKET=notify.sock"}, notify: "none", wantLogged: 1},
		{name: "master gone before SIGTERM", settings: []string{"WATCHDOG_USEC=300000", "WATCHDOG_PID=self"}, notify: "gone", wantPings: true, wantLogged: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			path := filepath.Join(shortDir(t), "notify")
			settings := tt.settings
			var n *notes
			switch tt.notify {
			case "listen", "gone":
				n = listenNotify(t, path)
				settings = append(settings, "NOTIFY_SOCKET="+path)
			case "missing":
				settings = append(settings, "NOTIFY_SOCKET="+path)
			}
			w := startWorker(t, pc, settings...)
			if n != nil && !waitFor(15*time.Second, func() bool { return n.count("READY=1") > 0 }) {
				t.Fatalf("no READY=1 within 15 s (stderr: %s)", w.stderr)
			}
			w.mustServe(t)
			if tt.wantPings {
				// Several in a row: the pings go on while the loop idles
				// and after it served a request.
				if !waitFor(20*time.Second, func() bool { return n.count("WATCHDOG=1") >= 5 }) {
					t.Errorf("WATCHDOG=1 arrived %d times in 20 s, want 5 or more", n.count("WATCHDOG=1"))
				}
			} else if n != nil {
				// Long enough for three pings were they (wrongly) sent.
				time.Sleep(time.Second)
			}
			if tt.notify == "gone" {
				n.close()
				os.Remove(path)
				w.mustServe(t)
			}
			if code := w.stop(t); code != 0 {
				t.Errorf("exit status after SIGTERM: %d, want 0 (stderr: %s)", code, w.stderr)
			}
			stderr := w.stderr.String()
			if strings.Contains(stderr, "Traceback") {
				t.Errorf("worker.py crashed:\n%s", stderr)
			}
			if got := strings.Count(stderr, notifyFailure); got != tt.wantLogged {
				t.Errorf("notify failures logged %d times, want %d; stderr:\n%s", got, tt.wantLogged, stderr)
			}
			if n == nil {
				return
			}
			if tt.notify == "listen" && !waitFor(5*time.Second, func() bool { return n.count("STOPPING=1") > 0 }) {
				t.Errorf("no STOPPING=1 after SIGTERM")
			}
			n.close()
			got := map[string]int{"READY=1": n.count("READY=1"), "STATUS=python worker serving": n.count("STATUS=python worker serving")}
			want := map[string]int{"READY=1": 1, "STATUS=python worker serving": 1}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("notifications (-want +got):\n%s", diff)
			}
			if pings := n.count("WATCHDOG=1"); !tt.wantPings && pings != 0 {
				t.Errorf("WATCHDOG=1 sent %d times, want none", pings)
			}
		})
	}
}

// TestOthersDescriptorsIgnored: LISTEN_FDS meant for another process
// (LISTEN_PID is not this one, as in a child that inherited the variables)
// are not adopted; worker.py says so and exits 1 without notifying
// (TESTPLAN A20).
func TestOthersDescriptorsIgnored(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(shortDir(t), "notify")
	n := listenNotify(t, path)
	w := startWorker(t, pc, "LISTEN_PID=1", "NOTIFY_SOCKET="+path)
	select {
	case <-w.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("worker.py still runs after 15 s")
	}
	if code := w.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	if stderr := w.stderr.String(); !strings.Contains(stderr, "worker.py: no LISTEN_FDS for this process") {
		t.Errorf("stderr %q, want the reason", stderr)
	}
	n.close()
	if got := n.count("READY=1"); got != 0 {
		t.Errorf("READY=1 sent %d times, want none", got)
	}
}

// TestListenFDsBeyondPassed: LISTEN_FDS counting more descriptors than
// were passed (only 3 is open) is logged, and the worker serves its first
// socket; it used to die of EBADF closing the others.
func TestListenFDsBeyondPassed(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	w := startWorker(t, pc, "LISTEN_FDS=3")
	w.mustServe(t)
	if code := w.stop(t); code != 0 {
		t.Errorf("exit status after SIGTERM: %d, want 0 (stderr: %s)", code, w.stderr)
	}
	stderr := w.stderr.String()
	if strings.Contains(stderr, "Traceback") {
		t.Errorf("worker.py crashed:\n%s", stderr)
	}
	for _, fd := range []string{"4", "5"} {
		if !strings.Contains(stderr, "worker.py: descriptor "+fd+": ") {
			t.Errorf("stderr does not mention descriptor %s:\n%s", fd, stderr)
		}
	}
}

// TestAcceptEMFILE: accept failing with EMFILE leaves the connection queued;
// the worker logs it, backs off instead of crashing or spinning, and answers
// once descriptors are available again (TESTPLAN E1).
func TestAcceptEMFILE(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(shortDir(t), "notify")
	n := listenNotify(t, path)
	// No watchdog: idle, the worker then opens no descriptor, so the lowest
	// free one stays free.
	w := startWorker(t, pc, "NOTIFY_SOCKET="+path)
	if !waitFor(15*time.Second, func() bool { return n.count("READY=1") > 0 }) {
		t.Fatalf("no READY=1 within 15 s (stderr: %s)", w.stderr)
	}
	pid := w.cmd.Process.Pid
	// The datagram socket that sent READY=1 may still be open for a
	// moment after the message arrived: wait until the lowest free
	// descriptor holds still, or the limit below would leave one free.
	free := lowestFreeFD(t, pid)
	for i := 0; i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
		now := lowestFreeFD(t, pid)
		if now == free {
			break
		}
		free = now
	}
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(os.NewSyscallError("prlimit", err))
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(free), Max: old.Max}, nil); err != nil {
		t.Fatal(os.NewSyscallError("prlimit", err))
	}
	type reply struct {
		s   string
		err error
	}
	ch := make(chan reply, 1)
	go func() {
		s, err := w.get()
		ch <- reply{s, err}
	}()
	if !waitFor(15*time.Second, func() bool { return strings.Contains(w.stderr.String(), "worker.py: accept: [Errno 24]") }) {
		t.Errorf("no accept EMFILE logged within 15 s; stderr:\n%s", w.stderr)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
		t.Fatal(os.NewSyscallError("prlimit", err))
	}
	r := <-ch // bounded by get's deadlines
	want := fmt.Sprintf("hello from python pid %d ", pid)
	if r.err != nil || !strings.Contains(r.s, want) {
		t.Errorf("queued request after EMFILE: %q, %v; want an answer containing %q", r.s, r.err, want)
	}
	w.mustServe(t)
	if code := w.stop(t); code != 0 {
		t.Errorf("exit status after SIGTERM: %d, want 0", code)
	}
	if stderr := w.stderr.String(); strings.Contains(stderr, "Traceback") {
		t.Errorf("worker.py crashed:\n%s", stderr)
	}
}

// lowestFreeFD returns the lowest descriptor number pid has not open: with
// RLIMIT_NOFILE at that number, its next open or accept fails with EMFILE.
func lowestFreeFD(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	open := map[int]bool{}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil {
			open[fd] = true
		}
	}
	fd := 0
	for open[fd] {
		fd++
	}
	return fd
}
