//go:build linux

package sockfile_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/sockfile"
)

// TestAdoptLockRefused: Adopt says why it did not lock PATH.lock again
// (LockErr). Something other than a regular file planted at the lock path
// (a symlink, a directory, a FIFO), which Listen refuses, is neither
// followed nor opened, and the cleanup duty is not taken over: the adopted
// socket serves, and Close leaves the socket file. A lock another process
// holds is reported as ErrInUse, and the duty is taken over regardless.
// The descriptor's O_NONBLOCK is set (net.FileListener), as documented.
func TestAdoptLockRefused(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []struct {
		name    string
		plant   func(t *testing.T, lock string)
		wantErr error
		removed bool // Close removes the socket file
	}{
		{"symlink", func(t *testing.T, lock string) {
			if err := os.Symlink(lock+".target", lock); err != nil {
				t.Fatal(err)
			}
		}, sockfile.ErrNotSocket, false},
		{"directory", func(t *testing.T, lock string) {
			if err := os.Mkdir(lock, 0o700); err != nil {
				t.Fatal(err)
			}
		}, sockfile.ErrNotSocket, false},
		{"FIFO", func(t *testing.T, lock string) {
			if err := unix.Mkfifo(lock, 0o600); err != nil {
				t.Fatal(err)
			}
		}, sockfile.ErrNotSocket, false},
		{"held elsewhere", func(t *testing.T, lock string) {
			fd, err := unix.Open(lock, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fd) })
			if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
				t.Fatal(err)
			}
		}, sockfile.ErrInUse, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s")
			f, dev, ino := handedOver(t, path, nil)
			// Once: File.Fd sets blocking mode on every call.
			fd := int(f.Fd())
			if err := unix.SetNonblock(fd, false); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(path + ".lock"); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, path+".lock")
			l, err := sockfile.Adopt(fd, path, dev, ino, nil)
			if err != nil {
				t.Fatalf("Adopt: %v, want the socket adopted", err)
			}
			if l.Locked() {
				t.Errorf("Locked() = true")
			}
			if lerr := l.LockErr(); !errors.Is(lerr, tc.wantErr) {
				t.Errorf("LockErr() = %v, want an error wrapping %v", lerr, tc.wantErr)
			}
			if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
				t.Errorf("flags after Adopt: %#o, %v; want O_NONBLOCK set (documented)", fl, err)
			}
			acceptOne(t, l, "unix", path)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			_, err = os.Lstat(path)
			if tc.removed && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("after Close, %s: %v; want it removed", path, err)
			}
			if !tc.removed && err != nil {
				t.Errorf("after Close, %s: %v; want it left (cleanup duty refused)", path, err)
			}
			if _, err := os.Lstat(path + ".lock.target"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the symlink's target: %v, want it never created", err)
			}
		})
	}
	t.Run("after Listen", func(t *testing.T) {
		l, err := sockfile.Listen(filepath.Join(t.TempDir(), "s"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if lerr := l.LockErr(); lerr != nil {
			t.Errorf("LockErr() = %v after Listen, want nil", lerr)
		}
	})
}
