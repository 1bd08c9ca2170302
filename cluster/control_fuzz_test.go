package cluster_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/supervise"
	"github.com/valyala/fastjson"
)

// controlSeeds are messages of every kind; the committed corpus in
// testdata/fuzz/FuzzControlSocketDecode holds these and malformed ones.
var controlSeeds = []string{
	`{"type":"status"}`,
	`{"type":"restart"}`,
	`{"type":"stop"}`,
	`{"type":"scale","workers":4}`,
	`{"type":"send","slot":1,"data":"aGVsbG8="}`,
	`{"type":"broadcast","data":""}`,
	`{"type":"ok"}`,
	`{"type":"error","code":"invalid","error":"supervise: invalid argument: Scale(5000)"}`,
	`{"type":"status","pid":42,"generation":2,"restarting":false,"workers":2,"ready_workers":1,"slots":[` +
		`{"slot":0,"pid":100,"generation":2,"state":"ready","uptime_ms":1500,"restarts":1,"last_exit":{"pid":90,"code":-1,"signal":9,"requested":false,"time_ms":1763700000123}},` +
		`{"slot":1,"pid":0,"generation":0,"state":"backoff","uptime_ms":0,"restarts":3}]}`,
	`{"type":"restart","group":"web"}`,
	`{"type":"scale","group":"web","workers":3}`,
	`{"type":"send","group":"jobs","slot":0,"data":"aGk="}`,
	`{"type":"suspend","group":"web"}`,
	`{"type":"resume","group":"web"}`,
	`{"type":"stop","group":"web"}`,
	`{"type":"status","pid":42,"generation":1,"restarting":false,"workers":1,"ready_workers":1,"slots":[` +
		`{"slot":0,"pid":100,"generation":1,"state":"ready","uptime_ms":10,"restarts":0,"id":0,"index":0}],"groups":[` +
		`{"name":"web","suspended":false,"generation":1,"restarting":false,"workers":3,"ready_workers":3,"slots":[` +
		`{"slot":0,"pid":100,"generation":1,"state":"ready","uptime_ms":10,"restarts":0,"id":0,"index":0}],"remote":[` +
		`{"host":"deploy@10.0.0.2","port":2222,"connected":true,"agent_pid":77,"sessions":2,"last_error":"sshlaunch: host key not trusted","workers":2,"ready_workers":2,"slots":[` +
		`{"slot":0,"pid":500,"generation":1,"state":"ready","uptime_ms":5,"restarts":0,"id":1,"index":1}]}]},` +
		`{"name":"jobs","suspended":true,"workers":0,"ready_workers":0,"slots":[],"remote":[]}]}`,
}

// FuzzControlSocketDecode: the control socket's decoder never panics, every
// error matches ErrControlProtocol, and a decoded message re-encodes to a
// fixed point (encode, decode, encode gives the same bytes).
func FuzzControlSocketDecode(f *testing.F) {
	for _, s := range controlSeeds {
		f.Add([]byte(s))
	}
	var p fastjson.Parser
	f.Fuzz(func(t *testing.T, b []byte) {
		var m cluster.SockMsg
		if err := cluster.DecodeSockMsg(&p, b, &m); err != nil {
			if !errors.Is(err, cluster.ErrControlProtocol) {
				t.Fatalf("error %v does not match ErrControlProtocol", err)
			}
			return
		}
		if m.Status != nil {
			for _, s := range m.Status.Slots {
				if s.Uptime < 0 {
					t.Fatalf("slot %d: negative uptime %v", s.Slot, s.Uptime)
				}
			}
		}
		enc := cluster.AppendSockMsg(nil, &m)
		var m2 cluster.SockMsg
		if err := cluster.DecodeSockMsg(&p, enc, &m2); err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", enc, err)
		}
		if enc2 := cluster.AppendSockMsg(nil, &m2); !bytes.Equal(enc, enc2) {
			t.Fatalf("not a fixed point:\n%s\n%s", enc, enc2)
		}
	})
}

// TestControlSocketRoundTrip: what one end encodes, the other decodes
// unchanged, including a status with every field set.
func TestControlSocketRoundTrip(t *testing.T) {
	at := time.UnixMilli(1763700000123).UTC()
	for _, tc := range []cluster.SockMsg{
		{Type: "status"},
		{Type: "restart"},
		{Type: "stop"},
		{Type: "scale", Workers: 0},
		{Type: "scale", Workers: 4096},
		{Type: "send", Slot: 3, Data: []byte("hello \x00\xff")},
		{Type: "broadcast", Data: []byte("{\"type\":\"reload\"}")},
		{Type: "ok"},
		{Type: "error", Code: cluster.ControlCodeFailed, Error: "quote \" backslash \\ newline \n tab \t nul \x00 é"},
		{Type: "status", Status: &cluster.ControlStatus{PID: 7, Generation: 3, Restarting: true, Workers: 2, ReadyWorkers: 1, Slots: []cluster.ControlSlot{
			{Slot: 0, PID: 11, Generation: 3, State: supervise.SlotReady, Uptime: 2500 * time.Millisecond, Restarts: 2,
				LastExit: &cluster.ControlExit{PID: 10, Code: -1, Signal: 9, Requested: true, Time: at}, Status: "warming up \"é\" 50%"},
			{Slot: 1, State: supervise.SlotFailed},
		}}},
		{Type: "restart", Group: "web"},
		{Type: "scale", Group: "web", Workers: 7},
		{Type: "send", Group: "jobs", Slot: 1, Data: []byte("x")},
		{Type: "broadcast", Group: "jobs", Data: []byte("y")},
		{Type: "suspend", Group: "web"},
		{Type: "resume", Group: "web"},
		{Type: "stop", Group: "web"},
		{Type: "max_running_time", Group: "web", MaxRunning: time.Hour},
		{Type: "max_running_time", MaxRunning: 0},
		{Type: "status", Status: &cluster.ControlStatus{PID: 8, Generation: 1, MaxRunningTime: 90 * time.Second, Slots: []cluster.ControlSlot{},
			Groups: []cluster.ControlGroup{{Name: "jobs", MaxRunningTime: time.Second}}}},
		{Type: "status", Status: &cluster.ControlStatus{PID: 9, Generation: 2, Workers: 1, ReadyWorkers: 1,
			Slots: []cluster.ControlSlot{{Slot: 0, PID: 20, Generation: 2, State: supervise.SlotReady, ID: 4, Index: 0}},
			Groups: []cluster.ControlGroup{
				{Name: "web", Generation: 2, Restarting: true, Workers: 3, ReadyWorkers: 2,
					Slots: []cluster.ControlSlot{{Slot: 0, PID: 20, Generation: 2, State: supervise.SlotReady, ID: 4, Index: 0}},
					Remote: []cluster.ControlRemote{
						{Host: "deploy@10.0.0.2", Port: 2222, Connected: true, AgentPID: 77, Sessions: 3, Workers: 2, ReadyWorkers: 1,
							Slots: []cluster.ControlSlot{{Slot: 1, PID: 30, Generation: 1, State: supervise.SlotStarting, ID: 6, Index: 2}}},
						{Host: "other", Port: 22, LastError: "sshlaunch: host key not trusted \"x\"", Workers: 1},
					}},
				{Name: "jobs", Suspended: true, Generation: 1},
			}}},
	} {
		t.Run(tc.Type, func(t *testing.T) {
			var p fastjson.Parser
			var got cluster.SockMsg
			if err := cluster.DecodeSockMsg(&p, cluster.AppendSockMsg(nil, &tc), &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

// TestControlSocketClipsText: a status whose texts exceed what the decoder
// accepts (an agent's long error from a remote host, a long ssh target) is
// still decodable: the encoder clips them, between runes.
func TestControlSocketClipsText(t *testing.T) {
	long := strings.Repeat("é", 5000) // 10000 bytes
	msg := cluster.SockMsg{Type: "status", Status: &cluster.ControlStatus{PID: 1, Generation: 1, Slots: []cluster.ControlSlot{},
		Groups: []cluster.ControlGroup{{Name: "far", Generation: 1, Remote: []cluster.ControlRemote{
			{Host: "u@" + strings.Repeat("h", 300), Port: 22, LastError: long, Workers: 1},
		}}}}}
	msg.Status.Slots = []cluster.ControlSlot{{Slot: 0, PID: 2, State: supervise.SlotReady, Status: long}}
	var p fastjson.Parser
	var got cluster.SockMsg
	if err := cluster.DecodeSockMsg(&p, cluster.AppendSockMsg(nil, &msg), &got); err != nil {
		t.Fatalf("a status with a %d-byte error does not decode: %v", len(long), err)
	}
	r := got.Status.Groups[0].Remote[0]
	if want := strings.Repeat("é", 2048); r.LastError != want {
		t.Errorf("last error of %d bytes, want the first %d", len(r.LastError), len(want))
	}
	if len(r.Host) != 256 || !strings.HasPrefix(r.Host, "u@hhh") {
		t.Errorf("host %q (%d bytes), want its first 256 bytes", r.Host, len(r.Host))
	}
	if want := strings.Repeat("é", cluster.MaxSlotStatus/2); got.Status.Slots[0].Status != want {
		t.Errorf("slot status of %d bytes, want the first %d", len(got.Status.Slots[0].Status), len(want))
	}
}

// TestControlSocketDecodeBad: out-of-range and ill-typed fields are
// protocol errors, never values that wrap or are silently cut.
func TestControlSocketDecodeBad(t *testing.T) {
	status := func(slot string) string {
		return `{"type":"status","pid":1,"generation":1,"workers":1,"ready_workers":1,"slots":[` + slot + `]}`
	}
	for _, tc := range []struct{ name, in string }{
		{"uptime beyond a Duration", status(`{"slot":0,"state":"ready","uptime_ms":9007199254740992}`)},
		{"negative uptime", status(`{"slot":0,"state":"ready","uptime_ms":-1}`)},
		{"fractional pid", status(`{"slot":0,"pid":1.5,"state":"ready"}`)},
		{"exit code 256", status(`{"slot":0,"state":"ready","last_exit":{"pid":1,"code":256}}`)},
		{"requested not a boolean", status(`{"slot":0,"state":"ready","last_exit":{"pid":1,"code":0,"requested":1}}`)},
		{"last_exit an array", status(`{"slot":0,"state":"ready","last_exit":[]}`)},
		{"slot not an object", status(`7`)},
		{"send to slot 4096", `{"type":"send","slot":4096,"data":""}`},
		{"send without data", `{"type":"send","slot":0}`},
		{"scale exponent", `{"type":"scale","workers":4e0}`},
		{"error without code", `{"type":"error","error":"x"}`},
		{"type not a string", `{"type":1}`},
		{"suspend without a group", `{"type":"suspend"}`},
		{"resume with an empty group", `{"type":"resume","group":""}`},
		{"group not a string", `{"type":"restart","group":1}`},
		{"stop group not a string", `{"type":"stop","group":true}`},
		{"group name too long", `{"type":"restart","group":"` + strings.Repeat("g", 257) + `"}`},
		{"groups not an array", strings.TrimSuffix(status(""), "}") + `,"groups":{}}`},
		{"group without a name", strings.TrimSuffix(status(""), "}") + `,"groups":[{"workers":1}]}`},
		{"remote port 65536", strings.TrimSuffix(status(""), "}") + `,"groups":[{"name":"a","remote":[{"host":"h","port":65536}]}]}`},
		{"remote not an object", strings.TrimSuffix(status(""), "}") + `,"groups":[{"name":"a","remote":[1]}]}`},
		{"negative id", status(`{"slot":0,"state":"ready","id":-1}`)},
		{"state empty", status(`{"slot":0,"state":""}`)},
		{"state with a tab", status(`{"slot":0,"state":"re\tady"}`)},
		{"state upper case", status(`{"slot":0,"state":"Ready"}`)},
		{"state of 33 bytes", status(`{"slot":0,"state":"` + strings.Repeat("s", 33) + `"}`)},
		{"state not a string", status(`{"slot":0,"state":2}`)},
		{"index not a number", status(`{"slot":0,"state":"ready","index":"1"}`)},
		// 18446744074710 ms is 2^64 ns + 1.000448 s: wrapped, it would pass
		// for a second.
		{"max running time wrapping to 1 s", `{"type":"max_running_time","max_running_time_ms":18446744074710}`},
		{"max running time 999 ms", `{"type":"max_running_time","max_running_time_ms":999}`},
		{"max running time over 366 days", `{"type":"max_running_time","max_running_time_ms":31622400001}`},
		{"status max running time wrapping", strings.TrimSuffix(status(""), "}") + `,"max_running_time_ms":18446744074710}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p fastjson.Parser
			var m cluster.SockMsg
			if err := cluster.DecodeSockMsg(&p, []byte(tc.in), &m); !errors.Is(err, cluster.ErrControlProtocol) {
				t.Errorf("decode: %v (%+v), want ErrControlProtocol", err, m)
			}
		})
	}
	// The largest uptime a Duration holds still decodes exactly.
	var p fastjson.Parser
	var m cluster.SockMsg
	longest := time.Duration(1<<63 - 1).Truncate(time.Millisecond)
	in := status(`{"slot":0,"state":"ready","uptime_ms":` + strconv.FormatInt(longest.Milliseconds(), 10) + `}`)
	if err := cluster.DecodeSockMsg(&p, []byte(in), &m); err != nil {
		t.Fatal(err)
	}
	if got := m.Status.Slots[0].Uptime; got != longest {
		t.Errorf("uptime %v, want %v", got, longest)
	}
}

// TestControlSocketUnknownState: a slot state added by a later release
// decodes by name (State 0), is counted as nothing this release knows, and
// is passed on unchanged when re-encoded (a fleet master relaying an agent).
func TestControlSocketUnknownState(t *testing.T) {
	in := `{"type":"status","pid":1,"generation":1,"workers":2,"ready_workers":1,"slots":[` +
		`{"slot":0,"pid":10,"generation":1,"state":"draining-2","uptime_ms":0,"restarts":0,"id":0,"index":0},` +
		`{"slot":1,"pid":11,"generation":1,"state":"reloading","uptime_ms":0,"restarts":0,"id":1,"index":1}]}`
	var p fastjson.Parser
	var m cluster.SockMsg
	if err := cluster.DecodeSockMsg(&p, []byte(in), &m); err != nil {
		t.Fatal(err)
	}
	type state struct {
		State     supervise.SlotState
		StateName string
		Text      string
	}
	var got []state
	for _, s := range m.Status.Slots {
		got = append(got, state{s.State, s.StateName, s.StateText()})
	}
	want := []state{{0, "draining-2", "draining-2"}, {supervise.SlotReloading, "", "reloading"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("states (-want +got):\n%s", diff)
	}
	if enc := cluster.AppendSockMsg(nil, &m); !bytes.Contains(enc, []byte(`"state":"draining-2"`)) {
		t.Errorf("re-encoded without the state's name: %s", enc)
	}
}

// TestControlErrorIs: error codes map to the sentinels callers branch on.
func TestControlErrorIs(t *testing.T) {
	for _, tc := range []struct {
		code string
		want error
	}{
		{cluster.ControlCodeBadRequest, cluster.ErrControlProtocol},
		{cluster.ControlCodeInvalid, cluster.ErrControlInvalid},
		{cluster.ControlCodeNotRunning, supervise.ErrNotRunning},
		{cluster.ControlCodeNoWorker, cluster.ErrNoWorker},
		{cluster.ControlCodeQueueFull, cluster.ErrQueueFull},
		{cluster.ControlCodeFailed, cluster.ErrControlFailed},
		{"from-a-newer-master", cluster.ErrControlFailed},
	} {
		var err error = &cluster.ControlError{Code: tc.code, Message: "x"}
		if !errors.Is(err, tc.want) {
			t.Errorf("code %q does not match %v", tc.code, tc.want)
		}
	}
}

// BenchmarkControlSocketStatus encodes and decodes a 64-slot status
// response: the protocol's encoder and fastjson decoder, and encoding/json
// on the same struct as the baseline.
func BenchmarkControlSocketStatus(b *testing.B) {
	st := &cluster.ControlStatus{PID: 1, Generation: 3, Workers: 64, ReadyWorkers: 64}
	for i := range 64 {
		st.Slots = append(st.Slots, cluster.ControlSlot{Slot: i, PID: 1000 + i, Generation: 3, State: supervise.SlotReady, Uptime: time.Minute, Restarts: 1,
			LastExit: &cluster.ControlExit{PID: 900 + i, Code: -1, Signal: 9, Time: time.UnixMilli(1763700000123)}})
	}
	msg := cluster.SockMsg{Type: "status", Status: st}
	b.Run("protocol", func(b *testing.B) {
		var p fastjson.Parser
		var buf []byte
		var got cluster.SockMsg
		b.ReportAllocs()
		b.SetBytes(int64(len(cluster.AppendSockMsg(nil, &msg))))
		for b.Loop() {
			buf = cluster.AppendSockMsg(buf[:0], &msg)
			if err := cluster.DecodeSockMsg(&p, buf, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding_json", func(b *testing.B) {
		enc, err := json.Marshal(st)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		for b.Loop() {
			enc, _ = json.Marshal(st)
			var got cluster.ControlStatus
			if err := json.Unmarshal(enc, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}
