package fdwire_test

import (
	"encoding/hex"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdwire"
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func mustEncode(t testing.TB, names []string, payload []byte) []byte {
	b, err := fdwire.EncodeMessage(names, payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The examples are the ones in docs/fdcli.md.
func TestEncodeMessage(t *testing.T) {
	for _, tc := range []struct {
		name    string
		names   []string
		payload string
		want    []byte
		err     error
	}{
		{"doc example", []string{"web", "ctr"}, "hi", mustHex("48464453 02 02 03776562 03637472 00000002 6869"), nil},
		{"nothing", nil, "", mustHex("48464453 02 00 00000000"), nil},
		{"colon", []string{"a:b"}, "", nil, fdwire.ErrName},
		{"empty name", []string{""}, "", nil, fdwire.ErrName},
		{"long name", []string{strings.Repeat("n", 256)}, "", nil, fdwire.ErrName},
		{"254 names", make([]string, 254), "", nil, fdwire.ErrTooLarge},
		{"payload too large", nil, strings.Repeat("x", fdwire.MaxPayload+1), nil, fdwire.ErrTooLarge},
	} {
		got, err := fdwire.EncodeMessage(tc.names, []byte(tc.payload))
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}

func TestDecodeMessage(t *testing.T) {
	good := mustEncode(t, []string{"web", "ctr"}, []byte("hi"))
	for _, tc := range []struct {
		name    string
		in      []byte
		names   []string
		payload string
		err     error
	}{
		{"doc example", good, []string{"web", "ctr"}, "hi", nil},
		{"empty", nil, nil, "", fdwire.ErrProtocol},
		{"wrong magic", append([]byte("XFDS"), good[4:]...), nil, "", fdwire.ErrProtocol},
		{"unknown version", append([]byte("HFDS\x07"), good[5:]...), nil, "", fdwire.ErrVersion},
		{"version 1", append([]byte("HFDS\x01"), good[5:]...), nil, "", fdwire.ErrVersion},
		{"more than 253 names", []byte("HFDS\x02\xfe"), nil, "", fdwire.ErrProtocol},
		{"name cut short", []byte("HFDS\x02\x01\x05ab"), nil, "", fdwire.ErrProtocol},
		{"bad name", []byte("HFDS\x02\x01\x03a:b\x00\x00\x00\x00"), nil, "", fdwire.ErrName},
		{"payload length cut short", []byte("HFDS\x02\x00\x00\x00"), nil, "", fdwire.ErrProtocol},
		{"payload longer than said", append(mustEncode(t, nil, []byte("ab")), 'c'), nil, "", fdwire.ErrProtocol},
		{"payload shorter than said", mustEncode(t, nil, []byte("ab"))[:11], nil, "", fdwire.ErrProtocol},
		{"payload too large", []byte("HFDS\x02\x00\x00\x01\x00\x01"), nil, "", fdwire.ErrProtocol},
	} {
		names, payload, err := fdwire.DecodeMessage(tc.in)
		if !errors.Is(err, tc.err) || (err != nil && !errors.Is(err, fdwire.ErrProtocol)) {
			t.Errorf("%s: error %v, want %v wrapped in ErrProtocol", tc.name, err, tc.err)
			continue
		}
		if err != nil {
			continue
		}
		if diff := cmp.Diff(tc.names, names); diff != "" {
			t.Errorf("%s: names (-want +got):\n%s", tc.name, diff)
		}
		if string(payload) != tc.payload {
			t.Errorf("%s: payload %q, want %q", tc.name, payload, tc.payload)
		}
	}
}

func TestReply(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		text   string
		want   []byte
	}{
		{"placed", 0, "", mustHex("48464452 02 00 0000")},
		{"count", 4, "no", mustHex("48464452 02 04 0002 6e6f")},
		{"long text cut on a rune boundary", 8, strings.Repeat("é", 600), append(mustHex("48464452 02 08 0400"), strings.Repeat("é", 512)...)},
	} {
		got := fdwire.EncodeReply(tc.status, tc.text)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
		status, text, err := fdwire.DecodeReply(got)
		if err != nil || status != tc.status || text != string(got[8:]) {
			t.Errorf("%s: DecodeReply = %d, %q, %v", tc.name, status, text, err)
		}
	}
	for _, bad := range [][]byte{nil, []byte("HFDR"), []byte("HFDR\x01\x00\x00\x00"), []byte("HFDR\x03\x00\x00\x00"), []byte("XFDR\x02\x00\x00\x00"),
		[]byte("HFDR\x02\x00\x00\x05ab"), []byte("HFDR\x02\x00\x04\x01"), append([]byte("HFDR\x02\x00\x00\x00"), 'x')} {
		if _, _, err := fdwire.DecodeReply(bad); !errors.Is(err, fdwire.ErrProtocol) {
			t.Errorf("DecodeReply(%q) = %v, want ErrProtocol", bad, err)
		}
	}
}

// A sender of another version is refused in its own version's reply layout,
// never with a status that reads as success.
func TestRefusal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		msg     []byte
		version int
		status  int
		want    []byte
	}{
		{"version 1 sender", mustHex("48464453 01 00 00000000"), 1, 8, mustHex("48464452 01 08 0002 6e6f")},
		{"version 9 sender", mustHex("48464453 09"), 9, 8, mustHex("48464452 09 08 0002 6e6f")},
		{"status 0 is never sent", mustHex("48464453 01"), 1, 0, mustHex("48464452 01 08 0002 6e6f")},
		{"not a message", []byte("HFDR\x01"), 0, 8, mustHex("48464452 02 08 0002 6e6f")},
		{"empty", nil, 0, 8, mustHex("48464452 02 08 0002 6e6f")},
	} {
		v := fdwire.MessageVersion(tc.msg)
		if v != tc.version {
			t.Errorf("%s: MessageVersion = %d, want %d", tc.name, v, tc.version)
		}
		if diff := cmp.Diff(tc.want, fdwire.EncodeRefusal(v, tc.status, "no")); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}

// FuzzDecodeMessage feeds arbitrary peer input to the decoder and to
// MessageVersion: neither panics, they agree on the version, and whatever
// the decoder accepts re-encodes to exactly the input (one encoding per
// message, so nothing is silently ignored).
func FuzzDecodeMessage(f *testing.F) {
	f.Add(mustEncode(f, []string{"web", "ctr"}, []byte("hi")))
	f.Add(mustEncode(f, nil, nil))
	f.Add([]byte("HFDS\x02\x01\x05ab"))
	f.Fuzz(func(t *testing.T, in []byte) {
		v := fdwire.MessageVersion(in)
		names, payload, err := fdwire.DecodeMessage(in)
		if err == nil && v != fdwire.Version {
			t.Fatalf("decoded a message whose MessageVersion is %d", v)
		}
		if errors.Is(err, fdwire.ErrVersion) && v == fdwire.Version {
			t.Fatalf("ErrVersion for MessageVersion %d: %v", v, err)
		}
		if err != nil {
			if !errors.Is(err, fdwire.ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if len(names) > fdwire.MaxNames || len(payload) > fdwire.MaxPayload {
			t.Fatalf("accepted %d names, %d payload bytes", len(names), len(payload))
		}
		if got := mustEncode(t, names, payload); string(got) != string(in) {
			t.Fatalf("re-encoded %x, input %x", got, in)
		}
	})
}

// FuzzDecodeReply: never panics; what it accepts re-encodes to the input.
func FuzzDecodeReply(f *testing.F) {
	f.Add(fdwire.EncodeReply(0, ""))
	f.Add(fdwire.EncodeReply(4, "want 3"))
	f.Add([]byte("HFDR\x01\x00\x00\x05ab"))
	f.Fuzz(func(t *testing.T, in []byte) {
		status, text, err := fdwire.DecodeReply(in)
		if err != nil {
			if !errors.Is(err, fdwire.ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if got := fdwire.EncodeReply(status, text); string(got) != string(in) {
			t.Fatalf("re-encoded %x, input %x", got, in)
		}
	})
}

// A refusal names everyone who is allowed, so an operator is never told to
// add an -allow-uid that is already set.
func TestUIDsAllowed(t *testing.T) {
	own := strconv.Itoa(os.Getuid())
	tests := []struct {
		uids fdwire.UIDs
		want string
	}{
		{nil, "own uid " + own + " only"},
		{fdwire.UIDs{1234}, "own uid " + own + " and -allow-uid 1234"},
		{fdwire.UIDs{33, 65534}, "own uid " + own + " and -allow-uid 33, 65534"},
	}
	for _, tt := range tests {
		if got := tt.uids.Allowed(); got != tt.want {
			t.Errorf("%v.Allowed() = %q, want %q", tt.uids, got, tt.want)
		}
	}
}

func TestCheckSocketPath(t *testing.T) {
	for _, p := range []string{"/run/h", "rel/s", "./@abs", "/tmp/@abs"} {
		if err := fdwire.CheckSocketPath(p); err != nil {
			t.Errorf("CheckSocketPath(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range []string{"@abs", "@"} {
		if err := fdwire.CheckSocketPath(p); err == nil || !strings.Contains(err.Error(), "abstract") {
			t.Errorf("CheckSocketPath(%q) = %v, want an abstract-name error", p, err)
		}
	}
}
