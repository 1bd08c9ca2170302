package main_test

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	fdsend "github.com/handoff-go/handoff/cmd/fdsend"
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// encodeReply builds a version 1 reply as docs/fdcli.md specifies.
func encodeReply(status int, text string) []byte {
	b := []byte("HFDR\x01")
	b = append(b, byte(status))
	b = binary.BigEndian.AppendUint16(b, uint16(len(text)))
	return append(b, text...)
}

func TestEncodeMessage(t *testing.T) {
	tests := []struct {
		name    string
		names   []string
		payload string
		want    []byte
		wantErr string
	}{
		// The example in docs/fdcli.md.
		{"doc example", []string{"web", "ctr"}, "hi", mustHex("48464453 01 02 03776562 03637472 00000002 6869"), ""},
		{"nothing", nil, "", mustHex("48464453 01 00 00000000"), ""},
		{"colon", []string{"a:b"}, "", nil, "not allowed"},
		{"empty name", []string{""}, "", nil, "1 to 255"},
		{"254 names", make([]string, 254), "", nil, "at most 253"},
		{"payload too large", nil, strings.Repeat("x", 64<<10+1), nil, "at most 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := fdsend.EncodeMessage(tt.names, []byte(tt.payload))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("EncodeMessage = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeReply(t *testing.T) {
	tests := []struct {
		name       string
		in         []byte
		wantStatus int
		wantText   string
		wantErr    string
	}{
		{"ok", mustHex("48464452 01 00 0000"), 0, "", ""},
		{"refused", encodeReply(4, "want 2"), 4, "want 2", ""},
		{"empty", nil, 0, "", "not an fdrecv reply"},
		{"a message, not a reply", mustHex("48464453 01 00 00000000"), 0, "", "not an fdrecv reply"},
		{"version 9", mustHex("48464452 09 00 0000"), 0, "", "version 9"},
		{"text too long", encodeReply(1, strings.Repeat("x", 1025)), 0, "", "at most 1024"},
		{"text cut short", encodeReply(1, "abc")[:9], 0, "", "text length 3, but 1"},
		{"trailing bytes", append(encodeReply(0, ""), 0), 0, "", "text length 0, but 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, text, err := fdsend.DecodeReply(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, fdsend.ErrProtocol) {
					t.Fatalf("DecodeReply = %v, want a protocol error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if status != tt.wantStatus || text != tt.wantText {
				t.Errorf("DecodeReply = %d, %q; want %d, %q", status, text, tt.wantStatus, tt.wantText)
			}
		})
	}
}

// FuzzDecodeReply feeds arbitrary peer input to the reply decoder: it must
// never panic, and whatever it accepts must re-encode to exactly the input.
func FuzzDecodeReply(f *testing.F) {
	f.Add(encodeReply(0, ""))
	f.Add(encodeReply(4, "received 1 descriptors, want 2 (-n)"))
	f.Add([]byte("HFDR\x01\x00\xff\xff"))
	f.Fuzz(func(t *testing.T, in []byte) {
		status, text, err := fdsend.DecodeReply(in)
		if err != nil {
			if !errors.Is(err, fdsend.ErrProtocol) {
				t.Fatalf("error %v does not wrap the protocol error", err)
			}
			return
		}
		if got := encodeReply(status, text); string(got) != string(in) {
			t.Fatalf("re-encoded %x, input %x", got, in)
		}
	})
}
