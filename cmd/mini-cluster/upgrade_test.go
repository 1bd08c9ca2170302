//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
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
	"github.com/valyala/fastjson"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// init answers the upgrade probe of a master upgrading to a copy of the
// test binary, as main does for mini-cluster (TestMain would take the
// argument for a test flag).
func init() {
	if args, ok := cluster.UpgradeProbeArgs(os.Args[1:]); ok {
		// The master's own arguments are the test binary's: its flags,
		// "--", then the role's (helperproc.Args).
		if i := slices.Index(args, "--"); i >= 0 {
			args = args[i+1:]
		}
		if err := stricterBuild(args); err != nil {
			fmt.Fprintf(os.Stderr, "mini-cluster: %v\n", err)
			os.Exit(exitUsage)
		}
		os.Exit(runProbe(args, os.Stdout, os.Stderr))
	}
	if state, ok := os.LookupEnv(forgeStateVar); ok {
		os.Exit(forgeExec(state))
	}
}

// stricterSuffix names the marker file that makes a copy of the test
// binary play a newer build with a stricter -shutdown-timeout bound: while
// BIN+stricterSuffix exists, the binary at BIN refuses -shutdown-timeout
// below 5 s, in the upgrade probe and at start-up alike (roleMaster).
const stricterSuffix = ".stricter"

// stricterBuild is that stricter build's check of args.
func stricterBuild(args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return nil
	}
	if _, err := os.Stat(exe + stricterSuffix); err != nil {
		return nil
	}
	for i, a := range args {
		if a == "--" {
			break
		}
		v, ok := strings.CutPrefix(a, "-shutdown-timeout=")
		if !ok && a == "-shutdown-timeout" && i+1 < len(args) {
			v, ok = args[i+1], true
		}
		if d, err := time.ParseDuration(v); ok && err == nil && d < 5*time.Second {
			return fmt.Errorf("-shutdown-timeout %v: want 5s to 24h", d)
		}
	}
	return nil
}

// forgeStateVar selects forgeExec in a re-executed test binary (before
// TestMain: the role variable, mini-cluster, stays for the new image).
const forgeStateVar = "UPGRADE_FORGE_STATE"

// forgeExec plays an old image that executes mini-cluster in place with
// leftovers: a listening socket on UPGRADE_FORGE_ADDR without
// close-on-exec, and four children in process groups of their own: two
// workers holding the socket (HANDOFF_WORKER_ID in their environment),
// one with a grandchild, then two helpers without either, the
// first of which the state may name in a "p" record. Their pids go to
// stderr ("FORGED CHILDREN a b c d"), then it executes itself with state,
// where %d stands for its pid, %f for the socket's descriptor and %p for
// the third child's pid.
func forgeExec(state string) int {
	os.Unsetenv(forgeStateVar)
	addr := os.Getenv("UPGRADE_FORGE_ADDR")
	os.Unsetenv("UPGRADE_FORGE_ADDR")
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "forge:", err)
		return 3
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fail(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		return fail(err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fail(err)
	}
	var pids []string
	for i, script := range []string{"exec sleep 60", "sleep 60 & exec sleep 60", "exec sleep 60", "exec sleep 60"} {
		c := exec.Command("/bin/sh", "-c", script)
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if i < 2 {
			c.ExtraFiles = []*os.File{f}
			c.Env = append(os.Environ(), "HANDOFF_WORKER_ID="+strconv.Itoa(i))
		}
		if err := c.Start(); err != nil {
			return fail(err)
		}
		pids = append(pids, strconv.Itoa(c.Process.Pid))
	}
	// After the children: every child would inherit it.
	fd := -1
	rc.Control(func(x uintptr) { fd, err = syscall.Dup(int(x)) }) // dup(2): no close-on-exec
	if err != nil {
		return fail(err)
	}
	fmt.Fprintln(os.Stderr, "FORGED CHILDREN", strings.Join(pids, " "))
	state = strings.ReplaceAll(state, "%d", strconv.Itoa(os.Getpid()))
	state = strings.ReplaceAll(state, "%f", strconv.Itoa(fd))
	state = strings.ReplaceAll(state, "%p", pids[2])
	self, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	return fail(syscall.Exec(self, os.Args, append(os.Environ(), "HANDOFF_UPGRADE_STATE="+state)))
}

// copyBinary copies the test binary to dst (mode 0755) by way of a
// temporary file renamed over dst, as a package manager replaces a binary:
// a running image keeps its old inode.
func copyBinary(t *testing.T, dst string) {
	t.Helper()
	src, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// upgradeDir makes a directory with a copy of the test binary (bin), for a
// master to be started from and upgraded to, and an open readiness gate
// (the SRV_READY_GATE file: removed, the next workers wait at it).
func upgradeDir(t *testing.T) (dir, bin, gate string) {
	t.Helper()
	dir = t.TempDir()
	bin = filepath.Join(dir, "mini-cluster")
	copyBinary(t, bin)
	gate = filepath.Join(dir, "gate")
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, bin, gate
}

// startMasterFrom starts mini-cluster from the binary at bin (a copy of the
// test binary), so the tests can replace or remove what the master was
// started from.
func startMasterFrom(t *testing.T, pc *proccensus.Census, bin string, env []string, args ...string) *master {
	t.Helper()
	cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{Env: append([]string{pc.Env()}, env...), Args: args})
	cmd.Path = bin
	cmd.Args[0] = bin
	return startCmd(t, cmd)
}

// upgradeShape is what an in-place upgrade must keep in the master: how
// many descriptors of each kind it holds, not counting those it shares
// with this test process (inherited from it: the new image drops what the
// master inherited from its parent, as it should), and the inodes of its
// sockets that are neither the notify socket (re-created by the new
// image) nor socketpairs to workers (new workers, new pairs): the
// listeners and the control socket.
func upgradeShape(t *testing.T, pid int) (map[string]int, []uint64, error) {
	t.Helper()
	snap, err := fdcensus.Take(pid)
	if err != nil {
		return nil, nil, err
	}
	self, err := fdcensus.Take(0)
	if err != nil {
		return nil, nil, err
	}
	shared := map[[2]uint64]bool{}
	for _, fd := range self {
		shared[[2]uint64{fd.Dev, fd.Ino}] = true
	}
	kinds := map[string]int{}
	var sockets []uint64
	named := namedSockets(t)
	for _, fd := range snap {
		if shared[[2]uint64{fd.Dev, fd.Ino}] {
			continue
		}
		k := fd.Target
		if i := strings.IndexByte(k, '['); i > 0 && !strings.HasPrefix(k, "anon_inode:") {
			k = k[:i]
		}
		kinds[k]++
		if k == "socket:" && named[fd.Ino] {
			sockets = append(sockets, fd.Ino)
		}
	}
	slices.Sort(sockets)
	return kinds, sockets, nil
}

// masterFDs describes pid's descriptors and children, for a failure
// message: each unix socket with its /proc/net/unix entry (type, state,
// bound path), so that a descriptor too many can be told apart, and each
// child with its command line.
func masterFDs(pid int) string {
	snap, err := fdcensus.Take(pid)
	if err != nil {
		return err.Error()
	}
	unixes := map[uint64]string{}
	if b, err := os.ReadFile("/proc/net/unix"); err == nil {
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// Num RefCount Protocol Flags Type St Inode [Path]
			f := strings.Fields(line)
			if len(f) < 7 {
				continue
			}
			if ino, err := strconv.ParseUint(f[6], 10, 64); err == nil {
				unixes[ino] = "unix type " + f[4] + " state " + f[5] + " " + strings.Join(f[7:], " ")
			}
		}
	}
	var b strings.Builder
	for _, fd := range slices.Sorted(maps.Keys(snap)) {
		d := snap[fd]
		fmt.Fprintf(&b, "fd %d: %s", fd, d.Target)
		if u, ok := unixes[d.Ino]; ok && strings.HasPrefix(d.Target, "socket:") {
			fmt.Fprintf(&b, " (%s)", u)
		}
		b.WriteByte('\n')
	}
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	for _, task := range tasks {
		kids, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/children")
		for _, kid := range strings.Fields(string(kids)) {
			cmdline, _ := os.ReadFile("/proc/" + kid + "/cmdline")
			fmt.Fprintf(&b, "child %s: %q\n", kid, strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"))
		}
	}
	return b.String()
}

// namedSockets returns the inodes of inet sockets and of unix sockets
// bound to a path other than a master's notify socket
// (.../handoff-*/notify).
func namedSockets(t *testing.T) map[uint64]bool {
	t.Helper()
	out := map[uint64]bool{}
	for _, name := range []string{"tcp", "tcp6", "udp", "udp6", "unix"} {
		f, err := os.Open("/proc/net/" + name)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			col := 9 // inet: inode
			if name == "unix" {
				if len(fs) < 8 || (strings.HasSuffix(fs[7], "/notify") && strings.Contains(fs[7], "/handoff-")) {
					continue
				}
				col = 6
			}
			if len(fs) <= col {
				continue
			}
			if ino, err := strconv.ParseUint(fs[col], 10, 64); err == nil {
				out[ino] = true
			}
		}
		f.Close()
	}
	return out
}

// workerInodes asks a worker, through /env, for the inodes of its
// descriptors 3.. (the listeners).
func workerInodes(t *testing.T, addr string) string {
	t.Helper()
	body, _, err := get(addr, "/env")
	if err != nil {
		t.Fatal(err)
	}
	return envOf(body)["INODES"]
}

func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// TestUpgradeUnderLoad: SIGUSR2 re-executes the replaced master binary in
// place under load. Nothing is lost (ok == sent); the pid, the pid file
// and its lock, and the listening sockets (same inodes) stay; the old
// workers serve until the new image's are ready, then are stopped and
// reaped (no zombies); the master's descriptors have the same shape
// after (no leak across the exec); a SIGUSR2 during the upgrade is
// ignored with a log line (coalesced). In reuseport mode each slot's own
// socket is carried over too: a new socket per slot would reset what is
// queued on the old one when its old worker exits.
func TestUpgradeUnderLoad(t *testing.T) {
	for _, mode := range []string{"shared", "reuseport", "handoff"} {
		t.Run(mode, func(t *testing.T) { testUpgradeUnderLoad(t, mode) })
	}
}

func testUpgradeUnderLoad(t *testing.T, mode string) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir, bin, gate := upgradeDir(t)
	pidFile := filepath.Join(dir, "mc.pid")
	if err := os.Mkdir(filepath.Join(dir, "c"), 0o700); err != nil {
		t.Fatal(err)
	}
	control := filepath.Join(dir, "c", "ctl")
	// The master's own NOTIFY_SOCKET, as systemd's.
	sd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "sd"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	var sdMu sync.Mutex
	var sdMsgs []string
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := sd.Read(b)
			if err != nil {
				return
			}
			first, _, _ := strings.Cut(string(b[:n]), "\n")
			sdMu.Lock()
			sdMsgs = append(sdMsgs, first)
			sdMu.Unlock()
		}
	}()
	m := startMasterFrom(t, pc, bin, []string{"SRV_READY_GATE=" + gate, "NOTIFY_SOCKET=" + filepath.Join(dir, "sd")},
		append([]string{"-n", "4", "-mode", mode, "-listen", "127.0.0.1:0", "-pid-file", pidFile, "-control", control, "-shutdown-timeout", "2s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	mpid := m.cmd.Process.Pid
	inodes0 := workerInodes(t, addr)
	kinds0, sockets0, err := upgradeShape(t, mpid)
	if err != nil {
		t.Fatal(err)
	}
	old := m.workers()
	if len(old) != 4 {
		t.Fatalf("%d workers before the upgrade, want 4", len(old))
	}

	clients := loadSize(8, 32)
	var res loadclient.Result
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		res = loadclient.Run(ctx, loadclient.Options{Addr: addr, NewConn: clients, KeepAlive: clients, Requests: upgradeBudget,
			Duration: 60 * time.Second, Pause: 5 * time.Millisecond, Header: "X-Worker", Record: true})
	}()
	// The pid file must name the live master at every moment: its lock
	// is held across the exec (TESTPLAN D1 for the upgrade).
	var pidReads, pidBad int
	var pidErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil && pidReads < 20000 {
			pid, live, err := supervise.ReadPIDFile(pidFile)
			pidReads++
			if err != nil || !live || pid != mpid {
				pidBad++
				pidErr = fmt.Errorf("pid %d live %v err %v", pid, live, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)

	// The new image's workers will wait at the gate: until it opens,
	// only the old workers can serve.
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	copyBinary(t, bin) // a new file at the path the master was started from
	m.signal(syscall.SIGUSR2)
	// "starting workers" comes after the new image installed its signal
	// handlers: a SIGUSR2 before that is dropped (ignored across the exec).
	if !waitFor(10*time.Second, func() bool {
		recs := m.records()
		return count(recs, "upgrade: took over from the previous image") == 1 && count(recs, "starting workers") == 2
	}) {
		t.Fatalf("no new image within 10 s")
	}
	// The exec happened before this instant.
	execed := time.Now()
	if !sameFile("/proc/"+strconv.Itoa(mpid)+"/exe", bin) {
		t.Errorf("the master does not run the replaced binary at %s", bin)
	}
	m.signal(syscall.SIGUSR2)
	if !waitFor(10*time.Second, func() bool { return count(m.records(), "upgrade signal ignored") >= 1 }) {
		t.Errorf("a SIGUSR2 during the upgrade was not reported as ignored")
	}
	time.Sleep(300 * time.Millisecond)
	for _, pid := range old {
		if p, ok := proccensus.Stat(pid); !ok || p.PPID != mpid || p.State == 'Z' {
			t.Errorf("old worker %d is not alive as the master's child while the new workers are not ready", pid)
		}
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 1 }) {
		t.Fatalf("upgrade not done within 15 s")
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	wg.Wait()

	t.Logf("upgrade under load: %v; pid file read %d times", res, pidReads)
	if pidBad != 0 {
		t.Errorf("pid file not live or wrong %d times of %d during the upgrade, last: %v", pidBad, pidReads, pidErr)
	}
	if res.Failed() != 0 || res.OK != res.Sent || res.OK == 0 {
		t.Errorf("lost requests: %v; errors %q", res, res.Errors)
	}
	recs := m.records()
	now := m.workers()
	if msg := upgradeLoadSpanned(res, old, now, execed); msg != "" {
		t.Errorf("the load did not measure the upgrade: %s", msg)
	}
	if n := count(recs, "upgrade: executing the new image"); n != 1 {
		t.Errorf("%d execs, want 1 (the second SIGUSR2 must coalesce)", n)
	}
	if n := count(recs, "slot sockets bound"); mode == "reuseport" && n != 3 {
		t.Errorf("slot sockets bound %d times, want 3 (slots 1..3, once: the new image adopts them)", n)
	}
	if n := count(recs, "upgrade: previous worker exited"); n != 4 {
		t.Errorf("%d old workers reported stopped, want 4", n)
	}
	if len(now) != 4 {
		t.Errorf("%d workers after the upgrade, want 4: %v", len(now), now)
	}
	for _, pid := range now {
		if slices.Contains(old, pid) {
			t.Errorf("worker %d of the old image still runs", pid)
		}
	}
	// Generation numbers continue across the exec: the old image's workers
	// are generation 1, the new image's generation 2.
	for v := range res.Values {
		p, g, _ := strings.Cut(v, ":")
		pid, _ := strconv.Atoi(p)
		want := ""
		switch {
		case slices.Contains(old, pid):
			want = "1"
		case slices.Contains(now, pid):
			want = "2"
		}
		if want != "" && g != want {
			t.Errorf("worker %d answered as generation %s, want %s", pid, g, want)
		}
	}
	if z := proccensus.Zombies(mpid); len(z) != 0 {
		t.Errorf("zombies left by the upgrade: %v", z)
	}
	// In reuseport mode each slot has its own socket, so which one answers
	// varies; the master's socket inodes (upgradeShape, below) cover them.
	if got := workerInodes(t, addr); mode == "shared" && got != inodes0 {
		t.Errorf("listener inodes in workers: %s after, %s before", got, inodes0)
	}
	sdMu.Lock()
	got := slices.Clone(sdMsgs)
	sdMu.Unlock()
	if diff := cmp.Diff([]string{"READY=1", "RELOADING=1", "READY=1"}, got); diff != "" {
		t.Errorf("sd_notify to the master's manager (-want +got):\n%s", diff)
	}
	st := helperproc.Command(t, "mini-cluster", &helperproc.Options{Args: []string{"status", "-control", control}})
	st.Stderr = nil
	if out, err := st.CombinedOutput(); err != nil {
		t.Errorf("status over the control socket after the upgrade: %v\n%s", err, out)
	}
	pid, live, err := supervise.ReadPIDFile(pidFile)
	if err != nil || !live || pid != mpid {
		t.Errorf("pid file after the upgrade: pid %d live %v err %v, want %d live", pid, live, err, mpid)
	}
	var kinds map[string]int
	var sockets []uint64
	if !waitFor(fdcensus.Settle, func() bool {
		kinds, sockets, err = upgradeShape(t, mpid)
		return err == nil && cmp.Equal(kinds0, kinds) && cmp.Equal(sockets0, sockets)
	}) {
		t.Errorf("master's descriptors changed across the upgrade: kinds (-before +after):\n%s\nlistener and control socket inodes (-before +after):\n%s\nthe master's descriptors and children now:\n%s",
			cmp.Diff(kinds0, kinds), cmp.Diff(sockets0, sockets), masterFDs(mpid))
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left after a clean exit: %v", err)
	}
}

// upgradeBudget caps the requests of an upgrade under load: far more than
// the clients send before the test cancels them, so the load runs from
// before the exec until after the old workers are gone.
const upgradeBudget = 20000

// upgradeLoadSpanned says why a load run did not cover an upgrade, or "":
// "ok == sent" proves nothing unless requests were still being sent when
// the upgrade ended (the budget was not used up first), old workers
// answered requests sent after the exec (they serve across it), and the
// new image's workers answered too.
func upgradeLoadSpanned(res loadclient.Result, old, now []int, execed time.Time) string {
	if res.Sent >= upgradeBudget {
		return fmt.Sprintf("the request budget (%d) ran out before the test stopped the load", upgradeBudget)
	}
	byOld, byNew := 0, 0
	for _, r := range res.Replies {
		p, _, _ := strings.Cut(r.Value, ":")
		pid, err := strconv.Atoi(p)
		if err != nil {
			continue
		}
		switch {
		case slices.Contains(old, pid) && r.Sent.After(execed):
			byOld++
		case slices.Contains(now, pid):
			byNew++
		}
	}
	if byOld == 0 {
		return "no request sent after the exec was answered by an old worker"
	}
	if byNew == 0 {
		return "no request was answered by a worker of the new image"
	}
	return ""
}

// TestUpgradeBinaryUnusable: SIGUSR2 with the binary missing, not
// executable, busy (ETXTBSY, open for writing), not a valid executable
// (ENOEXEC), exiting at once, never answering the upgrade probe, without
// the probe mode, of another state version, or refusing the running
// master's flags (its probe gets them) leaves the running master serving with the same workers and descriptors, logs why, and a later
// SIGUSR2 with the binary back succeeds (TESTPLAN C12).
func TestUpgradeBinaryUnusable(t *testing.T) {
	// A new binary still being written (golang/go#22315): the running
	// image's own file cannot be opened for writing, so a new file is
	// renamed over the path and kept open. execve fails only after the
	// state, and in handoff mode the copies of the workers' ends, were
	// made.
	busy := func(t *testing.T, bin string) func() {
		copyBinary(t, bin+".new")
		f, err := os.OpenFile(bin+".new", os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(bin+".new", bin); err != nil {
			t.Fatal(err)
		}
		return func() { f.Close() }
	}
	// A new binary at the path, put back by restore.
	replaceWith := func(content string) func(t *testing.T, bin string) func() {
		return func(t *testing.T, bin string) func() {
			if err := os.WriteFile(bin+".new", []byte(content), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(bin+".new", bin); err != nil {
				t.Fatal(err)
			}
			return func() { copyBinary(t, bin) }
		}
	}
	for _, tc := range []struct {
		name    string
		breakIt func(t *testing.T, bin string) (restore func())
		want    string
		mode    string
	}{
		{"missing", func(t *testing.T, bin string) func() {
			if err := os.Remove(bin); err != nil {
				t.Fatal(err)
			}
			return func() { copyBinary(t, bin) }
		}, "no such file", ""},
		{"not executable", func(t *testing.T, bin string) func() {
			if err := os.Chmod(bin, 0o644); err != nil {
				t.Fatal(err)
			}
			return func() { os.Chmod(bin, 0o755) }
		}, "permission denied", ""},
		{"busy", busy, "text file busy", "shared"},
		{"busy in handoff mode", busy, "text file busy", "handoff"},
		// The probe run before the exec refuses these: past the execve
		// each would have taken every worker down with it.
		{"garbage ELF", replaceWith("\x7fELF\x02\x01\x01" + strings.Repeat("\xff", 120)), "exec format error", ""},
		{"exits at once", replaceWith("#!/bin/sh\nexit 1\n"), "exit status 1", ""},
		{"never answers", replaceWith("#!/bin/sh\nexec sleep 30\n"), "no answer within 2s", ""},
		{"no probe mode", replaceWith("#!/bin/sh\necho serving\n"), "names no upgrade state version", ""},
		{"other state version", replaceWith("#!/bin/sh\necho handoff-upgrade v9\n"), "parses state versions v9, not v1", "handoff"},
		// A build that refuses the running master's flags: the probe runs
		// with them. Past the execve it would exit at flag parsing.
		{"refuses the flags", func(t *testing.T, bin string) func() {
			if err := os.WriteFile(bin+stricterSuffix, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			return func() { os.Remove(bin + stricterSuffix) }
		}, "-shutdown-timeout 2s: want 5s to 24h", ""},
	} {
		if tc.mode == "" {
			tc.mode = "shared"
		}
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			dir := t.TempDir()
			bin := filepath.Join(dir, "mini-cluster")
			copyBinary(t, bin)
			m := startMasterFrom(t, pc, bin, nil,
				append([]string{"-n", "2", "-mode", tc.mode, "-listen", "127.0.0.1:0", "-shutdown-timeout", "2s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
			addr := m.waitReady()
			mpid := m.cmd.Process.Pid
			kinds0, sockets0, err := fdShape(mpid)
			if err != nil {
				t.Fatal(err)
			}
			old := m.workers()
			slices.Sort(old)

			var res loadclient.Result
			var wg sync.WaitGroup
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			wg.Add(1)
			go func() {
				defer wg.Done()
				res = loadclient.Run(ctx, loadclient.Options{Addr: addr, NewConn: 4, KeepAlive: 4, Requests: 20000,
					Duration: 60 * time.Second, Pause: 5 * time.Millisecond})
			}()
			restore := tc.breakIt(t, bin)
			m.signal(syscall.SIGUSR2)
			failed := waitFor(10*time.Second, func() bool {
				return count(m.records(), "upgrade failed; this master keeps running and serving") == 1
			})
			restore()
			if !failed {
				t.Fatalf("no upgrade failure logged within 10 s")
			}
			if !strings.Contains(strings.ToLower(m.log.String()), tc.want) {
				t.Errorf("the failure does not say %q", tc.want)
			}
			time.Sleep(300 * time.Millisecond)
			now := m.workers()
			slices.Sort(now)
			if !slices.Equal(old, now) {
				t.Errorf("workers changed by a failed upgrade: %v, before %v", now, old)
			}
			checkFDShape(t, mpid, kinds0, sockets0, "by a failed upgrade")
			// Everything is as it was: the next upgrade works.
			m.signal(syscall.SIGUSR2)
			if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 1 }) {
				t.Fatalf("upgrade after restoring the binary not done within 15 s")
			}
			cancel()
			wg.Wait()
			t.Logf("%s: %v", tc.name, res)
			if res.Failed() != 0 || res.OK != res.Sent || res.OK == 0 {
				t.Errorf("lost requests: %v; errors %q", res, res.Errors)
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d after SIGTERM, want 0", code)
			}
			if z := proccensus.Zombies(mpid); len(z) != 0 {
				t.Errorf("zombies: %v", z)
			}
		})
	}
}

// roleForgedUpgrade is mini-cluster started as if by an upgrade, with the
// state FORGED_STATE, in which %d stands for its own pid.
func roleForgedUpgrade() int {
	os.Setenv("HANDOFF_UPGRADE_STATE", strings.ReplaceAll(os.Getenv("FORGED_STATE"), "%d", strconv.Itoa(os.Getpid())))
	os.Unsetenv("FORGED_STATE")
	return roleMaster()
}

// TestUpgradeStateDistrusted: a master started with an upgrade state it
// cannot trust logs why and starts clean, binding -listen itself; a
// descriptor or pid named in it is never adopted.
func TestUpgradeStateDistrusted(t *testing.T) {
	for _, tc := range []struct {
		name, state, log string
	}{
		{"garbage", "not a state", "state from the previous image ignored"},
		{"another pid", "handoff-upgrade v1 1\nL 3 x\n", "state from the previous image ignored"},
		{"descriptor not open", "handoff-upgrade v1 %d\nL 900 x\n", "state from the previous image ignored"},
		// Descriptor 1 is inherited but is stdio, never a state's.
		{"stdio descriptor", "handoff-upgrade v1 %d\nK 1\n", "state from the previous image ignored"},
		// This test process: alive, but the master's parent, not its child.
		{"not our child", "handoff-upgrade v1 %d\nW " + strconv.Itoa(os.Getpid()) + " 0 1 -1 -1\n", "previous worker not adopted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			cmd := helperproc.Command(t, "mini-cluster-forged", &helperproc.Options{
				Env:  []string{pc.Env(), "FORGED_STATE=" + tc.state},
				Args: append([]string{"-n", "1", "-listen", "127.0.0.1:0", "-log-format", "json", "--"}, fakeSrvCmd(t)...),
			})
			m := startCmd(t, cmd)
			addr := m.waitReady()
			if _, _, err := get(addr, "/"); err != nil {
				t.Errorf("request: %v", err)
			}
			if !strings.Contains(m.log.String(), tc.log) {
				t.Errorf("log does not say %q", tc.log)
			}
			if n := count(m.records(), "upgrade: took over from the previous image"); tc.name != "not our child" && n != 0 {
				t.Errorf("a distrusted state was adopted")
			}
			if strings.Contains(m.log.String(), `"adopted":true`) {
				t.Errorf("a listener was adopted from a distrusted state")
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}

// TestUpgradeHandoffMode: an upgrade in handoff mode loses no connection
// the master accepted: before the exec it stops accepting (the kernel's
// backlog, kept across the exec, holds new ones) and hands every
// connection it holds to a worker, which the exec would otherwise reset
// (docs/operations.md). The old worker is stopped while 200 requests
// arrive, so the master holds a batch its window does not let it send;
// the worker resumes only once the upgrade paused, and the new image's
// workers wait at their readiness gate meanwhile. Every request is
// answered: none reset, none timed out. Without the pause the held batch
// is reset.
func TestUpgradeHandoffMode(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	h := startHeldUpgrade(t, pc, 200)
	m := h.m
	if n, err := heldConns(m.cmd.Process.Pid); err != nil || n == 0 {
		t.Fatalf("the master holds %d connections (%v): the test cannot show that the upgrade hands them over", n, err)
	}
	h.upgradeToPause(t)
	if err := m.signalWorker(h.old, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { return count(m.records(), "upgrade: took over from the previous image") == 1 }) {
		t.Fatalf("no new image within 10 s")
	}
	time.Sleep(300 * time.Millisecond)
	if err := os.WriteFile(h.gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 1 }) {
		t.Errorf("upgrade not done within 15 s")
	}
	ok, failed := h.results()
	t.Logf("handoff mode: %d of %d answered, failed %v", ok, len(h.conns), failed)
	if ok != len(h.conns) {
		t.Errorf("%d of %d requests answered; failed: %v", ok, len(h.conns), failed)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestUpgradeStopDuringPause: a stop acknowledged while an upgrade is on
// its way (here: over the control socket while the handoff pause waits
// for a stopped worker) is carried out, never lost by the exec that
// follows: the upgrade is given up and the master stops. The old code
// checked for a stop only before the pause, executed the new image, and
// ran on.
func TestUpgradeStopDuringPause(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(controlDir(t), "ctl")
	h := startHeldUpgrade(t, pc, 200, "-control", path)
	m := h.m
	h.upgradeToPause(t)
	code, _, errOut := ctl("stop", "-control", path)
	if err := m.signalWorker(h.old, syscall.SIGCONT); err != nil {
		t.Error(err)
	}
	if code != 0 {
		t.Fatalf("stop during the upgrade: exit %d: %s", code, errOut)
	}
	if code := m.wait(20 * time.Second); code != 0 {
		t.Errorf("exit code %d after the stop, want 0", code)
	}
	if n := count(m.records(), "upgrade: executing the new image", "upgrade: took over from the previous image"); n != 0 {
		t.Errorf("the upgrade went on after an acknowledged stop")
	}
	if n := count(m.records(), "stopped"); n != 1 {
		t.Errorf("the master did not stop cleanly")
	}
}

// TestUpgradeHandoffOldWorkerDies: in handoff mode, a worker of the old
// image that dies after the exec without reading what the old image sent it
// loses nothing: the old image's copy of its end of the connection channel
// is carried across the exec, and the new image passes those connections
// on. The worker is stopped (SIGSTOP) before the load, so connections wait
// unread in its channel; after the exec it is SIGKILLed while the new
// image's workers are held at their readiness gate. Every request succeeds,
// and the new image says it passed connections on. Before the copy was
// carried over, they were reset.
func TestUpgradeHandoffOldWorkerDies(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	_, bin, gate := upgradeDir(t)
	m := startMasterFrom(t, pc, bin, []string{"SRV_READY_GATE=" + gate},
		append([]string{"-n", "2", "-mode", "handoff", "-listen", "127.0.0.1:0", "-shutdown-timeout", "2s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	old := m.workers()
	if len(old) != 2 {
		t.Fatalf("%d workers, want 2", len(old))
	}
	stopped := old[0]
	if err := m.signalWorker(stopped, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var res loadclient.Result
	done := make(chan struct{})
	go func() {
		defer close(done)
		res = loadclient.Run(context.Background(), loadclient.Options{Addr: addr, NewConn: 8, Requests: 400, Duration: 2 * time.Second,
			Timeout: 15 * time.Second, Pause: 20 * time.Millisecond})
	}()
	time.Sleep(300 * time.Millisecond)
	// The new image's workers wait at the gate: until it opens, only the
	// old workers are sent connections (the stopped one too, up to its
	// window).
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	copyBinary(t, bin)
	m.signal(syscall.SIGUSR2)
	if !waitFor(10*time.Second, func() bool { return count(m.records(), "upgrade: took over from the previous image") == 1 }) {
		<-done
		t.Fatalf("no new image within 10 s")
	}
	if err := m.signalWorker(stopped, syscall.SIGKILL); err != nil {
		t.Error(err)
	}
	// The new image finds the dead worker by its pidfd (at once, or at
	// its next sweep, within a second) and holds what it never read.
	time.Sleep(1500 * time.Millisecond)
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 1 }) {
		t.Errorf("upgrade not done within 15 s")
	}
	<-done
	rescued := m.rescued()
	t.Logf("%v; %d connections passed on from the dead old worker", res, rescued)
	if res.Failed() != 0 || res.OK != res.Sent || res.OK == 0 {
		t.Errorf("lost requests: %v; errors %q", res, res.Errors)
	}
	if rescued == 0 {
		t.Errorf("nothing passed on from the old worker's channel: the test did not exercise the carried-over copy")
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestUpgradeSignalWindow: signals the new image handles only once it has
// installed its handlers (SIGHUP, SIGINT, SIGUSR1, SIGTTIN, SIGTTOU) may
// arrive between the exec and that moment; they must not kill the master,
// which would take every worker with it (parent-death signal), nor stop
// it. They are ignored across the exec, and an exec that fails hands
// them back to the master: a SIGHUP then still restarts.
func TestUpgradeSignalWindow(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGTTIN} {
		t.Run(sig.String(), func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			dir := t.TempDir()
			bin := filepath.Join(dir, "mini-cluster")
			copyBinary(t, bin)
			m := startMasterFrom(t, pc, bin, nil,
				append([]string{"-n", "2", "-listen", "127.0.0.1:0", "-shutdown-timeout", "2s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
			m.waitReady()
			mpid := m.cmd.Process.Pid

			// An upgrade that fails in execve (ETXTBSY: the new binary
			// is still open for writing), after the signals were set
			// ignored, gives them back.
			copyBinary(t, bin+".new")
			busy, err := os.OpenFile(bin+".new", os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer busy.Close()
			if err := os.Rename(bin+".new", bin); err != nil {
				t.Fatal(err)
			}
			m.signal(syscall.SIGUSR2)
			if !waitFor(10*time.Second, func() bool {
				return count(m.records(), "upgrade failed; this master keeps running and serving") == 1
			}) {
				t.Fatalf("no upgrade failure logged within 10 s")
			}
			busy.Close()
			if !strings.Contains(m.log.String(), "text file busy") {
				t.Fatalf("the upgrade did not fail in execve:\n%s", m.log.String())
			}
			m.signal(syscall.SIGHUP)
			if !waitFor(10*time.Second, func() bool { return count(m.records(), "restart signal") == 1 }) {
				t.Fatalf("SIGHUP after a failed upgrade not acted on")
			}

			// The signal, repeated from before the exec until the new
			// image runs its workers: whatever lands in the window is
			// dropped, the rest acts as usual.
			execs := count(m.records(), "upgrade: executing the new image")
			m.signal(syscall.SIGUSR2)
			sent := 0
			deadline := time.Now().Add(10 * time.Second)
			for count(m.records(), "starting workers") < 2 && time.Now().Before(deadline) {
				select {
				case <-m.done:
					if sig == syscall.SIGINT && count(m.records(), "upgrade: took over from the previous image") == 1 &&
						count(m.records(), "stop signal: stopping workers gracefully") == 1 {
						// A SIGINT sent before the test saw the new image's
						// log line reached its handler: a stop, handled.
						return
					}
					t.Fatalf("master exited during the upgrade after %d %v:\n%s", sent, sig, m.log.String())
				default:
				}
				if sig == syscall.SIGINT && count(m.records(), "upgrade: executing the new image") == execs {
					// Before the exec a SIGINT stops the old image.
					time.Sleep(100 * time.Microsecond)
					continue
				}
				if sig == syscall.SIGINT && count(m.records(), "upgrade: took over from the previous image") == 1 {
					// The new image is about to install its handlers; a
					// SIGINT from now on is a stop, not the window.
					time.Sleep(time.Millisecond)
					continue
				}
				if err := syscall.Kill(mpid, sig); err != nil {
					t.Fatal(err)
				}
				sent++
				time.Sleep(200 * time.Microsecond)
			}
			if count(m.records(), "upgrade: took over from the previous image") != 1 {
				t.Fatalf("no new image within 10 s after %d %v:\n%s", sent, sig, m.log.String())
			}
			if sig == syscall.SIGINT {
				// The new image's handlers are in place: a SIGINT stops it.
				m.signal(syscall.SIGINT)
				if code := m.wait(15 * time.Second); code != 0 {
					t.Errorf("exit code %d, want 0", code)
				}
				return
			}
			if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 1 }) {
				t.Fatalf("upgrade not done within 15 s after %d %v", sent, sig)
			}
			// What was ignored across the exec is not ignored by the
			// new image's workers (TESTPLAN C18).
			for _, pid := range m.workers() {
				if ign := sigIgnMask(t, pid) & upgradeIgnoredMask; ign != 0 {
					t.Errorf("worker %d of the new image ignores signals %#x", pid, ign)
				}
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d after SIGTERM, want 0", code)
			}
		})
	}
}

// upgradeIgnoredMask: the signals ignored across an upgrade's exec whose
// inherited SIG_IGN a Go program keeps (it installs its own handler for
// the others), as bits of /proc/PID/status SigIgn.
const upgradeIgnoredMask = 1<<(syscall.SIGHUP-1) | 1<<(syscall.SIGINT-1) | 1<<(syscall.SIGTTIN-1) | 1<<(syscall.SIGTTOU-1)

// sigIgnMask returns the SigIgn mask of pid.
func sigIgnMask(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	t.Fatalf("no SigIgn for pid %d", pid)
	return 0
}

// TestUpgradeKeepsScaleAndLastExit: an upgrade must not undo a scale (the
// new image used to start its -n workers, not the count in force), and the
// previous image's workers, which the new image stops, are each slot's
// last exit in status (requested, by pid), not "-".
func TestUpgradeKeepsScaleAndLastExit(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "mini-cluster")
	copyBinary(t, bin)
	path := filepath.Join(controlDir(t), "ctl")
	m := startMasterFrom(t, pc, bin, nil, append([]string{"-n", "2", "-listen", "127.0.0.1:0", "-control", path,
		"-shutdown-timeout", "2s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
	m.waitReady()
	if code, _, errOut := ctl("scale", "3", "-control", path); code != 0 {
		t.Fatalf("scale 3: exit %d: %s", code, errOut)
	}
	waitCtl(t, "3 ready workers", func() bool { _, w, r, _ := statusJSON(t, path); return w == 3 && r == 3 })
	old := map[int]int{}
	for slot := range 3 {
		old[slot] = servingPID(t, path, slot)
	}
	m.signal(syscall.SIGUSR2)
	if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 1 }) {
		t.Fatalf("upgrade not done within 15 s")
	}
	waitCtl(t, "3 ready workers after the upgrade", func() bool { _, w, r, _ := statusJSON(t, path); return w == 3 && r == 3 })
	gen, workers, ready, slots := statusJSON(t, path)
	if diff := cmp.Diff([]any{2, 3, 3, []string{"2/ready/0", "2/ready/0", "2/ready/0"}}, []any{gen, workers, ready, slots}); diff != "" {
		t.Errorf("status -json after the upgrade (-want +got):\n%s", diff)
	}
	code, out, errOut := ctl("status", "-control", path, "-json")
	if code != 0 {
		t.Fatalf("status -json: exit %d: %s", code, errOut)
	}
	v, err := fastjson.Parse(out)
	if err != nil {
		t.Fatalf("status -json printed %q: %v", out, err)
	}
	got := map[int]string{}
	for _, s := range v.GetArray("slots") {
		x := s.Get("last_exit")
		if x == nil {
			got[s.GetInt("slot")] = "none"
			continue
		}
		got[s.GetInt("slot")] = fmt.Sprintf("pid %d requested %v", x.GetInt("pid"), x.GetBool("requested"))
	}
	want := map[int]string{}
	for slot, pid := range old {
		want[slot] = fmt.Sprintf("pid %d requested true", pid)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("last exits after the upgrade (-want +got):\n%s", diff)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestUpgradeStateExtraSlotSockets: a reuseport state that names sockets of
// a slot the new image does not run (an image that did not record its
// slot count, scaled above -n) must not leave them in the group: the
// kernel would hash a share of new connections to them, and nobody would
// ever accept those.
func TestUpgradeStateExtraSlotSockets(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1) })
		if err != nil {
			return err
		}
		return serr
	}}
	var files []*os.File
	addr := ""
	for range 2 {
		a := addr
		if a == "" {
			a = "127.0.0.1:0"
		}
		ln, err := lc.Listen(context.Background(), "tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		f, err := ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	_, port, _ := net.SplitHostPort(addr)
	state := "handoff-upgrade v1 %d\nL 3 tcp-127.0.0.1-" + port + "\nS 4 1 0\n"
	cmd := helperproc.Command(t, "mini-cluster-forged", &helperproc.Options{
		Env:        []string{pc.Env(), "FORGED_STATE=" + state},
		Args:       append([]string{"-n", "1", "-mode", "reuseport", "-listen", addr, "-log-format", "json", "--"}, fakeSrvCmd(t)...),
		ExtraFiles: files,
	})
	m := startCmd(t, cmd)
	for _, f := range files {
		f.Close()
	}
	m.waitReady()
	if !strings.Contains(m.log.String(), "upgrade: slot sockets of a slot this image does not run closed") {
		t.Errorf("log does not say the extra slot's sockets were closed")
	}
	// With slot 1's socket still in the group about half of these would
	// wait forever in its queue.
	failed := 0
	for range 16 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			failed++
			continue
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			failed++
		} else if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			failed++
		}
		c.Close()
	}
	if failed != 0 {
		t.Errorf("%d of 16 requests failed or hung", failed)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// TestUpgradeStateLeftovers: what an exec by an older image leaves open or
// running and the new image does not adopt never outlives it. A state the
// new image refuses (another version) makes it close every inherited
// descriptor and SIGKILL and reap every child that is a worker
// (HANDOFF_WORKER_ID; process groups included) before it binds, then
// serve alone: the old code started "clean" beside them, and failed to
// bind (EADDRINUSE: a full outage) or shared the port with sockets nobody
// served. With a state it accepts, the workers the state does not name and
// the children it names in "p" records go the same way. Other children (a
// program's own helpers) are left alone: the old code killed them too.
func TestUpgradeStateLeftovers(t *testing.T) {
	for _, tc := range []struct {
		name, state, log string
		killed           []bool // of the forged children
	}{
		{"refused state", "handoff-upgrade v9 %d\nL %f x\np %p\n", "upgrade: the previous image's descriptors closed and its workers killed; starting clean", []bool{true, true, false, false}},
		{"children not in the state", "handoff-upgrade v1 %d\nL %f tcp-x\np %p\n", "upgrade: leftovers of the previous image not in its state closed and killed", []bool{true, true, true, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{
				Env:  []string{pc.Env(), forgeStateVar + "=" + tc.state, "UPGRADE_FORGE_ADDR=" + addr},
				Args: append([]string{"-n", "2", "-listen", addr, "-log-format", "json", "--"}, fakeSrvCmd(t)...),
			})
			m := startCmd(t, cmd)
			m.waitReady()
			mpid := m.cmd.Process.Pid
			var forged []int
			for _, line := range strings.Split(m.log.String(), "\n") {
				if rest, ok := strings.CutPrefix(line, "FORGED CHILDREN "); ok {
					for _, f := range strings.Fields(rest) {
						pid, _ := strconv.Atoi(f)
						forged = append(forged, pid)
					}
				}
			}
			if len(forged) != 4 {
				t.Fatalf("forged children %v, want 4", forged)
			}
			if !strings.Contains(m.log.String(), tc.log) {
				t.Errorf("log does not say %q", tc.log)
			}
			var kept []int
			got := make([]bool, len(forged))
			for i, pid := range forged {
				p, ok := proccensus.Stat(pid)
				got[i] = !ok || p.PPID != mpid
				if ok && p.PPID == mpid && p.State != 'Z' {
					kept = append(kept, pid)
				}
			}
			if diff := cmp.Diff(tc.killed, got); diff != "" {
				t.Errorf("forged children killed and reaped (-want +got):\n%s", diff)
			}
			// The helpers left alone are the master's: killed once it
			// exited, reaped by whoever inherited them.
			defer func() {
				for _, pid := range kept {
					if fd, err := unix.PidfdOpen(pid, 0); err == nil {
						unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
						unix.Close(fd)
					}
					for range 50 {
						var ws unix.WaitStatus
						if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); got == pid || err != nil {
							break
						}
						time.Sleep(20 * time.Millisecond)
					}
				}
			}()
			failed := 0
			for range 20 {
				if _, _, err := get(addr, "/"); err != nil {
					failed++
				}
			}
			if failed != 0 {
				t.Errorf("%d of 20 requests failed", failed)
			}
			if z := proccensus.Zombies(mpid); len(z) != 0 {
				t.Errorf("zombies: %v", z)
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != 0 {
				t.Errorf("exit code %d after SIGTERM, want 0", code)
			}
		})
	}
}

// TestUpgradeFollowsSymlink: a deploy that swaps a symlink (current ->
// rel/v1 becomes current -> rel/v2) upgrades to v2: the master executes
// the path it was started from, not what /proc/self/exe resolved it to
// at start (the old code re-ran v1 and logged "upgrade: done"). A second
// SIGUSR2 with nothing replaced re-executes v2, with a warning.
func TestUpgradeFollowsSymlink(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		if err := os.MkdirAll(filepath.Join(dir, "rel", v), 0o755); err != nil {
			t.Fatal(err)
		}
		copyBinary(t, filepath.Join(dir, "rel", v, "mini-cluster"))
	}
	current := filepath.Join(dir, "current")
	if err := os.Symlink(filepath.Join("rel", "v1"), current); err != nil {
		t.Fatal(err)
	}
	m := startMasterFrom(t, pc, filepath.Join(current, "mini-cluster"), nil,
		append([]string{"-n", "1", "-listen", "127.0.0.1:0", "-shutdown-timeout", "2s", "-log-format", "json", "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	mpid := m.cmd.Process.Pid
	exe := "/proc/" + strconv.Itoa(mpid) + "/exe"
	if !sameFile(exe, filepath.Join(dir, "rel", "v1", "mini-cluster")) {
		t.Fatalf("the master does not run v1")
	}
	if err := os.Symlink(filepath.Join("rel", "v2"), current+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(current+".new", current); err != nil {
		t.Fatal(err)
	}
	m.signal(syscall.SIGUSR2)
	if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 1 }) {
		t.Fatalf("upgrade not done within 15 s")
	}
	if !sameFile(exe, filepath.Join(dir, "rel", "v2", "mini-cluster")) {
		t.Errorf("the master does not run v2 after the symlink swap and SIGUSR2")
	}
	const same = "upgrade: the binary is the running image itself (not replaced?); re-executing it anyway"
	if n := count(m.records(), same); n != 0 {
		t.Errorf("warned that the binary was not replaced (%d times), but it was", n)
	}
	m.signal(syscall.SIGUSR2)
	if !waitFor(15*time.Second, func() bool { return count(m.records(), "upgrade: done") == 2 }) {
		t.Fatalf("second upgrade not done within 15 s")
	}
	if n := count(m.records(), same); n != 1 {
		t.Errorf("%d warnings that the binary was not replaced, want 1", n)
	}
	if _, _, err := get(addr, "/"); err != nil {
		t.Errorf("request after the upgrades: %v", err)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// heldUpgrade is a handoff-mode master of one fake worker whose next
// workers (the new image's) wait at a closed readiness gate, with the
// worker stopped (SIGSTOP) and n requests sent on new connections: the
// master delivers what the worker's window allows (128) and holds the
// next batch, which an exec would reset, while the rest wait in the
// kernel's backlog.
type heldUpgrade struct {
	m     *master
	bin   string
	gate  string
	old   int
	conns []net.Conn
}

func startHeldUpgrade(t *testing.T, pc *proccensus.Census, n int, extra ...string) *heldUpgrade {
	t.Helper()
	_, bin, gate := upgradeDir(t)
	args := append([]string{"-n", "1", "-mode", "handoff", "-listen", "127.0.0.1:0", "-shutdown-timeout", "5s", "-log-format", "json"}, extra...)
	m := startMasterFrom(t, pc, bin, []string{"SRV_READY_GATE=" + gate}, append(append(args, "--"), fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	old := m.workers()
	if len(old) != 1 {
		t.Fatalf("%d workers, want 1", len(old))
	}
	h := &heldUpgrade{m: m, bin: bin, gate: gate, old: old[0]}
	t.Cleanup(func() {
		for _, c := range h.conns {
			c.Close()
		}
	})
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	if err := m.signalWorker(h.old, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		h.conns = append(h.conns, c)
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	// The master's accept loop takes them meanwhile.
	time.Sleep(300 * time.Millisecond)
	return h
}

// upgradeToPause starts an upgrade to a new copy of the binary and waits
// until the old image pauses accepting to hand over what it holds.
func (h *heldUpgrade) upgradeToPause(t *testing.T) {
	t.Helper()
	copyBinary(t, h.bin)
	h.m.signal(syscall.SIGUSR2)
	if !waitFor(10*time.Second, func() bool {
		return count(h.m.records(), "upgrade: accepting paused; handing the connections the master holds to workers") == 1
	}) {
		t.Fatalf("the upgrade did not pause accepting within 10 s")
	}
	time.Sleep(200 * time.Millisecond)
}

// results reads every reply: how many were answered, and the errors of
// the others by kind.
func (h *heldUpgrade) results() (ok int, failed map[string]int) {
	failed = map[string]int{}
	for _, c := range h.conns {
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		switch {
		case err == nil && strings.HasPrefix(line, "HTTP/1.1 200"):
			ok++
		case err == nil:
			failed["status "+strings.TrimSpace(line)]++
		case strings.Contains(err.Error(), "reset"):
			failed["reset"]++
		case os.IsTimeout(err):
			failed["timeout"]++
		default:
			failed[err.Error()]++
		}
	}
	return ok, failed
}

// TestUpgradeProbeChecksArgs: the upgrade probe parses and checks the
// master's arguments and -config file as a start would, and names the
// state version only if they pass; the error, not the usage, is printed.
// Nothing is bound or started (no pid file written).
func TestUpgradeProbeChecksArgs(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	if err := os.WriteFile(good, []byte(`{"groups":[{"name":"web","command":["/bin/true"],"listen":["127.0.0.1:0"]}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"groups":[{"name":"web","command":["/bin/true"],"shutdown_timeout":"1ms"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := filepath.Join(dir, "m.pid")
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string // in stderr; "" = stderr empty
	}{
		{"bare probe", nil, exitOK, ""},
		{"valid flags", []string{"-n", "2", "-listen", "127.0.0.1:0", "-pid-file", pid, "-shutdown-timeout", "2s", "--", "/bin/true"}, exitOK, ""},
		{"valid config", []string{"-config", good, "-pid-file", pid}, exitOK, ""},
		{"shutdown-timeout out of bounds", []string{"-shutdown-timeout", "1ms", "--", "/bin/true"}, exitUsage, "-shutdown-timeout 1ms: want 100ms to 24h"},
		{"heartbeat out of bounds", []string{"-heartbeat", "1ms", "--", "/bin/true"}, exitUsage, "-heartbeat 1ms"},
		{"unknown flag", []string{"-frobnicate", "--", "/bin/true"}, exitUsage, "flag provided but not defined: -frobnicate"},
		{"bad mode", []string{"-mode", "x", "--", "/bin/true"}, exitUsage, "x"},
		{"no program", []string{"-n", "1"}, exitUsage, "no program to run"},
		{"config missing", []string{"-config", filepath.Join(dir, "none.json")}, exitUsage, "none.json"},
		{"config invalid", []string{"-config", bad}, exitUsage, "bad.json"},
		{"config with worker flags", []string{"-config", good, "-n", "2"}, exitUsage, "cannot be combined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := runProbe(tc.args, &stdout, &stderr)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; stderr %q", code, tc.wantCode, stderr.String())
			}
			wantOut := ""
			if tc.wantCode == exitOK {
				wantOut = "handoff-upgrade v1\n"
			}
			if diff := cmp.Diff(wantOut, stdout.String()); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			switch {
			case tc.wantErr == "" && stderr.Len() != 0:
				t.Errorf("stderr %q, want none", stderr.String())
			case tc.wantErr != "" && !strings.Contains(stderr.String(), tc.wantErr):
				t.Errorf("stderr %q does not say %q", stderr.String(), tc.wantErr)
			case strings.Contains(stderr.String(), "usage:"):
				t.Errorf("stderr has the usage: %q", stderr.String())
			}
			if _, err := os.Stat(pid); err == nil {
				t.Errorf("the probe wrote the pid file")
			}
		})
	}
}
