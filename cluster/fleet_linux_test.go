//go:build linux

package cluster_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshtest"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/supervise"
)

// shGroup is a group of shell workers, ready once started, that print
// their global id and then sleep until stopped.
func shGroup(name string, count int, listen ...string) cluster.GroupConfig {
	if listen == nil {
		listen = []string{"127.0.0.1:0"}
	}
	return cluster.GroupConfig{
		Name: name, Program: "/bin/sh", Args: []string{"-c", `echo "id=$HANDOFF_WORKER_ID"; exec sleep 300`},
		Count: count, Listen: listen, Ready: cluster.ReadyStarted, ShutdownTimeout: 5 * time.Second,
	}
}

// runFleet runs f in the background; the returned function stops it and
// waits for Run (at the latest at cleanup).
func runFleet(t *testing.T, f *cluster.Fleet) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		f.Stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return within 30 s of Stop")
		}
		cancel()
	}
	t.Cleanup(stop)
	return stop
}

// slotIDs lists a status group's slots as "slot:id/index" of live workers.
func slotIDs(g cluster.ControlGroup) []string {
	var out []string
	for _, s := range g.Slots {
		if s.PID != 0 && s.State == supervise.SlotReady {
			out = append(out, strconv.Itoa(s.Slot)+":"+strconv.Itoa(s.ID)+"/"+strconv.Itoa(s.Index))
		}
	}
	return out
}

// TestFleetGroups runs two groups in one process: global ids across groups,
// worker output prefixed with the group, status per group with the sums at
// the top, scaling a group (the new slot's id is fresh), restarting one
// group only, and errors for unknown groups and requests a group cannot
// take.
func TestFleetGroups(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	var out syncBuffer
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{shGroup("a", 2), shGroup("b", 1)}},
		&cluster.FleetOptions{Logger: slog.New(slog.NewTextHandler(&out, nil)), Stdout: &out, Stderr: &out, Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	select {
	case <-f.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("not ready:\n%s", out.String())
	}
	st := f.Status()
	if len(st.Groups) != 2 || st.Workers != 3 || st.ReadyWorkers != 3 || len(st.Slots) != 0 {
		t.Fatalf("status %+v", st)
	}
	if diff := cmp.Diff([][]string{{"0:0/0", "1:1/1"}, {"0:2/0"}}, [][]string{slotIDs(st.Groups[0]), slotIDs(st.Groups[1])}); diff != "" {
		t.Errorf("slots (-want +got):\n%s", diff)
	}
	for _, re := range []string{`(?m)^\[a 0 \d+\] id=0$`, `(?m)^\[a 1 \d+\] id=1$`, `(?m)^\[b 0 \d+\] id=2$`} {
		waitUntil(t, "output "+re, 15*time.Second, func() bool { return regexp.MustCompile(re).MatchString(out.String()) })
	}

	if err := f.Scale("b", 2); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "b scaled to 2", 15*time.Second, func() bool { return len(slotIDs(f.Status().Groups[1])) == 2 })
	if diff := cmp.Diff([]string{"0:2/0", "1:3/1"}, slotIDs(f.Status().Groups[1])); diff != "" {
		t.Errorf("b after scale (-want +got):\n%s", diff)
	}

	before := f.Status().Groups[0].Slots
	if err := f.Restart("b"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "b restarted", 15*time.Second, func() bool {
		g := f.Status().Groups[1]
		return g.Generation == 2 && !g.Restarting && g.ReadyWorkers == 2
	})
	after := f.Status().Groups[0].Slots
	for i := range before {
		if before[i].PID != after[i].PID {
			t.Errorf("a slot %d: pid %d -> %d after restarting b", i, before[i].PID, after[i].PID)
		}
	}

	for _, tc := range []struct {
		name string
		err  error
	}{
		{"unknown group", f.Restart("nope")},
		{"suspend without a group", f.Suspend("")},
		{"scale without a group", f.Scale("", 1)},
		{"scale out of range", f.Scale("a", 5000)},
	} {
		if !errors.Is(tc.err, cluster.ErrControlInvalid) {
			t.Errorf("%s: %v, want ErrControlInvalid", tc.name, tc.err)
		}
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestFleetNewFails: a group that cannot bind fails NewFleet with an error
// naming it, and nothing is left open: no descriptor, no control socket,
// no pid file, no worker. A socket-activated process is refused.
func TestFleetNewFails(t *testing.T) {
	fdcensus.Verify(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir, err := os.MkdirTemp("", "fl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctl, pid := filepath.Join(dir, "c", "ctl"), filepath.Join(dir, "pid")
	fc := &cluster.FileConfig{Control: ctl, PIDFile: pid, Groups: []cluster.GroupConfig{shGroup("first", 1), shGroup("second", 1, taken.Addr().String())}}
	f, err := cluster.NewFleet(fc, &cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		f.Close()
		t.Fatal("NewFleet succeeded on a taken address")
	}
	if !strings.Contains(err.Error(), `group "second"`) {
		t.Errorf("error %q does not name the group", err)
	}
	for _, p := range []string{ctl, pid} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}

	for _, tc := range []struct {
		name   string
		groups []cluster.GroupConfig
	}{
		{"two groups of one name", []cluster.GroupConfig{shGroup("a", 1), shGroup("a", 1)}},
		{"more workers than a file may have", []cluster.GroupConfig{shGroup("a", 4000), shGroup("b", 97)}},
	} {
		if f, err := cluster.NewFleet(&cluster.FileConfig{Groups: tc.groups}, &cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler)}); !errors.Is(err, cluster.ErrConfig) {
			if f != nil {
				f.Close()
			}
			t.Errorf("%s: %v, want ErrConfig", tc.name, err)
		}
	}

	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	t.Setenv("LISTEN_FDS", "1")
	if f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{shGroup("a", 1)}}, nil); err == nil || !strings.Contains(err.Error(), "socket activation") {
		if f != nil {
			f.Close()
		}
		t.Errorf("NewFleet when socket-activated: %v", err)
	}
}

// TestFleetControlSocket: the fleet's one control socket answers status
// with the groups and takes group-targeted requests.
func TestFleetControlSocket(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := controlPath(t)
	_, stop, c := controlFleet(t, pc, path, shGroup("a", 1), shGroup("b", 1))
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Groups) != 2 || st.Groups[0].Name != "a" || st.Groups[1].Name != "b" || st.Workers != 2 {
		t.Fatalf("status %+v", st)
	}
	if err := c.Suspend("a"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a suspended", 15*time.Second, func() bool {
		st, err := c.Status()
		return err == nil && st.Groups[0].Suspended && len(slotIDs(st.Groups[0])) == 0 && len(slotIDs(st.Groups[1])) == 1
	})
	if err := c.Resume("a"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a resumed", 15*time.Second, func() bool {
		st, err := c.Status()
		return err == nil && !st.Groups[0].Suspended && len(slotIDs(st.Groups[0])) == 1
	})
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"suspend unknown", c.Suspend("zz")},
		{"send without a group", c.Send(0, []byte("x"))},
		{"scale unknown", c.ScaleGroup("zz", 1)},
	} {
		if !errors.Is(tc.err, cluster.ErrControlInvalid) {
			t.Errorf("%s: %v, want ErrControlInvalid", tc.name, tc.err)
		}
	}
	if err := c.BroadcastGroup("b", []byte("hi")); err != nil && !errors.Is(err, cluster.ErrNoWorker) {
		t.Errorf("broadcast -group b: %v", err)
	}
	// A stop naming a group (a client's idea of stopping one) is refused,
	// never taken for a stop of every group.
	ans, err := rawControl(t, path, `{"type":"stop","group":"a"}`)
	if err != nil || !strings.Contains(string(ans), `"code":"invalid"`) {
		t.Errorf("stop naming group a answered %s, %v; want an invalid error", ans, err)
	}
	if st, err := c.Status(); err != nil || len(slotIDs(st.Groups[0])) != 1 || len(slotIDs(st.Groups[1])) != 1 {
		t.Errorf("after a stop naming a group: %+v, %v; want both groups running", st, err)
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
}

// TestFleetScaleLimit: scaling keeps the whole process within the file's
// worker limit (MaxConfigWorkers), counting a suspended group's count to
// resume; ids of scaled slots are fresh and stable across scale down and
// up; restarting every group skips a suspended one.
func TestFleetScaleLimit(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	b := shGroup("b", 1)
	b.Suspended = true
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{shGroup("a", 1), b}},
		&cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	select {
	case <-f.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("not ready")
	}
	// b is suspended: scaling it only changes the count it resumes with,
	// so nothing is spawned whatever the outcome.
	if err := f.Scale("b", cluster.MaxConfigWorkers); !errors.Is(err, cluster.ErrControlInvalid) {
		t.Errorf("scale b to %d beside a's worker: %v, want ErrControlInvalid", cluster.MaxConfigWorkers, err)
	}
	if err := f.Scale("b", cluster.MaxConfigWorkers-1); err != nil {
		t.Fatalf("scale b to %d: %v", cluster.MaxConfigWorkers-1, err)
	}
	if err := f.Scale("a", 2); !errors.Is(err, cluster.ErrControlInvalid) {
		t.Errorf("scale a to 2 past the limit: %v, want ErrControlInvalid", err)
	}
	if err := f.Scale("b", 1); err != nil {
		t.Fatal(err)
	}

	// Ids: a=0, b=1 as configured; a's slot 1 gets the first fresh id, 2,
	// and keeps it after a scale down and up again.
	for _, n := range []int{2, 1, 2} {
		if err := f.Scale("a", n); err != nil {
			t.Fatalf("scale a to %d: %v", n, err)
		}
		waitUntil(t, "a at "+strconv.Itoa(n), 15*time.Second, func() bool {
			g := f.Status().Groups[0]
			return len(g.Slots) == n && len(slotIDs(g)) == n
		})
	}
	if diff := cmp.Diff([]string{"0:0/0", "1:2/1"}, slotIDs(f.Status().Groups[0])); diff != "" {
		t.Errorf("a's ids after scale up, down, up (-want +got):\n%s", diff)
	}

	// Restart of every group: b is suspended, a restarts.
	if err := f.Restart(""); err != nil {
		t.Errorf("restart every group with b suspended: %v", err)
	}
	waitUntil(t, "a restarted", 15*time.Second, func() bool {
		g := f.Status().Groups[0]
		return g.Generation == 2 && !g.Restarting && g.ReadyWorkers == 2
	})
	if err := f.Restart("b"); !errors.Is(err, cluster.ErrSuspended) {
		t.Errorf("restart of suspended b: %v, want ErrSuspended", err)
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// fakeAgent is a helper role, run over ssh by
// TestFleetRemoteStatusBounded: an agent that claims 4096 workers with a
// forged global id (about 450 KB of status each second), and exits on
// "stop".
var fakeSeq = regexp.MustCompile(`"seq":([0-9]+)`)

func fakeAgent() int {
	var b strings.Builder
	b.WriteString(`{"type":"status","ready":true,"status":{"pid":4242,"generation":1,"workers":4096,"ready_workers":4096,"slots":[`)
	for i := range 4096 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"slot":` + strconv.Itoa(i) + `,"pid":` + strconv.Itoa(100000+i) + `,"generation":1,"state":"ready","uptime_ms":1,"restarts":0,"id":999999,"index":0}`)
	}
	b.WriteString(`]}}`)
	var mu sync.Mutex
	w := ipcframe.NewWriter(os.Stdout, nil)
	write := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		if err := w.WriteFrame([]byte(s)); err != nil {
			os.Exit(3)
		}
	}
	write(`{"type":"started","version":1,"pid":4242,"addrs":[]}`)
	go func() {
		for range 120 {
			write(b.String())
			time.Sleep(500 * time.Millisecond)
		}
		os.Exit(4)
	}()
	r := ipcframe.NewReader(os.Stdin, nil)
	var buf []byte
	for range 1000 {
		var err error
		if buf, err = r.ReadFrame(buf[:0]); err != nil {
			os.Exit(0)
		}
		if strings.Contains(string(buf), `"type":"stop"`) {
			write(`{"type":"exit"}`)
			return 0
		}
		// FAKE_REFUSE: suspend and max_running_time are refused, as by an
		// agent whose restart is in flight.
		if os.Getenv("FAKE_REFUSE") != "" && (strings.Contains(string(buf), `"type":"suspend"`) || strings.Contains(string(buf), `"type":"max_running_time"`)) {
			if m := fakeSeq.FindSubmatch(buf); m != nil {
				write(`{"type":"ack","seq":` + string(m[1]) + `,"error":"busy: a restart is in flight"}`)
			}
		}
	}
	return 0
}

// fakeAgentBin writes a wrapper that runs this binary as the fake agent
// (fakeAgent) with env set, for a RemoteHost's Binary. ssh passes no
// environment, so the wrapper selects the helper role; it drops the
// agent's arguments, with which TestMain would run the real agent.
func fakeAgentBin(t *testing.T, env ...string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "fake-agent")
	script := "#!/bin/sh\nexec env " + helperproc.RoleVar + "=fake-agent " + strings.Join(append(env, "GORACE=atexit_sleep_ms=0"), " ") + " '" + exe + "'\n"
	if err := os.WriteFile(bin, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestFleetRemoteStatusBounded: remote hosts whose agents report far more
// workers than they run, with forged ids, cannot take the status down (the
// response would exceed what a client reads): each host shows its own
// workers only, with the ids the fleet gave them.
func TestFleetRemoteStatusBounded(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	srv := sshtest.Start(t)
	bin := fakeAgentBin(t)
	host := cluster.RemoteHost{SSH: srv.User + "@" + sshtest.Host, Port: srv.Port, Count: 1, Identity: srv.ClientKey, KnownHosts: srv.WriteKnownHosts(t), Binary: bin}
	far := cluster.GroupConfig{Name: "far", Program: "/bin/true", Listen: []string{"127.0.0.1:0"}, Ready: cluster.ReadyStarted,
		ShutdownTimeout: 2 * time.Second, Remote: []cluster.RemoteHost{host, host, host}}
	path := controlPath(t)
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{shGroup("a", 1), far}},
		&cluster.FleetOptions{Control: path, Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	waitUntil(t, "three fake agents reporting", 20*time.Second, func() bool {
		n := 0
		for _, r := range f.Status().Groups[1].Remote {
			if r.Connected && len(r.Slots) > 0 {
				n++
			}
		}
		return n == 3
	})
	c, err := cluster.DialControl(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status()
	if err != nil {
		t.Fatalf("status with three agents claiming 4096 workers each: %v", err)
	}
	var got []string
	for _, r := range st.Groups[1].Remote {
		for _, s := range r.Slots {
			got = append(got, strconv.Itoa(s.Slot)+":"+strconv.Itoa(s.ID)+"/"+strconv.Itoa(s.Index))
		}
		if r.ReadyWorkers > r.Workers {
			t.Errorf("host %s: %d of %d workers ready", r.Host, r.ReadyWorkers, r.Workers)
		}
	}
	if diff := cmp.Diff([]string{"0:1/0", "0:2/1", "0:3/2"}, got); diff != "" {
		t.Errorf("remote slots (-want +got):\n%s", diff)
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestFleetMaxRunningTimeControl: the maximum running time of one group
// is set, shown and cleared over the control socket; with it set, that
// group's worker is recycled (a new pid) and the other group's is not;
// out-of-range values are refused without a round trip or by the master.
func TestFleetMaxRunningTimeControl(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := controlPath(t)
	f, stop, c := controlFleet(t, pc, path, shGroup("a", 1), shGroup("b", 1))
	pidOf := func(g cluster.ControlGroup) int {
		for _, s := range g.Slots {
			if s.State == supervise.SlotReady {
				return s.PID
			}
		}
		return 0
	}
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	a0, b0 := pidOf(st.Groups[0]), pidOf(st.Groups[1])
	if a0 == 0 || b0 == 0 || st.Groups[0].MaxRunningTime != 0 {
		t.Fatalf("status before: %+v", st)
	}
	if err := c.SetMaxRunningTime("a", time.Second); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "group a recycled", 15*time.Second, func() bool {
		st, err := c.Status()
		return err == nil && st.Groups[0].MaxRunningTime == time.Second && pidOf(st.Groups[0]) != 0 && pidOf(st.Groups[0]) != a0
	})
	if err := c.SetMaxRunningTime("a", 0); err != nil {
		t.Fatal(err)
	}
	st, err = c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Groups[0].MaxRunningTime != 0 || pidOf(st.Groups[1]) != b0 {
		t.Errorf("after clearing a's limit: a %v, b pid %d (want 0, unchanged %d)", st.Groups[0].MaxRunningTime, pidOf(st.Groups[1]), b0)
	}
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"too short", c.SetMaxRunningTime("a", 500*time.Millisecond)},
		{"negative", c.SetMaxRunningTime("a", -time.Second)},
		{"no such group", c.SetMaxRunningTime("zz", time.Minute)},
		{"no group with two", c.SetMaxRunningTime("", time.Minute)},
		// The Go API keeps the same range (a remote agent refuses any
		// other value as a protocol error), and changes nothing.
		{"Go API: too short", f.SetMaxRunningTime("a", 500*time.Millisecond)},
		{"Go API: over 366 days", f.SetMaxRunningTime("a", 367*24*time.Hour)},
	} {
		if !errors.Is(tc.err, cluster.ErrControlInvalid) {
			t.Errorf("%s: %v, want ErrControlInvalid", tc.name, tc.err)
		}
	}
	if got := f.Status().Groups[0].MaxRunningTime; got != 0 {
		t.Errorf("after refused values: a's maximum running time %v, want 0", got)
	}
	// The master checks the range too, whatever a client sends.
	if ans, err := rawControl(t, path, `{"type":"max_running_time","group":"a","max_running_time_ms":500}`); err != nil || !strings.Contains(string(ans), `"code":"bad_request"`) {
		t.Errorf("500 ms answered %s, %v; want a bad_request error", ans, err)
	}
	stop()
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestFleetKillRemote: Kill after Stop, the fleet's second stop signal,
// reaches the remote hosts: their workers, which ignore SIGTERM and have a
// 30 s grace period, are killed at once, Run returns well before the
// grace period, and nothing is left running on the host.
func TestFleetKillRemote(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	srv := sshtest.Start(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	host := cluster.RemoteHost{SSH: srv.User + "@" + sshtest.Host, Port: srv.Port, Count: 1, Identity: srv.ClientKey,
		KnownHosts: srv.WriteKnownHosts(t), Binary: exe}
	far := cluster.GroupConfig{Name: "far", Program: exe, Args: []string{"-test.run=^$"}, Listen: []string{"127.0.0.1:0"},
		Env: append(agentEnv(pc), "AGENT_WORKER_STUBBORN=1"), ShutdownTimeout: 30 * time.Second, Remote: []cluster.RemoteHost{host}}
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: []cluster.GroupConfig{far}},
		&cluster.FleetOptions{Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(45 * time.Second):
			t.Error("Run did not return")
		}
	}()
	waitUntil(t, "the remote worker ready", 20*time.Second, func() bool {
		r := f.Status().Groups[0].Remote[0]
		return r.Connected && r.ReadyWorkers == 1
	})
	f.Stop()
	time.Sleep(500 * time.Millisecond) // the agent got "stop"; its worker ignores it
	if err := f.Kill(); err != nil {
		t.Errorf("Kill: %v", err)
	}
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		// The grace period is 30 s: only a kill ends the session this soon.
		t.Fatalf("Run still running 15 s after Kill: %+v", f.Status().Groups[0].Remote[0])
	}
	if err := pc.WaitGone(5 * time.Second); err != nil {
		t.Error(err)
	}
}

// controlPath returns a control socket path in a fresh directory, short
// enough for sun_path (t.TempDir's names can be too long), removed at the
// end of the test.
func controlPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "c", "ctl")
}

// controlFleet runs a fleet of groups with its control socket at path and
// returns it, its stop function (see runFleet) and a client connected
// once every group is ready.
func controlFleet(t *testing.T, pc *proccensus.Census, path string, groups ...cluster.GroupConfig) (*cluster.Fleet, func(), *cluster.ControlClient) {
	t.Helper()
	f, err := cluster.NewFleet(&cluster.FileConfig{Groups: groups},
		&cluster.FleetOptions{Control: path, Logger: slog.New(slog.DiscardHandler), Env: append(os.Environ(), pc.Env())})
	if err != nil {
		t.Fatal(err)
	}
	stop := runFleet(t, f)
	<-f.Ready()
	c, err := cluster.DialControl(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, stop, c
}

// rawControl sends one request frame as written, bypassing the client's
// own checks, and returns the master's answer.
func rawControl(t *testing.T, path, req string) ([]byte, error) {
	t.Helper()
	raw, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	if err := ipcframe.NewWriter(raw, nil).WriteFrame([]byte(req)); err != nil {
		t.Fatal(err)
	}
	return ipcframe.NewReader(raw, nil).ReadFrame(nil)
}
