//go:build linux

package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
)

func TestMain(m *testing.M) {
	// The master re-executes this binary as its exec shim.
	if len(os.Args) > 1 && os.Args[1] == cluster.ShimArg {
		fmt.Fprintln(os.Stderr, cluster.RunShim(os.Args[2:]))
		os.Exit(127)
	}
	helperproc.Main(m, nil)
}

// TestMasterLifecycle runs a cluster in process: port 0 resolved once,
// Ready after every worker started, scaling, a clean stop that closes every
// listener.
func TestMasterLifecycle(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m, err := cluster.New(&cluster.Config{
		Program: "sh",
		Args:    []string{"-c", `test "$LISTEN_PID" = "$$" && test "$LISTEN_FDS" = 2 && exec sleep 60`},
		Workers: 2,
		Listen:  []string{"127.0.0.1:0", "udp://127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Env:     append(os.Environ(), pc.Env()),
	})
	if err != nil {
		t.Fatal(err)
	}
	addrs := m.Addrs()
	if len(addrs) != 2 || addrs[0].(*net.TCPAddr).Port == 0 || addrs[1].(*net.UDPAddr).Port == 0 {
		t.Fatalf("Addrs() = %v, want two resolved ports", addrs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("cluster not ready")
	}
	if err := m.ScaleBy(1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for m.Status().ReadyWorkers != 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// The sh workers exit at once if LISTEN_PID or LISTEN_FDS is wrong, and
	// then would not be counted ready for long.
	time.Sleep(200 * time.Millisecond)
	st := m.Status()
	if diff := cmp.Diff([2]int{3, 3}, [2]int{st.Workers, st.ReadyWorkers}); diff != "" {
		t.Errorf("workers, ready (-want +got):\n%s", diff)
	}
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The port is free again: the master closed its listener.
	ln, err := net.Listen("tcp", addrs[0].String())
	if err != nil {
		t.Fatalf("port still held after Run returned: %v", err)
	}
	ln.Close()
}

// TestNewFailsCleanly: a bind failure in the second address releases the
// first, and Close releases everything when Run is never called.
func TestNewFailsCleanly(t *testing.T) {
	fdcensus.Verify(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name string
		cfg  cluster.Config
		want error
	}{
		{"port in use", cluster.Config{Program: "sh", Listen: []string{"127.0.0.1:0", busy.Addr().String()}}, cluster.ErrListen},
		{"bad address", cluster.Config{Program: "sh", Listen: []string{"tcp://nohost"}}, cluster.ErrListen},
		{"no program", cluster.Config{Program: "/nonexistent/x", Listen: []string{"127.0.0.1:0"}}, os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cluster.New(&tc.cfg)
			if !errors.Is(err, tc.want) {
				t.Errorf("New: %v, want %v", err, tc.want)
			}
		})
	}
	m, err := cluster.New(&cluster.Config{Program: "sh", Listen: []string{"127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
