package cluster_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/sockfile"
)

// socketCopies counts this process's descriptors of socket inode ino: a
// count, unlike a descriptor number, that no other goroutine's open can
// fake once the number is reused.
func socketCopies(t *testing.T, ino uint64) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("socket:[%d]", ino)
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && l == want {
			n++
		}
	}
	return n
}

// TestControlAdoptCloses: adoptControl closes the inherited descriptor
// whenever it is the listening socket of the path but is not adopted,
// whatever the reason: the path removed (ErrReplaced), or no longer
// reachable (lstat fails with ENOTDIR: a directory on the way replaced by
// a file). Kept open, it would listen unserved, and the socket created
// anew would find it accepting and refuse the path as "in use". A
// descriptor that is not such a socket is left alone. A lock file that is
// not a regular file does not stop the adoption: it is reported, and the
// socket file is left at the stop.
func TestControlAdoptCloses(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, dir, path string) // before adoptControl
	}{
		{"removed", func(t *testing.T, _, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
		{"not a directory on the way", func(t *testing.T, dir, _ string) {
			if err := os.Rename(filepath.Join(dir, "d"), filepath.Join(dir, "old")); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "d"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortDir(t)
			if err := os.Mkdir(filepath.Join(dir, "d"), 0o700); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "d", "s")
			f, st := inheritedControl(t, path)
			sockIno := fileSocketInode(t, f)
			fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
			if err != nil {
				t.Fatal(err)
			}
			tc.change(t, dir, path)
			stop, _, err := cluster.AdoptControl(path, fmt.Sprintf("%d:%d:%d", fd, st.Dev, st.Ino))
			if err == nil {
				stop()
				t.Fatalf("adopted")
			}
			if n := socketCopies(t, sockIno); n != 1 {
				unix.Close(fd)
				t.Errorf("%v: %d descriptors of the socket left, want 1 (the test's): the inherited one closed", err, n)
			}
		})
	}
	t.Run("not the socket", func(t *testing.T) {
		dir := shortDir(t)
		path := filepath.Join(dir, "s")
		_, st := inheritedControl(t, path)
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		fd := int(r.Fd())
		var before unix.Stat_t
		if err := unix.Fstat(fd, &before); err != nil {
			t.Fatal(err)
		}
		_, _, err = cluster.AdoptControl(path, fmt.Sprintf("%d:%d:%d", fd, st.Dev, st.Ino))
		if !errors.Is(err, sockfile.ErrNotListener) {
			t.Fatalf("a pipe adopted: %v, want ErrNotListener", err)
		}
		var after unix.Stat_t
		if err := unix.Fstat(fd, &after); err != nil || after.Ino != before.Ino {
			t.Errorf("the pipe's descriptor: %v, inode %d, want left open (%d)", err, after.Ino, before.Ino)
		}
	})
	t.Run("lock file a symlink", func(t *testing.T) {
		dir := shortDir(t)
		path := filepath.Join(dir, "s")
		f, st := inheritedControl(t, path)
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(dir, "elsewhere"), path+".lock"); err != nil {
			t.Fatal(err)
		}
		stop, lockErr, err := cluster.AdoptControl(path, fmt.Sprintf("%d:%d:%d", fd, st.Dev, st.Ino))
		if err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
		if !errors.Is(lockErr, sockfile.ErrNotSocket) {
			t.Errorf("lockErr = %v, want ErrNotSocket", lockErr)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Errorf("dial the adopted socket: %v", err)
		} else {
			c.Close()
		}
		stop()
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("after the stop, %s: %v; want it left (not ours to remove without a sound lock file)", path, err)
		}
		if _, err := os.Lstat(filepath.Join(dir, "elsewhere")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the lock symlink's target: %v, want never created", err)
		}
	})
}

// inheritedControl plays the old image: a listening control socket at
// path, handed over as f (the listener itself is gone, the file kept),
// and the file's identity.
func inheritedControl(t *testing.T, path string) (*os.File, unix.Stat_t) {
	t.Helper()
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	f, err := ul.File()
	ul.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return f, st
}
