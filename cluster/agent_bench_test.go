package cluster_test

import (
	"encoding/json"
	"testing"

	"github.com/handoff-go/handoff/cluster"
	"github.com/valyala/fastjson"
)

// BenchmarkAgentLogFrame decodes and re-encodes a relayed worker output
// line, the agent protocol's most frequent frame, against encoding/json
// doing the same into a map (the naive baseline), side by side.
func BenchmarkAgentLogFrame(b *testing.B) {
	frame := []byte(`{"type":"log","level":0,"msg":"GET /index.html 200 1532 0.4ms","attrs":{"slot":1,"pid":4250,"stream":"stdout"}}`)
	b.Run("agent", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(frame)))
		var p fastjson.Parser
		for b.Loop() {
			if _, err := cluster.AgentReencode(&p, frame); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			var m map[string]any
			if err := json.Unmarshal(frame, &m); err != nil {
				b.Fatal(err)
			}
			if _, err := json.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
