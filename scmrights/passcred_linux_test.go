//go:build linux

package scmrights_test

import (
	"io"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// sendEmpty sends a zero-length SOCK_SEQPACKET record, which Send refuses
// to do (ErrEmptyPayload).
func sendEmpty(t *testing.T, c *scmrights.Conn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Sendmsg(int(fd), nil, nil, nil, unix.MSG_NOSIGNAL) }); err != nil || serr != nil {
		t.Fatalf("sending an empty record: %v, %v", err, serr)
	}
}

// With SO_PASSCRED on, RecvMsg tells an empty SOCK_SEQPACKET message from
// the end of stream: both are io.EOF, but only a message comes with
// credentials (the sender's, or empty ones for a message queued before
// SO_PASSCRED was set). An empty message RecvBatch left pending reads as
// io.EOF without credentials, whatever m held before.
func TestRecvMsgEmptyMessageHasCred(t *testing.T) {
	fdcensus.Verify(t)
	self := scmrights.Ucred{PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid()}
	type result struct {
		N       int
		Err     error
		HasCred bool
	}
	opts := cmp.Comparer(func(x, y error) bool { return x == y })
	for _, early := range []bool{false, true} {
		a, b := connPair(t, unix.SOCK_SEQPACKET)
		if early {
			if err := b.SetPassCred(true); err != nil {
				t.Fatal(err)
			}
		}
		sendEmpty(t, a)
		if err := a.Send([]byte("x")); err != nil {
			t.Fatal(err)
		}
		sendEmpty(t, a)
		if err := a.UnixConn().CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if !early {
			if err := b.SetPassCred(true); err != nil {
				t.Fatal(err)
			}
		}
		m := scmrights.Message{Payload: make([]byte, 4), FDs: make([]int, 1)}
		var got []result
		for range 5 {
			err := b.RecvMsg(&m)
			got = append(got, result{m.N, err, m.HasCred})
			if early && m.HasCred && m.Cred != self {
				t.Errorf("credentials %+v, want %+v", m.Cred, self)
			}
		}
		want := []result{
			{0, io.EOF, true}, // the empty message
			{1, nil, true},
			{0, io.EOF, true},  // the second empty message
			{0, io.EOF, false}, // the end of stream
			{0, io.EOF, false},
		}
		if diff := cmp.Diff(want, got, opts); diff != "" {
			t.Errorf("SO_PASSCRED set before sending: %v; RecvMsg results (-want +got):\n%s", early, diff)
		}
	}

	a, b := connPair(t, unix.SOCK_SEQPACKET)
	if err := b.SetPassCred(true); err != nil {
		t.Fatal(err)
	}
	if err := a.Send([]byte("y")); err != nil {
		t.Fatal(err)
	}
	sendEmpty(t, a)
	// "y", then the empty message, which ends the batch: left pending.
	ms := []scmrights.Message{{Payload: make([]byte, 4)}, {Payload: make([]byte, 4)}}
	if n, err := b.RecvBatch(ms); err != nil || n != 1 || ms[0].N != 1 {
		t.Fatalf("RecvBatch = %d, %v; want \"y\" alone", n, err)
	}
	m := scmrights.Message{Payload: make([]byte, 4), Cred: self, HasCred: true}
	err := b.RecvMsg(&m)
	if diff := cmp.Diff(result{0, io.EOF, false}, result{m.N, err, m.HasCred}, opts); diff != "" {
		t.Errorf("RecvMsg after RecvBatch left an end of stream pending (-want +got):\n%s", diff)
	}
}
