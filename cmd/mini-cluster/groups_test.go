//go:build linux

package main

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshtest"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
)

// envWorker is a group worker that writes its HANDOFF_* environment to
// $DIR/<pid>.env and then sleeps (a SIGTERM ends it). Ready mode
// "started" suits it.
const envWorker = `env | grep '^HANDOFF_' > "$DIR/$$.tmp" && mv "$DIR/$$.tmp" "$DIR/$$.env"; echo "worker $HANDOFF_WORKER_ID up"; exec sleep 300`

// writeConfig writes a -config file and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "groups.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// jsonStr quotes s for a config file.
func jsonStr(s string) string { return strconv.Quote(s) }

// envGroup is the config of a group of envWorkers reporting to dir.
func envGroup(name string, count int, dir, extra string) string {
	return `{"name":` + jsonStr(name) + `,"command":["/bin/sh","-c",` + jsonStr(envWorker) + `],"count":` + strconv.Itoa(count) +
		`,"listen":["127.0.0.1:0"],"ready":"started","shutdown_timeout":"5s","env":{"DIR":` + jsonStr(dir) + `}` + extra + `}`
}

// workerEnvs reads every <pid>.env in dir: pid -> HANDOFF_* variables.
func workerEnvs(t *testing.T, dir string) map[int]map[string]string {
	t.Helper()
	out := map[int]map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pidStr, ok := strings.CutSuffix(e.Name(), ".env")
		if !ok {
			continue
		}
		pid, _ := strconv.Atoi(pidStr)
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok {
				env[k] = v
			}
		}
		out[pid] = env
	}
	return out
}

// waitGroupsReady waits for the fleet's "every group ready" record.
func (m *master) waitGroupsReady() {
	m.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(m.log.String(), "every group ready") {
			return
		}
		select {
		case <-m.done:
			m.t.Fatalf("mini-cluster exited before ready: %v\n%s", m.err, m.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	m.t.Fatalf("mini-cluster -config not ready within 20 s:\n%s", m.log.String())
}

// groupStatus is what the tests compare of one group of "status -json":
// per local slot "id/index/state", and the pids.
type groupStatus struct {
	Suspended bool
	Slots     []string
	PIDs      []int
}

func groupsJSON(t *testing.T, path string) map[string]groupStatus {
	t.Helper()
	code, out, errOut := ctl("status", "-control", path, "-json")
	if code != 0 {
		t.Fatalf("status -json: exit %d: %s", code, errOut)
	}
	v, err := fastjson.Parse(out)
	if err != nil {
		t.Fatalf("status -json printed %q: %v", out, err)
	}
	res := map[string]groupStatus{}
	for _, g := range v.GetArray("groups") {
		gs := groupStatus{Suspended: g.GetBool("suspended")}
		for _, s := range g.GetArray("slots") {
			if s.GetInt("pid") == 0 {
				continue
			}
			gs.Slots = append(gs.Slots, strconv.Itoa(s.GetInt("id"))+"/"+strconv.Itoa(s.GetInt("index"))+"/"+string(s.GetStringBytes("state")))
			gs.PIDs = append(gs.PIDs, s.GetInt("pid"))
		}
		res[string(g.GetStringBytes("name"))] = gs
	}
	return res
}

// TestGroupsConfig runs two local groups from a configuration file: every
// worker gets its global id, group index, group size, group name and
// params; status shows both groups; restarting one group leaves the other's
// workers alone; scaling a group gives the new slot a fresh id; suspend
// and resume stop and start one group only; the pid file is written when
// ready; SIGTERM stops everything.
func TestGroupsConfig(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	ctlPath := filepath.Join(controlDir(t), "ctl")
	pidPath := filepath.Join(t.TempDir(), "mc.pid")
	cfg := writeConfig(t, `{"groups":[`+
		envGroup("web", 2, dir, `,"params":{"shard":"a","n":[1,2]}`)+`,`+
		envGroup("jobs", 1, dir, ``)+`]}`)
	m := startMaster(t, pc, nil, "-config", cfg, "-control", ctlPath, "-pid-file", pidPath)
	m.waitGroupsReady()

	if b, err := os.ReadFile(pidPath); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(m.cmd.Process.Pid) {
		t.Errorf("pid file: %q, %v; want %d", b, err, m.cmd.Process.Pid)
	}
	waitCtl(t, "3 workers' environments", func() bool { return len(workerEnvs(t, dir)) == 3 })
	var got []string
	for _, env := range workerEnvs(t, dir) {
		got = append(got, env["HANDOFF_WORKER_ID"]+" "+env["HANDOFF_GROUP"]+" "+env["HANDOFF_GROUP_INDEX"]+"/"+env["HANDOFF_GROUP_SIZE"]+" "+env["HANDOFF_PARAMS"]+" workers="+env["HANDOFF_WORKERS"])
	}
	sort.Strings(got)
	want := []string{
		`0 web 0/2 {"shard":"a","n":[1,2]} workers=2`,
		`1 web 1/2 {"shard":"a","n":[1,2]} workers=2`,
		`2 jobs 0/1 {} workers=1`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("worker environments (-want +got):\n%s", diff)
	}

	st := groupsJSON(t, ctlPath)
	if diff := cmp.Diff([]string{"0/0/ready", "1/1/ready"}, st["web"].Slots); diff != "" {
		t.Errorf("status web (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"2/0/ready"}, st["jobs"].Slots); diff != "" {
		t.Errorf("status jobs (-want +got):\n%s", diff)
	}
	code, out, errOut := ctl("status", "-control", ctlPath)
	if code != 0 || !strings.Contains(out, "group web: generation 1, 2/2 workers ready") || !strings.Contains(out, "group jobs: generation 1, 1/1 workers ready") {
		t.Errorf("status: exit %d, %s%s", code, out, errOut)
	}
	webPIDs := st["web"].PIDs

	// Restart one group: the other keeps its workers.
	if code, out, errOut := ctl("restart", "-group", "jobs", "-control", ctlPath); code != 0 || out != "restart begun\n" {
		t.Fatalf("restart -group jobs: exit %d, %q, %s", code, out, errOut)
	}
	waitCtl(t, "jobs restarted", func() bool {
		s := groupsJSON(t, ctlPath)["jobs"]
		return len(s.PIDs) == 1 && s.PIDs[0] != st["jobs"].PIDs[0] && cmp.Equal(s.Slots, []string{"2/0/ready"})
	})
	if got := groupsJSON(t, ctlPath)["web"].PIDs; !cmp.Equal(got, webPIDs) {
		t.Errorf("web pids after restarting jobs: %v, want %v", got, webPIDs)
	}

	// Scale web up: the new slot's id is past every configured one.
	if code, _, errOut := ctl("scale", "3", "-group", "web", "-control", ctlPath); code != 0 {
		t.Fatalf("scale -group web 3: exit %d: %s", code, errOut)
	}
	waitCtl(t, "web scaled to 3", func() bool { return len(groupsJSON(t, ctlPath)["web"].Slots) == 3 })
	if diff := cmp.Diff([]string{"0/0/ready", "1/1/ready", "3/2/ready"}, groupsJSON(t, ctlPath)["web"].Slots); diff != "" {
		t.Errorf("web after scale (-want +got):\n%s", diff)
	}
	waitCtl(t, "the new worker's environment", func() bool {
		for _, env := range workerEnvs(t, dir) {
			if env["HANDOFF_WORKER_ID"] == "3" {
				return env["HANDOFF_GROUP_INDEX"] == "2" && env["HANDOFF_GROUP_SIZE"] == "3"
			}
		}
		return false
	})
	// A group cannot be scaled without naming it when there are several.
	if code, _, errOut := ctl("scale", "1", "-control", ctlPath); code != 1 || !strings.Contains(errOut, "name a group") {
		t.Errorf("scale without -group: exit %d, %s", code, errOut)
	}
	if code, _, errOut := ctl("restart", "-group", "nope", "-control", ctlPath); code != 1 || !strings.Contains(errOut, `no group "nope"`) {
		t.Errorf("restart -group nope: exit %d, %s", code, errOut)
	}

	// Suspend jobs: its worker goes, web stays; resume brings one back.
	if code, out, errOut := ctl("suspend", "jobs", "-control", ctlPath); code != 0 || out != "group jobs suspending\n" {
		t.Fatalf("suspend jobs: exit %d, %q, %s", code, out, errOut)
	}
	waitCtl(t, "jobs suspended", func() bool { s := groupsJSON(t, ctlPath)["jobs"]; return s.Suspended && len(s.PIDs) == 0 })
	if got := groupsJSON(t, ctlPath)["web"]; got.Suspended || len(got.PIDs) != 3 || !cmp.Equal(got.PIDs[:2], webPIDs) {
		t.Errorf("web while jobs is suspended: %+v (pids were %v)", got, webPIDs)
	}
	if code, out, errOut := ctl("resume", "jobs", "-control", ctlPath); code != 0 || out != "group jobs resuming\n" {
		t.Fatalf("resume jobs: exit %d, %q, %s", code, out, errOut)
	}
	waitCtl(t, "jobs resumed", func() bool {
		s := groupsJSON(t, ctlPath)["jobs"]
		return !s.Suspended && cmp.Equal(s.Slots, []string{"2/0/ready"})
	})

	m.signal(syscall.SIGTERM)
	if code := m.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, m.log.String())
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
	for _, p := range []string{pidPath, ctlPath} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}

// listenAddr finds the address a group's master logged for its first
// listener.
func (m *master) listenAddr(group string) string {
	m.t.Helper()
	re := regexp.MustCompile(`msg=listening group=` + regexp.QuoteMeta(group) + ` .*addr=(\S+)`)
	if s := re.FindStringSubmatch(m.log.String()); s != nil {
		return s[1]
	}
	m.t.Fatalf("no listening record for group %s:\n%s", group, m.log.String())
	return ""
}

// TestGroupsSuspendQueues: a connection to a suspended shared-mode group
// waits in the listen backlog and is served once the group resumes.
func TestGroupsSuspendQueues(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	ctlPath := filepath.Join(controlDir(t), "ctl")
	srv := fakeSrvCmd(t)
	cfg := writeConfig(t, `{"groups":[{"name":"web","command":[`+jsonStr(srv[0])+`,`+jsonStr(srv[1])+`],"count":1,"listen":["127.0.0.1:0"],"shutdown_timeout":"5s"},`+
		envGroup("other", 1, dir, "")+`]}`)
	m := startMaster(t, pc, nil, "-config", cfg, "-control", ctlPath)
	m.waitGroupsReady()
	addr := m.listenAddr("web")
	if _, _, err := get(addr, "/"); err != nil {
		t.Fatal(err)
	}
	otherPIDs := groupsJSON(t, ctlPath)["other"].PIDs

	if code, _, errOut := ctl("suspend", "web", "-control", ctlPath); code != 0 {
		t.Fatalf("suspend web: exit %d: %s", code, errOut)
	}
	waitCtl(t, "web suspended", func() bool { s := groupsJSON(t, ctlPath)["web"]; return s.Suspended && len(s.PIDs) == 0 })
	// The slot is gone at once; the worker itself is gone once it exited.
	exited := regexp.MustCompile(`msg="worker exited" group=web `)
	waitCtl(t, "web's worker exited", func() bool { return exited.MatchString(m.log.String()) })
	// The listener is still there: the connection is accepted by the
	// kernel and its request waits.
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() { b, _, err := get(addr, "/"); done <- result{b, err} }()
	select {
	case r := <-done:
		t.Fatalf("request to a suspended group answered: %q, %v", r.body, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	if code, _, errOut := ctl("resume", "web", "-control", ctlPath); code != 0 {
		t.Fatalf("resume web: exit %d: %s", code, errOut)
	}
	select {
	case r := <-done:
		if r.err != nil || r.body != "ok\n" {
			t.Errorf("queued request after resume: %q, %v", r.body, r.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("queued request not served within 15 s of resume")
	}
	if got := groupsJSON(t, ctlPath)["other"].PIDs; !cmp.Equal(got, otherPIDs) {
		t.Errorf("other group's pids %v, want %v (untouched)", got, otherPIDs)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestGroupsUsage: a broken configuration file is reported as
// FILE:LINE:COL and exits 2, as does -config combined with a program or
// the per-group flags; a group listening on a taken address fails at
// start, naming the group, with nothing left behind.
func TestGroupsUsage(t *testing.T) {
	fdcensus.Verify(t)
	garbage := writeConfig(t, "{\"groups\": [\n  {\"name\": \"web\",, }\n]}")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	busy := writeConfig(t, `{"groups":[`+envGroup("first", 1, dir, "")+`,`+
		`{"name":"second","command":["/bin/true"],"listen":[`+jsonStr(taken.Addr().String())+`]}]}`)
	ctlPath := filepath.Join(controlDir(t), "ctl")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want *regexp.Regexp
	}{
		{"syntax error", []string{"-config", garbage}, 2, regexp.MustCompile(`^mini-cluster: ` + regexp.QuoteMeta(garbage) + `:2:\d+: `)},
		{"missing file", []string{"-config", garbage + ".nope"}, 2, regexp.MustCompile(`^mini-cluster: ` + regexp.QuoteMeta(garbage) + `\.nope:1:1: `)},
		{"with -n", []string{"-config", busy, "-n", "2"}, 2, regexp.MustCompile(`-n cannot be combined`)},
		{"with a program", []string{"-config", busy, "--", "/bin/true"}, 2, regexp.MustCompile(`unexpected program "/bin/true"`)},
		{"bind error", []string{"-config", busy, "-control", ctlPath}, 1, regexp.MustCompile(`group "second": .*address already in use`)},
		{"suspend without a group", []string{"suspend", "-control", ctlPath}, 2, regexp.MustCompile(`(?s)usage: mini-cluster suspend GROUP -control PATH \[-json\] .*suspend: want exactly one group name`)},
		{"resume with two groups", []string{"resume", "a", "-group", "b", "-control", ctlPath}, 2, regexp.MustCompile(`-group names another group`)},
		// Never ignored: "stop -group web" must not stop every group.
		{"stop -group", []string{"stop", "-group", "web", "-control", ctlPath}, 2, regexp.MustCompile(`stop: -group is not supported \(stop acts on every group; use suspend GROUP to stop one\)`)},
		{"status -group", []string{"status", "-group", "web", "-control", ctlPath}, 2, regexp.MustCompile(`status: -group is not supported \(status shows every group\)`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := ctl(tc.args...)
			if code != tc.code || !tc.want.MatchString(errOut) {
				t.Errorf("exit %d (want %d), stdout %q, stderr:\n%s\nwant it to match %v", code, tc.code, out, errOut, tc.want)
			}
		})
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a worker of the first group ran: %v", ents)
	}
	if _, err := os.Lstat(ctlPath); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
}

// TestGroupsStatusTable: the table shows each remote host's state, a slot
// state this release does not know by its name, and the text of an
// agent's error cannot inject terminal escapes or rows.
func TestGroupsStatusTable(t *testing.T) {
	st := &cluster.ControlStatus{PID: 9, Generation: 1, Workers: 1, ReadyWorkers: 1, Groups: []cluster.ControlGroup{{
		Name: "far", Generation: 1, Workers: 2, ReadyWorkers: 1,
		Slots: []cluster.ControlSlot{{Slot: 0, PID: 40, Generation: 1, State: supervise.SlotReady, ID: 0, Index: 0}},
		Remote: []cluster.ControlRemote{
			{Host: "u@h", Port: 2222, Connected: true, AgentPID: 77, Sessions: 1, Workers: 1, ReadyWorkers: 1,
				Slots: []cluster.ControlSlot{{Slot: 0, PID: 50, Generation: 1, StateName: "draining", ID: 1, Index: 1}}},
			{Host: "v@k", Port: 22, Sessions: 3, Workers: 1, LastError: "agent: \x1b[2J\x1b]0;pwned\x07boom\nu@h:2222  0  0  0  1"},
		},
	}}}
	var b strings.Builder
	if err := printStatus(&b, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	// Counts of one are singular: each want ends its line.
	for _, want := range []string{"master 9: 1 group, 1/1 local workers ready\n", "group far: generation 1, 1/2 workers ready",
		"u@h:2222: connected, agent pid 77, 1/1 ready, 1 session\n", " draining ",
		"v@k: disconnected, 0/1 ready, 3 sessions, last error: agent: ?[2J?]0;pwned?boom?u@h:2222"} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	if strings.ContainsAny(out, "\x1b\x07") || strings.Count(out, "\n") != 8 {
		t.Errorf("status table has control characters or forged rows (%d lines):\n%q", strings.Count(out, "\n"), out)
	}
	// The hosts' state lines come first; the header, local and remote
	// rows then form one table whose second column (SLOT) lines up.
	if strings.Index(out, "v@k: disconnected") > strings.Index(out, "HOST ") {
		t.Errorf("a host's state line inside the table:\n%s", out)
	}
	secondCol := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		first, rest, ok := strings.Cut(line, " ")
		if ok && (first == "HOST" || first == "local" || first == "u@h:2222") {
			secondCol[first] = len(line) - len(strings.TrimLeft(rest, " "))
		}
	}
	if len(secondCol) != 3 || secondCol["HOST"] != secondCol["local"] || secondCol["HOST"] != secondCol["u@h:2222"] {
		t.Errorf("SLOT column offsets %v, want equal:\n%s", secondCol, out)
	}
}

// TestGroupsSingleModeRefusesGroups: a single-command master answers a
// group-targeted request with "invalid".
func TestGroupsSingleModeRefusesGroups(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(controlDir(t), "ctl")
	m := startMaster(t, pc, nil, append([]string{"-n", "1", "-listen", "127.0.0.1:0", "-control", path, "--"}, fakeSrvCmd(t)...)...)
	m.waitReady()
	for _, args := range [][]string{{"suspend", "web"}, {"restart", "-group", "web"}} {
		code, _, errOut := ctl(append(args, "-control", path)...)
		if code != 1 || !strings.Contains(errOut, "invalid") || !strings.Contains(errOut, "no groups") {
			t.Errorf("%v: exit %d: %s", args, code, errOut)
		}
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// agentBinary writes the executable an ssh host runs as mini-cluster: a
// script that runs this test binary's mini-cluster role (the agent mode
// included) with its arguments.
func agentBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "mini-cluster")
	script := "#!/bin/sh\nexec env " + helperproc.RoleVar + "=mini-cluster GORACE=atexit_sleep_ms=0 '" + exe + "' '-test.run=^$' -- \"$@\"\n"
	if err := os.WriteFile(bin, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	return bin
}

// remoteGroupConfig is a group "far" of two envWorkers on the ssh server
// and none locally.
func remoteGroupConfig(srv *sshtest.Server, bin, knownHosts, dir string) string {
	return `{"groups":[{"name":"far","command":["/bin/sh","-c",` + jsonStr(envWorker) + `],"count":0,` +
		`"listen":["127.0.0.1:0"],"ready":"started","shutdown_timeout":"5s","params":{"x":1},"env":{"DIR":` + jsonStr(dir) + `},` +
		`"backoff":{"min":"200ms","max":"1s"},` +
		`"remote":[{"ssh":` + jsonStr(srv.User+"@"+sshtest.Host) + `,"port":` + strconv.Itoa(srv.Port) + `,"count":2,` +
		`"identity":` + jsonStr(srv.ClientKey) + `,"known_hosts":` + jsonStr(knownHosts) + `,"binary":` + jsonStr(bin) + `}]}]}`
}

// remoteStatus returns the first remote host of group far in "status
// -json": connected, last error, and "id/index/state" of its live slots.
func remoteStatus(t *testing.T, path string) (connected bool, lastErr string, slots []string) {
	t.Helper()
	code, out, errOut := ctl("status", "-control", path, "-json")
	if code != 0 {
		t.Fatalf("status -json: exit %d: %s", code, errOut)
	}
	v, err := fastjson.Parse(out)
	if err != nil {
		t.Fatalf("status -json printed %q: %v", out, err)
	}
	r := v.Get("groups", "0", "remote", "0")
	if r == nil {
		t.Fatalf("status -json shows no remote host: %s", out)
	}
	for _, s := range r.GetArray("slots") {
		if s.GetInt("pid") != 0 {
			slots = append(slots, strconv.Itoa(s.GetInt("id"))+"/"+strconv.Itoa(s.GetInt("index"))+"/"+string(s.GetStringBytes("state")))
		}
	}
	return r.GetBool("connected"), string(r.GetStringBytes("last_error")), slots
}

// TestGroupsRemoteSSH runs a group on a real sshd with mini-cluster (this
// test binary's role) as the agent: the remote workers get their ids, index, size
// and params, their output reaches the master's log, status shows them,
// and SIGTERM stops both sides (sshtest's census checks the remote side).
// A wrong known_hosts entry is refused with a host-key error in the
// status and the log.
func TestGroupsRemoteSSH(t *testing.T) {
	fdcensus.Verify(t)
	srv := sshtest.Start(t)
	bin := agentBinary(t)

	t.Run("runs", func(t *testing.T) {
		pc := proccensus.New(t)
		dir := t.TempDir()
		ctlPath := filepath.Join(controlDir(t), "ctl")
		m := startMaster(t, pc, nil, "-config", writeConfig(t, remoteGroupConfig(srv, bin, srv.WriteKnownHosts(t), dir)), "-control", ctlPath)
		m.waitGroupsReady()
		waitCtl(t, "two remote workers ready", func() bool {
			ok, _, slots := remoteStatus(t, ctlPath)
			return ok && cmp.Equal(slots, []string{"0/0/ready", "1/1/ready"})
		})
		waitCtl(t, "2 remote workers' environments", func() bool { return len(workerEnvs(t, dir)) == 2 })
		var got []string
		for _, env := range workerEnvs(t, dir) {
			got = append(got, env["HANDOFF_WORKER_ID"]+" "+env["HANDOFF_GROUP"]+" "+env["HANDOFF_GROUP_INDEX"]+"/"+env["HANDOFF_GROUP_SIZE"]+" "+env["HANDOFF_PARAMS"])
		}
		sort.Strings(got)
		if diff := cmp.Diff([]string{`0 far 0/2 {"x":1}`, `1 far 1/2 {"x":1}`}, got); diff != "" {
			t.Errorf("remote worker environments (-want +got):\n%s", diff)
		}
		for _, id := range []string{"0", "1"} {
			re := regexp.MustCompile(`msg="worker ` + id + ` up".* group=far host=\S+`)
			waitCtl(t, "worker "+id+"'s output in the master's log", func() bool { return re.MatchString(m.log.String()) })
		}
		if code, out, _ := ctl("status", "-control", ctlPath); code != 0 || !strings.Contains(out, "connected, agent pid") {
			t.Errorf("status table (exit %d):\n%s", code, out)
		}
		// A group of remote hosts only: scaling is refused, and a message
		// cannot reach its workers (no control channel over ssh); neither
		// may look done.
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"scale", "3", "-group", "far"}, `group "far" has remote hosts; it cannot be scaled`},
			{[]string{"broadcast", "hi", "-group", "far"}, `no such worker: group "far" has no local workers`},
		} {
			if code, out, errOut := ctl(append(tc.args, "-control", ctlPath)...); code != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("%v: exit %d, %q, %s; want exit 1 and %q", tc.args, code, out, errOut, tc.want)
			}
		}
		m.signal(syscall.SIGTERM)
		if code := m.wait(30 * time.Second); code != 0 {
			t.Fatalf("exit code %d after SIGTERM", code)
		}
		if err := pc.WaitGone(10 * time.Second); err != nil {
			t.Error(err)
		}
		// The agent stopped its workers before the session ended.
		waitCtl(t, "remote workers gone", func() bool {
			for pid := range workerEnvs(t, dir) {
				if p, ok := proccensus.Stat(pid); ok && p.State != 'Z' {
					return false
				}
			}
			return true
		})
	})

	t.Run("wrong host key", func(t *testing.T) {
		pc := proccensus.New(t)
		dir := t.TempDir()
		ctlPath := filepath.Join(controlDir(t), "ctl")
		m := startMaster(t, pc, nil, "-config", writeConfig(t, remoteGroupConfig(srv, bin, srv.WriteWrongKnownHosts(t), dir)), "-control", ctlPath)
		m.waitGroupsReady()
		var lastErr string
		waitCtl(t, "a host key error in the status", func() bool {
			var ok bool
			ok, lastErr, _ = remoteStatus(t, ctlPath)
			return !ok && lastErr != ""
		})
		if !strings.Contains(lastErr, "host key") {
			t.Errorf("last error %q, want a host key error", lastErr)
		}
		if !strings.Contains(m.log.String(), "host key") {
			t.Errorf("no host key error in the log:\n%s", m.log.String())
		}
		m.signal(syscall.SIGTERM)
		if code := m.wait(30 * time.Second); code != 0 {
			t.Fatalf("exit code %d after SIGTERM", code)
		}
		if err := pc.WaitGone(10 * time.Second); err != nil {
			t.Error(err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("a worker ran despite the wrong host key: %v", ents)
		}
	})
}

// TestGroupsSignals: with -config, systemd hears READY=1 and STOPPING=1
// once for the whole process (never once per group); SIGHUP restarts every
// group; SIGTTIN with two local groups only warns; SIGUSR2 is refused with
// an error and the process carries on.
func TestGroupsSignals(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	sdPath := filepath.Join(controlDir(t), "sd")
	sd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sdPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for i := 0; i < 64; i++ {
			n, err := sd.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
		close(msgs)
	}()
	cfg := writeConfig(t, `{"groups":[`+envGroup("a", 1, dir, "")+`,`+envGroup("b", 1, dir, "")+`]}`)
	m := startMaster(t, pc, []string{"NOTIFY_SOCKET=" + sdPath}, "-config", cfg)
	m.waitGroupsReady()

	m.signal(syscall.SIGHUP)
	for _, g := range []string{"a", "b"} {
		re := regexp.MustCompile(`msg="restart done" group=` + g + ` generation=2`)
		waitCtl(t, "group "+g+" restarted", func() bool { return re.MatchString(m.log.String()) })
	}
	m.signal(syscall.SIGTTIN)
	waitCtl(t, "the scaling warning", func() bool { return strings.Contains(m.log.String(), "use mini-cluster scale -group NAME N") })
	m.signal(syscall.SIGUSR2)
	waitCtl(t, "the upgrade refusal", func() bool {
		return strings.Contains(m.log.String(), "in-place upgrade (SIGUSR2) is not available with a configuration file")
	})
	m.signal(syscall.SIGTERM)
	if code := m.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
	sd.Close()
	counts := map[string]int{}
	for msg := range msgs {
		for _, l := range strings.Split(msg, "\n") {
			if l == "READY=1" || l == "STOPPING=1" || strings.HasPrefix(l, "RELOADING=1") {
				counts[l]++
			}
		}
	}
	if diff := cmp.Diff(map[string]int{"READY=1": 1, "STOPPING=1": 1}, counts); diff != "" {
		t.Errorf("systemd notifications (-want +got):\n%s", diff)
	}
}

// TestGroupsScaleSignal: with one local-only group, SIGTTIN and SIGTTOU
// scale it by one as a single master does; the new slot gets a fresh id.
func TestGroupsScaleSignal(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	dir := t.TempDir()
	ctlPath := filepath.Join(controlDir(t), "ctl")
	m := startMaster(t, pc, nil, "-config", writeConfig(t, `{"groups":[`+envGroup("solo", 1, dir, "")+`]}`), "-control", ctlPath)
	m.waitGroupsReady()
	m.signal(syscall.SIGTTIN)
	waitCtl(t, "solo scaled to 2", func() bool {
		return cmp.Equal(groupsJSON(t, ctlPath)["solo"].Slots, []string{"0/0/ready", "1/1/ready"})
	})
	m.signal(syscall.SIGTTOU)
	waitCtl(t, "solo scaled back to 1", func() bool {
		return cmp.Equal(groupsJSON(t, ctlPath)["solo"].Slots, []string{"0/0/ready"})
	})
	m.signal(syscall.SIGTERM)
	if code := m.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, m.log.String())
	}
	if err := pc.WaitGone(10 * time.Second); err != nil {
		t.Error(err)
	}
}
