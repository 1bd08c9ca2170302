//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/scmrights"
	"github.com/handoff-go/handoff/supervise"
)

// TestMasterKilled: when the master is SIGKILLed its workers die within a
// second (Pdeathsig, which survives the exec shim) and the listening socket
// is gone with them, so the port is free again (TESTPLAN C8).
func TestMasterKilled(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m := startMaster(t, pc, nil, append([]string{"-n", "3", "-listen", "127.0.0.1:0", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	workers := m.workers()
	if len(workers) != 3 {
		t.Fatalf("workers %v, want 3", workers)
	}
	_, port, _ := net.SplitHostPort(addr)
	inode, err := listeningInode(port)
	if err != nil || inode == "" {
		t.Fatalf("no listening socket on port %s: %q, %v", port, inode, err)
	}
	m.signal(syscall.SIGKILL)
	m.wait(5 * time.Second)
	if err := pc.WaitGone(time.Second); err != nil {
		t.Errorf("workers outlived the master by more than 1 s: %v", err)
	}
	// By the socket's inode, not by binding the port again: packages'
	// tests run in parallel, and another one's connection may have taken
	// the freed port as its ephemeral local port meanwhile.
	if !waitFor(time.Second, func() bool { in, err := listeningInode(port); return err == nil && in != inode }) {
		t.Errorf("the master's listening socket (inode %s) outlived it", inode)
	}
}

// listeningInode returns the inode of the TCP socket listening on port
// (decimal) in this network namespace, "" if there is none.
func listeningInode(port string) (string, error) {
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", err
	}
	suffix := fmt.Sprintf(":%04X", p)
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			return "", err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(line)
			if len(f) > 9 && f[3] == "0A" && strings.HasSuffix(f[1], suffix) { // 0A: LISTEN
				return f[9], nil
			}
		}
	}
	return "", nil
}

// TestPythonWorker runs examples/pyworker (LISTEN_FDS and NOTIFY_SOCKET
// from Python's standard library) through a restart and a stop.
func TestPythonWorker(t *testing.T) {
	fdcensus.Verify(t)
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is required (CI installs it): %v", err)
	}
	script, err := filepath.Abs("../../examples/pyworker/worker.py")
	if err != nil {
		t.Fatal(err)
	}
	pc := proccensus.New(t)
	m := startMaster(t, pc, nil, "-n", "2", "-listen", "127.0.0.1:0", "-shutdown-timeout", "5s", "--", py, script)
	addr := m.waitReady()
	res := loadclient.Run(context.Background(), loadclient.Options{Addr: addr, NewConn: 4, Requests: 200, Header: "X-Worker"})
	if res.OK != res.Sent || res.Sent != 200 {
		t.Errorf("python workers: %v; %q", res, res.Errors)
	}
	m.signal(syscall.SIGHUP)
	if !waitFor(10*time.Second, func() bool {
		return strings.Contains(m.log.String(), `"python worker serving"`) && len(genSeen(addr, 2)) > 0
	}) {
		t.Errorf("no generation 2 python worker answered after SIGHUP")
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// genSeen returns the X-Worker tags of generation gen among a few replies.
func genSeen(addr string, gen int) []string {
	var out []string
	for i := 0; i < 10; i++ {
		_, tag, err := get(addr, "/")
		if err == nil && strings.HasSuffix(tag, ":"+strconv.Itoa(gen)) {
			out = append(out, tag)
		}
	}
	return out
}

func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}

// TestHelloExample builds examples/hello and runs it standalone and under
// mini-cluster.
func TestHelloExample(t *testing.T) {
	fdcensus.Verify(t)
	hello := buildHello(t)
	pc := proccensus.New(t)

	// Standalone: binds -addr itself.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := ln.Addr().String()
	ln.Close()
	alone := exec.Command(hello, "-addr", free)
	alone.Env = append(os.Environ(), pc.Env())
	helperproc.Start(t, alone)
	if !waitFor(10*time.Second, func() bool { _, _, err := get(free, "/"); return err == nil }) {
		t.Fatalf("standalone hello never answered on %s", free)
	}
	alone.Process.Signal(syscall.SIGTERM)
	if err := alone.Wait(); err != nil {
		t.Errorf("standalone hello: %v", err)
	}

	m := startMaster(t, pc, nil, "-n", "2", "-listen", "127.0.0.1:0", "--", hello)
	addr := m.waitReady()
	body, _, err := get(addr, "/")
	if err != nil || !strings.Contains(body, "generation 1") {
		t.Errorf("hello under mini-cluster: %q, %v", body, err)
	}
	// Restarts under load lose nothing with the example's drain logic.
	// The load lasts until a restart is done, however long a loaded
	// machine takes to start the new workers.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan loadclient.Result)
	go func() {
		done <- loadclient.Run(ctx, loadclient.Options{Addr: addr, NewConn: 8, KeepAlive: 8, Requests: 100000, Duration: 20 * time.Second, Pause: 2 * time.Millisecond, Header: "X-Worker"})
	}()
	for i := 0; i < 2; i++ {
		time.Sleep(700 * time.Millisecond)
		m.signal(syscall.SIGHUP)
	}
	// Every restart begun has ended (the second SIGHUP may have been
	// coalesced into the first).
	if !waitFor(15*time.Second, func() bool {
		l := m.log.String()
		begun := strings.Count(l, `msg="restart begun"`)
		return begun > 0 && strings.Count(l, `msg="restart done"`)+strings.Count(l, `msg="restart failed`) == begun
	}) {
		t.Errorf("restarts not over within 15 s of the SIGHUPs")
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	res := <-done
	t.Logf("restarts under load: %v, generations %v", res, keys(generations(res.Values)))
	if res.Failed() != 0 || len(generations(res.Values)) < 2 {
		t.Errorf("hello restarted under load: %v, generations %v; %q", res, keys(generations(res.Values)), res.Errors)
	}
	// Worker output reaches the master's output prefixed with slot and pid.
	if !waitFor(5*time.Second, func() bool {
		return regexp.MustCompile(`\[[01] \d+\] .*hello: pid \d+ serving`).MatchString(m.log.String())
	}) {
		t.Errorf("worker output not prefixed with [slot pid]:\n%s", m.log.String())
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func buildHello(t testing.TB) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build examples/hello: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "hello")
	out, err := exec.Command(goTool, "build", "-o", bin, "../../examples/hello").CombinedOutput()
	if err != nil {
		t.Fatalf("go build examples/hello: %v\n%s", err, out)
	}
	return bin
}

// TestPIDFile: written once the cluster is ready, locked so a second
// instance refuses to start, removed on exit (TESTPLAN D1, D4).
func TestPIDFile(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "mc.pid")
	m := startMaster(t, pc, nil, append([]string{"-n", "1", "-listen", "127.0.0.1:0", "-pid-file", pidFile, "--"}, fakeSrvCmd(t)...)...)
	m.waitReady()
	pid, live, err := supervise.ReadPIDFile(pidFile)
	if err != nil || !live || pid != m.cmd.Process.Pid {
		t.Errorf("pid file: pid %d live %v err %v, want %d live", pid, live, err, m.cmd.Process.Pid)
	}
	second := startMaster(t, pc, nil, append([]string{"-n", "1", "-listen", "127.0.0.1:0", "-pid-file", pidFile, "--"}, fakeSrvCmd(t)...)...)
	if code := second.wait(10 * time.Second); code != 1 || !strings.Contains(second.log.String(), "locked") {
		t.Errorf("second instance: exit %d, want 1 with a lock error:\n%s", code, second.log.String())
	}
	m.signal(syscall.SIGTERM)
	m.wait(15 * time.Second)
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left after a clean exit: %v", err)
	}
}

// TestNotifyAttribution: READY=1 from a descendant of a worker (its
// grandchild, alive while the master attributes it) counts for that worker; a message from an unrelated process is ignored and logged.
func TestNotifyAttribution(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatalf("python3 is required: %v", err)
	}
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m := startMaster(t, pc, []string{"SRV_READY_CHILD=1"}, append([]string{"-n", "2", "-listen", "127.0.0.1:0", "--"}, fakeSrvCmd(t)...)...)
	// Only reachable if the READY=1 of each worker's grandchild counted;
	// the grandchild is still alive when the master reads its ancestry.
	addr := m.waitReady()
	if !strings.Contains(m.log.String(), "child says ready") {
		t.Errorf("STATUS from the worker's grandchild not logged")
	}
	if strings.Contains(m.log.String(), "sender exited before") {
		t.Errorf("the grandchild was gone before its message was read: attribution not exercised")
	}
	body, _, err := get(addr, "/env")
	if err != nil {
		t.Fatal(err)
	}
	ns := envOf(body)["NOTIFY_SOCKET"]
	name := ns
	if strings.HasPrefix(ns, "@") {
		name = "\x00" + ns[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("READY=1\nSTATUS=impostor"))
	c.Close()
	if !waitFor(5*time.Second, func() bool {
		return strings.Contains(m.log.String(), "not a worker ignored") && strings.Contains(m.log.String(), "sender="+strconv.Itoa(os.Getpid()))
	}) {
		t.Errorf("message from the test process not reported as ignored")
	}
	if strings.Contains(m.log.String(), "impostor") {
		t.Errorf("impostor's STATUS was attributed to a worker")
	}
	m.signal(syscall.SIGTERM)
	m.wait(15 * time.Second)
}

// startActivated starts mini-cluster the way systemd would: fd 3 is files[0]
// and LISTEN_PID is the master's own pid, which the exec shim sets before
// becoming the master.
func startActivated(t *testing.T, pc *proccensus.Census, files []*os.File, notify string, args ...string) *master {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{cluster.ShimArg, bin, bin, "-test.run=^$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), helperproc.RoleVar+"=mini-cluster", pc.Env(),
		"LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES=web", "NOTIFY_SOCKET="+notify)
	cmd.ExtraFiles = files
	return startCmd(t, cmd)
}

// TestSystemdActivation: started by systemd, mini-cluster adopts the
// passed socket instead of binding, and reports READY=1, RELOADING=1 and
// STOPPING=1 to its own NOTIFY_SOCKET; garbage in place of a socket is a
// clear error with no worker started (TESTPLAN A20).
func TestSystemdActivation(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	nsPath := filepath.Join(t.TempDir(), "n")
	uc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: nsPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	sd, err := scmrights.NewConn(uc)
	if err != nil {
		t.Fatal(err)
	}
	sd.SetPassCred(true)
	msgs := make(chan string, 16)
	go func() {
		m := scmrights.Message{Payload: make([]byte, 4096)}
		for sd.RecvMsg(&m) == nil {
			msgs <- string(m.Payload[:m.N]) + fmt.Sprintf(" [pid %d]", m.Cred.PID)
		}
		close(msgs)
	}()
	expect := func(prefix string) {
		t.Helper()
		select {
		case s := <-msgs:
			if !strings.HasPrefix(s, prefix) {
				t.Errorf("systemd got %q, want %q first", s, prefix)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("systemd got no %q", prefix)
		}
	}
	m := startActivated(t, pc, []*os.File{lf}, nsPath, append([]string{"-n", "2", "-listen", "127.0.0.1:1", "--"}, fakeSrvCmd(t)...)...)
	m.waitReady()
	expect("READY=1\nMAINPID=" + strconv.Itoa(m.cmd.Process.Pid))
	if !strings.Contains(m.log.String(), "adopted=true") || !strings.Contains(m.log.String(), "name=web") {
		t.Errorf("socket not adopted:\n%s", m.log.String())
	}
	if _, _, err := get(ln.Addr().String(), "/"); err != nil {
		t.Errorf("adopted socket not served: %v", err)
	}
	m.signal(syscall.SIGHUP)
	expect("RELOADING=1\nMONOTONIC_USEC=")
	expect("READY=1")
	m.signal(syscall.SIGTERM)
	expect("STOPPING=1")
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	sd.Close()

	// Garbage instead of a socket: a regular file, then a connected socket.
	garbage, err := os.CreateTemp(t.TempDir(), "g")
	if err != nil {
		t.Fatal(err)
	}
	defer garbage.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cf, err := conn.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer cf.Close()
	for _, f := range []*os.File{garbage, cf} {
		g := startActivated(t, pc, []*os.File{f}, "", append([]string{"-n", "2", "--"}, fakeSrvCmd(t)...)...)
		if code := g.wait(10 * time.Second); code != 1 {
			t.Errorf("%s as fd 3: exit %d, want 1", f.Name(), code)
		}
		out := g.log.String()
		if !strings.Contains(out, "socket-activation") || strings.Contains(out, "starting workers") {
			t.Errorf("%s as fd 3: want a socket-activation error and no workers:\n%s", f.Name(), out)
		}
	}
}

// TestSecondSignalKills: workers that ignore SIGTERM hold a graceful stop
// for -shutdown-timeout; a second SIGTERM kills them at once.
func TestSecondSignalKills(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m := startMaster(t, pc, nil, "-n", "2", "-ready", "started", "-shutdown-timeout", "60s", "-listen", "127.0.0.1:0", "--",
		"sh", "-c", `trap "" TERM INT; echo trapped; while :; do sleep 0.1; done`)
	m.waitReady()
	// Started is not the same as having ignored SIGTERM yet.
	if !waitFor(10*time.Second, func() bool { return strings.Count(m.log.String(), "] trapped") == 2 }) {
		t.Fatal("workers did not install their trap")
	}
	m.signal(syscall.SIGTERM)
	if !waitFor(5*time.Second, func() bool { return strings.Contains(m.log.String(), "stopping workers gracefully") }) {
		t.Fatal("first SIGTERM not acted on")
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if !strings.Contains(m.log.String(), "killing workers") {
		t.Errorf("second SIGTERM not logged as a kill")
	}
}

// TestScaleSignalsAndJSONLog: SIGTTIN and SIGTTOU add and remove a worker;
// with -log-format json every line on stderr is a JSON record, worker
// output included (with slot and pid).
func TestScaleSignalsAndJSONLog(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m := startMaster(t, pc, nil, "-n", "2", "-ready", "started", "-log-format", "json", "-listen", "127.0.0.1:0", "--",
		"sh", "-c", `echo "worker $HANDOFF_WORKER_ID of $HANDOFF_WORKERS says hi"; exec sleep 60`)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(m.log.String(), `"msg":"cluster ready"`) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	count := func() int { return len(m.workers()) }
	if !waitFor(5*time.Second, func() bool { return count() == 2 }) {
		t.Fatalf("%d workers, want 2", count())
	}
	m.signal(syscall.SIGTTIN)
	if !waitFor(5*time.Second, func() bool { return count() == 3 }) {
		t.Errorf("after SIGTTIN: %d workers, want 3", count())
	}
	// Before scaling down: slot 2 is the first to go.
	if !waitFor(5*time.Second, func() bool { return strings.Contains(m.log.String(), `"msg":"worker 2 of 3 says hi","slot":2`) }) {
		t.Errorf("worker output not logged as a record with its slot")
	}
	// Identical pending signals merge in the kernel: one at a time.
	for want := 2; want >= 1; want-- {
		m.signal(syscall.SIGTTOU)
		if !waitFor(5*time.Second, func() bool { return count() == want }) {
			t.Errorf("after SIGTTOU: %d workers, want %d", count(), want)
		}
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	for _, line := range strings.Split(strings.TrimSpace(m.log.String()), "\n") {
		if !strings.HasPrefix(line, "{") || !strings.HasSuffix(line, "}") {
			t.Errorf("not a JSON record: %q", line)
		}
	}
}

// TestUnixListenerInUse: a live socket at a unix:// path is never unlinked;
// start-up fails instead (TESTPLAN B2 for service sockets).
func TestUnixListenerInUse(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(t.TempDir(), "s")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	m := startMaster(t, pc, nil, append([]string{"-listen", "unix://" + path, "--"}, fakeSrvCmd(t)...)...)
	if code := m.wait(10 * time.Second); code != 1 || !strings.Contains(m.log.String(), "in use") {
		t.Errorf("exit %d, want 1 with \"in use\":\n%s", code, m.log.String())
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Errorf("the live socket was disturbed: %v", err)
	} else {
		c.Close()
	}

	// A stale socket file (its owner died without unlinking it) is
	// replaced (TESTPLAN B1).
	stale := filepath.Join(t.TempDir(), "s")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	m = startMaster(t, pc, nil, append([]string{"-n", "1", "-listen", "unix://" + stale, "--"}, fakeSrvCmd(t)...)...)
	m.waitReady()
	c, err = net.Dial("unix", stale)
	if err != nil {
		t.Errorf("stale socket not replaced: %v", err)
	} else {
		c.Close()
	}
	m.signal(syscall.SIGTERM)
	m.wait(15 * time.Second)
}
