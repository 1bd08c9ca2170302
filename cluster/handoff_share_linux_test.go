//go:build linux

package cluster_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
)

func init() {
	workerVariants["hoaddr"] = hoAddrWorker
}

// TestHandoffListenersShareName: a worker may hold several listeners of
// one name, as Listen promises ("every call returns a new net.Listener");
// connections go to whichever accepts, Close of one leaves the others
// served (what was queued included), and the last Close gives back what
// is left. A second listener of a name used to be refused ("already
// listening").
func TestHandoffListenersShareName(t *testing.T) {
	fdcensus.Verify(t)
	r, lns := rig(t, "tcp")
	name := r.Names()[0]
	addr := lns[0].Addr().String()
	w, err := r.AddWorker()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	l1, err := w.Listen(name)
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	l2, err := w.Listen(name)
	if err != nil {
		t.Fatalf("second listener of %s: %v", name, err)
	}
	defer l2.Close()

	const n = 8
	dialN(t, addr, n)
	got := append(acceptN(t, l1, n/2), acceptN(t, l2, n/2)...)
	if diff := cmp.Diff(seq(n), sortedInts(got)); diff != "" {
		t.Errorf("connections the two listeners accepted (-want +got):\n%s", diff)
	}

	// Queued for the name when l1 closes: l2 serves them.
	dialN(t, addr, n)
	waitUntil(t, "connections delivered", 5*time.Second, func() bool {
		o := r.Outstanding()
		return len(o) == 1 && o[0] == n
	})
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l1.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if diff := cmp.Diff(seq(n), acceptN(t, l2, n)); diff != "" {
		t.Errorf("connections l2 accepted after l1 closed (-want +got):\n%s", diff)
	}
	// Still subscribed: new connections come too.
	dialN(t, addr, 2)
	if diff := cmp.Diff(seq(2), acceptN(t, l2, 2)); diff != "" {
		t.Errorf("new connections after l1 closed (-want +got):\n%s", diff)
	}

	// The last Close gives back what is queued; another worker gets it.
	dialN(t, addr, n)
	waitUntil(t, "connections delivered", 5*time.Second, func() bool {
		o := r.Outstanding()
		return len(o) == 1 && o[0] == n
	})
	lb := workerOn(t, r, name)
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(seq(n), acceptN(t, lb, n)); diff != "" {
		t.Errorf("connections the other worker accepted (-want +got):\n%s", diff)
	}

	// A listener of the name again, once all were closed.
	l3, err := w.Listen(name)
	if err != nil {
		t.Fatalf("listener after the last Close: %v", err)
	}
	defer l3.Close()
}

// hoAddrWorker is a handoff-mode worker. It listens on 127.0.0.1:0 (the
// master binds it), then again on the same address, and
// twice on its inherited socket (""), serves every listener with "ho
// <pid>", and sends "hoaddr <Addr type> port <bound port not 0?> again
// <error> <same address?> inherited <error> <error>" and "addr <address>".
func hoAddrWorker() int {
	ctx := cluster.Context()
	serve := func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "ho %d\n", os.Getpid())
			c.Close()
		}
	}
	a, err := cluster.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		cluster.Send(fmt.Appendf(nil, "hoaddr listen: %v", err))
		<-cluster.Done()
		return 0
	}
	defer a.Close()
	go serve(a)
	tcp, ok := a.Addr().(*net.TCPAddr)
	same := false
	// Port 0 is bound once for the cluster: the same socket again.
	b, errB := cluster.Listen(ctx, "tcp", "127.0.0.1:0")
	if b != nil {
		defer b.Close()
		go serve(b)
		same = b.Addr().String() == a.Addr().String()
	}
	var errs []error
	for range 2 {
		c, err := cluster.Listen(ctx, "tcp", "")
		if c != nil {
			defer c.Close()
			go serve(c)
		}
		errs = append(errs, err)
	}
	cluster.Send(fmt.Appendf(nil, "hoaddr %T port %v again %v %v inherited %v %v", a.Addr(), ok && tcp.Port != 0, errB, same, errs[0], errs[1]))
	cluster.Send(fmt.Appendf(nil, "addr %s", a.Addr()))
	if err := cluster.Ready(); err != nil {
		return 3
	}
	<-cluster.Done()
	return 0
}

// hoGet connects to addr and returns the first line it reads.
func hoGet(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return bufio.NewReader(c).ReadString('\n')
}

// TestHandoffWorkerListenAddr: in handoff mode, Listen for a socket the
// master binds on request returns a listener whose Addr is the bound
// *net.TCPAddr (port 0 resolved), not the socket's name; Listen again, for
// that socket or the inherited one, returns another listener of the
// same name (it used to fail with "already listening"), and connections
// reach the worker through each.
func TestHandoffWorkerListenAddr(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := startClusterWith(t, pc, 1, 0, nil, func(cfg *cluster.Config) { cfg.Mode = cluster.ModeHandoff },
		bin, []string{"-test.run=^$"}, helperproc.RoleVar+"=go-worker", "W_VARIANT=hoaddr")
	got := string(c.collect(1, "hoaddr ")[0].Payload)
	if want := "hoaddr *net.TCPAddr port true again <nil> true inherited <nil> <nil>"; got != want {
		t.Fatalf("worker: %q, want %q", got, want)
	}
	bound := strings.TrimPrefix(string(c.collect(1, "addr ")[0].Payload), "addr ")
	pid := c.slotPIDs(1)[0]
	for _, addr := range []string{bound, c.m.Addrs()[0].String()} {
		line, err := hoGet(addr)
		if want := fmt.Sprintf("ho %d\n", pid); err != nil || line != want {
			t.Errorf("%s: %q, %v; want %q", addr, line, err, want)
		}
	}
}
