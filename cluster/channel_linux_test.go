//go:build linux

package cluster_test

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/ipcframe"
	"github.com/handoff-go/handoff/scmrights"
	"golang.org/x/sys/unix"
)

// controlPair returns both ends of a control channel as scmrights.Conns.
func controlPair(t testing.TB) (*scmrights.Conn, *scmrights.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out [2]*scmrights.Conn
	for i, fd := range fds {
		uc, err := scmrights.UnixConn(fd)
		if err != nil {
			t.Fatal(err)
		}
		if out[i], err = scmrights.NewConn(uc); err != nil {
			t.Fatal(err)
		}
	}
	return out[0], out[1]
}

// feed writes raw bytes to w, with fd (if not -1) riding on the first
// byte, then closes w.
func feed(t testing.TB, w *scmrights.Conn, raw []byte, fd int) {
	t.Helper()
	var err error
	switch {
	case fd >= 0 && len(raw) > 0:
		err = w.Send(raw, fd)
	case len(raw) > 0:
		_, err = w.Write(raw)
	}
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
}

// serve runs the read loop over raw input and returns the message types
// seen and the loop's error. Descriptors handed to the handler are closed.
func serve(t testing.TB, raw []byte, withFD bool, maxFDs int) ([]string, error) {
	r, w := controlPair(t)
	defer r.Close()
	fd := -1
	if withFD {
		p := make([]int, 2)
		if err := unix.Pipe2(p, unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		fd = p[0]
	}
	// The socket buffer holds every input used here; the writer never
	// blocks on the reader.
	feed(t, w, raw, fd)
	var types []string
	err := cluster.ServeControl(r, maxFDs, func(typ string, fds []int) error {
		types = append(types, typ)
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil
	})
	return types, err
}

func frames(payloads ...string) []byte {
	var b []byte
	for _, p := range payloads {
		b = ipcframe.AppendFrame(b, []byte(p))
	}
	return b
}

// TestServeControl: good frames are delivered in order; the first bad one
// ends the loop with an error naming it, and descriptors a worker is not
// allowed to send are closed.
func TestServeControl(t *testing.T) {
	fdcensus.Verify(t)
	hb := `{"type":"heartbeat"}`
	big := make([]byte, cluster.MaxControlFrame+1)
	for _, tc := range []struct {
		name    string
		raw     []byte
		withFD  bool
		maxFDs  int
		want    []string
		wantErr error
	}{
		{"eof", frames(hb, `{"type":"message","data":""}`), false, 0, []string{"heartbeat", "message"}, nil},
		{"nothing", nil, false, 0, nil, nil},
		{"bad json", frames(hb, `{`), false, 0, []string{"heartbeat"}, cluster.ErrMessage},
		{"oversized", frames(string(big)), false, 0, nil, ipcframe.ErrFrameTooLarge},
		{"bad header", []byte("GET / HTTP/1.1\r\n\r\n"), false, 0, nil, ipcframe.ErrBadHeader},
		{"truncated", frames(hb)[:5], false, 0, nil, errors.ErrUnsupported},
		{"fd from worker", frames(hb), true, 0, nil, ipcframe.ErrTooManyFDs},
		{"fd allowed", frames(hb), true, 1, []string{"heartbeat"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw
			if tc.withFD {
				// A header that declares the descriptor it carries.
				raw = append([]byte(nil), raw...)
				raw[2] = 1
			}
			got, err := serve(t, raw, tc.withFD, tc.maxFDs)
			switch {
			case tc.wantErr == errors.ErrUnsupported:
				// Any final error will do (io.ErrUnexpectedEOF).
				if err == nil {
					t.Errorf("ServeControl = nil, want an error")
				}
			case tc.wantErr == nil && err != nil, tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("ServeControl = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("messages (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzControlChannel: arbitrary bytes, with or without a descriptor on
// the first byte, through the master's read loop: no panic, and no
// descriptor left open (census inside the target).
func FuzzControlChannel(f *testing.F) {
	f.Add(frames(`{"type":"heartbeat"}`, `{"type":"message","data":"eA=="}`), false)
	f.Add(frames(`{"type":"listen","id":1,"network":"tcp","address":"127.0.0.1:0"}`), false)
	f.Add(frames(`{"type":"log","msg":"m","attrs":{"a":1}}`), true)
	f.Add([]byte("garbage that is no frame"), true)
	f.Add([]byte{'h', 1, 1, 0, 0, 0, 0, 2, '{', '}'}, true)
	f.Add([]byte{'h', 1, 0, 0, 0xff, 0xff, 0xff, 0xff}, false)
	f.Fuzz(func(t *testing.T, raw []byte, withFD bool) {
		if len(raw) > 64<<10 {
			return // more than a socket buffer: the writer would block
		}
		before, err := fdcensus.Take(0)
		if err != nil {
			t.Fatal(err)
		}
		for _, maxFDs := range []int{0, 1} {
			if _, err := serve(t, raw, withFD, maxFDs); err != nil && errors.Is(err, net.ErrClosed) {
				t.Fatalf("ServeControl: %v", err)
			}
		}
		if err := fdcensus.Compare(0, before); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRestartWorkerPIDReuse: the kill path signals only the process it
// tracked since the spawn, never whatever holds the pid now. A pid the
// master still counts as a worker may have been reaped (and reused) before
// the Exited event is handled; the stranger holding it must survive, while
// a tracked worker is killed.
func TestRestartWorkerPIDReuse(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m, err := cluster.New(&cluster.Config{Program: "true", Listen: []string{"127.0.0.1:0"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, tc := range []struct {
		name    string
		tracked bool
		want    syscall.Signal // how the process ends
	}{
		{"stranger with a counted pid", false, syscall.SIGTERM},
		{"tracked worker", true, syscall.SIGKILL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("sleep", "30")
			cmd.Env = append(os.Environ(), pc.Env())
			// Its own group, like a worker: kill(-pid) would reach it.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			pid := cmd.Process.Pid
			cluster.CountAsWorker(m, pid)
			if tc.tracked {
				cluster.TrackPID(m, pid)
			}
			cluster.RestartWorker(m, pid, "test")
			// A pending SIGKILL wins over this SIGTERM; without one the
			// process dies of SIGTERM.
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			// Closes the tracked pidfd, now that the process is gone.
			cluster.WorkerGone(m, pid)
			ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if !ws.Signaled() || ws.Signal() != tc.want {
				t.Errorf("process ended with %v, want signal %v", ws, tc.want)
			}
		})
	}
}

// TestBindPolicy: what a worker may have the master bind: no privileged
// port, no name to resolve, no unix path in a directory the workers'
// user cannot write or that every user can write without the sticky bit,
// no unix path with a ".", ".." or empty component.
func TestBindPolicy(t *testing.T) {
	open, sticky, private := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.Mkdir(private+"/d", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sticky, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"tcp://127.0.0.1:0", true},
		{"tcp://127.0.0.1:1024", true},
		{"tcp://0.0.0.0:8080", true},
		{"tcp://[fe80::1%lo]:8080", true},
		{"udp://[::1]:5353", true},
		{"tcp://127.0.0.1:80", false},
		{"tcp://0.0.0.0:1", false},
		{"udp://[::1]:53", false},
		{"tcp://localhost:8080", false},
		{"tcp://example.com:8080", false},
		{"unix://" + private + "/s", true},
		{"unix://" + sticky + "/s", true},
		{"unix://" + open + "/s", false},
		{"unix://" + private + "/missing/s", false},
		// Not clean: the kernel resolves ".." from a symlink's target,
		// which a check of the textual directory never sees.
		{"unix://" + private + "/d/../s", false},
		{"unix://" + private + "/./s", false},
		{"unix://" + private + "//s", false},
		{"unix://" + private + "/s/", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			err := cluster.BindPolicy(tc.addr)
			if tc.ok && err != nil {
				t.Errorf("BindPolicy = %v, want nil", err)
			}
			if !tc.ok && !errors.Is(err, cluster.ErrListen) {
				t.Errorf("BindPolicy = %v, want ErrListen", err)
			}
		})
	}
	// A control character, which would forge records of the upgrade
	// state, is refused by the policy itself too, not only by ParseAddr.
	for _, a := range [][2]string{{"unix", private + "/s\nK 9"}, {"unix", private + "/s\x7f"}, {"tcp", "[fe80::1%a\nb]:8080"}} {
		if err := cluster.BindPolicyUnparsed(a[0], a[1]); !errors.Is(err, cluster.ErrListen) {
			t.Errorf("BindPolicy(%s %q) = %v, want ErrListen", a[0], a[1], err)
		}
	}
}
