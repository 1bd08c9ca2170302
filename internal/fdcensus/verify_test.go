//go:build linux

package fdcensus_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// fakeTB records what Verify reports instead of failing the real test, and
// runs cleanups as the testing package does: context cancelled first, then
// last-registered first.
type fakeTB struct {
	testing.TB
	ctx      context.Context
	cancel   context.CancelFunc
	cleanups []func()
	mu       sync.Mutex
	errs     []string
}

func newFakeTB() *fakeTB {
	ctx, cancel := context.WithCancel(context.Background())
	return &fakeTB{ctx: ctx, cancel: cancel}
}

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Context() context.Context       { return f.ctx }
func (f *fakeTB) Cleanup(fn func())              { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }
func (f *fakeTB) Errorf(format string, a ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, fmt.Sprintf(format, a...))
}

func (f *fakeTB) finish() {
	f.cancel()
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// gogc reads the collector's current GOGC setting without changing it.
func gogc() int64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

var sink []byte

// allocWhileHeld waits until the collector is held off, then allocates
// garbage (bounded: at most 1000 x 64 KiB) until stop is called. Before the
// fix this garbage triggered a collection whose finalizers closed the
// dropped descriptors. It reports on t if the hold never starts.
func allocWhileHeld(t *testing.T) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		deadline := time.Now().Add(5 * time.Second)
		for gogc() >= 0 {
			if time.Now().After(deadline) {
				t.Error("collector was not held off while the census settled")
				return
			}
			select {
			case <-done:
				t.Error("census finished without holding off the collector")
				return
			case <-time.After(time.Millisecond):
			}
		}
		for range 1000 {
			sink = make([]byte, 64<<10)
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		sink = nil
	}
}

// A leak drops descriptors without closing them and returns a function that
// closes those the collector cannot (raw descriptors), or nil.
type leak struct {
	name   string
	target string // prefix of the leaked descriptors' link text
	drop   func(t *testing.T) (closeRaw func())
}

var leaks = []leak{
	{"dropped os.File", "/dev/null", func(t *testing.T) func() {
		if _, err := os.Open(os.DevNull); err != nil {
			t.Fatal(err)
		}
		return nil
	}},
	{"dropped os.Pipe", "pipe:", func(t *testing.T) func() {
		if _, _, err := os.Pipe(); err != nil {
			t.Fatal(err)
		}
		return nil
	}},
	{"dropped net.Listener", "socket:", func(t *testing.T) func() {
		if _, err := net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		return nil
	}},
	{"dropped net.Conn", "socket:", func(t *testing.T) func() {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if _, err := net.Dial("tcp", ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
		peer, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		peer.Close()
		return nil
	}},
	{"raw descriptor", "socket:", func(t *testing.T) func() {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return func() { unix.Close(fd) }
	}},
}

// reclaim closes what a leak left: the raw descriptor directly, dropped Go
// objects by collecting them. It fails t if the census does not return to
// baseline, which would mean the leak kept a reference and so proved
// nothing about finalizers.
func reclaim(t *testing.T, baseline fdcensus.Snapshot, closeRaw func()) {
	t.Helper()
	if closeRaw != nil {
		closeRaw()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
		now, err := fdcensus.Take(0)
		if err != nil {
			t.Fatal(err)
		}
		d := fdcensus.Diff(baseline, now)
		if d == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaked descriptors not reclaimed (-baseline +now):\n%s", d)
		}
	}
}

func TestVerifyFailsOnDroppedDescriptor(t *testing.T) {
	for _, tt := range leaks {
		t.Run(tt.name, func(t *testing.T) {
			baseline, err := fdcensus.Take(0)
			if err != nil {
				t.Fatal(err)
			}
			percent := gogc()
			ft := newFakeTB()
			fdcensus.Verify(ft)
			closeRaw := tt.drop(t)
			stop := allocWhileHeld(t)
			ft.finish()
			stop()
			if got := gogc(); got != percent {
				t.Errorf("GOGC after Verify = %d, want %d restored", got, percent)
			}
			if len(ft.errs) != 1 || !strings.Contains(ft.errs[0], "fd census changed") || !strings.Contains(ft.errs[0], tt.target) {
				t.Errorf("Verify reported %q, want one census change naming %q", ft.errs, tt.target)
			}
			reclaim(t, baseline, closeRaw)
		})
	}
}

func TestVerifyPasses(t *testing.T) {
	tests := []struct {
		name string
		body func(t *testing.T, ft *fakeTB)
	}{
		{"nothing opened", func(*testing.T, *fakeTB) {}},
		{"closed", func(t *testing.T, _ *fakeTB) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			r.Close()
			w.Close()
		}},
		{"closed by a later cleanup", func(t *testing.T, ft *fakeTB) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ft.Cleanup(func() { ln.Close() })
		}},
		{"closed by a goroutine after the body", func(t *testing.T, _ *fakeTB) {
			f, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				time.Sleep(200 * time.Millisecond)
				f.Close()
			}()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			percent := gogc()
			ft := newFakeTB()
			fdcensus.Verify(ft)
			tt.body(t, ft)
			ft.finish()
			if len(ft.errs) != 0 {
				t.Errorf("Verify reported %q, want nothing", ft.errs)
			}
			if got := gogc(); got != percent {
				t.Errorf("GOGC after Verify = %d, want %d restored", got, percent)
			}
		})
	}
}

func TestCompareFailsOnDroppedDescriptors(t *testing.T) {
	baseline, err := fdcensus.Take(0)
	if err != nil {
		t.Fatal(err)
	}
	var raws []func()
	for _, tt := range leaks {
		if c := tt.drop(t); c != nil {
			raws = append(raws, c)
		}
	}
	stop := allocWhileHeld(t)
	err = fdcensus.Compare(0, baseline)
	stop()
	if !errors.Is(err, fdcensus.ErrLeak) {
		t.Errorf("Compare after dropping descriptors = %v, want ErrLeak", err)
	} else {
		for _, tt := range leaks {
			if !strings.Contains(err.Error(), tt.target) {
				t.Errorf("Compare's report lacks %q (%s):\n%v", tt.target, tt.name, err)
			}
		}
	}
	reclaim(t, baseline, func() {
		for _, c := range raws {
			c()
		}
	})
}

// Two Compare calls that overlap must leave the collector held until the
// second ends, and restore the original setting after it.
func TestOverlappingComparesRestoreGC(t *testing.T) {
	fdcensus.Verify(t)
	percent := gogc()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A census without f: each Compare runs for the full Settle.
	want, err := fdcensus.Take(0)
	if err != nil {
		t.Fatal(err)
	}
	for n, fd := range want {
		if fd.Target == os.DevNull {
			delete(want, n)
		}
	}
	first := make(chan error, 1)
	go func() { first <- fdcensus.Compare(0, want) }()
	deadline := time.Now().Add(fdcensus.Settle)
	for gogc() >= 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(fdcensus.Settle / 2)
	second := make(chan error, 1)
	go func() { second <- fdcensus.Compare(0, want) }()
	if err := <-first; !errors.Is(err, fdcensus.ErrLeak) {
		t.Errorf("first Compare = %v, want ErrLeak", err)
	}
	cycles := gcCycles()
	sink = make([]byte, 64<<20)
	sink = nil
	if got := gogc(); got >= 0 {
		t.Errorf("GOGC = %d while the second Compare runs, want off", got)
	}
	if got := gcCycles(); got != cycles {
		t.Errorf("%d collections while the second Compare runs, want 0", got-cycles)
	}
	if err := <-second; !errors.Is(err, fdcensus.ErrLeak) {
		t.Errorf("second Compare = %v, want ErrLeak", err)
	}
	if got := gogc(); got != percent {
		t.Errorf("GOGC after both = %d, want %d restored", got, percent)
	}
}

func TestTakeOfChild(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	cmd := exec.Command("sleep", "30")
	cmd.Env = append(os.Environ(), c.Env())
	cmd.ExtraFiles = []*os.File{null, w}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if _, err := fdcensus.Take(pid); err == nil {
			t.Errorf("Take(%d) of a reaped child succeeded", pid)
		}
	})
	stat := func(f *os.File) (uint64, uint64) {
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return uint64(st.Dev), st.Ino
	}
	nullDev, nullIno := stat(null)
	pipeDev, pipeIno := stat(w)
	want := fdcensus.Snapshot{
		3: {Target: os.DevNull, Dev: nullDev, Ino: nullIno},
		4: {Target: fmt.Sprintf("pipe:[%d]", pipeIno), Dev: pipeDev, Ino: pipeIno},
	}
	snap, err := fdcensus.Take(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Descriptors the test process inherited without close-on-exec reach
	// the child too; only 3 and 4 are the test's.
	got := fdcensus.Snapshot{}
	for n := range want {
		if fd, ok := snap[n]; ok {
			got[n] = fd
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Take(child) descriptors 3 and 4 (-want +got):\n%s", d)
	}
	if err := fdcensus.Compare(pid, snap); err != nil {
		t.Errorf("Compare(child, its own census) = %v", err)
	}
	delete(snap, 4)
	if err := fdcensus.Compare(pid, snap); !errors.Is(err, fdcensus.ErrLeak) {
		t.Errorf("Compare(child) with an extra pipe = %v, want ErrLeak", err)
	}
}
