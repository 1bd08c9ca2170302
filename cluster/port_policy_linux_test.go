//go:build linux

package cluster_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/handoff-go/handoff/cluster"
	"github.com/handoff-go/handoff/internal/helperproc"
	"github.com/handoff-go/handoff/internal/proccensus"
)

// portPolicyPorts are the tcp and udp ports portPolicy checks, with start
// the value of net.ipv4.ip_unprivileged_port_start.
func portPolicyPorts(start int) []int { return []int{0, start - 1, start, 1023, 1024} }

// portPolicy, a helper in a network namespace of its own, sets
// ip_unprivileged_port_start there to its argument and prints, for each
// of portPolicyPorts, "PORT ok" or "PORT refused" from the policy of what
// a worker may have the master bind.
func portPolicy() int {
	start := helperproc.Args()[0]
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", []byte(start), 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	n, _ := strconv.Atoi(start)
	for _, p := range portPolicyPorts(n) {
		for _, network := range []string{"tcp", "udp"} {
			err := cluster.BindPolicy(fmt.Sprintf("%s://127.0.0.1:%d", network, p))
			switch {
			case err == nil:
				fmt.Printf("%s %d ok\n", network, p)
			case errors.Is(err, cluster.ErrListen) && strings.Contains(err.Error(), "privileged port"):
				fmt.Printf("%s %d refused\n", network, p)
			default:
				fmt.Printf("%s %d %v\n", network, p, err)
			}
		}
	}
	return 0
}

// TestWorkerPortPolicy: the ports a worker may not have the master bind
// are the privileged ones of the network namespace
// (net.ipv4.ip_unprivileged_port_start), not a fixed 1024. Checked in a
// helper of its own network namespace, so the host's setting is never
// touched.
func TestWorkerPortPolicy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	pc := proccensus.New(t)
	tests := []struct {
		start int
		// okFrom: the lowest non-zero port accepted.
		okFrom int
	}{
		{start: 600, okFrom: 600},
		{start: 2000, okFrom: 2000},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.start), func(t *testing.T) {
			cmd := helperproc.Command(t, "port-policy", &helperproc.Options{
				Args: []string{strconv.Itoa(tt.start)},
				Env:  []string{pc.Env()},
			})
			cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
			out, err := cmd.Output()
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				t.Fatalf("helper: %v", err)
			}
			if err != nil {
				// No network namespaces here (a container without
				// CAP_SYS_ADMIN).
				t.Skipf("helper in a new network namespace: %v", err)
			}
			var want []string
			for _, p := range portPolicyPorts(tt.start) {
				verdict := "refused"
				if p == 0 || p >= tt.okFrom {
					verdict = "ok"
				}
				want = append(want, fmt.Sprintf("tcp %d %s", p, verdict), fmt.Sprintf("udp %d %s", p, verdict))
			}
			got := strings.Split(strings.TrimSpace(string(out)), "\n")
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("policy with ip_unprivileged_port_start %d (-want +got):\n%s", tt.start, diff)
			}
		})
	}
}
