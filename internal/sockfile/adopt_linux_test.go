//go:build linux

package sockfile_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/sockfile"
)

// tryLock takes and drops the flock on lockPath through an open file
// description of its own, as a second process would: EWOULDBLOCK while
// the lock is held (flock locks conflict between descriptions, even in
// one process).
func tryLock(t *testing.T, lockPath string) error {
	t.Helper()
	fd, err := unix.Open(lockPath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	return unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
}

// handedOver plays an image that created path with Listen and then
// executed itself: it returns a copy of the listening descriptor and the
// socket file's identity; the Listener is gone (its lock with it), the path
// is left in place.
func handedOver(t *testing.T, path string, opts *sockfile.Options) (f *os.File, dev, ino uint64) {
	t.Helper()
	l, err := sockfile.Listen(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	dev, ino = l.FileID()
	f, err = l.UnixListener().File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	l.SetUnlinkOnClose(false)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tryLock(t, path+".lock"); err != nil {
		t.Fatalf("lock still held after the handover: %v", err)
	}
	return f, dev, ino
}

// TestAdopt: Adopt takes the lock on PATH.lock again and the removal of
// the path by inode, over several handovers in a row, and keeps the
// caller's descriptor; a path that no longer names the socket (removed,
// replaced, another inode) is ErrReplaced and left alone, unlocked; a
// descriptor that is not the expected listening socket bound to the path
// is refused; a lock held by another process does not stop the adoption.
func TestAdopt(t *testing.T) {
	fdcensus.Verify(t)
	t.Run("handovers", func(t *testing.T) {
		for _, network := range []string{"unix", "unixpacket"} {
			t.Run(network, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "s")
				opts := &sockfile.Options{Network: network}
				f, dev, ino := handedOver(t, path, opts)
				for round := range 3 {
					l, err := sockfile.Adopt(int(f.Fd()), path, dev, ino, opts)
					if err != nil {
						t.Fatalf("round %d: %v", round, err)
					}
					if !l.Locked() {
						t.Errorf("round %d: Locked() = false", round)
					}
					if err := tryLock(t, path+".lock"); !errors.Is(err, unix.EWOULDBLOCK) {
						t.Errorf("round %d: flock of the lock file: %v, want EWOULDBLOCK", round, err)
					}
					acceptOne(t, l, network, path)
					if gdev, gino := l.FileID(); gdev != dev || gino != ino {
						t.Errorf("FileID() = %d, %d; want %d, %d", gdev, gino, dev, ino)
					}
					if round < 2 {
						// The next handover.
						l.SetUnlinkOnClose(false)
					}
					if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
						t.Fatal(err)
					}
					if err := tryLock(t, path+".lock"); err != nil {
						t.Errorf("round %d: lock held after Close: %v", round, err)
					}
				}
				if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("after the last Close, %s: %v; want it removed", path, err)
				}
				var st unix.Stat_t
				if err := unix.Fstat(int(f.Fd()), &st); err != nil {
					t.Errorf("the caller's descriptor: %v; want it open", err)
				}
			})
		}
	})
	t.Run("lock held elsewhere", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s")
		f, dev, ino := handedOver(t, path, nil)
		fd, err := unix.Open(path+".lock", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		l, err := sockfile.Adopt(int(f.Fd()), path, dev, ino, nil)
		if err != nil {
			t.Fatal(err)
		}
		if l.Locked() {
			t.Errorf("Locked() = true while another description holds the lock")
		}
		l.Close()
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Close, %s: %v; want it removed", path, err)
		}
	})
	for _, tc := range []struct {
		name     string
		change   func(t *testing.T, path string)
		wrongIno bool
	}{
		{"removed", func(t *testing.T, path string) { os.Remove(path) }, false},
		{"replaced by a file", func(t *testing.T, path string) {
			os.Remove(path)
			if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"replaced by a socket", func(t *testing.T, path string) {
			os.Remove(path)
			staleSocket(t, path)
		}, false},
		{"another inode", func(*testing.T, string) {}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s")
			f, dev, ino := handedOver(t, path, nil)
			tc.change(t, path)
			var before unix.Stat_t
			beforeErr := unix.Lstat(path, &before)
			if tc.wrongIno {
				ino++
			}
			l, err := sockfile.Adopt(int(f.Fd()), path, dev, ino, nil)
			// The descriptor is the socket, which a caller may close: not
			// ErrNotListener.
			if !errors.Is(err, sockfile.ErrReplaced) || errors.Is(err, sockfile.ErrNotListener) {
				if err == nil {
					l.Close()
				}
				t.Fatalf("Adopt: %v, want ErrReplaced only", err)
			}
			var after unix.Stat_t
			afterErr := unix.Lstat(path, &after)
			if beforeErr != afterErr || after.Ino != before.Ino {
				t.Errorf("the path changed: before %v ino %d, after %v ino %d", beforeErr, before.Ino, afterErr, after.Ino)
			}
			if err := tryLock(t, path+".lock"); err != nil {
				t.Errorf("lock held after a refused adoption: %v", err)
			}
		})
	}
	t.Run("wrong descriptor", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s")
		f, dev, ino := handedOver(t, path, nil)
		other := filepath.Join(t.TempDir(), "o")
		of, _, _ := handedOver(t, other, nil)
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cf, err := c.(*net.UnixConn).File()
		if err != nil {
			t.Fatal(err)
		}
		defer cf.Close()
		for _, tc := range []struct {
			name string
			fd   int
			opts *sockfile.Options
		}{
			{"seqpacket wanted", int(f.Fd()), &sockfile.Options{Network: "unixpacket"}},
			{"bound elsewhere", int(of.Fd()), nil},
			{"connected", int(cf.Fd()), nil},
			{"not a socket", 0, nil},
			{"closed", 1 << 20, nil},
		} {
			l, err := sockfile.Adopt(tc.fd, path, dev, ino, tc.opts)
			if err == nil {
				l.Close()
				t.Errorf("%s: adopted", tc.name)
				continue
			}
			// Not the listening socket of the path: it may be anything,
			// and a caller must not close it (ErrNotListener).
			if errors.Is(err, sockfile.ErrReplaced) || !errors.Is(err, sockfile.ErrNotListener) {
				t.Errorf("%s: %v, want ErrNotListener, not ErrReplaced", tc.name, err)
			}
		}
		if got := inode(t, path); got != ino {
			t.Errorf("socket file inode %d, want %d", got, ino)
		}
		if err := tryLock(t, path+".lock"); err != nil {
			t.Errorf("lock held after refused adoptions: %v", err)
		}
	})
}
