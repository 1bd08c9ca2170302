package cluster_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/cluster"
)

const goodState = "handoff-upgrade v1 4242\n" +
	"L 3 tcp-127.0.0.1-8080\n" +
	"L 7 my name with spaces\n" +
	"K 9\n" +
	"F 12 chan.4301\n" +
	"W 4301 0 3 14 15\n" +
	"W 4302 1 3 -1 -1\n" +
	"p 4303\n" +
	"N /tmp/handoff-123/notify\n" +
	"C 3\n" +
	"h 4301 3 70 - r 3 7\n" +
	"h 4302 0 4294967295 4294967290 ra\n"

// TestUpgradeState: the state the old image hands over round-trips, and
// garbage is rejected as a whole with ErrUpgradeState (the new image then
// starts clean and adopts nothing).
func TestUpgradeState(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
		want     string // re-encoded, if not in
	}{
		{"full", goodState, true, ""},
		{"minimal", "handoff-upgrade v1 1\n", true, ""},
		{"no trailing newline", "handoff-upgrade v1 7\nL 3 x", true, ""},
		{"empty", "", false, ""},
		{"other version", "handoff-upgrade v2 4242\n", false, ""},
		{"pid zero", "handoff-upgrade v1 0\n", false, ""},
		{"pid leading zero", "handoff-upgrade v1 042\n", false, ""},
		{"pid too large", "handoff-upgrade v1 99999999\n", false, ""},
		{"stdio descriptor", "handoff-upgrade v1 5\nL 2 x\n", false, ""},
		{"negative descriptor", "handoff-upgrade v1 5\nL -3 x\n", false, ""},
		{"descriptor twice", "handoff-upgrade v1 5\nL 3 x\nK 3\n", false, ""},
		{"output reuses a listener", "handoff-upgrade v1 5\nL 3 x\nW 6 0 1 3 -1\n", false, ""},
		{"listener name with colon", "handoff-upgrade v1 5\nL 3 a:b\n", false, ""},
		{"listener without name", "handoff-upgrade v1 5\nL 3\n", false, ""},
		{"file name with slash", "handoff-upgrade v1 5\nF 3 ../x\n", false, ""},
		{"file twice", "handoff-upgrade v1 5\nF 3 a\nF 4 a\n", false, ""},
		{"two locks", "handoff-upgrade v1 5\nK 3\nK 4\n", false, ""},
		{"worker is the master", "handoff-upgrade v1 5\nW 5 0 1 -1 -1\n", false, ""},
		{"worker twice", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nW 6 1 1 -1 -1\n", false, ""},
		{"worker short", "handoff-upgrade v1 5\nW 6 0 1 -1\n", false, ""},
		{"worker generation 0", "handoff-upgrade v1 5\nW 6 0 0 -1 -1\n", false, ""},
		{"worker slot too large", "handoff-upgrade v1 5\nW 6 4096 1 -1 -1\n", false, ""},
		{"relative notify", "handoff-upgrade v1 5\nN tmp/notify\n", false, ""},
		{"notify with control character", "handoff-upgrade v1 5\nN /tmp/n\r\n", false, ""},
		{"bind with control character", "handoff-upgrade v1 5\nB 3 unix:///tmp/s\r\n", false, ""},
		{"slot count", "handoff-upgrade v1 5\nC 3\n", true, ""},
		{"slot count 0", "handoff-upgrade v1 5\nC 0\n", false, ""},
		{"slot count too large", "handoff-upgrade v1 5\nC 4097\n", false, ""},
		{"two slot counts", "handoff-upgrade v1 5\nC 3\nC 4\n", false, ""},
		{"child", "handoff-upgrade v1 5\np 6\np 7\n", true, ""},
		{"child is a worker", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\np 6\n", false, ""},
		{"worker is a child", "handoff-upgrade v1 5\np 6\nW 6 0 1 -1 -1\n", false, ""},
		{"child is the master", "handoff-upgrade v1 5\np 5\n", false, ""},
		{"child pid 1", "handoff-upgrade v1 5\np 1\n", false, ""},
		{"child pid garbage", "handoff-upgrade v1 5\np 6 7\n", false, ""},
		{"unknown record", "handoff-upgrade v1 5\nX 1\n", false, ""},
		{"socket files", "handoff-upgrade v1 5\nL 3 x\nB 4 unix:///s\nu 3 2049 131\nu 4 0 18446744073709551615\n", true, ""},
		{"socket file before its listener", "handoff-upgrade v1 5\nu 3 1 2\nL 3 x\n", true, "handoff-upgrade v1 5\nL 3 x\nu 3 1 2\n"},
		{"socket file of no listener", "handoff-upgrade v1 5\nK 3\nu 3 1 2\n", false, ""},
		{"socket file of nothing", "handoff-upgrade v1 5\nu 3 1 2\n", false, ""},
		{"socket file twice", "handoff-upgrade v1 5\nL 3 x\nu 3 1 2\nu 3 1 2\n", false, ""},
		{"socket file short", "handoff-upgrade v1 5\nL 3 x\nu 3 1\n", false, ""},
		{"socket file inode leading zero", "handoff-upgrade v1 5\nL 3 x\nu 3 1 02\n", false, ""},
		{"socket file inode signed", "handoff-upgrade v1 5\nL 3 x\nu 3 1 +2\n", false, ""},
		{"socket file inode too large", "handoff-upgrade v1 5\nL 3 x\nu 3 1 18446744073709551616\n", false, ""},
		{"handoff", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - -\n", true, ""},
		{"handoff of no worker", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 7 0 0 - -\n", false, ""},
		{"handoff of a child", "handoff-upgrade v1 5\np 6\nh 6 0 0 - -\n", false, ""},
		{"handoff twice", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - -\nh 6 1 1 - -\n", false, ""},
		{"handoff short", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 -\n", false, ""},
		{"handoff flags", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - ar\n", false, ""},
		{"handoff out too large", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 65537 0 - -\n", false, ""},
		{"handoff sent too large", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 4294967296 - -\n", false, ""},
		{"handoff grant signed", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 +3 -\n", false, ""},
		{"handoff sent leading zero", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 07 - -\n", false, ""},
		{"handoff listeners", "handoff-upgrade v1 5\nL 3 x\nB 4 tcp://127.0.0.1:0\nW 6 0 1 -1 -1\nh 6 0 0 - r 4 3\n", true, ""},
		{"handoff listener before its record", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - r 3\nL 3 x\n", true, "handoff-upgrade v1 5\nL 3 x\nW 6 0 1 -1 -1\nh 6 0 0 - r 3\n"},
		{"handoff listener of nothing", "handoff-upgrade v1 5\nL 3 x\nW 6 0 1 -1 -1\nh 6 0 0 - r 4\n", false, ""},
		{"handoff listener no listener", "handoff-upgrade v1 5\nK 3\nW 6 0 1 -1 -1\nh 6 0 0 - r 3\n", false, ""},
		{"handoff listener twice", "handoff-upgrade v1 5\nL 3 x\nW 6 0 1 -1 -1\nh 6 0 0 - r 3 3\n", false, ""},
		{"handoff listener by name", "handoff-upgrade v1 5\nL 3 x\nW 6 0 1 -1 -1\nh 6 0 0 - r x\n", false, ""},
		{"handoff listener stdio", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - r 2\n", false, ""},
		{"handoff listener empty", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - r \n", false, ""},
		// DONEs owed to a worker: names in hexadecimal, after its h
		// record, in order.
		{"owed", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nW 8 0 1 -1 -1\nh 6 0 0 - -\no 6 3 7463702d78\no 6 1 0a20ff\nh 8 0 0 - -\no 8 1 78\n", true, ""},
		{"owed after another worker's", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nW 8 0 1 -1 -1\nh 6 0 0 - -\nh 8 0 0 - -\no 6 1 78\n", true, "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nW 8 0 1 -1 -1\nh 6 0 0 - -\no 6 1 78\nh 8 0 0 - -\n"},
		{"owed before its h record", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\no 6 1 78\nh 6 0 0 - -\n", false, ""},
		{"owed of no h record", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\no 6 1 78\n", false, ""},
		{"owed none", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - -\no 6 0 78\n", false, ""},
		{"owed upper case", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - -\no 6 1 7A\n", false, ""},
		{"owed odd name", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - -\no 6 1 7\n", false, ""},
		{"owed empty name", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - -\no 6 1 \n", false, ""},
		{"owed name too long", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - -\no 6 1 " + strings.Repeat("78", 256) + "\n", false, ""},
		{"owed too many", "handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - -\n" + strings.Repeat("o 6 1 78\n", 65), false, ""},
		// A later image's optional record: ignored, not rejected.
		{"optional record", "handoff-upgrade v1 5\nL 3 x\nq 7 anything\n", true, "handoff-upgrade v1 5\nL 3 x\n"},
		{"optional record of two letters", "handoff-upgrade v1 5\nqq 7\n", false, ""},
		{"no version", "handoff-upgrade 5\n", false, ""},
		{"blank line", "handoff-upgrade v1 5\n\nL 3 x\n", false, ""},
		{"too large", "handoff-upgrade v1 5\n" + strings.Repeat("W 6 0 1 -1 -1\n", 10000), false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := cluster.ReencodeUpgradeState(tc.in)
			if !tc.ok {
				if !errors.Is(err, cluster.ErrUpgradeState) {
					t.Errorf("err = %v, want ErrUpgradeState", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.in
			if tc.want != "" {
				want = tc.want
			}
			if !strings.HasSuffix(want, "\n") {
				want += "\n"
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUpgradeStateEncodeRefuses: a field with a newline (or any control
// character) would end its record and forge the next, here a worker the
// new image would adopt, and kill, from a unix path a worker had the
// master bind: encode refuses it, and refuses any state that does not
// read back record for record. A notify path it cannot write is left out
// (only the new image's clean-up needs it).
func TestUpgradeStateEncodeRefuses(t *testing.T) {
	forged := "unix:///tmp/s\nW 4242 0 1 -1 -1"
	for _, tc := range []struct {
		name string
		in   cluster.UpgradeFields
		want string // the encoding; "" for ErrUpgradeState
	}{
		{"clean", cluster.UpgradeFields{Listener: "tcp-127.0.0.1-80", File: "chan.7", Bind: "unix:///tmp/a b", Notify: "/tmp/handoff-1/notify"},
			"handoff-upgrade v1 100\nL 3 tcp-127.0.0.1-80\nF 4 chan.7\nB 5 unix:///tmp/a b\nN /tmp/handoff-1/notify\n"},
		{"bind forging a worker", cluster.UpgradeFields{Bind: forged}, ""},
		{"bind forging a lock", cluster.UpgradeFields{Bind: "unix:///tmp/s\nK 9"}, ""},
		{"bind forging an optional record", cluster.UpgradeFields{Bind: "unix:///tmp/s\nq 1"}, ""},
		{"bind with carriage return", cluster.UpgradeFields{Bind: "unix:///tmp/s\r"}, ""},
		{"bind with DEL", cluster.UpgradeFields{Bind: "unix:///tmp/s\x7f"}, ""},
		{"listener name forging a child", cluster.UpgradeFields{Listener: "x\np 4242"}, ""},
		{"file name forging a child", cluster.UpgradeFields{File: "x\np 4242"}, ""},
		{"notify with newline", cluster.UpgradeFields{Notify: "/tmp/n\np 4242"}, "handoff-upgrade v1 100\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := cluster.EncodeUpgradeFields(tc.in)
			if tc.want == "" {
				if !errors.Is(err, cluster.ErrUpgradeState) {
					t.Errorf("encoded %q, %v; want ErrUpgradeState", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("encoding (-want +got):\n%s", diff)
			}
		})
	}
	// The last check alone, without the field checks before it: the
	// forged state parses, but not as the state rendered.
	if err := cluster.UpgradeFieldsReadBack(cluster.UpgradeFields{Bind: forged}); !errors.Is(err, cluster.ErrUpgradeState) {
		t.Errorf("forged state read back: %v, want ErrUpgradeState", err)
	}
	if err := cluster.UpgradeFieldsReadBack(cluster.UpgradeFields{Bind: "unix:///tmp/s"}); err != nil {
		t.Errorf("clean state read back: %v", err)
	}
}

// FuzzUpgradeState: the parser never panics, and whatever it accepts
// renders to a state it accepts again, unchanged.
func FuzzUpgradeState(f *testing.F) {
	f.Add(goodState)
	f.Add("handoff-upgrade v1 1\n")
	f.Add("handoff-upgrade v1 5\nL 3 x\nK 3\n")
	f.Add("handoff-upgrade v1 5\nW 6 0 1 -1 -1\nN /x\n")
	f.Add("handoff-upgrade v1 5\nW 6 0 1 -1 -1\np 7\n")
	f.Add("handoff-upgrade v1 5\nL 3 x\nq 4 optional\n")
	f.Add("handoff-upgrade v1 5\nL 3 x\nB 4 unix:///s\nu 4 1 2\nu 3 3 4\n")
	f.Add("handoff-upgrade v1 5\nL 3 x\nB 4 unix:///s\nW 6 0 1 -1 -1\nh 6 2 9 11 ra 4 3\n")
	f.Add("handoff-upgrade v1 5\nW 6 0 1 -1 -1\nh 6 0 0 - -\no 6 3 7463702d78\no 6 1 78\n")
	f.Add("handoff-upgrade v2 5\n")
	f.Fuzz(func(t *testing.T, s string) {
		once, err := cluster.ReencodeUpgradeState(s)
		if err != nil {
			if !errors.Is(err, cluster.ErrUpgradeState) {
				t.Fatalf("error %v does not wrap ErrUpgradeState", err)
			}
			return
		}
		twice, err := cluster.ReencodeUpgradeState(once)
		if err != nil || twice != once {
			t.Fatalf("re-encoded state %q: %q, %v", once, twice, err)
		}
	})
}

// TestUpgradeProbeArgs: the probe is selected by UpgradeProbeArg first,
// bare or followed by "--" and the master's own arguments; anything else is
// an ordinary command line.
func TestUpgradeProbeArgs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		want   []string
		wantOK bool
	}{
		{"bare", []string{cluster.UpgradeProbeArg}, []string{}, true},
		{"with args", []string{cluster.UpgradeProbeArg, "--", "-n", "2", "--", "srv", "--"}, []string{"-n", "2", "--", "srv", "--"}, true},
		{"empty args", []string{cluster.UpgradeProbeArg, "--"}, []string{}, true},
		{"no separator", []string{cluster.UpgradeProbeArg, "-n", "2"}, nil, false},
		{"not first", []string{"-n", "2", cluster.UpgradeProbeArg}, nil, false},
		{"none", nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := cluster.UpgradeProbeArgs(tc.args)
			if ok != tc.wantOK {
				t.Fatalf("ok = %v, want %v", ok, tc.wantOK)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("args (-want +got):\n%s", diff)
			}
		})
	}
}
