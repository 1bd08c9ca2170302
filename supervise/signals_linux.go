//go:build linux

package supervise

import (
	"os"
	"os/signal"
	"syscall"
)

// HandleSignals maps the usual signals of a supervisor process onto s, as
// mini-cluster does:
//
//	SIGTERM, SIGINT   Stop; a second one Kill
//	SIGHUP, SIGUSR1   Restart(strategy) (coalescing as Restart does)
//	SIGTTIN, SIGTTOU  ScaleBy(+1), ScaleBy(-1)
//
// The handler stays installed through stops and restarts, so a second
// Ctrl-C always escalates, until the returned function is called (after Run
// returned). Signals that arrive before Run started are ignored.
func HandleSignals(s *Supervisor, strategy Strategy) (stop func(), err error) {
	if strategy != Rolling && strategy != Parallel {
		return nil, ErrInvalid
	}
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1,
		syscall.SIGTTIN, syscall.SIGTTOU)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		stopping := false
		for {
			select {
			case <-quit:
				return
			case sig := <-ch:
				switch sig {
				case syscall.SIGTERM, syscall.SIGINT:
					if stopping {
						_ = s.Kill()
					} else if s.Stop() == nil {
						stopping = true
					}
				case syscall.SIGHUP, syscall.SIGUSR1:
					_ = s.Restart(strategy)
				case syscall.SIGTTIN:
					_ = s.ScaleBy(1)
				case syscall.SIGTTOU:
					_ = s.ScaleBy(-1)
				}
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(quit)
		<-done
	}, nil
}
