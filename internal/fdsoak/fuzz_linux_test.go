//go:build linux

package fdsoak_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/handoff-go/handoff/internal/fdsoak"
)

// FuzzCheck feeds the checker arbitrary payloads, as a broken transport
// might deliver them. Whenever the payload names a sequence number in
// range, the message carries exactly the descriptors planned for it, so
// the payload alone decides: the checker must count one message and call
// it a mismatch unless the payload is exactly the planned one, and must
// never panic or leave a descriptor open.
func FuzzCheck(f *testing.F) {
	const n = 4
	s := fdsoak.Start(f, n)
	for seq := range n {
		_, p := fdsoak.Plan(s.Spec.Seed, seq, nil, nil)
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		seq := -1
		if len(payload) >= 8 && binary.BigEndian.Uint64(payload) < n {
			seq = int(binary.BigEndian.Uint64(payload))
		}
		var planned []int
		want := fdsoak.Report{Messages: 1, Mismatches: 1, Missing: n}
		if seq >= 0 {
			var plan []byte
			planned, plan = s.Message(seq, nil, nil)
			want.FDs, want.Missing = len(planned), n-1
			if bytes.Equal(payload, plan) {
				want.Mismatches = 0
			}
		}
		got := receive(t, s.Spec, 1, func(_ int, tl *fdsoak.Tally) {
			// Copies made while Receive runs, as received ones would be.
			fds, err := dupAll(planned)
			if err != nil {
				t.Error(err)
				return
			}
			tl.Check(payload, fds)
		})
		// A mismatch is explained by exactly one error text.
		checkReport(t, outcome{Report: want, ErrorCount: want.Mismatches}, got)
	})
}
