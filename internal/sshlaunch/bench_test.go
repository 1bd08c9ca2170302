//go:build linux

package sshlaunch_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshlaunch"
	"github.com/handoff-go/handoff/internal/sshtest"
)

var benchArgv = []string{"mini-cluster", "agent", "-id", "3", "-params", `{"name":"it's $HOME"}`, "a b\nc"}

// BenchmarkQuoteArgs measures quoting a typical agent command line, with
// an unquoted strings.Join as the baseline.
func BenchmarkQuoteArgs(b *testing.B) {
	n := int64(len(strings.Join(benchArgv, " ")))
	b.Run("QuoteArgs", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(n)
		for b.Loop() {
			if _, err := sshlaunch.QuoteArgs(benchArgv); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline=strings.Join", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(n)
		for b.Loop() {
			_ = strings.Join(benchArgv, " ")
		}
	})
}

// BenchmarkSession measures a whole ssh session running true on the local
// sshd and reports it as a multiple of running true locally.
func BenchmarkSession(b *testing.B) {
	c := proccensus.New(b)
	s := sshtest.Start(b)
	tg := sshlaunch.Target{User: s.User, Host: sshtest.Host, Port: s.Port, Identity: s.ClientKey, KnownHosts: s.WriteKnownHosts(b)}
	env := append(os.Environ(), c.Env())
	b.ReportAllocs()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
		cmd, err := tg.Command(ctx, []string{"true"})
		if err != nil {
			b.Fatal(err)
		}
		cmd.Env = env
		err = cmd.Run()
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
	remote := time.Since(start)
	b.StopTimer()
	start = time.Now()
	for i := 0; i < b.N; i++ {
		cmd := exec.Command("true")
		cmd.Env = env
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(remote)/float64(time.Since(start)), "x-local-exec")
}
