//go:build linux

package cluster_test

import (
	"testing"

	"github.com/handoff-go/handoff/cluster"
)

// BenchmarkHandoffDecode decodes a full batch of connection metadata and
// an ack. The decoder is on both ends' hot path and must not allocate.
func BenchmarkHandoffDecode(b *testing.B) {
	names := make([]string, cluster.HoMaxBatch)
	addrs := make([]string, cluster.HoMaxBatch)
	for i := range names {
		names[i], addrs[i] = "tcp-127.0.0.1-8080", "127.0.0.1:40000"
	}
	p := cluster.EncodeHandoffConns(cluster.HoConns, names, addrs)
	ack := cluster.EncodeHandoffAck(16)
	// Placeholders: a successful decode keeps the descriptors, never
	// touches them.
	fds := make([]int, cluster.HoMaxBatch)
	for i := range fds {
		fds[i] = -1
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if err := cluster.DecodeHandoffNoCopy(p, fds); err != nil {
			b.Fatal(err)
		}
		if err := cluster.DecodeHandoffNoCopy(ack, nil); err != nil {
			b.Fatal(err)
		}
	}
}
