//go:build linux

// Package fdcensus takes an inventory of a process's open file descriptors
// from /proc/<pid>/fd and compares inventories, so tests can prove that no
// descriptor leaked.
//
// A descriptor is identified by its number and by the object it refers to
// (the device and inode from fstat, plus the link text such as
// "socket:[1234]"), so a leaked descriptor cannot hide behind an unrelated
// one that happened to be closed.
//
// The Go runtime's own descriptors (the netpoller's epoll instance and its
// wake-up eventfd) are created on first use and live for the process
// lifetime. Take starts the netpoller before its first inventory of this
// process, so they are part of every baseline; nothing is filtered, and an
// epoll or eventfd leaked by code under test is caught like any other. Tests
// that verify the census of their own process must not call t.Parallel,
// since a parallel test's descriptors would be counted too.
//
// Garbage collection is held off (GOGC=off, no memory limit) while a census
// of this process settles, and by Verify from the moment the test body
// returns, because the runtime closes an unreachable *os.File, os.Pipe end,
// net.Listener or net.Conn when the collector finalizes it: a test that
// dropped one without Close would otherwise pass whenever the census's own
// allocations triggered a collection. Holds are counted, so concurrent
// Compare calls restore the caller's settings only when the last one ends.
// Nothing here calls runtime.GC. The remaining limit: a collection that runs
// during the test body, after the object became unreachable, still closes a
// dropped descriptor before the census looks, and that leak goes unseen.
// Raw descriptors (no Go object) are always seen.
//
// Linux only.
package fdcensus

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// FD describes one open descriptor.
type FD struct {
	Target string // readlink of /proc/<pid>/fd/<n>, e.g. "socket:[1234]"
	Dev    uint64
	Ino    uint64
}

// Snapshot maps descriptor numbers to what they refer to.
type Snapshot map[int]FD

var pollerOnce sync.Once

// startPoller makes the runtime open its netpoller descriptors now: a pipe
// is registered with the poller when created.
func startPoller() {
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
}

// Take inventories the descriptors of process pid; pid 0 means this process.
func Take(pid int) (Snapshot, error) {
	if pid == 0 || pid == os.Getpid() {
		pollerOnce.Do(startPoller)
	}
	dir := "/proc/self/fd"
	if pid != 0 {
		dir = "/proc/" + strconv.Itoa(pid) + "/fd"
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1)
	// The directory's own descriptor is in names; it is dropped below
	// because it no longer resolves once f is closed.
	self := int(-1)
	if pid == 0 || pid == os.Getpid() {
		if sc, scErr := f.SyscallConn(); scErr == nil {
			_ = sc.Control(func(fd uintptr) { self = int(fd) })
		}
	}
	f.Close()
	if err != nil {
		return nil, err
	}
	snap := make(Snapshot, len(names))
	for _, name := range names {
		n, err := strconv.Atoi(name)
		if err != nil || n == self {
			continue
		}
		p := filepath.Join(dir, name)
		target, err := os.Readlink(p)
		if err != nil {
			continue // closed while we looked
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			continue
		}
		snap[n] = FD{Target: target, Dev: uint64(st.Dev), Ino: uint64(st.Ino)}
	}
	return snap, nil
}

// Count returns how many descriptors in s have a target starting with prefix
// ("socket:", "pipe:", "/dev/null").
func (s Snapshot) Count(prefix string) int {
	n := 0
	for _, fd := range s {
		if strings.HasPrefix(fd.Target, prefix) {
			n++
		}
	}
	return n
}

// Inodes returns the sorted inode numbers of descriptors whose target starts
// with prefix.
func (s Snapshot) Inodes(prefix string) []uint64 {
	var out []uint64
	for _, fd := range s {
		if strings.HasPrefix(fd.Target, prefix) {
			out = append(out, fd.Ino)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Diff describes how after differs from before; empty means identical.
func Diff(before, after Snapshot) string {
	return cmp.Diff(before, after)
}

func equal(a, b Snapshot) bool {
	if len(a) != len(b) {
		return false
	}
	for n, fd := range a {
		if got, ok := b[n]; !ok || got != fd {
			return false
		}
	}
	return true
}

// gcHolds counts the callers that need the collector held off; percent and
// limit are the settings to restore when the count drops back to zero.
var gcHolds struct {
	sync.Mutex
	n       int
	percent int
	limit   int64
}

// holdGC stops the collector until the returned function is called, so a
// finalizer cannot close a descriptor that was dropped without Close while
// the census looks. A memory limit would still trigger collections with
// GOGC off, so it is lifted as well. runtime/debug.SetGCPercent(-1) returns
// only once a collection already under way has finished marking.
func holdGC() (release func()) {
	gcHolds.Lock()
	if gcHolds.n == 0 {
		gcHolds.percent = debug.SetGCPercent(-1)
		gcHolds.limit = debug.SetMemoryLimit(math.MaxInt64)
	}
	gcHolds.n++
	gcHolds.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			gcHolds.Lock()
			defer gcHolds.Unlock()
			gcHolds.n--
			if gcHolds.n == 0 {
				debug.SetMemoryLimit(gcHolds.limit)
				debug.SetGCPercent(gcHolds.percent)
			}
		})
	}
}

// Settle is how long Verify and WaitEqual wait for descriptors closed
// asynchronously (by exiting goroutines or children) before declaring a leak.
const Settle = 3 * time.Second

// WaitEqual polls the census of pid until it equals want or Settle elapses.
// It returns the last difference, or "" when equal. For this process the
// collector is held off meanwhile (see the package documentation).
func WaitEqual(pid int, want Snapshot) (string, error) {
	if pid == 0 || pid == os.Getpid() {
		defer holdGC()()
	}
	deadline := time.Now().Add(Settle)
	for {
		got, err := Take(pid)
		if err != nil {
			return "", err
		}
		// cmp.Diff allocates heavily; it runs once, on the final result.
		if equal(want, got) {
			return "", nil
		}
		if time.Now().After(deadline) {
			return Diff(want, got), nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Verify records this process's census now and registers a cleanup that
// fails t unless the census is the same again once every later cleanup has
// run. Call it first in a test, before opening anything.
//
// The collector is held off from the moment the test body returns (when
// t.Context is cancelled) until the census has settled, so a descriptor the
// body dropped without Close is not closed by a finalizer while later
// cleanups run.
func Verify(t testing.TB) {
	t.Helper()
	before, err := Take(0)
	if err != nil {
		t.Fatalf("fd census: %v", err)
	}
	// The testing package cancels t.Context just before it runs cleanups;
	// AfterFunc runs in its own goroutine, so this hold starts as soon as
	// the scheduler allows, and the cleanup below holds too in any case.
	early := make(chan func(), 1)
	stop := context.AfterFunc(t.Context(), func() { early <- holdGC() })
	t.Cleanup(func() {
		// Reported at the test's call to Verify.
		t.Helper()
		defer holdGC()()
		if !stop() {
			(<-early)()
		}
		d, err := WaitEqual(0, before)
		if err != nil {
			t.Errorf("fd census: %v", err)
			return
		}
		if d != "" {
			t.Errorf("fd census changed (-before +after):\n%s", d)
		}
	})
}

// ErrLeak is returned by Compare when descriptors differ.
var ErrLeak = errors.New("fdcensus: descriptors leaked or closed")

// Compare returns ErrLeak, with the difference, if pid's census does not
// settle back to want.
func Compare(pid int, want Snapshot) error {
	d, err := WaitEqual(pid, want)
	if err != nil {
		return err
	}
	if d != "" {
		return fmt.Errorf("%w (-want +got):\n%s", ErrLeak, d)
	}
	return nil
}
