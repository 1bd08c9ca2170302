package syncbuf

import (
	"strings"
	"sync"
	"testing"
)

// TestConcurrentWrites: writers and a reader at once (run with -race) lose
// no byte, and String sees whole writes only.
func TestConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				b.Write([]byte("ab"))
			}
		}()
	}
	for range 50 {
		if s := b.String(); len(s)%2 != 0 {
			t.Fatalf("half a write seen: %d bytes", len(s))
		}
	}
	wg.Wait()
	if s := b.String(); s != strings.Repeat("ab", 400) {
		t.Errorf("%d bytes, want 800 of ab", len(s))
	}
}
