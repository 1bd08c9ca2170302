//go:build linux

package cluster_test

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"golang.org/x/sys/unix"
)

// FuzzHandoffMessage feeds the connection channel's one decoder arbitrary
// payloads with nfds descriptors attached: it never panics, on error it
// closes every descriptor, on success it hands back exactly one per
// connection (and none for other types), and re-encoding a connection
// message gives the same bytes. The descriptor census is taken inside the
// target.
func FuzzHandoffMessage(f *testing.F) {
	f.Add(cluster.EncodeHandoffConns(cluster.HoConns, []string{"tcp-127.0.0.1-8080"}, []string{"127.0.0.1:5555"}), uint8(1))
	f.Add(cluster.EncodeHandoffConns(cluster.HoReturn, []string{"a", "b"}, []string{"[::1]:1", ""}), uint8(2))
	f.Add(cluster.EncodeHandoffConns(cluster.HoConns, []string{"a"}, []string{"x"}), uint8(3))
	f.Add(cluster.EncodeHandoffAck(16), uint8(0))
	f.Add(cluster.EncodeHandoffAck(16), uint8(1))
	f.Add(cluster.EncodeHandoffGrant(0xfffffffe), uint8(0))
	f.Add(cluster.EncodeHandoffGrant(cluster.HoNoLimit), uint8(1))
	f.Add([]byte{cluster.HoGrant, 0, 0}, uint8(0))
	f.Add(cluster.EncodeHandoffName(cluster.HoSub, "unix-/run/app.sock"), uint8(0))
	f.Add(cluster.EncodeHandoffName(cluster.HoDone, "x"), uint8(1))
	f.Add([]byte{cluster.HoConns, 0}, uint8(0))
	f.Add([]byte{cluster.HoConns, 65}, uint8(65))
	f.Add([]byte{cluster.HoConns, 1, 200, 'a'}, uint8(1))
	f.Add([]byte{}, uint8(2))
	f.Fuzz(func(t *testing.T, p []byte, nfds uint8) {
		before, err := fdcensus.Take(0)
		if err != nil {
			t.Fatal(err)
		}
		fds := make([]int, int(nfds)%(cluster.HoMaxBatch+2))
		for i := range fds {
			var pp [2]int
			if err := unix.Pipe2(pp[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			unix.Close(pp[1])
			fds[i] = pp[0]
		}
		d, err := cluster.DecodeHandoff(p, fds)
		if err == nil {
			want := 0
			if d.Type == cluster.HoConns || d.Type == cluster.HoReturn {
				want = d.N
				if got := cluster.EncodeHandoffConns(d.Type, d.Names, d.Addrs); !cmp.Equal(got, p) {
					t.Errorf("re-encoded %q, decoded from %q", got, p)
				}
			}
			if d.Type == cluster.HoGrant {
				if got := cluster.EncodeHandoffGrant(d.Limit); !cmp.Equal(got, p) {
					t.Errorf("re-encoded %q, decoded from %q", got, p)
				}
			}
			if len(d.FDs) != want || len(fds) != want {
				t.Errorf("%d descriptors handed back, %d sent, want %d", len(d.FDs), len(fds), want)
			}
			for _, fd := range d.FDs {
				unix.Close(fd)
			}
		} else if !errors.Is(err, cluster.ErrHandoffMessage) {
			t.Errorf("error %v does not match ErrHandoffMessage", err)
		}
		if err := fdcensus.Compare(0, before); err != nil {
			t.Fatalf("descriptors after %q with %d: %v", p, len(fds), err)
		}
	})
}
