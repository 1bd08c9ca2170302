//go:build linux

package main

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// lockState says who holds the flock on path+".lock": "held by the
// master" (a non-blocking flock here fails with EWOULDBLOCK and the master
// has the file open), "free", or what else was found.
func lockState(t *testing.T, mpid int, path string) string {
	t.Helper()
	lock := path + ".lock"
	fd, err := unix.Open(lock, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "lock file: " + err.Error()
	}
	defer unix.Close(fd)
	err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	switch {
	case err == nil:
		return "free"
	case !errors.Is(err, unix.EWOULDBLOCK):
		return "flock: " + err.Error()
	}
	snap, err := fdcensus.Take(mpid)
	if err != nil {
		return "held; master's descriptors: " + err.Error()
	}
	for _, f := range snap {
		if f.Target == lock {
			return "held by the master"
		}
	}
	return "held, not by the master"
}

// fileIno is path's inode, 0 if there is nothing at path.
func fileIno(path string) uint64 {
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

// listeningUnixInode is the socket inode of the listening unix socket
// bound to path (/proc/net/unix keeps the name the socket was bound to,
// whatever happens to the file since), or 0.
func listeningUnixInode(t *testing.T, path string) uint64 {
	t.Helper()
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path; Flags 00010000
		// is __SO_ACCEPTCON.
		fs := strings.Fields(sc.Text())
		if len(fs) >= 8 && fs[7] == path && fs[3] == "00010000" {
			ino, _ := strconv.ParseUint(fs[6], 10, 64)
			return ino
		}
	}
	return 0
}

// holdsSocket reports whether pid has socket inode ino open.
func holdsSocket(t *testing.T, pid int, ino uint64) bool {
	t.Helper()
	snap, err := fdcensus.Take(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range snap {
		if f.Target == "socket:["+strconv.FormatUint(ino, 10)+"]" {
			return true
		}
	}
	return false
}

// socketFlags returns the file status flags (fdinfo "flags", O_NONBLOCK
// among them) of pid's descriptor of socket inode ino.
func socketFlags(t *testing.T, pid int, ino uint64) (uint64, error) {
	t.Helper()
	snap, err := fdcensus.Take(pid)
	if err != nil {
		return 0, err
	}
	for n, f := range snap {
		if f.Target != "socket:["+strconv.FormatUint(ino, 10)+"]" {
			continue
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + strconv.Itoa(n))
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				return strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			}
		}
	}
	return 0, errors.New("socket not held")
}

// upgradeOnce sends SIGUSR2 and waits for the round-th "upgrade: done".
func upgradeOnce(t *testing.T, m *master, round int) {
	t.Helper()
	m.signal(syscall.SIGUSR2)
	if !waitFor(20*time.Second, func() bool { return count(m.records(), "upgrade: done") == round }) {
		t.Fatalf("upgrade %d not done within 20 s", round)
	}
}

// askListen has the worker ask the master for unix sockets at its
// SRV_TRY_LISTEN paths, and checks every answer is "ok".
func askListen(t *testing.T, addr string, paths ...string) {
	t.Helper()
	body, _, err := get(addr, "/env")
	if err != nil {
		t.Fatal(err)
	}
	env := envOf(body)
	for _, p := range paths {
		if got := env["TRY_LISTEN "+p]; got != "ok" {
			t.Fatalf("Listen %s: %q, want ok", p, got)
		}
	}
}

// TestUpgradeUnixSocketFiles: after SIGUSR2 upgrades, twice in a row, the
// master still holds the lock on PATH.lock of its unix sockets, a -listen
// one and one bound for a worker (cluster.Listen), the files unchanged;
// after its graceful stop the socket files are gone, as after a stop
// without an upgrade. Under -user nobody the socket bound for the worker is
// locked and removed as nobody: one in a directory nobody can no longer
// write (but root could) stays. The master's descriptors have the same
// shape after the upgrades as before (no lock lost, none leaked).
func TestUpgradeUnixSocketFiles(t *testing.T) {
	for _, user := range []bool{false, true} {
		name := "root"
		if user {
			name = "user nobody"
		}
		t.Run(name, func(t *testing.T) { testUpgradeUnixSocketFiles(t, user) })
	}
}

func testUpgradeUnixSocketFiles(t *testing.T, user bool) {
	if user && os.Geteuid() != 0 {
		t.Skip("needs root to run workers as nobody")
	}
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	tmp := t.TempDir()
	if user {
		tmp = nobodyTemp(t)
	}
	listenPath := filepath.Join(tmp, "l")
	workerDir := filepath.Join(tmp, "w")
	if err := os.Mkdir(workerDir, 0o755); err != nil {
		t.Fatal(err)
	}
	workerPath := filepath.Join(workerDir, "s")
	args := []string{"-n", "1", "-shutdown-timeout", "2s", "-start-timeout", "10s", "-log-format", "json",
		"-listen", "127.0.0.1:0", "-listen", "unix://" + listenPath}
	try := []string{workerPath}
	var lockedDir, keptPath string
	if user {
		args = append(args, "-user", "nobody")
		lockedDir = filepath.Join(tmp, "k")
		keptPath = filepath.Join(lockedDir, "s")
		if err := os.Mkdir(lockedDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{workerDir, lockedDir} {
			if err := os.Chown(d, 65534, -1); err != nil {
				t.Fatal(err)
			}
		}
		try = append(try, keptPath)
	}
	cmd := helperproc.Command(t, "mini-cluster", &helperproc.Options{
		Env:  []string{pc.Env(), "SRV_TRY_LISTEN=" + strings.Join(try, ",")},
		Args: append(args, "--", "/proc/self/exe", fakeSrvArg),
	})
	m := startCmdIn(t, cmd, tmp)
	addr := m.waitReady()
	mpid := m.cmd.Process.Pid
	askListen(t, addr, try...)
	paths := append([]string{listenPath}, try...)
	inos := map[string]uint64{}
	for _, p := range paths {
		inos[p] = fileIno(p)
		if got := lockState(t, mpid, p); got != "held by the master" {
			t.Fatalf("before the upgrade, lock of %s: %s", p, got)
		}
	}
	kinds0, _, err := upgradeShape(t, mpid)
	if err != nil {
		t.Fatal(err)
	}
	// The -listen socket is blocking, as systemd passes sockets, and no
	// worker here changes that (the fake worker serves descriptor 3).
	listenSock := listeningUnixInode(t, listenPath)
	if fl, err := socketFlags(t, mpid, listenSock); err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Fatalf("before the upgrade, %s: flags %#o, %v; want blocking", listenPath, fl, err)
	}
	for round := 1; round <= 2; round++ {
		upgradeOnce(t, m, round)
		// The new workers ask again: served from the adopted sockets.
		askListen(t, addr, try...)
		for _, p := range paths {
			if got := lockState(t, mpid, p); got != "held by the master" {
				t.Errorf("after upgrade %d, lock of %s: %s, want held by the master", round, p, got)
			}
			if got := fileIno(p); got != inos[p] {
				t.Errorf("after upgrade %d, %s has inode %d, want %d (the same socket file)", round, p, got, inos[p])
			}
		}
		if fl, err := socketFlags(t, mpid, listenSock); err != nil || fl&unix.O_NONBLOCK != 0 {
			t.Errorf("after upgrade %d, %s: flags %#o, %v; want still blocking", round, listenPath, fl, err)
		}
		var kinds map[string]int
		if !waitFor(fdcensus.Settle, func() bool {
			kinds, _, err = upgradeShape(t, mpid)
			return err == nil && cmp.Equal(kinds0, kinds)
		}) {
			t.Errorf("after upgrade %d, the master's descriptors (-before +after):\n%s", round, cmp.Diff(kinds0, kinds))
		}
	}
	if user {
		// nobody may no longer remove entries there; root still may.
		if err := os.Chmod(lockedDir, 0o555); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(lockedDir, 0o755)
	}
	stopClean(t, m)
	for _, p := range paths {
		_, err := os.Lstat(p)
		if p == keptPath {
			if err != nil {
				t.Errorf("%s (its directory no longer writable by nobody): %v, want it left: the master must remove it as nobody", p, err)
			}
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after the stop, %s: %v, want it removed", p, err)
		}
		if _, err := os.Lstat(p + ".lock"); err != nil {
			t.Errorf("lock file of %s: %v, want it kept", p, err)
		}
	}
}

// TestUpgradeUnixSocketReplaced: a socket file that is no longer the
// listener's is never removed by the upgraded master. Replaced before the
// upgrade (a -listen socket and one bound for a worker): the new image
// keeps serving the socket, says at warn level that it does not take the
// file over, and leaves the path and its lock alone. Replaced after the
// upgrade: the lock was taken over, but the stop leaves the new file.
func TestUpgradeUnixSocketReplaced(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	before, after, worker := filepath.Join(dir, "b"), filepath.Join(dir, "a"), filepath.Join(dir, "w")
	m := startMaster(t, pc, []string{"SRV_TRY_LISTEN=" + worker},
		append([]string{"-n", "1", "-shutdown-timeout", "2s", "-log-format", "json",
			"-listen", "127.0.0.1:0", "-listen", "unix://" + before, "-listen", "unix://" + after, "--"}, fakeSrvCmd(t)...)...)
	addr := m.waitReady()
	mpid := m.cmd.Process.Pid
	askListen(t, addr, worker)
	replace := func(p string) uint64 {
		t.Helper()
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("not a socket\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return fileIno(p)
	}
	socks := map[string]uint64{}
	for _, p := range []string{before, after, worker} {
		if socks[p] = listeningUnixInode(t, p); socks[p] == 0 {
			t.Fatalf("no listening socket bound to %s", p)
		}
	}
	files := map[string]uint64{before: replace(before), worker: replace(worker)}

	upgradeOnce(t, m, 1)
	for _, p := range []string{before, after, worker} {
		if !holdsSocket(t, mpid, socks[p]) {
			t.Errorf("after the upgrade the master no longer holds the socket bound to %s", p)
		}
	}
	warned := map[string]bool{}
	for _, line := range strings.Split(m.log.String(), "\n") {
		if strings.Contains(line, `"level":"WARN"`) && strings.Contains(line, "its socket file is not taken over") {
			for _, p := range []string{before, after, worker} {
				if strings.Contains(line, `"path":"`+p+`"`) {
					warned[p] = true
				}
			}
		}
	}
	if diff := cmp.Diff(map[string]bool{before: true, worker: true}, warned); diff != "" {
		t.Errorf("socket files warned about as not taken over (-want +got):\n%s", diff)
	}
	for _, p := range []string{before, worker} {
		if got := lockState(t, mpid, p); got != "free" {
			t.Errorf("lock of %s, replaced before the upgrade: %s, want free", p, got)
		}
	}
	if got := lockState(t, mpid, after); got != "held by the master" {
		t.Errorf("lock of %s: %s, want held by the master", after, got)
	}
	files[after] = replace(after)
	stopClean(t, m)
	for p, ino := range files {
		if got := fileIno(p); got != ino {
			t.Errorf("after the stop, %s has inode %d, want the replacement's %d", p, got, ino)
		}
	}
}
