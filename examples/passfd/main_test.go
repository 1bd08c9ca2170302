//go:build linux

package main

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
)

func TestPassFD(t *testing.T) {
	fdcensus.Verify(t)
	pc := proccensus.New(t)
	bin := t.TempDir() + "/passfd"
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), pc.Env())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("passfd: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	want := []*regexp.Regexp{
		regexp.MustCompile(`^parent \d+: listening on 127\.0\.0\.1:\d+, handing the listener to child \d+$`),
		regexp.MustCompile(`^parent \d+: closed its own copy, connecting to 127\.0\.0\.1:\d+$`),
		regexp.MustCompile(`^server answered: hello from child \d+, serving 127\.0\.0\.1:\d+ on a listener it received$`),
	}
	if len(lines) != len(want) {
		t.Fatalf("output:\n%s", out)
	}
	for i, re := range want {
		if !re.MatchString(lines[i]) {
			t.Errorf("line %d = %q, want match for %s", i, lines[i], re)
		}
	}
}
