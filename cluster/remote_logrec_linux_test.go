//go:build linux

package cluster_test

import (
	"bytes"
	"errors"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/ipcframe"
)

// logRecordGroup is a remote group "web" of one worker on u@h1, logging to
// log.
func logRecordGroup(t *testing.T, log *recHandler) *cluster.RemoteGroup {
	t.Helper()
	g := &cluster.GroupConfig{Name: "web", Program: "srv", Listen: []string{"127.0.0.1:0"},
		Remote: []cluster.RemoteHost{{SSH: "u@h1", Count: 1, Identity: "id", KnownHosts: "kh"}}}
	rg, err := cluster.NewRemoteGroup(g, &g.Remote[0], []int{0}, 0, slog.New(log), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	return rg
}

// TestRemoteBadLogRecordKeepsSession: a log record the master's decoder
// refuses (from an agent that relays it unchanged, as agents did before
// they cut records to the protocol's limits) is dropped with a warning;
// the session goes on. Ending it, as the master did, restarted every
// worker of the host, and the worker that logged the record ended the
// next session the same way.
func TestRemoteBadLogRecordKeepsSession(t *testing.T) {
	log := newRecHandler()
	rg := logRecordGroup(t, log)
	var wire bytes.Buffer
	w := ipcframe.NewWriter(&wire, nil)
	for _, f := range []string{
		`{"type":"started","version":1,"pid":42,"addrs":[]}`,
		`{"type":"log","level":5004,"msg":"worker level INFO+5000","attrs":{}}`,
		`{"type":"log","level":0,"msg":"long key","attrs":{"slot":0,"` + strings.Repeat("k", 300) + `":"v"}}`,
		`{"type":"log","level":0,"msg":"nested value","attrs":{"a":{"b":1}}}`,
		`{"type":"log","level":"INFO","msg":"level as text"}`,
		`{"type":"log","level":0,"msg":"after","attrs":{"slot":0}}`,
		`{"type":"status","ready":true,"suspended":false,"dropped":0,"status":{"pid":42,"generation":1,"restarting":false,` +
			`"workers":1,"ready_workers":1,"slots":[{"slot":0,"pid":7,"generation":1,"state":"ready"}]}}`,
		`{"type":"exit","error":""}`,
	} {
		if err := w.WriteFrame([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- cluster.RemoteReadFrames(rg, &wire, nil) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("readFrames: %v, want nil after an exit frame\nlog:\n%s", err, log.dump())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("readFrames did not return")
	}
	var after, warned bool
	for _, rec := range log.records() {
		switch {
		case rec.Msg == "after":
			after = true
		case rec.Level == slog.LevelWarn && strings.Contains(rec.Msg, "dropped a log record"):
			// Paced to one a second: the first of the four.
			warned = true
		case rec.Msg != "agent started":
			t.Errorf("a refused record was logged: %v %s %v", rec.Level, rec.Msg, rec.Attrs)
		}
	}
	if !after || !warned {
		t.Errorf("record after the refused ones logged %v, warning %v\nlog:\n%s", after, warned, log.dump())
	}
	if st := rg.Status(); len(st.Slots) != 1 || st.Slots[0].PID != 7 {
		t.Errorf("status after the refused records: %+v", st)
	}
}

// TestRemoteProtocolErrorsStayFatal: what is not a log record's contents
// still ends the session at once: bad JSON (even of a log record), an
// unknown type, a frame of the master's direction, a bad status.
func TestRemoteProtocolErrorsStayFatal(t *testing.T) {
	for _, f := range []string{
		`{"type":"log","level":0,"msg":"x","attrs":{"a":`,
		`{"type":"bogus"}`,
		`{"type":"start","version":1,"program":"srv","ids":[0],"listen":["127.0.0.1:0"]}`,
		`{"type":"status","ready":true,"suspended":false,"status":{"pid":"x"}}`,
		`["log"]`,
	} {
		log := newRecHandler()
		rg := logRecordGroup(t, log)
		var wire bytes.Buffer
		w := ipcframe.NewWriter(&wire, nil)
		for _, frame := range []string{f, `{"type":"exit","error":""}`} {
			if err := w.WriteFrame([]byte(frame)); err != nil {
				t.Fatal(err)
			}
		}
		if err := cluster.RemoteReadFrames(rg, &wire, nil); !errors.Is(err, cluster.ErrAgentProtocol) {
			t.Errorf("%.60s: readFrames %v, want ErrAgentProtocol", f, err)
		}
	}
}

// TestReconnectDelayJitter: the wait before a reconnect stays between the
// delay and the longest delay whatever Backoff.Jitter a Go caller set. A
// jitter above about 3e8 made time.Duration(rand*jitter*delay) overflow
// to a negative wait: reconnects with no delay at all.
func TestReconnectDelayJitter(t *testing.T) {
	for _, maxDelay := range []time.Duration{30 * time.Second, math.MaxInt64} {
		for _, delay := range []time.Duration{time.Second, 30 * time.Second} {
			for _, jitter := range []float64{0, 0.2, 1, 3e8, 1e9, 1e300, math.Inf(1), math.NaN(), -1} {
				for _, rnd := range []float64{0, 0.5, 0.999999} {
					d := cluster.ReconnectDelay(delay, maxDelay, jitter, rnd)
					if d < delay || d > maxDelay {
						t.Errorf("delay %v, max %v, jitter %g, rand %g: wait %v", delay, maxDelay, jitter, rnd, d)
					}
				}
			}
		}
	}
	if d := cluster.ReconnectDelay(time.Second, 30*time.Second, 0.5, 0.5); d != 1250*time.Millisecond {
		t.Errorf("jitter 0.5 × 0.5 of 1 s: %v, want 1.25s", d)
	}
}

// TestControlStatusFitsResponse: a status too large for the control
// socket's 1 MiB response limit is answered with less in it (the slots'
// STATUS= texts, then last exits, then the remote hosts' slots), not with
// an error: "mini-cluster status" must work for a large fleet. The counts
// stay.
func TestControlStatusFitsResponse(t *testing.T) {
	fdcensus.Verify(t)
	path := controlPath(t)
	remote := func(host string) cluster.ControlRemote {
		st := bigStatus(4096, strings.Repeat("r", 40))
		return cluster.ControlRemote{Host: host, Port: 22, Connected: true, AgentPID: 9, Sessions: 1,
			Workers: 4096, ReadyWorkers: 4096, Slots: st.Slots}
	}
	for _, tc := range []struct {
		name       string
		st         *cluster.ControlStatus
		localSlots int
		remote     int // slots per remote host
		texts      bool
	}{
		{"single cluster", bigStatus(4096, strings.Repeat("a", 40)), 4096, 0, false},
		{"small", bigStatus(8, strings.Repeat("a", 40)), 8, 0, true},
		{"fleet", &cluster.ControlStatus{PID: 1, Generation: 1, Workers: 4096, ReadyWorkers: 4096,
			Groups: []cluster.ControlGroup{{Name: "web", Generation: 1, Workers: 4096 + 3*4096, ReadyWorkers: 4096 + 3*4096,
				Slots:  bigStatus(4096, strings.Repeat("a", 40)).Slots,
				Remote: []cluster.ControlRemote{remote("u@h1"), remote("u@h2"), remote("u@h3")}}}}, 4096, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop, err := cluster.ServeControlSocket(path, func() *cluster.ControlStatus { return tc.st })
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			c := dialControl(t, path)
			st, err := c.Status()
			if err != nil {
				t.Fatalf("status: %v", err)
			}
			slots := st.Slots
			if len(st.Groups) > 0 {
				g := st.Groups[0]
				slots = g.Slots
				if g.Workers != tc.st.Groups[0].Workers || len(g.Remote) != 3 {
					t.Errorf("group: %d workers, %d remote hosts", g.Workers, len(g.Remote))
				}
				for _, r := range g.Remote {
					if len(r.Slots) != tc.remote || r.Workers != 4096 || !r.Connected {
						t.Errorf("remote %s: %d slots, %d workers", r.Host, len(r.Slots), r.Workers)
					}
				}
			}
			if st.Workers != tc.st.Workers || len(slots) != tc.localSlots {
				t.Fatalf("%d workers, %d slots; want %d, %d", st.Workers, len(slots), tc.st.Workers, tc.localSlots)
			}
			if got := slots[0].Status != ""; got != tc.texts {
				t.Errorf("STATUS= texts kept %v, want %v", got, tc.texts)
			}
		})
	}
}
