//go:build linux

package fdsoak

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	Receivers  = 4                  // receiving goroutines (and sockets, where a transport needs one each)
	MaxFDs     = 16                 // descriptors per message: 1..MaxFDs
	PoolSize   = 512                // distinct objects the sender draws from
	MaxPad     = 256                // payload padding: 0..MaxPad-1 bytes
	MaxPayload = 8 + 1 + MaxPad - 1 // longest planned payload
	Seed       = 0x4c34             // "L4"
	MaxErrors  = 5                  // error texts a Report keeps
)

// Messages is the number of messages per case: the TESTPLAN's 100k (a few
// seconds on 2 cores, about 10 s under -race), 2k with -short.
func Messages() int {
	if testing.Short() {
		return 2_000
	}
	return 100_000
}

// ID identifies the object behind a descriptor.
type ID struct{ Dev, Ino uint64 }

// Identify returns the identity of the object fd refers to.
func Identify(fd int) (ID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return ID{}, err
	}
	return ID{uint64(st.Dev), st.Ino}, nil
}

// Plan returns the pool indices message seq carries (1..MaxFDs of them,
// repeats allowed: one object may travel twice in a message) and its
// payload: seq big-endian, the descriptor count, then padding. It appends
// to idx[:0] and payload[:0]. A generator per message, seeded by (seed,
// seq), lets any receiver check any message in any order.
func Plan(seed uint64, seq int, idx []int, payload []byte) ([]int, []byte) {
	r := rand.New(rand.NewPCG(seed, uint64(seq)))
	k := 1 + r.IntN(MaxFDs)
	idx = idx[:0]
	for range k {
		idx = append(idx, r.IntN(PoolSize))
	}
	pad := r.IntN(MaxPad)
	payload = binary.BigEndian.AppendUint64(payload[:0], uint64(seq))
	payload = append(payload, byte(k))
	for i := range pad {
		payload = append(payload, byte(seq*7+i))
	}
	return idx, payload
}

// Spec is what the receiving helper needs to know of a case. A transport
// embeds it in its own spec (receivers, batching, buffer size) and passes
// the whole to the helper as one argument (Arg, ParseArg).
type Spec struct {
	Sockets  int // inherited as descriptors 3, 4, ...; set by Soak.Connect, so copy Spec after it
	Messages int
	Seed     uint64
	Deadline time.Time // for the transport's read deadlines
	Pool     []ID      // identity of each pool object, by pool index
}

// Report is what the helper prints. Everything but Messages and FDs must be
// zero for a case to pass.
type Report struct {
	Messages    int // messages received, whether right or wrong
	FDs         int // descriptors received
	Mismatches  int // payload or descriptor identities not those planned for the sequence number
	Truncations int // descriptors cut (MSG_CTRUNC) or more than planned
	Dropped     int // other messages the transport dropped whole
	Duplicates  int // deliveries of a sequence number beyond its first
	Missing     int // sequence numbers never delivered
	Reordered   int // a sequence number not above the previous one on the same receiver
	Errors      []string
	Census      string // the helper's descriptor census difference; "" when flat
}

// Arg encodes spec, a transport's spec embedding Spec, as the helper's one
// argument.
func Arg(t testing.TB, spec any) string {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ParseArg decodes the helper's arguments, which must be one made by Arg,
// into spec.
func ParseArg(args []string, spec any) error {
	if len(args) != 1 {
		return fmt.Errorf("%w: want one argument, got %d", ErrSpec, len(args))
	}
	if err := json.Unmarshal([]byte(args[0]), spec); err != nil {
		return fmt.Errorf("%w: %w", ErrSpec, err)
	}
	return nil
}
