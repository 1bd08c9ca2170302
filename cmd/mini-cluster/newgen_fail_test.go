//go:build linux

package main

import (
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/loadclient"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// TestNewGenerationFailsUnderLoad is TESTPLAN C3 and C11 at the level of
// the binary, under load: a graceful restart (SIGHUP) whose new
// generation never reports ready (C3: the fake worker starts a child in
// its process group and hangs; the group's start timeout, set in a
// -config file since no flag has one, must kill the group) or crashes
// during initialisation (C11: exit 3 after 200 ms), in both cases after
// it opened its listener: in handoff mode it has subscribed, and the
// master must send it nothing before READY=1. Meanwhile clients keep sending, on keep-alive
// connections and on one connection per request. The master must log the
// failed restart with its cause, keep the old workers (same pids, nothing
// else of the test left running), and every request must get its reply,
// from an old worker until the retry; a second SIGHUP (generation 3,
// which the knob spares) must then succeed. Had the master stopped an old
// worker before its replacement was ready, requests would be answered by
// a respawned worker (not an old pid) or lost, and the old pids would
// change.
func TestNewGenerationFailsUnderLoad(t *testing.T) {
	// Long enough for a healthy worker to start under -race on a busy
	// machine (generations 1 and 3 get the same limit), short enough to
	// keep C3 brief.
	const startTimeout = 2 * time.Second
	hang := func(r genExitRec) bool { return r.Signal == "killed" }
	crash := func(r genExitRec) bool { return r.Code == 3 && r.Signal == "" }
	const timedOut, exitedEarly = "worker not ready before start timeout", "worker exited before it was ready (exit code 3"
	cases := []struct {
		id, mode, knob string
		// cause is in the "restart failed" record's err.
		cause string
		// exit matches the "worker exited" record of a generation 2
		// worker the failure is about: killed by the start timeout, or
		// its own exit code.
		exit func(r genExitRec) bool
	}{
		{"C3", "shared", "SRV_HANG_GEN", timedOut, hang},
		{"C3", "handoff", "SRV_HANG_GEN", timedOut, hang},
		{"C11", "shared", "SRV_FAIL_GEN", exitedEarly, crash},
		{"C11", "handoff", "SRV_FAIL_GEN", exitedEarly, crash},
	}
	for _, f := range cases {
		t.Run(f.id+" "+f.mode, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			srv := fakeSrvCmd(t)
			cfg := writeConfig(t, `{"groups":[{"name":"web","command":[`+jsonStr(srv[0])+`,`+jsonStr(srv[1])+`],"count":2,`+
				`"listen":["127.0.0.1:0"],"mode":`+jsonStr(f.mode)+`,"start_timeout":`+jsonStr(startTimeout.String())+
				`,"shutdown_timeout":"5s","env":{`+jsonStr(f.knob)+`:"2"}}]}`)
			m := startMaster(t, pc, nil, "-config", cfg, "-log-format", "json")
			m.waitGroupsReady()
			addr := jsonListenAddr(t, m)
			old := m.workers()
			slices.Sort(old)
			if len(old) != 2 {
				t.Fatalf("workers %v, want 2", old)
			}
			mpid := m.cmd.Process.Pid
			kinds0, sockets0, err := fdShape(mpid)
			if err != nil {
				t.Fatal(err)
			}

			stop := runLoad(loadclient.Options{Addr: addr, KeepAlive: 4, NewConn: 2, Requests: 20000,
				Duration: 40 * time.Second, Timeout: 20 * time.Second, Pause: 10 * time.Millisecond, Header: "X-Worker", Record: true})
			defer stop()
			time.Sleep(300 * time.Millisecond)

			// The failed attempt.
			t0 := time.Now()
			m.signal(syscall.SIGHUP)
			if !waitFor(startTimeout+10*time.Second, func() bool { return count(m.records(), restartFailedMsg, "restart done") > 0 }) {
				t.Fatalf("restart neither failed nor done within %v of SIGHUP; %v", startTimeout+10*time.Second, stop())
			}
			t1 := time.Now()
			if n := count(m.records(), "restart done"); n != 0 {
				t.Fatalf("generation 2 restart done (%d), want it failed", n)
			}
			if errs := failedCauses(m); len(errs) != 1 || !strings.Contains(errs[0], f.cause) {
				t.Errorf("restart failed records' err %q, want one containing %q", errs, f.cause)
			}
			// Generation 2's workers are gone, the old ones untouched,
			// and nothing else of the test's runs (the hanging
			// worker's child included: its group was killed).
			gen2 := map[int]bool{}
			for _, r := range m.records() {
				if r.Msg == "worker started" && r.Generation == 2 {
					gen2[r.PID] = true
				}
			}
			if len(gen2) == 0 {
				t.Errorf("no generation 2 worker started")
			}
			want := append([]int{mpid}, old...)
			slices.Sort(want)
			var marked []int
			if !waitFor(5*time.Second, func() bool {
				marked = marked[:0]
				for _, p := range pc.Marked() {
					marked = append(marked, p.PID)
				}
				slices.Sort(marked)
				return slices.Equal(marked, want)
			}) {
				t.Errorf("processes after the failed restart (-want +got):\n%s", cmp.Diff(want, marked))
			}
			got := m.workers()
			slices.Sort(got)
			if !slices.Equal(got, old) {
				t.Errorf("workers after the failed restart %v, want the old ones %v", got, old)
			}
			exits := genExits(t, m, gen2)
			if !slices.ContainsFunc(exits, f.exit) {
				t.Errorf("generation 2 exits %+v: none as %s expects", exits, f.id)
			}
			time.Sleep(300 * time.Millisecond) // the old workers serve on

			// Retry allowed: generation 3 is not affected by the knob.
			t2 := time.Now()
			m.signal(syscall.SIGHUP)
			if !waitFor(15*time.Second, func() bool { return count(m.records(), "restart done") > 0 }) {
				t.Fatalf("retry: no restart done within 15 s; %v", stop())
			}
			var done logRec
			for _, r := range m.records() {
				if r.Msg == "restart done" {
					done = r
				}
			}
			if done.Generation != 3 {
				t.Errorf("retry: restart done for generation %d, want 3", done.Generation)
			}
			checkReplaced(t, m, addr, old, "3", "after the retry")
			time.Sleep(300 * time.Millisecond) // load on generation 3
			res := stop()

			// Who answered: until the retry (the attempt and the 300 ms
			// after it) only the old workers can have, all of them.
			during, byGen := map[int]int{}, map[string]int{}
			for _, r := range res.Replies {
				pidStr, gen, _ := strings.Cut(r.Value, ":")
				pid, _ := strconv.Atoi(pidStr)
				byGen[gen]++
				if r.Done.After(t0) && r.Done.Before(t2) {
					during[pid]++
				}
				if r.Done.Before(t2) && !slices.Contains(old, pid) {
					t.Errorf("pid %d answered before the retry (%v after the first SIGHUP), want only the old workers %v",
						pid, r.Done.Sub(t0).Round(time.Millisecond), old)
					break
				}
			}
			t.Logf("%s %s: %v; attempt %v; replies from it to the retry by pid %v (old %v); replies by generation %v",
				f.id, f.mode, res, t1.Sub(t0).Round(time.Millisecond), during, old, byGen)
			if res.Sent == 0 || res.OK != res.Sent || res.Refused != 0 || res.Reset != 0 || res.Timeout != 0 || res.Failed() != 0 {
				t.Errorf("requests lost across the failed restart: %v; errors %q", res, res.Errors)
			}
			// Per-request connections reach both old workers in either
			// mode within half a second.
			if len(during) != len(old) {
				t.Errorf("old workers answering from the first SIGHUP to the retry: %v, want all of %v", during, old)
			}
			if byGen["2"] != 0 || byGen["3"] == 0 {
				t.Errorf("replies by generation %v: want none from 2, some from 3", byGen)
			}
			// In handoff mode the failed worker, never ready, was sent
			// nothing: no connection had to be taken back from it (the
			// rescue would hide the loss above, at the cost of a wait).
			if m := rescuedRE.FindString(m.log.String()); m != "" {
				t.Errorf("connections were sent to a worker that was not ready, and taken back: %s", m)
			}
			// Nothing the failed generation had is left in the master.
			checkFDShape(t, mpid, kinds0, sockets0, "across the restarts")
			stopClean(t, m)
		})
	}
}

// jsonListenAddr is the address of the first "listening" record of the
// master's JSON log.
func jsonListenAddr(t *testing.T, m *master) string {
	t.Helper()
	if s := jsonListeningRE.FindStringSubmatch(m.log.String()); s != nil {
		return s[1]
	}
	t.Fatalf("no listening record:\n%s", m.log.String())
	return ""
}

var jsonListeningRE = regexp.MustCompile(`"msg":"listening".*?"addr":"([^"]+)"`)

// failedCauses returns the err of every "restart failed" record.
func failedCauses(m *master) []string {
	var out []string
	for _, line := range strings.Split(m.log.String(), "\n") {
		var r struct{ Msg, Err string }
		if json.Unmarshal([]byte(line), &r) == nil && r.Msg == restartFailedMsg {
			out = append(out, r.Err)
		}
	}
	return out
}

// genExitRec is a "worker exited" record: how the worker ended.
type genExitRec struct {
	Msg    string
	PID    int
	Code   int
	Signal string
}

// genExits returns the exit records of the workers in pids, waiting
// (bounded) until each has one.
func genExits(t *testing.T, m *master, pids map[int]bool) []genExitRec {
	t.Helper()
	var out []genExitRec
	waitFor(5*time.Second, func() bool {
		out = out[:0]
		for _, line := range strings.Split(m.log.String(), "\n") {
			var r genExitRec
			if json.Unmarshal([]byte(line), &r) == nil && pids[r.PID] && strings.HasPrefix(r.Msg, "worker exited") {
				out = append(out, r)
			}
		}
		return len(out) == len(pids)
	})
	if len(out) != len(pids) {
		t.Errorf("exit records %+v, want one per generation 2 worker %v", out, keys(pids))
	}
	return out
}
