//go:build linux

package cluster_test

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

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

// hoScript encodes worker messages for FuzzHandoffMasterReads: each is a
// length byte, a descriptor count byte and the payload.
func hoScript(nfds uint8, msgs ...[]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = append(out, byte(len(m)), nfds)
		out = append(out, m...)
	}
	return out
}

// FuzzHandoffMasterReads plays a worker that sends the master any sequence
// of messages, each with some descriptors (pipe ends), on a dispatcher
// that keeps a copy of the worker's end, delivers it one connection first,
// and then learns of its exit. The master never panics or hangs, takes in
// no descriptor for good (the census, inside the target, is the same once
// it stopped), and a worker that sends garbage is dropped.
func FuzzHandoffMasterReads(f *testing.F) {
	const name = "tcp-fuzz"
	f.Add(hoScript(0, cluster.EncodeHandoffName(cluster.HoSub, name), cluster.EncodeHandoffAck(1)))
	f.Add(hoScript(0, cluster.EncodeHandoffName(cluster.HoUnsub, name), cluster.EncodeHandoffName(cluster.HoSub, name)))
	f.Add(hoScript(0, cluster.EncodeHandoffGrant(0), cluster.EncodeHandoffGrant(cluster.HoNoLimit), cluster.EncodeHandoffAck(2)))
	f.Add(hoScript(1, cluster.EncodeHandoffConns(cluster.HoReturn, []string{name}, []string{"x"})))
	f.Add(hoScript(2, cluster.EncodeHandoffConns(cluster.HoReturn, []string{name}, []string{"x"})))
	f.Add(hoScript(1, cluster.EncodeHandoffName(cluster.HoUnsub, "other"), []byte{cluster.HoDone, 1, 'x'}))
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, script []byte) {
		before, err := fdcensus.Take(0)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r, err := cluster.NewHandoffRig(nil, ln)
		if err != nil {
			t.Fatal(err)
		}
		r.Start()
		raw, pid, err := r.AddRawPeer()
		if err != nil {
			t.Fatal(err)
		}
		// The worker holds one connection, so acks and give-backs of one
		// can be valid; the script may use the listener's real name.
		real := r.Names()[0]
		raw.Write(cluster.EncodeHandoffName(cluster.HoSub, real))
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "delivered", 5*time.Second, func() bool { o := r.Outstanding(); return len(o) == 1 && o[0] == 1 })
		garbage := false
		for i := 0; len(script) >= 2 && i < 64; i++ {
			n, nfds := int(script[0]), int(script[1])%(cluster.HoMaxBatch+2)
			script = script[2:]
			p := script[:min(n, len(script))]
			script = script[len(p):]
			// The real name where the script says "tcp-fuzz".
			p = bytes.ReplaceAll(p, append([]byte{byte(len(name))}, name...), append([]byte{byte(len(real))}, real...))
			if _, err := cluster.DecodeHandoff(p, nil); err != nil && nfds == 0 {
				garbage = true
			}
			fds := make([]int, nfds)
			for j := range fds {
				var pp [2]int
				if err := unix.Pipe2(pp[:], unix.O_CLOEXEC); err != nil {
					t.Fatal(err)
				}
				unix.Close(pp[1])
				fds[j] = pp[0]
			}
			raw.SetWriteDeadline(time.Now().Add(time.Second))
			var oob []byte
			if nfds > 0 {
				oob = unix.UnixRights(fds...)
			}
			_, _, werr := raw.WriteMsgUnix(p, oob, nil)
			closeFDs(fds)
			if werr != nil {
				break // dropped by the master, or an empty message
			}
		}
		if garbage {
			waitUntil(t, "worker that sent garbage dropped", 5*time.Second, func() bool { return r.Workers() == 0 })
		}
		raw.Close()
		c.Close()
		done := make(chan struct{})
		go func() {
			r.Exited(pid)
			r.Stop()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("exit report and Stop hang")
		}
		ln.Close()
		if err := fdcensus.Compare(0, before); err != nil {
			t.Fatalf("descriptors after script: %v", err)
		}
	})
}
