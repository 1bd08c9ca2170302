package cluster_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/handoff-go/handoff/cluster"
	"github.com/valyala/fastjson"
)

// TestDecodeControl: every message type decodes; garbage of every kind is
// refused with ErrMessage, never guessed at.
func TestDecodeControl(t *testing.T) {
	big := `{"type":"message","data":"` + strings.Repeat("A", cluster.MaxControlFrame) + `"}`
	for _, tc := range []struct {
		name string
		in   string
		want *cluster.CtlMsg // nil: want ErrMessage
		typ  string
	}{
		{"heartbeat", `{"type":"heartbeat"}`, &cluster.CtlMsg{}, "heartbeat"},
		{"unknown fields ignored", `{"type":"heartbeat","x":[1,{"y":null}]}`, &cluster.CtlMsg{}, "heartbeat"},
		{"message", `{"type":"message","data":"aGVsbG8="}`, &cluster.CtlMsg{Data: []byte("hello")}, "message"},
		{"empty message", `{"type":"message","data":""}`, &cluster.CtlMsg{Data: []byte{}}, "message"},
		{"listen", `{"type":"listen","id":7,"network":"tcp","address":"127.0.0.1:0"}`, &cluster.CtlMsg{ID: 7, Network: "tcp", Address: "127.0.0.1:0"}, "listen"},
		{"listened", `{"type":"listened","id":7,"name":"tcp-127.0.0.1-80"}`, &cluster.CtlMsg{ID: 7, Name: "tcp-127.0.0.1-80"}, "listened"},
		{"listened error", `{"type":"listened","id":1,"error":"in use"}`, &cluster.CtlMsg{ID: 1, Err: "in use"}, "listened"},
		{"log", `{"type":"log","time":"2026-01-02T03:04:05.5Z","level":"WARN","msg":"hi","attrs":{"s":"x","n":3,"f":1.5,"b":true,"z":null,"o":{"a":1}}}`,
			&cluster.CtlMsg{Time: time.Date(2026, 1, 2, 3, 4, 5, 5e8, time.UTC), Level: slog.LevelWarn, Msg: "hi", Attrs: []slog.Attr{
				slog.String("s", "x"), slog.Int64("n", 3), slog.Float64("f", 1.5), slog.Bool("b", true), slog.Any("z", nil), slog.String("o", `{"a":1}`)}}, "log"},
		{"log level offset", `{"type":"log","level":"INFO+2","msg":""}`, &cluster.CtlMsg{Level: slog.LevelInfo + 2}, "log"},

		{"not json", `hello`, nil, ""},
		{"truncated", `{"type":"heartbeat"`, nil, ""},
		{"trailing garbage", `{"type":"heartbeat"} x`, nil, ""},
		{"bad escape", `{"type":"heartbeat","x":"\q"}`, nil, ""},
		{"invalid utf-8", "{\"type\":\"message\",\"data\":\"\xff\"}", nil, ""},
		{"array", `[{"type":"heartbeat"}]`, nil, ""},
		{"no type", `{"data":""}`, nil, ""},
		{"type not string", `{"type":1}`, nil, ""},
		{"unknown type", `{"type":"reboot"}`, nil, ""},
		{"data not base64", `{"type":"message","data":"!!"}`, nil, ""},
		{"data missing", `{"type":"message"}`, nil, ""},
		{"oversized", big, nil, ""},
		{"listen id zero", `{"type":"listen","id":0,"network":"tcp","address":"a:1"}`, nil, ""},
		{"listen id float", `{"type":"listen","id":1.5,"network":"tcp","address":"a:1"}`, nil, ""},
		{"listen id huge", `{"type":"listen","id":99999999999,"network":"tcp","address":"a:1"}`, nil, ""},
		{"listen id string", `{"type":"listen","id":"1","network":"tcp","address":"a:1"}`, nil, ""},
		{"listen bad network", `{"type":"listen","id":1,"network":"sctp","address":"a:1"}`, nil, ""},
		{"listen long address", `{"type":"listen","id":1,"network":"unix","address":"/` + strings.Repeat("a", 300) + `"}`, nil, ""},
		{"listened both", `{"type":"listened","id":1,"name":"x","error":"y"}`, nil, ""},
		{"listened neither", `{"type":"listened","id":1}`, nil, ""},
		{"log no msg", `{"type":"log"}`, nil, ""},
		{"log bad time", `{"type":"log","msg":"","time":"yesterday"}`, nil, ""},
		{"log bad level", `{"type":"log","msg":"","level":"LOUD"}`, nil, ""},
		{"log attrs not object", `{"type":"log","msg":"","attrs":[1]}`, nil, ""},
		{"log too many attrs", `{"type":"log","msg":"","attrs":{` + manyAttrs(65) + `}}`, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cluster.DecodeControl([]byte(tc.in))
			if tc.want == nil {
				if !errors.Is(err, cluster.ErrMessage) {
					t.Fatalf("DecodeControl = %v, want ErrMessage", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeControl: %v", err)
			}
			if typ := cluster.TypeName(&got); typ != tc.typ {
				t.Errorf("type %q, want %q", typ, tc.typ)
			}
			got.Type = 0
			if diff := cmp.Diff(*tc.want, got, cmpopts.EquateEmpty(), cmp.Comparer(func(a, b slog.Attr) bool { return a.Equal(b) })); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

func manyAttrs(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"k`)
		b.WriteString(strings.Repeat("x", i))
		b.WriteString(`":1`)
	}
	return b.String()
}

// TestEncodeControl: what the encoders write is valid JSON that decodes
// back to the same message, whatever bytes the strings hold.
func TestEncodeControl(t *testing.T) {
	weird := "a\"b\\c\x00\x1f\x7f\xff\u2028\U000e0001é"
	for _, tc := range []struct {
		name string
		b    []byte
		want cluster.CtlMsg
	}{
		{"heartbeat", cluster.AppendHeartbeat(nil), cluster.CtlMsg{}},
		{"message", cluster.AppendData(nil, []byte("\x00\xffbinary")), cluster.CtlMsg{Data: []byte("\x00\xffbinary")}},
		{"listen", cluster.AppendListen(nil, 3, "unix", weird), cluster.CtlMsg{ID: 3, Network: "unix", Address: string([]rune(weird))}},
		{"listened", cluster.AppendListened(nil, 4, "n", nil), cluster.CtlMsg{ID: 4, Name: "n"}},
		{"listened error", cluster.AppendListened(nil, 5, "", errors.New(weird)), cluster.CtlMsg{ID: 5, Err: string([]rune(weird))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := fastjson.ValidateBytes(tc.b); err != nil {
				t.Fatalf("%s is not JSON: %v", tc.b, err)
			}
			got, err := cluster.DecodeControl(tc.b)
			if err != nil {
				t.Fatalf("DecodeControl(%s): %v", tc.b, err)
			}
			got.Type = 0
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzDecodeControl: the decoder never panics, and whatever it accepts
// encodes back to a message that decodes to the same thing.
func FuzzDecodeControl(f *testing.F) {
	for _, s := range []string{
		`{"type":"heartbeat"}`,
		`{"type":"message","data":"aGVsbG8="}`,
		`{"type":"listen","id":1,"network":"tcp","address":"127.0.0.1:0"}`,
		`{"type":"listened","id":1,"name":"tcp-127.0.0.1-80"}`,
		`{"type":"listened","id":2,"error":"address in use"}`,
		`{"type":"log","time":"2026-01-02T03:04:05Z","level":"INFO","msg":"hi","attrs":{"a":1,"b":"x"}}`,
		`{"type":"log","msg":"x","attrs":{"o":{"p":[1,2]}}}`,
		`{"type":"nope"}`,
		`[1,2,3]`,
		"{\"type\":\"message\",\"data\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := cluster.DecodeControl(b)
		if err != nil {
			if !errors.Is(err, cluster.ErrMessage) {
				t.Fatalf("error %v does not wrap ErrMessage", err)
			}
			return
		}
		enc, ok := cluster.Reencode(&m)
		if !ok {
			return
		}
		m2, err := cluster.DecodeControl(enc)
		if err != nil {
			t.Fatalf("re-encoded %s: %v", enc, err)
		}
		if diff := cmp.Diff(m, m2, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

// FuzzJSONString: appendJSONString always writes one valid JSON string,
// and clipText cuts any text to at most its limit as the peer decodes it.
func FuzzJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "a\"b\\c", "\x00\x1f\x7f", "\xff\xfe", "\U000e0001\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := cluster.AppendJSONString(nil, s)
		var p fastjson.Parser
		v, err := p.ParseBytes(b)
		if err != nil || fastjson.ValidateBytes(b) != nil {
			t.Fatalf("%q encoded as invalid JSON %s: %v", s, b, err)
		}
		got, err := v.StringBytes()
		if err != nil || !bytes.Equal(got, []byte(string([]rune(s)))) {
			t.Fatalf("%q encoded as %s, decodes to %q", s, b, got)
		}
		for _, max := range []int{0, 3, len(s) / 2, len(s)} {
			c := cluster.ClipText(s, max)
			v, err := p.ParseBytes(cluster.AppendJSONString(nil, c))
			if err != nil {
				t.Fatalf("clipped %q: %v", c, err)
			}
			dec, _ := v.StringBytes()
			if len(dec) > max || string(dec) != c || !strings.HasPrefix(string([]rune(s)), c) {
				t.Fatalf("ClipText(%q, %d) = %q, decoded %q", s, max, c, dec)
			}
		}
	})
}

// BenchmarkDecodeControl: the fastjson decoder against encoding/json
// decoding the same log record into a struct, side by side.
func BenchmarkDecodeControl(b *testing.B) {
	msg := []byte(`{"type":"log","time":"2026-01-02T03:04:05.123Z","level":"INFO","msg":"request done","attrs":{"path":"/x","status":200,"took_ms":1.5}}`)
	var fast, std float64
	b.Run("fastjson", func(b *testing.B) {
		dec := cluster.NewDecoder()
		b.ReportAllocs()
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if _, err := dec(msg); err != nil {
				b.Fatal(err)
			}
		}
		fast = float64(b.Elapsed()) / float64(b.N)
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			var v struct {
				Type, Time, Level, Msg string
				Attrs                  map[string]any
			}
			if err := json.Unmarshal(msg, &v); err != nil {
				b.Fatal(err)
			}
		}
		std = float64(b.Elapsed()) / float64(b.N)
		if fast > 0 {
			b.ReportMetric(std/fast, "x-fastjson-speedup")
		}
	})
}

// TestDecodeDeepNesting: JSON nested past 64 levels from another process
// (a worker's control channel, a control-socket client, a remote agent) is
// refused by its depth before fastjson's validator, whose time and error
// text grow with the square of the depth, sees it; nesting up to the
// limit is still JSON.
func TestDecodeDeepNesting(t *testing.T) {
	deep := func(n int) []byte {
		return []byte(`{"type":"data","payload":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
	}
	var p fastjson.Parser
	decoders := []struct {
		name   string
		decode func([]byte) error
	}{
		{"worker control", func(b []byte) error { _, err := cluster.DecodeControl(b); return err }},
		{"control socket", func(b []byte) error { var m cluster.SockMsg; return cluster.DecodeSockMsg(&p, b, &m) }},
		{"agent", func(b []byte) error { _, err := cluster.AgentReencode(&p, b); return err }},
	}
	for _, d := range decoders {
		t.Run(d.name, func(t *testing.T) {
			// The whole frame a peer may send, all brackets: closed, and
			// never closed (fastjson's validator took minutes on that).
			open := []byte(`{"type":"data","payload":` + strings.Repeat("[", cluster.MaxControlFrame-64))
			for _, b := range [][]byte{deep((cluster.MaxControlFrame - 64) / 2), open} {
				err := d.decode(b)
				if err == nil || !strings.Contains(err.Error(), "nested deeper than 64") {
					t.Errorf("64 KiB of nesting: %.200v, want refused for its depth", err)
				}
			}
			if err := d.decode(deep(63)); err != nil && strings.Contains(err.Error(), "nested deeper") {
				t.Errorf("63 levels refused for depth: %v", err)
			}
			// Brackets inside a string are not nesting.
			b := []byte(`{"type":"data","payload":"` + strings.Repeat("[", 200) + `"}`)
			if err := d.decode(b); err != nil && strings.Contains(err.Error(), "nested deeper") {
				t.Errorf("brackets in a string counted as nesting: %v", err)
			}
		})
	}
}
