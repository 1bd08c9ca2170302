//go:build linux

package fdsoak

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"golang.org/x/sys/unix"
)

// ErrSpec is returned by ParseArg, Inherited and Receive for a spec they
// cannot work with.
var ErrSpec = errors.New("fdsoak: invalid spec")

// maxMessages bounds Spec.Messages, far above Messages(), so a corrupt spec
// cannot make Receive allocate without limit.
const maxMessages = 1 << 24

// maxSockets bounds Spec.Sockets likewise.
const maxSockets = 64

// checker holds what every receiving goroutine shares.
type checker struct {
	spec Spec
	seen []atomic.Int32 // deliveries per sequence number
}

// Tally is one receiving goroutine's account. It is not safe for
// concurrent use: each goroutine Receive runs has its own.
type Tally struct {
	chk  *checker
	rep  Report // Missing and Census stay zero here; Receive fills them
	last int    // last sequence number this goroutine received
	idx  []int
	want []byte
}

// Fail records err in the report (the first MaxErrors texts are kept)
// without counting it in any class: a transport error that ends a
// receiver shows up as Missing messages.
func (tl *Tally) Fail(err error) {
	if len(tl.rep.Errors) < MaxErrors {
		tl.rep.Errors = append(tl.rep.Errors, err.Error())
	}
}

// Truncated counts a message whose descriptors were cut (MSG_CTRUNC) or
// outnumbered the receiver's room, and records err.
func (tl *Tally) Truncated(err error) {
	tl.rep.Truncations++
	tl.Fail(err)
}

// Dropped counts a message the transport dropped whole for another reason,
// and records err.
func (tl *Tally) Dropped(err error) {
	tl.rep.Dropped++
	tl.Fail(err)
}

// Check accounts for one received message and closes its descriptors,
// whatever the verdict. The payload is untrusted: any bytes give a count,
// never a panic.
func (tl *Tally) Check(payload []byte, fds []int) {
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	tl.rep.Messages++
	tl.rep.FDs += len(fds)
	if len(payload) < 8 {
		tl.rep.Mismatches++
		tl.Fail(fmt.Errorf("payload of %d bytes", len(payload)))
		return
	}
	seq64 := binary.BigEndian.Uint64(payload)
	if seq64 >= uint64(tl.chk.spec.Messages) {
		tl.rep.Mismatches++
		tl.Fail(fmt.Errorf("sequence number %d out of range", seq64))
		return
	}
	seq := int(seq64)
	if tl.chk.seen[seq].Add(1) > 1 {
		tl.rep.Duplicates++
	}
	// Each receiver's messages are a subsequence of FIFO queues (one
	// shared socket or its own), so they must come in increasing order.
	if seq <= tl.last {
		tl.rep.Reordered++
	}
	tl.last = seq
	tl.idx, tl.want = Plan(tl.chk.spec.Seed, seq, tl.idx, tl.want)
	if string(payload) != string(tl.want) {
		tl.rep.Mismatches++
		tl.Fail(fmt.Errorf("message %d: payload differs", seq))
		return
	}
	ok := len(fds) == len(tl.idx)
	for i := 0; ok && i < len(fds); i++ {
		id, err := Identify(fds[i])
		if err != nil {
			tl.Fail(fmt.Errorf("message %d: fstat: %w", seq, err))
			ok = false
			break
		}
		ok = tl.chk.spec.Pool[tl.idx[i]] == id
	}
	if !ok {
		tl.rep.Mismatches++
		tl.Fail(fmt.Errorf("message %d: descriptors are not the planned %v", seq, tl.idx))
	}
}

// Inherited returns the helper's spec.Sockets inherited sockets,
// descriptors 3, 4, ..., opened with open (scmrights.UnixConn) and with the
// spec's read deadline set. On error it closes those it opened.
func Inherited(spec Spec, open func(fd int) (*net.UnixConn, error)) ([]*net.UnixConn, error) {
	if spec.Sockets < 1 || spec.Sockets > maxSockets {
		return nil, fmt.Errorf("%w: %d sockets", ErrSpec, spec.Sockets)
	}
	conns := make([]*net.UnixConn, 0, spec.Sockets)
	for i := range spec.Sockets {
		c, err := open(3 + i)
		if err == nil {
			conns = append(conns, c)
			err = c.SetReadDeadline(spec.Deadline)
		}
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("socket %d: %w", i, err)
		}
	}
	return conns, nil
}

// Receive is the helper's side of a case. With the transport's sockets
// already open, it takes this process's descriptor census, runs
// recv(i, tally) for i in 0..receivers-1, each in its own goroutine with
// its own Tally, and once all have returned writes the Report to w as
// JSON: the tallies summed, the sequence numbers never delivered, and the
// census difference. recv must return at end of stream, after a final
// error, or after spec.Messages+1 receives (one more than can succeed), so
// that a case is bounded even if end of stream never comes.
func Receive(w io.Writer, spec Spec, receivers int, recv func(i int, tl *Tally)) error {
	// The spec comes from another process: refuse what would make a
	// check index out of range.
	if spec.Messages < 0 || spec.Messages > maxMessages || len(spec.Pool) != PoolSize || receivers < 1 {
		return fmt.Errorf("%w: %d messages, %d pool objects, %d receivers", ErrSpec, spec.Messages, len(spec.Pool), receivers)
	}
	before, err := fdcensus.Take(0)
	if err != nil {
		return err
	}
	chk := &checker{spec: spec, seen: make([]atomic.Int32, spec.Messages)}
	tallies := make([]Tally, receivers)
	var wg sync.WaitGroup
	for i := range tallies {
		tl := &tallies[i]
		tl.chk = chk
		tl.last = -1
		wg.Go(func() { recv(i, tl) })
	}
	wg.Wait()
	var rep Report
	for _, tl := range tallies {
		rep.Messages += tl.rep.Messages
		rep.FDs += tl.rep.FDs
		rep.Mismatches += tl.rep.Mismatches
		rep.Truncations += tl.rep.Truncations
		rep.Dropped += tl.rep.Dropped
		rep.Duplicates += tl.rep.Duplicates
		rep.Reordered += tl.rep.Reordered
		rep.Errors = append(rep.Errors, tl.rep.Errors...)
	}
	if len(rep.Errors) > MaxErrors {
		rep.Errors = rep.Errors[:MaxErrors]
	}
	for i := range chk.seen {
		if chk.seen[i].Load() == 0 {
			rep.Missing++
		}
	}
	if err := fdcensus.Compare(0, before); err != nil {
		rep.Census = err.Error()
	}
	return json.NewEncoder(w).Encode(rep)
}
