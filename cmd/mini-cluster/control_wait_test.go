//go:build linux

package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/ipcframe"
)

// fakeMaster serves one control connection at path: it reads a request
// and answers {"type":"ok"} after delay.
func fakeMaster(t *testing.T, path string, delay time.Duration) {
	t.Helper()
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ul.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ul.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(delay + 10*time.Second))
		if _, err := ipcframe.NewReader(c, nil).ReadFrame(nil); err != nil {
			return
		}
		time.Sleep(delay)
		_ = ipcframe.NewWriter(c, nil).WriteFrame([]byte(`{"type":"ok"}`))
	}()
}

// TestControlGroupCommandOutwaitsMaster: suspend and the other requests
// that wait on workers and remote agents default to a 15-minute client
// timeout, not 10 s. The master waits up to a group's shutdown timeout + 10 s for a
// host's agent to acknowledge: a client that gave up after 10 s reported
// a timeout while the master went on, and undid the suspend if the agent
// stayed silent. Here the master answers after 10.5 s, past the old
// default; an explicit -timeout still applies.
func TestControlGroupCommandOutwaitsMaster(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 10.5 s")
	}
	fdcensus.Verify(t)
	dir := controlDir(t)
	slow := filepath.Join(dir, "slow")
	fakeMaster(t, slow, controlTimeout+500*time.Millisecond)
	code, out, errOut := ctl("suspend", "web", "-control", slow)
	if code != 0 || out != "group web suspending\n" {
		t.Errorf("suspend against a master answering after %v: exit %d, stdout %q, stderr %q; want 0 and the answer", controlTimeout+500*time.Millisecond, code, out, errOut)
	}

	bounded := filepath.Join(dir, "bounded")
	fakeMaster(t, bounded, 2*time.Second)
	code, out, _ = ctl("suspend", "web", "-control", bounded, "-timeout", "200ms", "-json")
	if code != 1 || !strings.Contains(out, `"code":"timeout"`) {
		t.Errorf("suspend -timeout 200ms against a master answering after 2s: exit %d, stdout %q; want 1 and a timeout", code, out)
	}
}
