package supervise_test

import (
	"context"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/handoff-go/handoff/supervise"
)

// Run four workers of a server sharing one listening socket (fd 3), each
// told its slot and generation, with the usual signal mapping.
func Example() {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGQUIT)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	listener, err := ln.(*net.TCPListener).File() // a copy for the workers
	if err != nil {
		log.Fatal(err)
	}
	defer listener.Close()
	sup, err := supervise.New(supervise.Spec{
		Path:       "/usr/local/bin/srv",
		ExtraFiles: []*os.File{listener},
		Prepare: func(id supervise.ID) (supervise.Launch, error) {
			return supervise.Launch{Env: []string{
				"HANDOFF_WORKER_ID=" + strconv.Itoa(id.Slot),
				"HANDOFF_WORKER_GENERATION=" + strconv.Itoa(id.Generation),
			}}, nil
		},
	}, &supervise.Options{Workers: 4, ReadyOnStart: true})
	if err != nil {
		log.Fatal(err)
	}
	stop, err := supervise.HandleSignals(sup, supervise.Rolling)
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	go func() {
		for ev := range sup.Events() {
			if ev.Kind == supervise.Failed {
				log.Printf("slot %d gave up: %v", ev.ID.Slot, ev.Err)
			}
		}
	}()
	if err := sup.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
