package supervise_test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/supervise"
)

// renameRole renames its first argument to its second, and prints OK or
// ERROR and why.
func renameRole() int {
	a := helperproc.Args()
	if err := os.Rename(a[0], a[1]); err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	fmt.Println("OK")
	return 0
}

// earlierRunPID is the pid the earlier run wrote: not the test's.
const earlierRunPID = 4000001

// dirOwnerDir returns a pid file directory owned by another user than
// the pid file's, and a rename done as that user. Run as root, it is
// /run/app of the service's user for a root master: a directory of
// nobody's, renamed in by a helper running as nobody. Otherwise it is the
// test's own directory and the test renames: the reader's check does not
// depend on who renames.
func dirOwnerDir(t *testing.T) (dir string, rename func(from, to string)) {
	t.Helper()
	base := t.TempDir()
	if os.Geteuid() != 0 {
		return base, func(from, to string) {
			t.Helper()
			if err := os.Rename(from, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Nobody must reach its directory.
	for _, d := range []string{base, filepath.Dir(base)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join(base, "app")
	mkdir(t, dir, 0o755, nobodyUID)
	c := proccensus.New(t)
	return dir, func(from, to string) {
		t.Helper()
		cmd := helperproc.Command(t, "rename", &helperproc.Options{AsNobody: true, Env: []string{c.Env(), noRaceExitSleep}, Args: []string{from, to}})
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		_ = cmd.Wait()
		if strings.TrimSpace(line) != "OK" {
			t.Fatalf("rename %s %s as nobody: %q", from, to, line)
		}
	}
}

// TestReadPIDFileEarlierRunPutBack: the pid file directory's owner
// (nobody, for a root master's /run/app) moves a pid file of an earlier
// run aside and renames it back over the path once a new owner took the
// lock, before or after the new owner's Write. The file is the daemon's,
// with one link and mode 0644, and the new owner holds the lock, so a
// reader trusting the file would report the earlier run's pid live, for
// root tooling to signal a recycled pid (CVE-2018-16888 family). The
// lock record the owner keeps says which pid it wrote: the earlier one is
// not reported live (TESTPLAN D3, D4).
func TestReadPIDFileEarlierRunPutBack(t *testing.T) {
	fdcensus.Verify(t)
	for _, written := range []bool{false, true} {
		t.Run(fmt.Sprintf("new owner wrote %v", written), func(t *testing.T) {
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
			if written {
				if err := p.Write(os.Getpid()); err != nil {
					t.Fatal(err)
				}
			}
			rename(aside, path)
			// What makes the file pass every other check.
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if got, want := []any{int(st.Uid), st.Nlink, fi.Mode()}, []any{os.Geteuid(), uint64(1), os.FileMode(0o644)}; !cmp.Equal(got, want) {
				t.Fatalf("put-back file (uid, links, mode) = %v, want %v", got, want)
			}
			pid, live, err := supervise.ReadPIDFile(path)
			if live {
				t.Errorf("ReadPIDFile = %d, live, %v: the earlier run's pid file, put back, reported live (owner %d)", pid, err, os.Getpid())
			}
			if pid != earlierRunPID || err != nil {
				t.Errorf("ReadPIDFile = %d, %v, %v; want %d, not live", pid, live, err, earlierRunPID)
			}
			// The owner's next Write replaces it and is live again.
			if err := p.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			pid, live, err = supervise.ReadPIDFile(path)
			if d := cmp.Diff([]any{os.Getpid(), true}, []any{pid, live}); d != "" || err != nil {
				t.Errorf("after Write (-want +got):\n%s err %v", d, err)
			}
		})
	}
}

// TestReadPIDFileDuringWrite: however long an owner stays between its
// lock record and its rename, or its rename and its final record, a reader
// reports live the pid the file holds then (the old one, then the new
// one), not a retry-exhausted "not live" (TESTPLAN D1).
func TestReadPIDFileDuringWrite(t *testing.T) {
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
	type read struct {
		Renamed bool
		PID     int
		Live    bool
		Err     error
	}
	var got []read
	supervise.SetHookPIDFileWrite(func(renamed bool) {
		pid, live, err := supervise.ReadPIDFile(path)
		got = append(got, read{renamed, pid, live, err})
	})
	defer supervise.SetHookPIDFileWrite(nil)
	if err := p.Write(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	want := []read{{false, earlierRunPID, true, nil}, {true, os.Getpid(), true, nil}}
	if d := cmp.Diff(want, got, cmpopts.EquateErrors()); d != "" {
		t.Errorf("ReadPIDFile during Write (-want +got):\n%s", d)
	}
}

// olderOwner is a live owner of a release before lock records: it holds
// ownerByte and liveByte of an empty lock file, and wrote pid.
func olderOwner(t *testing.T, path string, pid int) *os.File {
	t.Helper()
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() })
	for _, b := range []int64{0, 1} {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: b, Len: 1}
		if err := unix.FcntlFlock(lock.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, path, strconv.Itoa(pid)+"\n", 0o644)
	return lock
}

// TestReadPIDFileOlderOwner: an owner of a release before lock records
// (an empty lock file, byte 2 unlocked) is reported live as those
// releases did; an AdoptPIDFile of its lock, as a master upgraded in
// place from it does, records the pid and protects it from then on (the
// earlier run's file put back is not reported live) (TESTPLAN D2, D3).
func TestReadPIDFileOlderOwner(t *testing.T) {
	fdcensus.Verify(t)
	path := pidPath(t)
	lock := olderOwner(t, path, os.Getpid())
	pid, live, err := supervise.ReadPIDFile(path)
	if d := cmp.Diff([]any{os.Getpid(), true}, []any{pid, live}); d != "" || err != nil {
		t.Fatalf("older owner (-want +got):\n%s err %v", d, err)
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
	pid, live, err = supervise.ReadPIDFile(path)
	if d := cmp.Diff([]any{os.Getpid(), true}, []any{pid, live}); d != "" || err != nil {
		t.Errorf("adopted (-want +got):\n%s err %v", d, err)
	}
	writeFile(t, path+".earlier", strconv.Itoa(earlierRunPID)+"\n", 0o644)
	if err := os.Rename(path+".earlier", path); err != nil {
		t.Fatal(err)
	}
	if pid, live, err := supervise.ReadPIDFile(path); live || err != nil {
		t.Errorf("adopted, earlier file put back: ReadPIDFile = %d, %v, %v; want not live", pid, live, err)
	}
}

// TestAdoptPIDFileRecordByteReadLocked: anyone who can read the lock file
// can read-lock byte 2, which an owner of an earlier release leaves free.
// An inherited lock is then kept without it (readers check the record it
// wrote all the same) rather than failing the upgrade, and Write takes it once it is
// free; a free lock is refused, as CreatePIDFile refuses it (TESTPLAN D2).
func TestAdoptPIDFileRecordByteReadLocked(t *testing.T) {
	fdcensus.Verify(t)
	for _, inherit := range []bool{true, false} {
		t.Run(fmt.Sprintf("inherited %v", inherit), func(t *testing.T) {
			path := pidPath(t)
			lock := olderOwner(t, path, os.Getpid())
			var adopt *os.File
			if inherit {
				fd, err := unix.FcntlInt(lock.Fd(), unix.F_DUPFD_CLOEXEC, 3)
				if err != nil {
					t.Fatal(err)
				}
				adopt = os.NewFile(uintptr(fd), lock.Name())
			} else {
				// The older owner is gone; its files stay.
				lock.Close()
				var err error
				if adopt, err = os.OpenFile(path+".lock", os.O_RDWR, 0); err != nil {
					t.Fatal(err)
				}
			}
			reader, err := os.Open(path + ".lock")
			if err != nil {
				adopt.Close()
				t.Fatal(err)
			}
			defer reader.Close()
			lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 2, Len: 1}
			if err := unix.FcntlFlock(reader.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
				adopt.Close()
				t.Fatal(err)
			}
			p, err := supervise.AdoptPIDFile(path, adopt)
			if !inherit {
				if !errors.Is(err, supervise.ErrPIDFileLocked) {
					t.Errorf("AdoptPIDFile of a free lock: %v, want ErrPIDFileLocked", err)
				}
				if p != nil {
					p.Close()
				} else {
					adopt.Close()
				}
				return
			}
			if err != nil {
				adopt.Close()
				t.Fatal(err)
			}
			defer p.Close()
			if pid, live, err := supervise.ReadPIDFile(path); !live || err != nil || pid != os.Getpid() {
				t.Errorf("adopted without byte 2: ReadPIDFile = %d, %v, %v", pid, live, err)
			}
			reader.Close()
			if err := p.Write(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			writeFile(t, path+".earlier", strconv.Itoa(earlierRunPID)+"\n", 0o644)
			if err := os.Rename(path+".earlier", path); err != nil {
				t.Fatal(err)
			}
			if pid, live, err := supervise.ReadPIDFile(path); live || err != nil {
				t.Errorf("after Write, earlier file put back: ReadPIDFile = %d, %v, %v; want not live", pid, live, err)
			}
		})
	}
}

// TestReadPIDFileBadRecord: a record that does not parse, as a reader
// racing a rewrite could see, is not trusted: the pid is not reported
// live. The owner's next Write rewrites it.
func TestReadPIDFileBadRecord(t *testing.T) {
	fdcensus.Verify(t)
	path := pidPath(t)
	p, err := supervise.CreatePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Write(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	good := supervise.AppendLockRecord(nil, "mc.pid", os.Getpid(), 0)
	torn := append([]byte(nil), good...)
	torn[len(torn)-3] ^= 1 // a checksum digit
	if err := os.WriteFile(path+".lock", torn, 0o644); err != nil {
		t.Fatal(err)
	}
	if pid, live, err := supervise.ReadPIDFile(path); live || err != nil {
		t.Errorf("bad record: ReadPIDFile = %d, %v, %v; want not live", pid, live, err)
	}
	if err := p.Write(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path + ".lock"); err != nil || string(b) != string(good) {
		t.Errorf("lock file after Write: %q, %v; want %q", b, err, good)
	}
	if pid, live, err := supervise.ReadPIDFile(path); !live || err != nil || pid != os.Getpid() {
		t.Errorf("after Write: ReadPIDFile = %d, %v, %v", pid, live, err)
	}
}

// TestPIDFileLockContentKept: an existing lock file holding anything but
// a lock record (another file of ours, renamed there) is refused, not
// overwritten; an empty one (an earlier release's) is used (TESTPLAN D3).
func TestPIDFileLockContentKept(t *testing.T) {
	fdcensus.Verify(t)
	path := pidPath(t)
	writeFile(t, path+".lock", "secret\n", 0o600)
	p, err := supervise.CreatePIDFile(path)
	if p != nil {
		p.Close()
	}
	if got := refusedPath(t, err); got != path+".lock" {
		t.Errorf("CreatePIDFile refused %q (err %v), want %s.lock", got, err, path)
	}
	if d := cmp.Diff(fileState{Mode: 0o600, Links: 1, Data: "secret\n"}, stateOf(t, path+".lock")); d != "" {
		t.Errorf("lock file changed (-want +got):\n%s", d)
	}
	writeFile(t, path+".lock", "", 0o644)
	p, err = supervise.CreatePIDFile(path)
	if err != nil {
		t.Fatalf("empty lock file: %v", err)
	}
	p.Close()
}

func TestParseLockRecord(t *testing.T) {
	t.Parallel()
	for _, pids := range [][2]int{{0, 0}, {1, 0}, {4194304, 4194303}, {12, 4194304}} {
		b := supervise.AppendLockRecord([]byte("x"), "app.pid", pids[0], pids[1])[1:]
		pid, prev, err := supervise.ParseLockRecord(b, "app.pid")
		if d := cmp.Diff(pids, [2]int{pid, prev}); d != "" || err != nil {
			t.Errorf("ParseLockRecord(%q) (-want +got):\n%s err %v", b, d, err)
		}
	}
	good := string(supervise.AppendLockRecord(nil, "app.pid", 1234, 0))
	for _, in := range []string{
		"", good[:len(good)-1], good + "\n", strings.Replace(good, "1234", "1235", 1),
		strings.ToUpper(good), strings.Replace(good, "0001234", "4194305", 1),
		strings.Replace(good, " 0000000 ", "+0000000 ", 1),
		// Another pid file's record.
		string(supervise.AppendLockRecord(nil, "web.pid", 1234, 0)),
	} {
		if pid, prev, err := supervise.ParseLockRecord([]byte(in), "app.pid"); !errors.Is(err, supervise.ErrBadPIDFile) {
			t.Errorf("ParseLockRecord(%q) = %d, %d, %v; want ErrBadPIDFile", in, pid, prev, err)
		}
	}
}

// FuzzParseLockRecord: the lock record parser never panics, accepts only
// what it would write itself, and round-trips.
func FuzzParseLockRecord(f *testing.F) {
	for _, pids := range [][2]int{{0, 0}, {1, 0}, {1234, 1233}, {4194304, 4194304}} {
		f.Add(supervise.AppendLockRecord(nil, "app.pid", pids[0], pids[1]))
	}
	f.Add([]byte("handoff-pid-lock 1 4194305 0000000 00000000 00000000\n"))
	f.Add(supervise.AppendLockRecord(nil, "web.pid", 1, 0))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		pid, prev, err := supervise.ParseLockRecord(b, "app.pid")
		if err != nil {
			if !errors.Is(err, supervise.ErrBadPIDFile) {
				t.Fatalf("error %v is not ErrBadPIDFile", err)
			}
			return
		}
		for _, n := range []int{pid, prev} {
			if n < 0 || n > 1<<22 {
				t.Fatalf("pid %d out of range", n)
			}
		}
		if w := supervise.AppendLockRecord(nil, "app.pid", pid, prev); string(w) != string(b) {
			t.Fatalf("accepted %q as %d, %d, which is written %q", b, pid, prev, w)
		}
	})
}
