//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/valyala/fastjson"
)

// ctl runs one subcommand in process and returns its exit code, stdout
// and stderr.
func ctl(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := exitCode(run(context.Background(), args, nil, &stdout, &stderr), &stderr)
	return code, stdout.String(), stderr.String()
}

// controlDir returns a short private directory for a control socket.
func controlDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// statusJSON runs "status -json" and returns the parsed fields the tests
// compare: generation, workers, ready workers, and per slot
// "generation/state/restarts".
func statusJSON(t *testing.T, path string) (gen, workers, ready int, slots []string) {
	t.Helper()
	code, out, errOut := ctl("status", "-control", path, "-json")
	if code != 0 {
		t.Fatalf("status -json: exit %d: %s", code, errOut)
	}
	v, err := fastjson.Parse(out)
	if err != nil {
		t.Fatalf("status -json printed %q: %v", out, err)
	}
	for _, s := range v.GetArray("slots") {
		slots = append(slots, strconv.Itoa(s.GetInt("generation"))+"/"+string(s.GetStringBytes("state"))+"/"+strconv.Itoa(s.GetInt("restarts")))
	}
	return v.GetInt("generation"), v.GetInt("workers"), v.GetInt("ready_workers"), slots
}

// statusSlots runs "status -json" and returns its slots and its output.
func statusSlots(t *testing.T, path string) ([]*fastjson.Value, string) {
	t.Helper()
	code, out, errOut := ctl("status", "-control", path, "-json")
	if code != 0 {
		t.Fatalf("status -json: exit %d: %s", code, errOut)
	}
	v, err := fastjson.Parse(out)
	if err != nil {
		t.Fatalf("status -json printed %q: %v", out, err)
	}
	return v.GetArray("slots"), out
}

// servingPID returns the pid "status -json" shows for slot.
func servingPID(t *testing.T, path string, slot int) int {
	t.Helper()
	slots, out := statusSlots(t, path)
	if slot >= len(slots) || slots[slot].GetInt("pid") == 0 {
		t.Fatalf("status -json shows no worker in slot %d: %s", slot, out)
	}
	return slots[slot].GetInt("pid")
}

// waitCtl polls cond for 15 s at most.
func waitCtl(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; i < 1500 && time.Now().Before(deadline); i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestControlSubcommands runs every subcommand against a real mini-cluster:
// the status table and its JSON, scale, restart (generation +1), a worker
// kill (restarts +1, last exit), and stop (the master exits 0).
func TestControlSubcommands(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(controlDir(t), "run", "ctl")
	m := startMaster(t, pc, nil, append([]string{"-n", "2", "-listen", "127.0.0.1:0", "-control", path, "--"}, fakeSrvCmd(t)...)...)
	m.waitReady()

	code, out, errOut := ctl("status", "-control", path)
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	wantHead := "master " + strconv.Itoa(m.cmd.Process.Pid) + ": generation 1, 2/2 workers ready"
	if len(lines) != 4 || lines[0] != wantHead || !strings.HasPrefix(lines[1], "SLOT  PID") {
		t.Fatalf("status table:\n%s\nwant %q, a header and 2 rows", out, wantHead)
	}
	// fake-srv says STATUS=fake ready with its READY=1: the last column.
	if !strings.HasSuffix(lines[1], "LAST EXIT  STATUS") {
		t.Errorf("header %q: want a STATUS column last", lines[1])
	}
	row := regexp.MustCompile(`^(\d+) +(\d+) +1 +ready +\S+ +0 +- +fake ready$`)
	for i, l := range lines[2:] {
		mm := row.FindStringSubmatch(l)
		if mm == nil || mm[1] != strconv.Itoa(i) {
			t.Errorf("row %d: %q does not match %v", i, l, row)
		}
	}

	gen, workers, ready, slots := statusJSON(t, path)
	if diff := cmp.Diff([]any{1, 2, 2, []string{"1/ready/0", "1/ready/0"}}, []any{gen, workers, ready, slots}); diff != "" {
		t.Errorf("status -json (-want +got):\n%s", diff)
	}
	if js, out := statusSlots(t, path); len(js) != 2 || string(js[0].GetStringBytes("status")) != "fake ready" {
		t.Errorf("status -json: %s, want each slot's \"status\": \"fake ready\"", out)
	}

	// scale N is absolute.
	if code, out, errOut := ctl("scale", "3", "-control", path); code != 0 || out != "scaling to 3 workers\n" {
		t.Fatalf("scale 3: exit %d, %q, %s", code, out, errOut)
	}
	waitCtl(t, "3 ready workers", func() bool { _, w, r, _ := statusJSON(t, path); return w == 3 && r == 3 })

	// restart: generation +1.
	if code, out, errOut := ctl("restart", "-control", path); code != 0 || out != "restart begun\n" {
		t.Fatalf("restart: exit %d, %q, %s", code, out, errOut)
	}
	waitCtl(t, "generation 2", func() bool {
		g, w, r, s := statusJSON(t, path)
		return g == 2 && w == 3 && r == 3 && cmp.Equal(s, []string{"2/ready/0", "2/ready/0", "2/ready/0"})
	})

	// A worker killed: replaced, restarts +1, last exit shown. The victim
	// is a serving worker named by status: the master's children may still
	// include a worker of generation 1 being stopped, whose death counts
	// no restart.
	victim := servingPID(t, path, 0)
	if err := m.signalWorker(victim, 9); err != nil {
		t.Fatal(err)
	}
	waitCtl(t, "the killed worker replaced", func() bool {
		_, w, r, s := statusJSON(t, path)
		return w == 3 && r == 3 && strings.Count(strings.Join(s, " "), "/1") == 1
	})
	_, out, _ = ctl("status", "-control", path)
	if !strings.Contains(out, "pid "+strconv.Itoa(victim)+" killed by SIGKILL") {
		t.Errorf("status does not show the kill of %d:\n%s", victim, out)
	}

	// send and broadcast reach the workers' control channels (fake-srv
	// does not read them: queued is all that can be seen here).
	if code, out, errOut := ctl("send", "0", "hello", "-control", path); code != 0 || out != "queued for slot 0\n" {
		t.Errorf("send: exit %d, %q, %s", code, out, errOut)
	}
	if code, out, errOut := ctl("broadcast", "-control", path, "--", "-hello"); code != 0 || out != "queued for every worker\n" {
		t.Errorf("broadcast: exit %d, %q, %s", code, out, errOut)
	}
	if code, _, errOut := ctl("send", "9", "hello", "-control", path); code != 1 || !strings.Contains(errOut, "no_worker") {
		t.Errorf("send to slot 9: exit %d, %s; want exit 1 and no_worker", code, errOut)
	}
	// With -json the failure is on stdout too, as JSON with the code.
	code, out, errOut = ctl("send", "9", "hello", "-control", path, "-json")
	if v, err := fastjson.Parse(out); code != 1 || err != nil || string(v.GetStringBytes("type")) != "error" || string(v.GetStringBytes("code")) != "no_worker" || !strings.Contains(errOut, "no_worker") {
		t.Errorf("send -json to slot 9: exit %d, stdout %q (%v), stderr %s; want exit 1 and an error object with code no_worker", code, out, err, errOut)
	}

	// max-running-time: shown in status, and every worker past it is
	// recycled (new pids, same generation); 0 clears it.
	before := servingPID(t, path, 0)
	if code, out, errOut := ctl("max-running-time", "1s", "-control", path); code != 0 || out != "maximum running time: 1s\n" {
		t.Fatalf("max-running-time 1s: exit %d, %q, %s", code, out, errOut)
	}
	if _, out, _ := ctl("status", "-control", path); !strings.Contains(strings.SplitN(out, "\n", 2)[0], ", max running time 1s") {
		t.Errorf("status header does not show the limit:\n%s", out)
	}
	waitCtl(t, "slot 0 recycled", func() bool { return servingPID(t, path, 0) != before })
	if code, out, errOut := ctl("max-running-time", "0", "-control", path); code != 0 || out != "maximum running time: none\n" {
		t.Errorf("max-running-time 0: exit %d, %q, %s", code, out, errOut)
	}
	if code, _, errOut := ctl("max-running-time", "1s", "-group", "web", "-control", path); code != 1 || !strings.Contains(errOut, "no groups") {
		t.Errorf("max-running-time -group on a single master: exit %d, %s; want exit 1, no groups", code, errOut)
	}

	if code, out, errOut := ctl("stop", "-control", path, "-json"); code != 0 || out != `{"type":"ok"}`+"\n" {
		t.Fatalf("stop -json: exit %d, %q, %s", code, out, errOut)
	}
	if code := m.wait(20 * time.Second); code != 0 {
		t.Errorf("master exit code %d after stop, want 0", code)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left behind: %v", err)
	}
}

// TestControlSubcommandErrors: usage errors exit 2, an unreachable master
// exits 1 with a message that says why.
func TestControlSubcommandErrors(t *testing.T) {
	fdcensus.Verify(t)
	dir := controlDir(t)
	stale := filepath.Join(dir, "stale")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no -control", []string{"status"}, 2, "-control PATH is required"},
		{"scale without N", []string{"scale", "-control", stale}, 2, "exactly one worker count"},
		{"scale not a number", []string{"scale", "many", "-control", stale}, 2, `scale "many"`},
		{"scale too many", []string{"scale", "5000", "-control", stale}, 2, "from 0 to 4096"},
		{"max-running-time too short", []string{"max-running-time", "500ms", "-control", stale}, 2, "from 1s to 8784h"},
		{"max-running-time not a duration", []string{"max-running-time", "soon", "-control", stale}, 2, `max-running-time "soon"`},
		{"max-running-time without D", []string{"max-running-time", "-control", stale}, 2, "exactly one duration"},
		{"extra argument", []string{"status", "now", "-control", stale}, 2, `unexpected argument "now"`},
		{"bad flag", []string{"stop", "-force"}, 2, "flag provided but not defined"},
		{"send without message", []string{"send", "1", "-control", stale}, 2, "want SLOT MESSAGE"},
		{"send to a bad slot", []string{"send", "x", "hi", "-control", stale}, 2, `send "x"`},
		{"broadcast without message", []string{"broadcast", "-control", stale}, 2, "want MESSAGE"},
		{"send too long", []string{"send", "0", strings.Repeat("x", 32<<10+1), "-control", stale}, 2, "at most 32768"},
		{"broadcast too long", []string{"broadcast", strings.Repeat("x", 32<<10+1), "-control", stale}, 2, "at most 32768"},
		{"missing socket", []string{"status", "-control", filepath.Join(dir, "none")}, 1, "no control socket at"},
		{"stale socket", []string{"restart", "-control", stale}, 1, "refuses connections"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := ctl(tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.msg) || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, errOut, tc.code, tc.msg)
			}
		})
	}
	// -json: usage errors stay on stderr alone (the command line is
	// wrong, not the master); a failure to reach the master is also on
	// stdout, classified.
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // the JSON on stdout, "" for none
	}{
		{"usage", []string{"scale", "-control", stale, "-json"}, 2, ""},
		{"missing socket", []string{"status", "-control", filepath.Join(dir, "none"), "-json"}, 1, "no_socket"},
		{"stale socket", []string{"restart", "-json", "-control", stale}, 1, "refused"},
	} {
		t.Run("json "+tc.name, func(t *testing.T) {
			code, out, errOut := ctl(tc.args...)
			got := ""
			if out != "" {
				v, err := fastjson.Parse(out)
				if err != nil || string(v.GetStringBytes("type")) != "error" || len(v.GetStringBytes("error")) == 0 {
					t.Fatalf("stdout %q (%v): want an error object", out, err)
				}
				got = string(v.GetStringBytes("code"))
			}
			if code != tc.code || got != tc.want || errOut == "" {
				t.Errorf("exit %d, code %q, stderr %q; want exit %d, code %q and a message on stderr", code, got, errOut, tc.code, tc.want)
			}
		})
	}
}

// TestGroupFlagHelp: each subcommand's -group help says what an absent
// -group does for it: every group, or the only one (scale, send and
// max-running-time fail with several groups).
func TestGroupFlagHelp(t *testing.T) {
	for _, tc := range []struct{ cmd, want string }{
		{"restart", "(default: every group)"},
		{"broadcast", "(default: every group)"},
		{"scale", "(default: the only group; required when there are several)"},
		{"send", "(default: the only group; required when there are several)"},
		{"max-running-time", "(default: the only group; required when there are several)"},
		{"suspend", "as the GROUP operand names it"},
		{"stop", "not supported: stop acts on every group"},
		{"status", "not supported: status acts on every group"},
	} {
		var stdout, stderr bytes.Buffer
		err := runControl(context.Background(), tc.cmd, []string{"-h"}, &stdout, &stderr)
		help := strings.Join(strings.Fields(stderr.String()), " ")
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(help, tc.want) {
			t.Errorf("%s -h: %v, want flag.ErrHelp and -group help containing %q; got:\n%s", tc.cmd, err, tc.want, stderr.String())
		}
	}
}

// TestStatusUptime: a slot's uptime is how long its worker has run, not
// how long it has been in its state: a worker that took 1.5 s to report
// ready shows at least that much right after it did.
func TestStatusUptime(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	path := filepath.Join(controlDir(t), "ctl")
	gate := filepath.Join(t.TempDir(), "gate")
	m := startMaster(t, pc, []string{"SRV_READY_GATE=" + gate},
		append([]string{"-n", "1", "-listen", "127.0.0.1:0", "-control", path, "--"}, fakeSrvCmd(t)...)...)
	if !waitFor(10*time.Second, func() bool { code, _, _ := ctl("status", "-control", path, "-json"); return code == 0 }) {
		t.Fatal("control socket not answering within 10 s")
	}
	time.Sleep(1500 * time.Millisecond)
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	m.waitReady()
	slots, out := statusSlots(t, path)
	if len(slots) != 1 || string(slots[0].GetStringBytes("state")) != "ready" {
		t.Fatalf("status -json: %s, want one ready slot", out)
	}
	if up := slots[0].GetInt64("uptime_ms"); up < 1400 {
		t.Errorf("uptime %d ms right after a 1.5 s start, want at least 1400", up)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}
