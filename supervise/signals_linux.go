//go:build linux

package supervise

import (
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
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
// returned). Installing it suppresses the default action of TERM and INT,
// so none is ever dropped: one that arrives before Run starts is remembered
// and makes Run stop at once without starting workers; one that arrives
// after Run returned, or a second one before Run started, terminates the
// process by the signal's default action, as if no handler were installed.
// HUP, USR1, TTIN and TTOU outside Run are ignored.
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
					if s.signalStop(stopping) {
						stopping = true
						continue
					}
					// Nothing left to stop gracefully: die of the
					// signal as without a handler. Stop only our
					// channel, so a handler of the caller's still wins.
					signal.Stop(ch)
					_ = unix.Kill(os.Getpid(), sig.(syscall.Signal))
					return
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

// signalStop applies a TERM/INT: Stop, or Kill when again is true. Before
// Run started, a first one is remembered for Run. It reports false when the
// signal has nothing to act on (Run returned, or a second one before Run).
func (s *Supervisor) signalStop(again bool) bool {
	s.mu.Lock()
	if !s.ran {
		first := !s.stopPending
		s.stopPending = true
		s.mu.Unlock()
		return first && !again
	}
	s.mu.Unlock()
	if again {
		return s.Kill() == nil
	}
	return s.Stop() == nil
}

// sigStop is SIGSTOP, refused as a stop signal (see Options.fill).
const sigStop = unix.SIGSTOP

// maxSignal is the largest signal number Linux accepts (SIGRTMAX, _NSIG-1):
// 127 on MIPS, 64 elsewhere.
func maxSignal() syscall.Signal {
	if strings.HasPrefix(runtime.GOARCH, "mips") {
		return 127
	}
	return 64
}
