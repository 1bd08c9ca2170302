//go:build linux

package cluster_test

import (
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

// TestHandoffRescueUnread: connections the master delivered to a worker
// that never read them (hung, then killed; or crashed under load) are
// still queued on its channel when it dies. The master kept its own copy
// of the worker's end, so the queue outlives the worker: it takes them
// back and passes them to other workers, none reset, each listener's on
// its own (the two subscribers arrive one after the other). The master
// learns of the death from the supervisor ("exited"), or, for a worker
// that closed its end and lives on, finds the end gone from the process's
// descriptors ("closed, alive": a real process that never held it).
func TestHandoffRescueUnread(t *testing.T) {
	for _, tc := range []struct {
		name   string
		exited bool
	}{
		{"exited", true},
		{"closed, alive", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcensus.Verify(t)
			pc := proccensus.New(t)
			r, lns := rig(t, "tcp", "tcp")
			names := r.Names()
			var a *net.UnixConn
			var pid int
			var err error
			if tc.exited {
				a, pid, err = r.AddRawPeer()
			} else {
				sleeper := exec.Command("sleep", "30")
				sleeper.Env = append(os.Environ(), pc.Env())
				helperproc.Start(t, sleeper)
				a, err = r.AddRawPeerAs(sleeper.Process.Pid)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			for _, name := range names {
				if _, err := a.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
					t.Fatal(err)
				}
			}
			// Two listeners, so the rescue splits what it reads back.
			const n = 24
			dialN(t, lns[0].Addr().String(), n)
			dialN(t, lns[1].Addr().String(), n)
			waitUntil(t, "connections delivered to the worker, unread", 5*time.Second, func() bool {
				return cmp.Equal([]int{2 * n}, r.Outstanding())
			})
			a.Close() // the worker's end goes without a read
			if tc.exited {
				r.Exited(pid)
			}
			// Listener 1's subscriber comes only after listener 0's
			// connections are all accepted.
			for i, name := range names {
				if diff := cmp.Diff(seq(n), acceptN(t, workerOn(t, r, name), n)); diff != "" {
					t.Errorf("listener %d: connections rescued from the gone worker (-want +got):\n%s", i, diff)
				}
			}
			waitUntil(t, "gone worker out of the rotation", 5*time.Second, func() bool { return r.Workers() == 2 })
		})
	}
}

// TestHandoffRetiredNotKilled: an old worker adopted after an upgrade, with
// the old image's copy of its end carried over, is never killed by the
// check for workers that closed their end and live on: it is sent nothing,
// and one that closes its channel while it drains slow requests must be
// left to finish them. A real process that never held the end stands for
// it, past the 2 s of silence that check waits for.
func TestHandoffRetiredNotKilled(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	r, _ := rig(t, "tcp")
	sleeper := exec.Command("sleep", "30")
	sleeper.Env = append(os.Environ(), pc.Env())
	helperproc.Start(t, sleeper)
	pid := sleeper.Process.Pid
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := unix.FcntlInt(uintptr(pair[1]), unix.F_DUPFD_CLOEXEC, 0)
	unix.Close(pair[1]) // the worker's own end: gone from its process
	if err != nil {
		unix.Close(pair[0])
		t.Fatal(err)
	}
	if err := r.AdoptOldPeerAs(os.NewFile(uintptr(pair[0]), "old-master"), peer, pid); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3500 * time.Millisecond)
	if p, ok := proccensus.Stat(pid); !ok || p.State == 'Z' {
		t.Errorf("the retired worker was killed: %+v, %v", p, ok)
	}
}

// TestHandoffWaitsForReady: under -ready notify a worker that subscribed is
// sent nothing until it reported ready, so a new worker that hangs or dies
// before READY=1 holds no connection (TESTPLAN C3, C11 in handoff mode):
// they wait in the master, and go to the worker once it is ready.
func TestHandoffWaitsForReady(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	r.GateOnReady()
	name := r.Names()[0]
	a, pid, err := r.AddRawPID()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Write(cluster.EncodeHandoffName(cluster.HoSub, name)); err != nil {
		t.Fatal(err)
	}
	const n = 5
	dialN(t, lns[0].Addr().String(), n)
	// Long enough for a delivery to show.
	time.Sleep(200 * time.Millisecond)
	if got := r.Outstanding(); !cmp.Equal([]int{0}, got) {
		t.Fatalf("outstanding %v before READY=1, want [0]", got)
	}
	r.MarkReady(pid)
	closeFDs(recvConns(t, a, n)) // fails the test unless all n arrive
}
