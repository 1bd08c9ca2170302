//go:build linux

package sshlaunch_test

import (
	"os"
	"strconv"
	"testing"

	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
)

func TestMain(m *testing.M) {
	helperproc.Main(m, map[string]func() int{
		// exit writes its second argument to stderr and exits with its
		// first: a stand-in for an ssh client, for Classify.
		"exit": func() int {
			a := helperproc.Args()
			code, _ := strconv.Atoi(a[0])
			os.Stderr.WriteString(a[1])
			return code
		},
	})
}

// exitError returns what Wait reports for a process that wrote stderr and
// exited with code.
func exitError(t testing.TB, c *proccensus.Census, code int, stderr string) error {
	t.Helper()
	cmd := helperproc.Command(t, "exit", &helperproc.Options{
		Args: []string{strconv.Itoa(code), stderr},
		Env:  []string{c.Env()},
	})
	cmd.Stderr = nil
	helperproc.Start(t, cmd)
	return cmd.Wait()
}
