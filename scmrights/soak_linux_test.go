//go:build linux

package scmrights_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdsoak"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

const (
	soakBufSize = 512 // receive buffer, larger than any payload (fdsoak.MaxPayload)
	soakBatch   = 32  // messages per SendBatch / RecvBatch
)

// soakSpec is what the receiving helper needs to know, passed as its one
// argument (fdsoak.Arg).
type soakSpec struct {
	fdsoak.Spec
	Receivers int  // receiving goroutines; goroutine i reads socket i%Sockets
	Batch     bool // receive with RecvBatch instead of Recv
}

// TestSoak is TESTPLAN L4 over SOCK_SEQPACKET: one sender goroutine in this
// process, four receiving goroutines in a helper process, messages planned
// and checked by internal/fdsoak (sequence number and 1..16 memfds each,
// checked by payload and by descriptor identity). Pass: every message
// exactly once and exactly as planned, no truncation, both processes'
// descriptor census flat, and this process's goroutines back to their
// count.
//
// A separate process keeps the two censuses apart, as the plan asks:
// received descriptors can never be confused with the sender's pool.
func TestSoak(t *testing.T) {
	for _, tt := range []struct {
		name    string
		sockets int
		batch   bool
	}{
		// Each receiver on its own socket, as a stream would need, so the
		// seqpacket and stream soaks (package ipcframe) have one shape.
		{"socket per receiver", fdsoak.Receivers, false},
		// All four receivers read one socket: the kernel hands each queued
		// message to exactly one recvmsg, and Conn serialises its readers.
		{"one shared socket", 1, false},
		{"socket per receiver batched", fdsoak.Receivers, true},
	} {
		t.Run(tt.name, func(t *testing.T) { soak(t, tt.sockets, tt.batch) })
	}
}

func soak(t *testing.T, sockets int, batch bool) {
	s := fdsoak.Start(t, fdsoak.Messages())
	pc := proccensus.New(t)
	ucs := s.Connect(t, sockets, func() (*net.UnixConn, *os.File, error) {
		return scmrights.Socketpair(unix.SOCK_SEQPACKET)
	})
	conns := make([]*scmrights.Conn, len(ucs))
	for i, uc := range ucs {
		var err error
		if conns[i], err = scmrights.NewConn(uc); err != nil {
			t.Fatal(err)
		}
	}
	spec := soakSpec{Spec: s.Spec, Receivers: fdsoak.Receivers, Batch: batch}
	cmd := helperproc.Command(t, "soak-recv", &helperproc.Options{
		ExtraFiles: s.Remotes(),
		Env:        []string{pc.Env()},
		Args:       []string{fdsoak.Arg(t, spec)},
	})
	cmd.Stdout = s.Output()
	helperproc.Start(t, cmd)
	got, want := s.Run(t, cmd, func(ctx context.Context) error { return soakSend(ctx, s, conns, batch) })
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("receiver report (-want +got):\n%s", diff)
	}
}

// soakSend sends messages 0..n-1, runs of soakBatch consecutive messages
// (1 without batching) round the sockets, so a batch goes out in one
// SendBatch.
func soakSend(ctx context.Context, s *fdsoak.Soak, conns []*scmrights.Conn, batch bool) error {
	per := 1
	if batch {
		per = soakBatch
	}
	msgs := make([]scmrights.Message, per)
	for i := range msgs {
		msgs[i].Payload = make([]byte, 0, soakBufSize)
		msgs[i].FDs = make([]int, 0, fdsoak.MaxFDs)
	}
	n := s.Spec.Messages
	for first := 0; first < n; first += per {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("message %d: %w", first, err)
		}
		k := min(per, n-first)
		for i := range k {
			m := &msgs[i]
			m.FDs, m.Payload = s.Message(first+i, m.FDs, m.Payload)
		}
		c := conns[first/per%len(conns)]
		if !batch {
			if err := c.Send(msgs[0].Payload, msgs[0].FDs...); err != nil {
				return fmt.Errorf("message %d: %w", first, err)
			}
			continue
		}
		// SendBatch returns how many went whole; the rest are sent again,
		// a bounded number of times.
		for off, tries := 0, 0; off < k; tries++ {
			if tries > k {
				return fmt.Errorf("batch at %d: no progress", first)
			}
			sent, err := c.SendBatch(msgs[off:k])
			if err != nil {
				return fmt.Errorf("batch at %d, message %d: %w", first, first+off+sent, err)
			}
			off += sent
		}
	}
	return nil
}

// roleSoakRecv is TestSoak's receiving side. It reads until every socket
// reaches end of stream and prints an fdsoak.Report.
func roleSoakRecv() int {
	var spec soakSpec
	if err := fdsoak.ParseArg(helperproc.Args(), &spec); err != nil {
		return fatalf("%v", err)
	}
	ucs, err := fdsoak.Inherited(spec.Spec, scmrights.UnixConn)
	if err != nil {
		return fatalf("%v", err)
	}
	conns := make([]*scmrights.Conn, len(ucs))
	for i, uc := range ucs {
		defer uc.Close()
		if conns[i], err = scmrights.NewConn(uc); err != nil {
			return fatalf("socket %d: %v", i, err)
		}
	}
	err = fdsoak.Receive(os.Stdout, spec.Spec, spec.Receivers, func(i int, tl *fdsoak.Tally) {
		c := conns[i%len(conns)]
		if spec.Batch {
			soakRecvBatch(c, spec.Messages, tl)
		} else {
			soakRecv(c, spec.Messages, tl)
		}
	})
	if err != nil {
		return fatalf("%v", err)
	}
	return 0
}

// soakRecv receives one message per call until end of stream. Every
// iteration consumes a message or ends the loop, so n+1 iterations bound
// it.
func soakRecv(c *scmrights.Conn, n int, tl *fdsoak.Tally) {
	buf := make([]byte, soakBufSize)
	fds := make([]int, fdsoak.MaxFDs)
	for range n + 1 {
		m, k, err := c.Recv(buf, fds)
		if err == io.EOF {
			return
		}
		if errors.Is(err, scmrights.ErrTruncated) {
			tl.Truncated(err)
			continue
		}
		if err != nil {
			tl.Fail(err)
			return
		}
		tl.Check(buf[:m], fds[:k])
	}
	tl.Fail(errors.New("no end of stream after every message"))
}

// soakRecvBatch is soakRecv with RecvBatch: each call returns at least one
// message or an error.
func soakRecvBatch(c *scmrights.Conn, n int, tl *fdsoak.Tally) {
	msgs := make([]scmrights.Message, soakBatch)
	for i := range msgs {
		msgs[i].Payload = make([]byte, soakBufSize)
		msgs[i].FDs = make([]int, fdsoak.MaxFDs)
	}
	for range n + 1 {
		got, err := c.RecvBatch(msgs)
		if err == io.EOF {
			return
		}
		if err != nil {
			tl.Fail(err)
			return
		}
		for i := range msgs[:got] {
			m := &msgs[i]
			if errors.Is(m.Err, scmrights.ErrTruncated) {
				tl.Truncated(m.Err)
				continue
			}
			if m.Err != nil {
				tl.Fail(m.Err)
				continue
			}
			tl.Check(m.Payload[:m.N], m.FDs[:m.NFDs])
		}
	}
	tl.Fail(errors.New("no end of stream after every message"))
}
