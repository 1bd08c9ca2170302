package cluster_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/handoff-go/handoff/cluster"
	"github.com/valyala/fastjson"
)

// agentSeeds are agent-protocol messages of every type, both directions;
// the committed corpus in testdata/fuzz/FuzzAgentMessage holds these and
// malformed ones.
var agentSeeds = []string{
	`{"type":"start","version":1,"group":"web","program":"/usr/bin/srv","args":["-v","a b"],"ids":[3,4],"index_base":1,` +
		`"group_size":3,"params":{"k":"v","n":[1,2.5,null]},"env":["A=1","B="],"listen":["127.0.0.1:0","unix:///tmp/s"],` +
		`"mode":"reuseport","ready":"started","strategy":"parallel","restart":"on-failure",` +
		`"backoff":{"min_ms":200,"max_ms":1000,"jitter":0.2,"reset_after_ms":0,"burst":-1,"window_ms":0,"quick_failures":5},` +
		`"heartbeat_ms":1000,"shutdown_timeout_ms":5000,"start_timeout_ms":0,"max_running_time_ms":3600000,"status_interval_ms":1000,"suspended":true}`,
	`{"type":"start","version":1,"program":"srv","ids":[0],"listen":["127.0.0.1:0"],"status_interval_ms":1000,"heartbeat_timeout_ms":15000}`,
	`{"type":"restart","seq":1}`,
	`{"type":"suspend","seq":2}`,
	`{"type":"resume","seq":3}`,
	`{"type":"stop","seq":0}`,
	`{"type":"ping"}`,
	`{"type":"kill"}`,
	`{"type":"max_running_time","seq":3,"max_running_time_ms":1000}`,
	`{"type":"started","version":1,"pid":4242,"addrs":["127.0.0.1:8080"]}`,
	`{"type":"status","ready":true,"suspended":false,"dropped":7,"status":{"pid":4242,"generation":2,"restarting":false,` +
		`"workers":1,"ready_workers":1,"slots":[{"slot":0,"pid":100,"generation":2,"state":"ready","uptime_ms":1500,"restarts":1,` +
		`"last_exit":{"pid":90,"code":-1,"signal":9,"requested":false,"time_ms":1763700000123}}]}}`,
	`{"type":"log","level":0,"msg":"worker started","attrs":{"slot":1,"pid":77,"stream":"stdout","ok":true,"f":1.5}}`,
	`{"type":"ack","seq":3}`,
	`{"type":"ack","seq":4,"error":"cluster: suspended"}`,
	`{"type":"error","error":"cluster: worker program: exec: \"srv\": not found"}`,
	`{"type":"exit","error":""}`,
}

// FuzzAgentMessage: the agent protocol's one decoder never panics, every
// error matches ErrAgentProtocol, and a decoded message re-encodes to a
// fixed point (decode, encode, decode, encode gives the same bytes).
func FuzzAgentMessage(f *testing.F) {
	for _, s := range agentSeeds {
		f.Add([]byte(s))
	}
	var p fastjson.Parser
	f.Fuzz(func(t *testing.T, b []byte) {
		enc, err := cluster.AgentReencode(&p, b)
		if err != nil {
			if !errors.Is(err, cluster.ErrAgentProtocol) {
				t.Fatalf("error %v does not match ErrAgentProtocol", err)
			}
			return
		}
		again, err := cluster.AgentReencode(&p, enc)
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", enc, err)
		}
		if !bytes.Equal(enc, again) {
			t.Fatalf("not a fixed point:\n%s\n%s", enc, again)
		}
	})
}

// TestAgentSeedsDecode: every seed is a valid message, so the corpus
// starts from the protocol's whole surface.
func TestAgentSeedsDecode(t *testing.T) {
	var p fastjson.Parser
	for _, s := range agentSeeds {
		if _, err := cluster.AgentReencode(&p, []byte(s)); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}

// TestAgentInvalidUTF8: a frame with bytes that are not UTF-8, in any
// string of any type, is a protocol error, as docs/protocol.md says; a log
// frame with them is not the content exception (the agent mends UTF-8
// before sending, so such a frame comes from a broken peer).
func TestAgentInvalidUTF8(t *testing.T) {
	for _, b := range []string{
		`{"type":"log","level":0,"msg":"a` + "\xff" + `b","attrs":{}}`,
		`{"type":"log","level":0,"msg":"m","attrs":{"k` + "\xc3" + `":"v"}}`,
		`{"type":"error","error":"` + "\xed\xa0\x80" + `"}`, // a UTF-16 surrogate written as UTF-8
		`{"type":"start","version":1,"program":"srv","args":["` + "\xfe" + `"],"ids":[0],"listen":["127.0.0.1:0"],"status_interval_ms":1000}`,
		`{"type":"ping","x":"` + "\x80" + `"}`, // even in a field no one reads
	} {
		var p fastjson.Parser
		if _, err := cluster.AgentReencode(&p, []byte(b)); !errors.Is(err, cluster.ErrAgentProtocol) || !strings.Contains(err.Error(), "UTF-8") {
			t.Errorf("%q: %v, want ErrAgentProtocol naming UTF-8", b, err)
		}
		// The same frame with the bytes mended decodes.
		if _, err := cluster.AgentReencode(&p, []byte(strings.ToValidUTF8(b, "\uFFFD"))); err != nil {
			t.Errorf("%q mended: %v", b, err)
		}
	}
}

// TestAgentErrorTextClipped: an agent's failure text, which ends up in
// logs and status, is cut to one line's worth when decoded.
func TestAgentErrorTextClipped(t *testing.T) {
	long := strings.Repeat("é", 5000) // 10000 bytes
	for _, typ := range []string{"error", "exit"} {
		var p fastjson.Parser
		enc, err := cluster.AgentReencode(&p, []byte(`{"type":"`+typ+`","error":"`+long+`"}`))
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		v, err := fastjson.ParseBytes(enc)
		if err != nil {
			t.Fatal(err)
		}
		got := string(v.GetStringBytes("error"))
		if len(got) > 4096 || len(got) < 4000 || !utf8.ValidString(got) || !strings.HasPrefix(long, got) {
			t.Errorf("%s: error text of %d bytes after decoding (valid UTF-8 %v), want a prefix of at most 4096", typ, len(got), utf8.ValidString(got))
		}
	}
}
