//go:build linux

package cluster_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// listeningOn counts this process's listening TCP sockets on port.
func listeningOn(t *testing.T, port int) int {
	t.Helper()
	snap, err := fdcensus.Take(0)
	if err != nil {
		t.Fatal(err)
	}
	mine := map[string]bool{}
	for _, fd := range snap {
		if strings.HasPrefix(fd.Target, "socket:[") {
			mine[strings.TrimSuffix(strings.TrimPrefix(fd.Target, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile("/proc/self/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[3] != "0A" || !strings.HasSuffix(f[1], fmt.Sprintf(":%04X", port)) {
			continue
		}
		if mine[f[9]] {
			n++
		}
	}
	return n
}

// TestReuseportScale: in reuseport mode every slot has its own socket in
// the master; scaling up binds one for the new slot on the resolved port,
// scaling down closes it once the slot's worker has exited.
func TestReuseportScale(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	m, err := cluster.New(&cluster.Config{
		Program: "sleep",
		Args:    []string{"60"},
		Workers: 2,
		Mode:    cluster.ModeReuseport,
		Listen:  []string{"127.0.0.1:0"},
		Ready:   cluster.ReadyStarted,
		Env:     append(os.Environ(), pc.Env()),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	_, portS, _ := strings.Cut(m.Addrs()[0].String(), ":")
	port, _ := strconv.Atoi(portS)
	runMaster(t, m, 30*time.Second)
	select {
	case <-m.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("not ready")
	}
	for _, step := range []struct {
		delta, want int
	}{{0, 2}, {1, 3}, {-2, 1}, {1, 2}} {
		if step.delta != 0 {
			if err := m.ScaleBy(step.delta); err != nil {
				t.Fatal(err)
			}
		}
		waitUntil(t, fmt.Sprintf("%d sockets after scaling by %d", step.want, step.delta), 10*time.Second, func() bool {
			return listeningOn(t, port) == step.want
		})
	}
}

// TestModeRefusals: a mode that cannot serve an address fails New with
// ErrMode and leaves nothing open.
func TestModeRefusals(t *testing.T) {
	fdcensus.Verify(t)
	dir := shortTemp(t)
	for _, tc := range []struct {
		mode   cluster.Mode
		listen string
	}{
		{cluster.ModeReuseport, "unix://" + dir + "/s"},
		{cluster.ModeHandoff, "udp://127.0.0.1:0"},
		{cluster.Mode(7), "127.0.0.1:0"},
	} {
		_, err := cluster.New(&cluster.Config{Program: "true", Mode: tc.mode, Listen: []string{tc.listen}})
		if !errors.Is(err, cluster.ErrMode) {
			t.Errorf("mode %v on %s: %v, want ErrMode", tc.mode, tc.listen, err)
		}
	}
	if _, err := os.Stat(dir + "/s"); !os.IsNotExist(err) {
		t.Errorf("socket file created: %v", err)
	}
}
