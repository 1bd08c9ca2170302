package main_test

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	fdrecv "github.com/handoff-go/handoff/cmd/fdrecv"
)

// encode builds a version 1 message as docs/fdcli.md specifies, without
// validating anything, so tests can build bad ones too.
func encode(names []string, payload []byte) []byte {
	b := []byte("HFDS\x01")
	b = append(b, byte(len(names)))
	for _, n := range names {
		b = append(b, byte(len(n)))
		b = append(b, n...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestDecodeMessage(t *testing.T) {
	tests := []struct {
		name        string
		in          []byte
		wantNames   []string
		wantPayload string
		wantErr     string // substring; "" means success
	}{
		// The example in docs/fdcli.md.
		{"doc example", mustHex("48464453 01 02 03776562 03637472 00000002 6869"), []string{"web", "ctr"}, "hi", ""},
		{"no descriptors, empty payload", encode(nil, nil), []string{}, "", ""},
		{"name of 255 bytes", encode([]string{strings.Repeat("n", 255)}, []byte("x")), []string{strings.Repeat("n", 255)}, "x", ""},
		{"name with a space", encode([]string{"a b"}, nil), []string{"a b"}, "", ""},
		{"empty", nil, nil, "", "not an fdsend message"},
		{"wrong magic", []byte("HFDX\x01\x00\x00\x00\x00\x00"), nil, "", "not an fdsend message"},
		{"reply instead of message", mustHex("48464452 01 00 0000"), nil, "", "not an fdsend message"},
		{"version 2", []byte("HFDS\x02\x00\x00\x00\x00\x00"), nil, "", "version 2"},
		{"254 names", append([]byte("HFDS\x01\xfe"), make([]byte, 300)...), nil, "", "254 names"},
		{"name cut short", []byte("HFDS\x01\x01\x05ab"), nil, "", "name 0 cut short"},
		{"names missing", []byte("HFDS\x01\x02"), nil, "", "name 0 cut short"},
		{"empty name", encode([]string{""}, nil), nil, "", "1 to 255"},
		{"colon in name", encode([]string{"a:b"}, nil), nil, "", "not allowed"},
		{"control char in name", encode([]string{"a\nb"}, nil), nil, "", "not allowed"},
		{"non-ASCII name", encode([]string{"caf\xc3\xa9"}, nil), nil, "", "not allowed"},
		{"payload length missing", []byte("HFDS\x01\x00\x00\x00"), nil, "", "payload length cut short"},
		{"payload longer than said", append(encode(nil, []byte("ab")), 'c'), nil, "", "payload length 2, but 3"},
		{"payload shorter than said", encode(nil, []byte("ab"))[:11], nil, "", "payload length 2, but 1"},
		{"payload too large", append([]byte("HFDS\x01\x00"), 0, 1, 0, 1), nil, "", "at most 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names, payload, err := fdrecv.DecodeMessage(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("DecodeMessage = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantNames, names); diff != "" {
				t.Errorf("names (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantPayload, string(payload)); diff != "" {
				t.Errorf("payload (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEncodeReply(t *testing.T) {
	tests := []struct {
		name   string
		status int
		text   string
		want   []byte
	}{
		{"ok", 0, "", mustHex("48464452 01 00 0000")},
		{"count", 4, "no", mustHex("48464452 01 04 0002 6e6f")},
		{"long text cut on a rune boundary", 8, strings.Repeat("é", 600), append(mustHex("48464452 01 08 0400"), strings.Repeat("é", 512)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, fdrecv.EncodeReply(tt.status, tt.text)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzDecodeMessage feeds arbitrary peer input to the decoder: it must never
// panic, and whatever it accepts must re-encode to exactly the input (one
// encoding per message, so nothing is silently ignored).
func FuzzDecodeMessage(f *testing.F) {
	f.Add(encode([]string{"web", "ctr"}, []byte("hi")))
	f.Add(encode(nil, nil))
	f.Add([]byte("HFDS\x01\x01\x05ab"))
	f.Fuzz(func(t *testing.T, in []byte) {
		names, payload, err := fdrecv.DecodeMessage(in)
		if err != nil {
			if !errors.Is(err, fdrecv.ErrProtocol) {
				t.Fatalf("error %v does not wrap the protocol error", err)
			}
			return
		}
		if len(names) > 253 || len(payload) > 64<<10 {
			t.Fatalf("accepted %d names, %d payload bytes", len(names), len(payload))
		}
		if got := encode(names, payload); string(got) != string(in) {
			t.Fatalf("re-encoded %x, input %x", got, in)
		}
	})
}
