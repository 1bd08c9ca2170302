package cluster

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
)

// hangupPair returns the master's and the client's ends of a control
// socket connection.
func hangupPair(t *testing.T) (srv, cli *net.UnixConn) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err = net.DialUnix("unix", nil, ln.Addr().(*net.UnixAddr))
	if err != nil {
		t.Fatal(err)
	}
	srv, err = ln.AcceptUnix()
	if err != nil {
		cli.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); cli.Close() })
	return srv, cli
}

// TestWatchHangup: the watch a restart's wait runs while it waits for
// remote hosts (1) outlives the idle read deadline serveConn set before it
// read the request, which used to end the watch, so a client hanging up
// after it held its place; (2) takes a client that only shut down its
// sending side for one still waiting, which used to be answered "failed";
// sees its close after that; and (3) leaves a request the client sent
// meanwhile unread.
func TestWatchHangup(t *testing.T) {
	fdcensus.Verify(t)
	hungUp := func(t *testing.T, ctx interface{ Done() <-chan struct{} }, want bool, what string) {
		t.Helper()
		wait := 300 * time.Millisecond // enough to see what should not happen
		if want {
			wait = 10 * time.Second // a bound, not a speed: it comes at once
		}
		select {
		case <-ctx.Done():
			if !want {
				t.Errorf("%s: taken for a hang-up", what)
			}
		case <-time.After(wait):
			if want {
				t.Errorf("%s: hang-up not seen", what)
			}
		}
	}
	t.Run("after the idle deadline", func(t *testing.T) {
		srv, cli := hangupPair(t)
		// As serveConn leaves it while the request is handled.
		_ = srv.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		ctx, stop := watchHangup(srv)
		defer stop()
		time.Sleep(300 * time.Millisecond)
		cli.Close()
		hungUp(t, ctx, true, "close after the idle deadline passed")
	})
	t.Run("half-close, then close", func(t *testing.T) {
		srv, cli := hangupPair(t)
		ctx, stop := watchHangup(srv)
		defer stop()
		if err := cli.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		hungUp(t, ctx, false, "shutdown(SHUT_WR)")
		cli.Close()
		hungUp(t, ctx, true, "close after shutdown(SHUT_WR)")
	})
	t.Run("request sent meanwhile", func(t *testing.T) {
		srv, cli := hangupPair(t)
		ctx, stop := watchHangup(srv)
		if _, err := cli.Write([]byte("next")); err != nil {
			t.Fatal(err)
		}
		hungUp(t, ctx, false, "a request sent meanwhile")
		stop()
		_ = srv.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 8)
		if n, err := srv.Read(b); err != nil || string(b[:n]) != "next" {
			t.Errorf("after the watch: read %q, %v; want the request", b[:n], err)
		}
	})
}
