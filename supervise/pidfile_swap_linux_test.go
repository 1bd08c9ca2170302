package supervise_test

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestReadPIDFileSwappedBeforeOpen: a file swapped in at the pid path right
// before ReadPIDFile opens it, as the directory's owner can do at any time
// (a root daemon's pid file in /run/app of the service's user) or anyone in
// a sticky directory before the owner's Write, is checked as the file that
// was opened: it is refused, never reported as the live owner's pid, and a
// FIFO does not block the reader in open(2) (CVE-2018-16888 class, TESTPLAN
// D3). The owner here is live and wrote its pid, so a reader that checked
// the path before opening it would read the planted "1" and report it live.
func TestReadPIDFileSwappedBeforeOpen(t *testing.T) {
	fdcensus.Verify(t)
	tests := []struct {
		name string
		root bool
		// plant makes the file to swap in at tmp.
		plant func(t *testing.T, tmp string)
	}{
		{"owned by another user", true, func(t *testing.T, tmp string) {
			writeFile(t, tmp, "1\n", 0o644)
			if err := os.Chown(tmp, nobodyUID, nobodyUID); err != nil {
				t.Fatal(err)
			}
		}},
		{"hard link", false, func(t *testing.T, tmp string) {
			writeFile(t, tmp, "1\n", 0o644)
			if err := os.Link(tmp, tmp+".other"); err != nil {
				t.Fatal(err)
			}
		}},
		{"group-writable", false, func(t *testing.T, tmp string) {
			writeFile(t, tmp, "1\n", 0o664)
		}},
		{"fifo", false, func(t *testing.T, tmp string) {
			if err := unix.Mkfifo(tmp, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("needs root to plant a file of another user")
			}
			path := pidPath(t)
			owner, err := supervise.CreatePIDFile(path)
			if err != nil {
				t.Fatal(err)
			}
			defer owner.Close()
			if err := owner.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(filepath.Dir(path), "planted")
			tc.plant(t, tmp)
			var once sync.Once
			supervise.SetHookPIDFileOpen(func() {
				once.Do(func() {
					if err := os.Rename(tmp, path); err != nil {
						t.Errorf("swap: %v", err)
					}
				})
			})
			defer supervise.SetHookPIDFileOpen(nil)
			type result struct {
				pid  int
				live bool
				err  error
			}
			done := make(chan result, 1)
			go func() {
				pid, live, err := supervise.ReadPIDFile(path)
				done <- result{pid, live, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				// Blocked in open(2) of the FIFO: a writer's open
				// releases it, so the test ends with nothing left.
				fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatalf("ReadPIDFile blocked, and the FIFO cannot be opened to release it: %v", err)
				}
				unix.Close(fd)
				r = <-done
				t.Errorf("ReadPIDFile blocked for 10 s in open(2) of a FIFO swapped in at the pid path")
			}
			if r.live {
				t.Errorf("ReadPIDFile = pid %d, live, err %v: a swapped-in file reported as the live owner's (owner %d)", r.pid, r.err, os.Getpid())
			}
			var ue *supervise.UnsafePIDFileError
			if !errors.As(r.err, &ue) || ue.Path != path {
				t.Errorf("ReadPIDFile = %d, %v, %v; want %s refused with an *UnsafePIDFileError", r.pid, r.live, r.err, path)
			}
		})
	}
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	// Chmod: the umask may have cleared bits.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
