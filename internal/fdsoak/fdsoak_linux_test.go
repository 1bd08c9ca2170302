//go:build linux

package fdsoak_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/internal/fdsoak"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{"raw-recv": rawRecvRole})
}

func TestPlan(t *testing.T) {
	for _, seq := range []int{0, 1, 2, 255, 256, 99_999, 1 << 20} {
		t.Run(fmt.Sprint(seq), func(t *testing.T) {
			idx, payload := fdsoak.Plan(fdsoak.Seed, seq, nil, nil)
			idx2, payload2 := fdsoak.Plan(fdsoak.Seed, seq, make([]int, 3), []byte("stale"))
			if diff := cmp.Diff(idx, idx2); diff != "" {
				t.Errorf("indices not reproducible (-first +second):\n%s", diff)
			}
			if !bytes.Equal(payload, payload2) {
				t.Errorf("payload not reproducible: %x, then %x", payload, payload2)
			}
			if len(idx) < 1 || len(idx) > fdsoak.MaxFDs {
				t.Errorf("%d descriptors, want 1..%d", len(idx), fdsoak.MaxFDs)
			}
			for _, j := range idx {
				if j < 0 || j >= fdsoak.PoolSize {
					t.Errorf("pool index %d out of 0..%d", j, fdsoak.PoolSize-1)
				}
			}
			if len(payload) < 9 || len(payload) > fdsoak.MaxPayload {
				t.Fatalf("payload of %d bytes, want 9..%d", len(payload), fdsoak.MaxPayload)
			}
			type header struct{ Seq, FDs int }
			want := header{seq, len(idx)}
			got := header{int(binary.BigEndian.Uint64(payload)), int(payload[8])}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("payload header (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMessage checks that the sender's view of a message is the plan's:
// the pool objects at the planned indices, by identity.
func TestMessage(t *testing.T) {
	s := fdsoak.Start(t, 10)
	var fds []int
	var payload []byte
	for seq := range 10 {
		fds, payload = s.Message(seq, fds, payload)
		idx, want := fdsoak.Plan(s.Spec.Seed, seq, nil, nil)
		if !bytes.Equal(payload, want) {
			t.Errorf("message %d: payload %x, want %x", seq, payload, want)
		}
		wantIDs := make([]fdsoak.ID, len(idx))
		for i, j := range idx {
			wantIDs[i] = s.Spec.Pool[j]
		}
		gotIDs := make([]fdsoak.ID, len(fds))
		for i, fd := range fds {
			id, err := fdsoak.Identify(fd)
			if err != nil {
				t.Fatal(err)
			}
			gotIDs[i] = id
		}
		if diff := cmp.Diff(wantIDs, gotIDs); diff != "" {
			t.Errorf("message %d: descriptors (-want +got):\n%s", seq, diff)
		}
	}
}

// delivery is what a test receiver hands the Tally for one sequence
// number; change, when set, corrupts the message first.
type delivery struct {
	seq    int
	change func(t *testing.T, payload []byte, fds []int) ([]byte, []int)
	event  string // "" to Check, else "truncated", "dropped", "fail" or "leak"
}

// outcome is a Report with the texts reduced to what a test can assert.
type outcome struct {
	fdsoak.Report
	ErrorCount int
	Leaked     bool
}

// checkReport compares got, reduced to an outcome, with want.
func checkReport(t *testing.T, want outcome, got fdsoak.Report) {
	t.Helper()
	o := outcome{Report: got, ErrorCount: len(got.Errors), Leaked: got.Census != ""}
	o.Errors, o.Census = nil, ""
	if diff := cmp.Diff(want, o); diff != "" {
		t.Errorf("report (-want +got):\n%s\nerrors: %q\ncensus: %s", diff, got.Errors, got.Census)
	}
}

// receive runs Receive in this process and decodes its report.
func receive(t *testing.T, spec fdsoak.Spec, receivers int, recv func(int, *fdsoak.Tally)) fdsoak.Report {
	t.Helper()
	var out bytes.Buffer
	if err := fdsoak.Receive(&out, spec, receivers, recv); err != nil {
		t.Fatal(err)
	}
	var r fdsoak.Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("report %q: %v", out.String(), err)
	}
	return r
}

func seqs(from, to int) []delivery {
	var d []delivery
	for seq := from; seq < to; seq++ {
		d = append(d, delivery{seq: seq})
	}
	return d
}

func join(parts ...[]delivery) []delivery {
	var d []delivery
	for _, p := range parts {
		d = append(d, p...)
	}
	return d
}

func TestReceive(t *testing.T) {
	const n = 8
	flip := func(t *testing.T, p []byte, fds []int) ([]byte, []int) {
		p[len(p)-1] ^= 1
		return p, fds
	}
	for _, tt := range []struct {
		name  string
		recv  [][]delivery // per receiver
		want  func(r *fdsoak.Report)
		errs  int
		leaks bool
	}{
		{name: "every message once", recv: [][]delivery{seqs(0, n)}},
		{name: "two receivers", recv: [][]delivery{
			{{seq: 0}, {seq: 2}, {seq: 4}, {seq: 6}},
			{{seq: 1}, {seq: 3}, {seq: 5}, {seq: 7}},
		}},
		{name: "duplicate", recv: [][]delivery{seqs(0, n), {{seq: 3}}},
			want: func(r *fdsoak.Report) { r.Duplicates = 1 }},
		{name: "missing", recv: [][]delivery{join(seqs(0, 5), seqs(6, n))},
			want: func(r *fdsoak.Report) { r.Missing = 1 }},
		{name: "reordered", recv: [][]delivery{join(seqs(0, 3), seqs(4, 5), seqs(3, 4), seqs(5, n))},
			want: func(r *fdsoak.Report) { r.Reordered = 1 }},
		{name: "payload differs", recv: [][]delivery{join(seqs(0, 5), []delivery{{seq: 5, change: flip}}, seqs(6, n))},
			want: func(r *fdsoak.Report) { r.Mismatches = 1 }, errs: 1},
		{name: "other object", recv: [][]delivery{join(seqs(0, 5), []delivery{{seq: 5, change: func(t *testing.T, p []byte, fds []int) ([]byte, []int) {
			unix.Close(fds[0])
			fd, err := unix.MemfdCreate("other", unix.MFD_CLOEXEC)
			if err != nil {
				t.Error(err) // fds[0] is closed: the message still mismatches
				return p, fds
			}
			fds[0] = fd
			return p, fds
		}}}, seqs(6, n))},
			want: func(r *fdsoak.Report) { r.Mismatches = 1 }, errs: 1},
		{name: "descriptor missing", recv: [][]delivery{join(seqs(0, 5), []delivery{{seq: 5, change: func(t *testing.T, p []byte, fds []int) ([]byte, []int) {
			unix.Close(fds[len(fds)-1])
			return p, fds[:len(fds)-1]
		}}}, seqs(6, n))},
			want: func(r *fdsoak.Report) { r.Mismatches = 1 }, errs: 1},
		{name: "short payload", recv: [][]delivery{join(seqs(0, 5), []delivery{{seq: 5, change: func(t *testing.T, p []byte, fds []int) ([]byte, []int) {
			return p[:7], fds
		}}}, seqs(6, n))},
			want: func(r *fdsoak.Report) { r.Mismatches, r.Missing = 1, 1 }, errs: 1},
		{name: "sequence out of range", recv: [][]delivery{join(seqs(0, 5), []delivery{{seq: 5, change: func(t *testing.T, p []byte, fds []int) ([]byte, []int) {
			binary.BigEndian.PutUint64(p, n)
			return p, fds
		}}}, seqs(6, n))},
			want: func(r *fdsoak.Report) { r.Mismatches, r.Missing = 1, 1 }, errs: 1},
		{name: "truncated", recv: [][]delivery{join(seqs(0, 5), []delivery{{seq: 5, event: "truncated"}}, seqs(6, n))},
			want: func(r *fdsoak.Report) { r.Truncations, r.Missing = 1, 1 }, errs: 1},
		{name: "dropped", recv: [][]delivery{join(seqs(0, 5), []delivery{{seq: 5, event: "dropped"}}, seqs(6, n))},
			want: func(r *fdsoak.Report) { r.Dropped, r.Missing = 1, 1 }, errs: 1},
		{name: "receiver error", recv: [][]delivery{join(seqs(0, 5), []delivery{{seq: 5, event: "fail"}})},
			want: func(r *fdsoak.Report) { r.Missing = 3 }, errs: 1},
		{name: "errors capped", recv: [][]delivery{
			{{seq: 0, change: flip}, {seq: 1, change: flip}, {seq: 2, change: flip}, {seq: 3, change: flip}},
			{{seq: 4, change: flip}, {seq: 5, change: flip}, {seq: 6, change: flip}, {seq: 7, change: flip}},
		}, want: func(r *fdsoak.Report) { r.Mismatches = n }, errs: fdsoak.MaxErrors},
		{name: "descriptor leaked", recv: [][]delivery{join(seqs(0, 5), []delivery{{seq: 5, event: "leak"}}, seqs(6, n))},
			leaks: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := fdsoak.Start(t, n)
			// The copies a receiver hands the Tally are made while Receive
			// runs, as received descriptors would be, so its census sees
			// them come and go.
			leaked := make([][]int, len(tt.recv))
			delivered := make([]fdsoak.Report, len(tt.recv))
			t.Cleanup(func() {
				for _, fds := range leaked {
					closeAll(fds)
				}
			})
			// Message is for one sending goroutine: plan here, before the
			// receivers run.
			type message struct {
				fds     []int // the pool's
				payload []byte
			}
			msgs := make([]message, n)
			for seq := range msgs {
				msgs[seq].fds, msgs[seq].payload = s.Message(seq, nil, nil)
			}
			got := receive(t, s.Spec, len(tt.recv), func(i int, tl *fdsoak.Tally) {
				for _, d := range tt.recv[i] {
					switch d.event {
					case "truncated":
						tl.Truncated(errors.New("truncated"))
						continue
					case "dropped":
						tl.Dropped(errors.New("dropped"))
						continue
					case "fail":
						tl.Fail(errors.New("receiver failed"))
						return
					}
					got, err := dupAll(msgs[d.seq].fds)
					if err != nil {
						t.Error(err)
						return
					}
					p := append([]byte(nil), msgs[d.seq].payload...)
					if d.change != nil {
						p, got = d.change(t, p, got)
					}
					if d.event == "leak" {
						kept, err := dupAll(got[:1])
						if err != nil {
							t.Error(err)
						}
						leaked[i] = append(leaked[i], kept...)
					}
					delivered[i].Messages++
					delivered[i].FDs += len(got)
					tl.Check(p, got)
				}
			})
			var want fdsoak.Report
			for _, d := range delivered {
				want.Messages += d.Messages
				want.FDs += d.FDs
			}
			if tt.want != nil {
				tt.want(&want)
			}
			checkReport(t, outcome{Report: want, ErrorCount: tt.errs, Leaked: tt.leaks}, got)
		})
	}
}

func TestReceiveRejectsSpec(t *testing.T) {
	pool := make([]fdsoak.ID, fdsoak.PoolSize)
	for _, tt := range []struct {
		name      string
		spec      fdsoak.Spec
		receivers int
	}{
		{"negative messages", fdsoak.Spec{Messages: -1, Pool: pool}, 1},
		{"too many messages", fdsoak.Spec{Messages: 1 << 30, Pool: pool}, 1},
		{"short pool", fdsoak.Spec{Messages: 1, Pool: pool[:1]}, 1},
		{"no receivers", fdsoak.Spec{Messages: 1, Pool: pool}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			err := fdsoak.Receive(io.Discard, tt.spec, tt.receivers, func(int, *fdsoak.Tally) { called = true })
			if !errors.Is(err, fdsoak.ErrSpec) || called {
				t.Errorf("Receive: %v, receiver called: %v; want ErrSpec and no call", err, called)
			}
		})
	}
}

func TestInheritedRejectsSpec(t *testing.T) {
	for _, sockets := range []int{-1, 0, 65} {
		t.Run(fmt.Sprint(sockets), func(t *testing.T) {
			_, err := fdsoak.Inherited(fdsoak.Spec{Sockets: sockets}, func(int) (*net.UnixConn, error) {
				t.Error("open called")
				return nil, errors.New("unreachable")
			})
			if !errors.Is(err, fdsoak.ErrSpec) {
				t.Errorf("Inherited: %v, want ErrSpec", err)
			}
		})
	}
}

func TestParseArg(t *testing.T) {
	type spec struct {
		fdsoak.Spec
		Extra string
	}
	want := spec{fdsoak.Spec{Sockets: 2, Messages: 3, Seed: 4, Deadline: time.Unix(5, 6).UTC(), Pool: []fdsoak.ID{{7, 8}}}, "x"}
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr error
	}{
		{"round trip", []string{fdsoak.Arg(t, want)}, nil},
		{"no argument", nil, fdsoak.ErrSpec},
		{"two arguments", []string{fdsoak.Arg(t, want), "{}"}, fdsoak.ErrSpec},
		{"not JSON", []string{"{"}, fdsoak.ErrSpec},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got spec
			err := fdsoak.ParseArg(tt.args, &got)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseArg: %v, want %v", err, tt.wantErr)
			}
			if err == nil {
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("spec (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// rawSpec is the spec of TestRun's helper.
type rawSpec struct {
	fdsoak.Spec
	Leak bool // keep a copy of one received descriptor
}

// TestRun runs whole cases over a minimal transport (SOCK_SEQPACKET with
// the standard library's WriteMsgUnix/ReadMsgUnix), and shows that a
// message the sender skips and a descriptor the helper keeps each make the
// case fail.
func TestRun(t *testing.T) {
	const n = 200
	for _, tt := range []struct {
		name   string
		skip   int // sequence number the sender leaves out; -1 for none
		leak   bool
		change func(want *fdsoak.Report, skipped int)
	}{
		{"clean", -1, false, nil},
		{"sender skips a message", 7, false, func(r *fdsoak.Report, k int) { r.Messages, r.FDs, r.Missing = r.Messages-1, r.FDs-k, 1 }},
		{"helper keeps a descriptor", -1, true, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := fdsoak.Start(t, n)
			pc := proccensus.New(t)
			ucs := s.Connect(t, 2, rawPair)
			cmd := helperproc.Command(t, "raw-recv", &helperproc.Options{
				ExtraFiles: s.Remotes(),
				Env:        []string{pc.Env()},
				Args:       []string{fdsoak.Arg(t, rawSpec{s.Spec, tt.leak})},
			})
			cmd.Stdout = s.Output()
			helperproc.Start(t, cmd)
			skipped := 0
			got, want := s.Run(t, cmd, func(ctx context.Context) error {
				var fds []int
				var payload []byte
				for seq := range n {
					if err := ctx.Err(); err != nil {
						return err
					}
					fds, payload = s.Message(seq, fds, payload)
					if seq == tt.skip {
						skipped = len(fds)
						continue
					}
					if _, _, err := ucs[seq%len(ucs)].WriteMsgUnix(payload, unix.UnixRights(fds...), nil); err != nil {
						return fmt.Errorf("message %d: %w", seq, err)
					}
				}
				return nil
			})
			if tt.change != nil {
				tt.change(&want, skipped)
			}
			checkReport(t, outcome{Report: want, Leaked: tt.leak}, got)
		})
	}
}

// rawPair is a SOCK_SEQPACKET socketpair as Soak.Connect wants it.
func rawPair() (*net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	near, err := rawOpen(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return near, os.NewFile(uintptr(fds[1]), "far"), nil
}

// rawOpen makes a *net.UnixConn of fd, taking ownership of it.
func rawOpen(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// rawRecvRole is TestRun's helper.
func rawRecvRole() int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "raw-recv: %v\n", err)
		return 1
	}
	var spec rawSpec
	if err := fdsoak.ParseArg(helperproc.Args(), &spec); err != nil {
		return fail(err)
	}
	ucs, err := fdsoak.Inherited(spec.Spec, rawOpen)
	if err != nil {
		return fail(err)
	}
	for _, uc := range ucs {
		defer uc.Close()
	}
	err = fdsoak.Receive(os.Stdout, spec.Spec, len(ucs), func(i int, tl *fdsoak.Tally) {
		rawRecv(ucs[i], spec.Messages, spec.Leak && i == 0, tl)
	})
	if err != nil {
		return fail(err)
	}
	return 0
}

// rawRecv receives messages until end of stream, n+1 at most; with leak
// it keeps a copy of the first descriptor it receives.
func rawRecv(uc *net.UnixConn, n int, leak bool, tl *fdsoak.Tally) {
	buf := make([]byte, fdsoak.MaxPayload+1)
	oob := make([]byte, unix.CmsgSpace(4*fdsoak.MaxFDs))
	for range n + 1 {
		m, oobn, flags, _, err := uc.ReadMsgUnix(buf, oob)
		if errors.Is(err, io.EOF) || err == nil && m == 0 && oobn == 0 {
			return
		}
		if err != nil {
			tl.Fail(err)
			return
		}
		var fds []int
		cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			tl.Fail(err)
			return
		}
		for _, c := range cmsgs {
			got, err := unix.ParseUnixRights(&c)
			if err != nil {
				tl.Fail(err)
				return
			}
			fds = append(fds, got...)
		}
		if flags&unix.MSG_CTRUNC != 0 {
			closeAll(fds)
			tl.Truncated(errors.New("MSG_CTRUNC"))
			continue
		}
		if leak && len(fds) > 0 {
			if _, err := unix.FcntlInt(uintptr(fds[0]), unix.F_DUPFD_CLOEXEC, 0); err != nil {
				tl.Fail(err)
			}
			leak = false
		}
		tl.Check(buf[:m], fds)
	}
	tl.Fail(errors.New("no end of stream after every message"))
}

// dupAll returns close-on-exec copies of fds.
func dupAll(fds []int) ([]int, error) {
	out := make([]int, len(fds))
	for i, fd := range fds {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			closeAll(out[:i])
			return nil, os.NewSyscallError("fcntl", err)
		}
		out[i] = d
	}
	return out, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
