//go:build linux

package ipcframe_test

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
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// soakSpec is what the receiving helper needs to know, passed as its one
// argument (fdsoak.Arg).
type soakSpec struct {
	fdsoak.Spec
	BufferSize int // ReaderOptions.BufferSize; one Reader per socket
}

// TestSoak is TESTPLAN L4 over framed SOCK_STREAM: one sender goroutine in
// this process writes frames with ipcframe.Writer over scmrights.Conn, round
// robin on four stream sockets; a helper process reads each socket with its
// own ipcframe.Reader in its own goroutine (a stream cannot be shared by
// readers). Frames are planned and checked by internal/fdsoak (sequence
// number and 1..16 memfds each, checked by payload and by descriptor
// identity). Pass: every frame exactly once and exactly as planned,
// nothing truncated or dropped, both processes' descriptor census flat, and
// this process's goroutines back to their count.
func TestSoak(t *testing.T) {
	for _, tt := range []struct {
		name   string
		buffer int
	}{
		// One recvmsg returns up to one descriptor-carrying frame and the
		// plain bytes before it.
		{"default buffer", 0},
		// Most frames span several reads: the Reader must hold a frame's
		// descriptors until its last byte arrives.
		{"64-byte buffer", 64},
	} {
		t.Run(tt.name, func(t *testing.T) { soak(t, tt.buffer) })
	}
}

func soak(t *testing.T, buffer int) {
	s := fdsoak.Start(t, fdsoak.Messages())
	pc := proccensus.New(t)
	ucs := s.Connect(t, fdsoak.Receivers, func() (*net.UnixConn, *os.File, error) {
		return scmrights.Socketpair(unix.SOCK_STREAM)
	})
	writers := make([]*ipcframe.Writer, len(ucs))
	for i, uc := range ucs {
		c, err := scmrights.NewConn(uc)
		if err != nil {
			t.Fatal(err)
		}
		writers[i] = ipcframe.NewWriter(c, nil)
	}
	spec := soakSpec{Spec: s.Spec, BufferSize: buffer}
	cmd := helperproc.Command(t, "soak-recv", &helperproc.Options{
		ExtraFiles: s.Remotes(),
		Env:        []string{pc.Env()},
		Args:       []string{fdsoak.Arg(t, spec)},
	})
	cmd.Stdout = s.Output()
	helperproc.Start(t, cmd)
	got, want := s.Run(t, cmd, func(ctx context.Context) error { return soakSend(ctx, s, writers) })
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("receiver report (-want +got):\n%s", diff)
	}
}

// soakSend writes frames 0..n-1, frame seq on writers[seq%len(writers)].
func soakSend(ctx context.Context, s *fdsoak.Soak, writers []*ipcframe.Writer) error {
	fds := make([]int, 0, fdsoak.MaxFDs)
	var payload []byte
	for seq := range s.Spec.Messages {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("frame %d: %w", seq, err)
		}
		fds, payload = s.Message(seq, fds, payload)
		if err := writers[seq%len(writers)].WriteFrameFDs(payload, fds...); err != nil {
			return fmt.Errorf("frame %d: %w", seq, err)
		}
	}
	return nil
}

// soakRecvRole is TestSoak's receiving side. It reads every stream to its
// end and prints an fdsoak.Report.
func soakRecvRole() int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "soak-recv: "+format+"\n", args...)
		return 1
	}
	var spec soakSpec
	if err := fdsoak.ParseArg(helperproc.Args(), &spec); err != nil {
		return fail("%v", err)
	}
	ucs, err := fdsoak.Inherited(spec.Spec, scmrights.UnixConn)
	if err != nil {
		return fail("%v", err)
	}
	for _, uc := range ucs {
		defer uc.Close()
	}
	err = fdsoak.Receive(os.Stdout, spec.Spec, len(ucs), func(i int, tl *fdsoak.Tally) {
		soakRead(ucs[i], spec.BufferSize, spec.Messages, tl)
	})
	if err != nil {
		return fail("%v", err)
	}
	return 0
}

// soakRead reads frames from uc until end of stream, through its own
// scmrights.Conn (a stream has one reader). Every iteration consumes a
// frame or ends the loop, so n+1 iterations bound it.
func soakRead(uc *net.UnixConn, bufferSize, n int, tl *fdsoak.Tally) {
	c, err := scmrights.NewConn(uc)
	if err != nil {
		tl.Fail(err)
		return
	}
	r := ipcframe.NewReader(c, &ipcframe.ReaderOptions{BufferSize: bufferSize})
	defer r.Close()
	var buf []byte
	fds := make([]int, fdsoak.MaxFDs)
	for range n + 1 {
		p, k, err := r.ReadFrameFDs(buf[:0], fds)
		if err == io.EOF {
			return
		}
		if err != nil {
			switch {
			case errors.Is(err, ipcframe.ErrTooManyFDs), errors.Is(err, scmrights.ErrTruncated):
				tl.Truncated(err)
			case errors.Is(err, ipcframe.ErrFrameDropped):
				tl.Dropped(err)
			default:
				tl.Fail(err)
			}
			if !errors.Is(err, ipcframe.ErrFrameDropped) {
				return // final: the Reader returns it again on every call
			}
			continue
		}
		buf = p
		tl.Check(p, fds[:k])
	}
	tl.Fail(errors.New("no end of stream after every frame"))
}
