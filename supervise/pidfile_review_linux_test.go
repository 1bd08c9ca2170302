package supervise_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/supervise"
)

// TestReadPIDFileOwnerClosesBetweenLockTests: the reader found the live
// byte held; before it tests the record byte, the directory's owner moves
// the earlier run's pid file (put back at the path) aside, the owner
// closes (both bytes released at once), and the file is renamed back. The
// record byte is then free, as for an owner of a release without
// records, but no owner runs: the earlier run's pid is not reported live.
func TestReadPIDFileOwnerClosesBetweenLockTests(t *testing.T) {
	fdcensus.Verify(t)
	dir, rename := dirOwnerDir(t)
	path := filepath.Join(dir, "app.pid")
	aside := filepath.Join(dir, "aside")
	earlier, err := supervise.CreatePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := earlier.Write(earlierRunPID); err != nil {
		t.Fatal(err)
	}
	rename(path, aside)
	if err := earlier.Close(); err != nil {
		t.Fatal(err)
	}
	p, err := supervise.CreatePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Write(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	rename(aside, path)
	calls := 0
	supervise.SetHookPIDFileLive(func() {
		if calls++; calls > 1 {
			return
		}
		rename(path, aside)
		if err := p.Close(); err != nil {
			t.Error(err)
		}
		rename(aside, path)
	})
	defer supervise.SetHookPIDFileLive(nil)
	pid, live, err := supervise.ReadPIDFile(path)
	if calls == 0 {
		t.Fatal("live byte never found held")
	}
	if live || err != nil || pid != earlierRunPID {
		t.Errorf("ReadPIDFile = %d, %v, %v; want %d, not live (no owner runs)", pid, live, err, earlierRunPID)
	}
}

// lockAt read-locks byte at of name through a new open file description,
// as any user who can read the lock file can.
func lockAt(t *testing.T, name string, at int64) *os.File {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	lk := unix.Flock_t{Type: unix.F_RDLCK, Start: at, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		f.Close()
		t.Fatal(err)
	}
	return f
}

// TestReadPIDFileRecordByteReadLockedPutBack: someone read-locks byte 2
// before a master upgraded in place from a release without records adopts
// its lock, which it then keeps without byte 2. The adopted owner wrote
// a record anyway, and a reader that finds byte 2 locked in any way checks
// it: the earlier run's pid file put back is not reported live while the
// read lock is held. The cost, documented: an owner of a release without
// records reads as not live while anyone read-locks byte 2.
func TestReadPIDFileRecordByteReadLockedPutBack(t *testing.T) {
	fdcensus.Verify(t)
	path := pidPath(t)
	lock := olderOwner(t, path, os.Getpid())
	reader := lockAt(t, path+".lock", 2)
	defer reader.Close()
	if pid, live, err := supervise.ReadPIDFile(path); live || err != nil || pid != os.Getpid() {
		t.Errorf("older owner, byte 2 read-locked: ReadPIDFile = %d, %v, %v; want not live (documented)", pid, live, err)
	}
	fd, err := unix.FcntlInt(lock.Fd(), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		t.Fatal(err)
	}
	inherited := os.NewFile(uintptr(fd), lock.Name())
	p, err := supervise.AdoptPIDFile(path, inherited)
	if err != nil {
		inherited.Close()
		t.Fatal(err)
	}
	defer p.Close()
	if pid, live, err := supervise.ReadPIDFile(path); !live || err != nil || pid != os.Getpid() {
		t.Errorf("adopted without byte 2: ReadPIDFile = %d, %v, %v; want live", pid, live, err)
	}
	writeFile(t, path+".earlier", strconv.Itoa(earlierRunPID)+"\n", 0o644)
	if err := os.Rename(path+".earlier", path); err != nil {
		t.Fatal(err)
	}
	if pid, live, err := supervise.ReadPIDFile(path); live || err != nil {
		t.Errorf("adopted without byte 2, earlier file put back: ReadPIDFile = %d, %v, %v; want not live", pid, live, err)
	}
}

// heldBytes reports which of bytes 0 to 2 of name any open file
// description locks, read or write.
func heldBytes(t *testing.T, name string) []bool {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var held []bool
	for b := range int64(3) {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: b, Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
			t.Fatal(err)
		}
		held = append(held, lk.Type != unix.F_UNLCK)
	}
	return held
}

// TestAdoptPIDFileErrorReleasesLocks: an AdoptPIDFile that fails after it
// took the owner byte leaves no byte locked, although the caller's
// descriptor stays open (and a duplicate of it may stay open after the
// caller closes it): the caller then takes the lock anew with
// CreatePIDFile, which a byte left locked would fail.
func TestAdoptPIDFileErrorReleasesLocks(t *testing.T) {
	fdcensus.Verify(t)
	for _, tc := range []string{"lock file not a record", "live byte read-locked"} {
		t.Run(tc, func(t *testing.T) {
			path := pidPath(t)
			writeFile(t, path, strconv.Itoa(earlierRunPID)+"\n", 0o644)
			content := ""
			if tc == "lock file not a record" {
				content = "secret\n"
			}
			writeFile(t, path+".lock", content, 0o644)
			var other *os.File
			if tc == "live byte read-locked" {
				other = lockAt(t, path+".lock", 1)
			}
			adopt, err := os.OpenFile(path+".lock", os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer adopt.Close()
			p, err := supervise.AdoptPIDFile(path, adopt)
			if err == nil {
				p.Close()
				t.Fatal("AdoptPIDFile succeeded")
			}
			want := []bool{false, false, false}
			if other != nil {
				want[1] = true
			}
			if d := cmp.Diff(want, heldBytes(t, path+".lock")); d != "" {
				t.Errorf("after AdoptPIDFile: %v; bytes 0-2 locked (-want +got):\n%s", err, d)
			}
			if other == nil {
				return
			}
			other.Close()
			p, err = supervise.CreatePIDFile(path)
			if err != nil {
				t.Fatalf("CreatePIDFile after a failed AdoptPIDFile: %v", err)
			}
			p.Close()
		})
	}
}

// TestPIDFileWriteFinalRecordFails: a Write whose pid file was renamed
// into place but whose final record rewrite failed has still replaced the
// file: the next Write names its pid as the one it replaces, so a reader
// between that Write's record and its rename accepts the file there.
func TestPIDFileWriteFinalRecordFails(t *testing.T) {
	fdcensus.Verify(t)
	path := pidPath(t)
	p, err := supervise.CreatePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Write(earlierRunPID); err != nil {
		t.Fatal(err)
	}
	lf, err := p.LockFile()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.FcntlInt(lf.Fd(), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		t.Fatal(err)
	}
	saved := os.NewFile(uintptr(fd), "saved lock")
	defer saved.Close()
	ro, err := os.Open(path + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	var records []string
	broken := false
	supervise.SetHookPIDFileWrite(func(renamed bool) {
		switch {
		case renamed && !broken:
			broken = true
			// The lock's descriptor now names a read-only open:
			// the record's rewrite fails (EBADF).
			if err := unix.Dup3(int(ro.Fd()), int(lf.Fd()), unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
		case !renamed:
			b, err := os.ReadFile(path + ".lock")
			if err != nil {
				t.Error(err)
			}
			records = append(records, string(b))
		}
	})
	defer supervise.SetHookPIDFileWrite(nil)
	first := os.Getpid()
	err = p.Write(first)
	if err2 := unix.Dup3(int(saved.Fd()), int(lf.Fd()), unix.O_CLOEXEC); err2 != nil {
		t.Fatal(err2)
	}
	if err == nil {
		t.Fatal("Write succeeded with a read-only lock descriptor")
	}
	if pid, _, err := supervise.ReadPIDFile(path); pid != first || err != nil {
		t.Fatalf("after the failed Write: ReadPIDFile = %d, %v; want %d", pid, err, first)
	}
	second := first%4000000 + 1
	if err := p.Write(second); err != nil {
		t.Fatal(err)
	}
	want := []string{
		string(supervise.AppendLockRecord(nil, "mc.pid", first, earlierRunPID)),
		string(supervise.AppendLockRecord(nil, "mc.pid", second, first)),
	}
	if d := cmp.Diff(want, records); d != "" {
		t.Errorf("lock records before each rename (-want +got):\n%s", d)
	}
}

// TestPIDFileLockContentAccepted: a lock file of recordSize NUL bytes (as
// a crash can leave one) or holding a record of another version is
// overwritten, not refused; other content is refused with the file to
// remove named.
func TestPIDFileLockContentAccepted(t *testing.T) {
	fdcensus.Verify(t)
	size := len(supervise.AppendLockRecord(nil, "mc.pid", 0, 0))
	for _, content := range []string{
		strings.Repeat("\x00", size),
		"handoff-pid-lock 2 " + strings.Repeat("0", 2*size) + "\n",
		"handoff-pid-lock 0\n",
	} {
		t.Run(fmt.Sprintf("%.20q", content), func(t *testing.T) {
			path := pidPath(t)
			writeFile(t, path+".lock", content, 0o644)
			p, err := supervise.CreatePIDFile(path)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if b, err := os.ReadFile(path + ".lock"); err != nil || string(b) != string(supervise.AppendLockRecord(nil, "mc.pid", 0, 0)) {
				t.Errorf("lock file after CreatePIDFile: %q, %v", b, err)
			}
			if err := p.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			if pid, live, err := supervise.ReadPIDFile(path); !live || err != nil || pid != os.Getpid() {
				t.Errorf("ReadPIDFile = %d, %v, %v", pid, live, err)
			}
		})
	}
	path := pidPath(t)
	writeFile(t, path+".lock", strings.Repeat("\x00", size-1)+"x", 0o644)
	p, err := supervise.CreatePIDFile(path)
	if p != nil {
		p.Close()
	}
	if !errors.Is(err, supervise.ErrUnsafePIDFile) || !strings.Contains(err.Error(), "remove "+path+".lock") {
		t.Errorf("CreatePIDFile of a lock file with other content: %v; want ErrUnsafePIDFile naming the file to remove", err)
	}
}

// TestReadPIDFileSwappedWithAnotherService: two root services keep their
// pid files in one directory of the service user's, which swaps both pid
// files and both lock files. Each lock file is held by its owner and its
// record names the pid of the pid file moved with it, but it is the other
// pid file's: ReadPIDFile(web.pid) does not report the worker's pid live.
func TestReadPIDFileSwappedWithAnotherService(t *testing.T) {
	fdcensus.Verify(t)
	dir, rename := dirOwnerDir(t)
	web, worker := filepath.Join(dir, "web.pid"), filepath.Join(dir, "worker.pid")
	pids := map[string]int{web: os.Getpid(), worker: earlierRunPID}
	for _, path := range []string{web, worker} {
		p, err := supervise.CreatePIDFile(path)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := p.Write(pids[path]); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "tmp")
	for _, ext := range []string{"", ".lock"} {
		rename(web+ext, tmp)
		rename(worker+ext, web+ext)
		rename(tmp, worker+ext)
	}
	for _, path := range []string{web, worker} {
		if pid, live, err := supervise.ReadPIDFile(path); live || err != nil {
			t.Errorf("swapped: ReadPIDFile(%s) = %d, %v, %v; want not live", filepath.Base(path), pid, live, err)
		}
	}
}
