//go:build linux

package cluster

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/scmrights"
)

// TestAdoptBindsPortZeroName: a listener the master bound for a worker's
// request of port 0 is named after the port bound; the image an in-place
// upgrade starts names it the same when it adopts it (the old code named
// it after the request, tcp-127.0.0.1-0, so old workers' carried
// subscriptions were dropped and their give-backs, for an unknown
// listener, got them killed). Listen requests of that address are still
// served from the adopted listener, and an "h" record's subscription to
// its descriptor resolves to its name.
func TestAdoptBindsPortZeroName(t *testing.T) {
	fdcensus.Verify(t)
	a, err := ParseAddr("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The old image's bind.
	l, err := bindFor(a, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	if strings.HasSuffix(l.name, "-0") {
		t.Fatalf("bound listener named %q, after the port asked for", l.name)
	}
	// The new image: the descriptor kept across the exec, as a B record.
	fd, err := scmrights.Dup(l.file)
	if err != nil {
		t.Fatal(err)
	}
	m := &master{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	m.mode.ho = newHandoff(m)
	defer m.mode.ho.stop()
	binds := []namedFD{{name: a.String(), fd: fd}}
	m.up = &upgrade{state: &upgradeState{pidLock: -1, binds: binds}}
	m.adoptBinds(binds)
	adopted := m.ctl.binds[a.String()]
	if adopted == nil {
		t.Fatal("bound listener not adopted")
	}
	defer adopted.close()
	if adopted.name != l.name {
		t.Errorf("adopted listener named %q, the old image named it %q", adopted.name, l.name)
	}
	if _, ok := m.mode.ho.byName[l.name]; !ok {
		t.Errorf("the dispatcher has no listener %q", l.name)
	}
	if diff := cmp.Diff([]string{l.name}, m.carriedNames([]int{fd})); diff != "" {
		t.Errorf("carried subscription (-want +got):\n%s", diff)
	}
	got, bound, err := m.bindShared("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if got != adopted || bound {
		t.Errorf("Listen of %s after the upgrade: listener %q (bound anew: %v), want the adopted one", a, got.name, bound)
	}
}
