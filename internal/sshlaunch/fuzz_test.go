//go:build linux

package sshlaunch_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshlaunch"
)

// FuzzQuoteArgs checks that a POSIX shell splits QuoteArgs' output back
// into exactly the argv given.
func FuzzQuoteArgs(f *testing.F) {
	for _, argv := range tricky {
		f.Add(argv[0], strings.Join(argv[1:], " "))
	}
	c := proccensus.New(f)
	f.Fuzz(func(t *testing.T, a, b string) {
		argv := []string{a, b}
		if strings.ContainsRune(a+b, 0) {
			if _, err := sshlaunch.QuoteArgs(argv); !errors.Is(err, sshlaunch.ErrInvalidTarget) {
				t.Fatalf("QuoteArgs(%q) = %v, want ErrInvalidTarget", argv, err)
			}
			return
		}
		if diff := cmp.Diff(argv, shDecode(t, c, argv)); diff != "" {
			t.Fatalf("sh decoded %q wrongly (-want +got):\n%s", argv, diff)
		}
	})
}

// FuzzParseTarget checks that whatever ParseTarget accepts cannot inject
// an option or a second argument into the ssh command line.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"alice@example.com", "host", "bob@[::1]", "-oProxyCommand=id", "a@-p", "a b@c", "a@b\n", "%u@h", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := sshlaunch.ParseTarget(s)
		if err != nil {
			if !errors.Is(err, sshlaunch.ErrInvalidTarget) {
				t.Fatalf("ParseTarget(%q): %v does not wrap ErrInvalidTarget", s, err)
			}
			return
		}
		tg.Identity, tg.KnownHosts = "/k/id", "/k/kh"
		args, err := tg.Args([]string{"true"})
		if err != nil {
			t.Fatalf("ParseTarget(%q) accepted %+v, which Args refuses: %v", s, tg, err)
		}
		dest := args[len(args)-2]
		if dest == "" || dest[0] == '-' || strings.ContainsAny(dest, " \t\r\n\x00%") || strings.Count(dest, "@") > 1 {
			t.Fatalf("ParseTarget(%q) gave the unsafe destination %q", s, dest)
		}
		if args[len(args)-3] != "--" {
			t.Fatalf("destination not after --: %q", args)
		}
	})
}

// FuzzClassify feeds Classify arbitrary stderr from a failed ssh: it must
// never panic and must keep the reason short and printable.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		"Host key verification failed.\n",
		"root@h: Permission denied (publickey).\n",
		"ssh: connect to host h port 22: Connection refused\n",
		"\x1b[2J\x00\xff\n\n",
		"",
	} {
		f.Add([]byte(s))
	}
	c := proccensus.New(f)
	waitErr := exitError(f, c, 255, "")
	tg := sshlaunch.Target{Host: "h"}
	f.Fuzz(func(t *testing.T, stderr []byte) {
		var se *sshlaunch.SessionError
		if err := tg.Classify(waitErr, stderr); !errors.As(err, &se) {
			t.Fatalf("Classify = %v, want a *SessionError", err)
		}
		if len(se.Reason) > 200 || se.Reason == "" || !utf8.ValidString(se.Reason) {
			t.Fatalf("Reason %q: want 1 to 200 bytes of valid UTF-8", se.Reason)
		}
		for _, r := range se.Reason {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("Reason %q holds control character %U", se.Reason, r)
			}
		}
	})
}
