//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// notifyWorker sends READY=1, then what its mode says, once (a marker file
// in its directory remembers it did), then sleeps; in mode extend, its
// first start asks for more time and takes 3.5 s before READY=1.
const notifyWorker = `
import os, socket, sys, time
def notify(s):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    c.sendto(s.encode(), os.environ["NOTIFY_SOCKET"])
    c.close()
mode, marker = sys.argv[1], sys.argv[2]
if mode == "extend" and not os.path.exists(marker):
    # A slow start past -start-timeout (3s), announced twice.
    notify("EXTEND_TIMEOUT_USEC=6000000")
    notify("EXTEND_TIMEOUT_USEC=6000000")
    time.sleep(3.5)
notify("READY=1")
if os.path.exists(marker):
    time.sleep(1000)
open(marker, "w").close()
time.sleep(0.2)
if mode == "trigger":
    notify("WATCHDOG=trigger")
elif mode == "errno":
    notify("STATUS=cannot bind\nERRNO=98")
    time.sleep(0.5)
    sys.exit(1)
elif mode == "flood":
    for i in range(500):
        notify("STATUS=step %d" % i)
time.sleep(1000)
`

// TestNotifyFields: WATCHDOG=trigger replaces the worker (a failed
// heartbeat), ERRNO= is logged with the worker's exit, a flood of STATUS=
// is logged rate-limited with the last one winning, and
// EXTEND_TIMEOUT_USEC moves the start timeout (logged once per worker).
func TestNotifyFields(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is required (CI installs it): %v", err)
	}
	script := filepath.Join(t.TempDir(), "worker.py")
	if err := os.WriteFile(script, []byte(notifyWorker), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode string
		// done says the master did what it should.
		done func(m *master) bool
		// check runs once the master stopped.
		check func(t *testing.T, m *master)
	}{
		{"trigger", func(m *master) bool {
			return strings.Contains(m.log.String(), `"msg":"worker killed to be replaced"`) && count(m.records(), "worker started") >= 2
		}, func(t *testing.T, m *master) {
			if !strings.Contains(m.log.String(), `"reason":"WATCHDOG=trigger"`) {
				t.Errorf("kill reason not logged")
			}
		}},
		{"errno", func(m *master) bool {
			return strings.Contains(m.log.String(), `"errno":98,"errno_text":"address already in use"`)
		}, func(t *testing.T, m *master) {
			if !strings.Contains(m.log.String(), `"last_status":"cannot bind"`) && !strings.Contains(m.log.String(), `"status":"cannot bind"`) {
				t.Errorf("the worker's status not logged")
			}
		}},
		{"flood", func(m *master) bool {
			return strings.Contains(m.log.String(), `"status":"step 499"`)
		}, func(t *testing.T, m *master) {
			// Within the first second, the first status and the last,
			// maybe one more if the flood straddled two intervals.
			if n := count(m.records(), "worker status"); n < 2 || n > 3 {
				t.Errorf("%d status lines for 500 updates, want 2 or 3", n)
			}
		}},
		{"extend", func(m *master) bool {
			return strings.Contains(m.log.String(), "worker extended its start timeout")
		}, func(t *testing.T, m *master) {
			// Ready after 3.5 s against a 3 s start timeout: not killed,
			// started once, the extension logged once.
			if n := count(m.records(), "worker started"); n != 1 {
				t.Errorf("%d workers started, want 1 (the slow one not killed)", n)
			}
			if n := strings.Count(m.log.String(), "worker extended its start timeout"); n != 1 {
				t.Errorf("%d extension lines for two EXTEND_TIMEOUT_USEC, want 1", n)
			}
		}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			marker := filepath.Join(t.TempDir(), "sent")
			// -start-timeout 3s: under load, python3 (through a version
			// manager's shim, say) may take over a second to start, and a
			// worker killed before its EXTEND_TIMEOUT_USEC is not the
			// slow start under test.
			m := startMaster(t, pc, nil, "-n", "1", "-shutdown-timeout", "2s", "-start-timeout", "3s", "-listen", "127.0.0.1:0", "-log-format", "json", "--", py, script, tc.mode, marker)
			m.waitReady()
			if !waitFor(10*time.Second, func() bool { return tc.done(m) }) {
				t.Fatalf("%s: the master did not act", tc.mode)
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(15 * time.Second); code != exitOK {
				t.Errorf("exit code %d, want 0", code)
			}
			tc.check(t, m)
		})
	}
}
