//go:build linux

package cluster_test

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/fdcensus"
	"golang.org/x/sys/unix"
)

// TestLoadConfigSwappedForFIFO: a path that turns into a FIFO between the
// type check and the open (here a symlink flipped between a file and a
// FIFO by another goroutine) is refused, never waited on for a writer.
func TestLoadConfigSwappedForFIFO(t *testing.T) {
	fdcensus.Verify(t)
	dir := t.TempDir()
	good, fifo, link := filepath.Join(dir, "good"), filepath.Join(dir, "fifo"), filepath.Join(dir, "cfg")
	if err := os.WriteFile(good, []byte(`{"groups": [{"name": "a", "command": ["p"], "listen": ["127.0.0.1:0"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tmp := filepath.Join(dir, "tmp")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			target := good
			if i%2 == 1 {
				target = fifo
			}
			os.Remove(tmp)
			if os.Symlink(target, tmp) == nil {
				os.Rename(tmp, link)
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; i < 20000 && time.Now().Before(deadline); i++ {
		done := make(chan error, 1)
		go func() {
			_, err := cluster.LoadConfig(link)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, cluster.ErrConfig) {
				t.Fatalf("LoadConfig: %v, want nil or ErrConfig", err)
			}
			continue
		case <-time.After(2 * time.Second):
		}
		t.Error("LoadConfig blocked opening a FIFO")
		// Release it: a writer's open succeeds once a reader waits.
		if w, err := os.OpenFile(fifo, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		<-done
		return
	}
}
