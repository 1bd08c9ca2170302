package cluster_test

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
)

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want cluster.Addr
		err  error
	}{
		{"127.0.0.1:8080", cluster.Addr{Network: "tcp", Address: "127.0.0.1:8080"}, nil},
		{"tcp://127.0.0.1:0", cluster.Addr{Network: "tcp", Address: "127.0.0.1:0"}, nil},
		{"tcp://[::1]:80", cluster.Addr{Network: "tcp", Address: "[::1]:80"}, nil},
		{"udp://127.0.0.1:53", cluster.Addr{Network: "udp", Address: "127.0.0.1:53"}, nil},
		{"unix:///run/app.sock", cluster.Addr{Network: "unix", Address: "/run/app.sock"}, nil},
		{"localhost:http", cluster.Addr{}, cluster.ErrListen},
		{":8080", cluster.Addr{}, cluster.ErrListen},
		{"127.0.0.1:65536", cluster.Addr{}, cluster.ErrListen},
		{"127.0.0.1:08", cluster.Addr{}, cluster.ErrListen},
		{"127.0.0.1", cluster.Addr{}, cluster.ErrListen},
		{"unix://run/app.sock", cluster.Addr{}, cluster.ErrListen},
		{"unix:///" + string(make([]byte, 120)), cluster.Addr{}, cluster.ErrListen},
		// A control character would break a record of the upgrade
		// state, which names addresses one a line.
		{"unix:///tmp/s\nK 9", cluster.Addr{}, cluster.ErrListen},
		{"unix:///tmp/s\rx", cluster.Addr{}, cluster.ErrListen},
		{"unix:///tmp/s\x00", cluster.Addr{}, cluster.ErrListen},
		{"unix:///tmp/s\x7f", cluster.Addr{}, cluster.ErrListen},
		{"unix:///tmp/a\tb", cluster.Addr{}, cluster.ErrListen},
		{"tcp://[fe80::1%a\nb]:80", cluster.Addr{}, cluster.ErrListen},
		{"unix:///tmp/a b", cluster.Addr{Network: "unix", Address: "/tmp/a b"}, nil},
		{"sctp://127.0.0.1:1", cluster.Addr{}, cluster.ErrListen},
		{"", cluster.Addr{}, cluster.ErrListen},
	} {
		got, err := cluster.ParseAddr(tc.in)
		if !errors.Is(err, tc.err) {
			t.Errorf("ParseAddr(%q) error %v, want %v", tc.in, err, tc.err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseAddr(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8080", "udp://[::1]:0", "unix:///tmp/x", "tcp://:1", "x://y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := cluster.ParseAddr(s)
		if err != nil {
			if !errors.Is(err, cluster.ErrListen) {
				t.Fatalf("error %v does not wrap ErrListen", err)
			}
			return
		}
		// A parsed address round-trips through its -listen form.
		b, err := cluster.ParseAddr(a.String())
		if err != nil || b != a {
			t.Fatalf("%q parsed to %+v, which re-parses to %+v, %v", s, a, b, err)
		}
	})
}
