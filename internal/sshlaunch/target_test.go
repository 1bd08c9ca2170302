//go:build linux

package sshlaunch_test

import (
	"errors"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/handoff-go/handoff/internal/fdcensus"
	"github.com/handoff-go/handoff/internal/proccensus"
	"github.com/handoff-go/handoff/internal/sshlaunch"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		want    sshlaunch.Target
		wantErr bool
	}{
		{in: "alice@example.com", want: sshlaunch.Target{User: "alice", Host: "example.com"}},
		{in: "example.com", want: sshlaunch.Target{Host: "example.com"}},
		{in: "root@127.0.0.1", want: sshlaunch.Target{User: "root", Host: "127.0.0.1"}},
		{in: "bob@[::1]", want: sshlaunch.Target{User: "bob", Host: "::1"}},
		{in: "b-o_b.x@host-1.example", want: sshlaunch.Target{User: "b-o_b.x", Host: "host-1.example"}},
		{in: "", wantErr: true},
		{in: "alice@", wantErr: true},
		{in: "@host", wantErr: true},
		{in: "-oProxyCommand=touch /tmp/x", wantErr: true},
		{in: "-oProxyCommand=id", wantErr: true},
		{in: "alice@-oProxyCommand=id", wantErr: true},
		{in: "-l@host", wantErr: true},
		{in: "alice@host -p 2", wantErr: true},
		{in: "alice@host\tx", wantErr: true},
		{in: "al ice@host", wantErr: true},
		{in: "alice@host\n", wantErr: true},
		{in: "alice\x00@host", wantErr: true},
		{in: "alice@ho\x1bst", wantErr: true},
		{in: "a@b@host", wantErr: true},
		{in: "alice@host;id", wantErr: true},
		{in: "alice@$(id)", wantErr: true},
		{in: "%u@host", wantErr: true},
		{in: "alice@[-oFoo]", wantErr: true},
		{in: "alice@" + strings.Repeat("a", 254), wantErr: true},
		{in: "ssh://alice@host", wantErr: true},
	}
	for _, tt := range tests {
		got, err := sshlaunch.ParseTarget(tt.in)
		if tt.wantErr {
			if !errors.Is(err, sshlaunch.ErrInvalidTarget) {
				t.Errorf("ParseTarget(%q) = %+v, %v; want ErrInvalidTarget", tt.in, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", tt.in, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParseTarget(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestArgs(t *testing.T) {
	base := sshlaunch.Target{User: "alice", Host: "h.example", Identity: "/k/id", KnownHosts: "/k/kh"}
	got, err := base.Args([]string{"mini-cluster", "agent", "it's"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-F", "none", "-T",
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=/k/kh", "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "UpdateHostKeys=no", "-o", "IdentitiesOnly=yes",
		"-i", "/k/id", "-p", "22",
		"-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
		"--", "alice@h.example", `'mini-cluster' 'agent' 'it'\''s'`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Args (-want +got):\n%s", diff)
	}

	custom := base
	custom.User, custom.Port = "", 2222
	custom.ConnectTimeout, custom.ServerAliveInterval = 1500*time.Millisecond, time.Second
	got, err = custom.Args([]string{"true"})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"-p\x002222", "ConnectTimeout=2", "ServerAliveInterval=1", "--\x00h.example\x00'true'"} {
		if !strings.Contains(strings.Join(got, "\x00"), w) {
			t.Errorf("Args %q lacks %q", got, w)
		}
	}

	bad := []struct {
		name   string
		modify func(*sshlaunch.Target)
		argv   []string
	}{
		{"no known_hosts", func(t *sshlaunch.Target) { t.KnownHosts = "" }, []string{"true"}},
		{"no identity", func(t *sshlaunch.Target) { t.Identity = "" }, []string{"true"}},
		{"known_hosts with space", func(t *sshlaunch.Target) { t.KnownHosts = "/k/a b" }, []string{"true"}},
		{"known_hosts with token", func(t *sshlaunch.Target) { t.KnownHosts = "/k/%d" }, []string{"true"}},
		{"identity with newline", func(t *sshlaunch.Target) { t.Identity = "/k/id\n" }, []string{"true"}},
		// ssh expands ${VAR} and a leading ~ in both options, and splits
		// UserKnownHostsFile honouring backslash escapes.
		{"known_hosts with variable", func(t *sshlaunch.Target) { t.KnownHosts = "/k/${HOME}/kh" }, []string{"true"}},
		{"identity with variable", func(t *sshlaunch.Target) { t.Identity = "/k/${HOME}/id" }, []string{"true"}},
		{"identity with dollar", func(t *sshlaunch.Target) { t.Identity = "/k/$id" }, []string{"true"}},
		{"known_hosts with backslash", func(t *sshlaunch.Target) { t.KnownHosts = `/k/a\b` }, []string{"true"}},
		{"identity with backslash", func(t *sshlaunch.Target) { t.Identity = `/k/id\` }, []string{"true"}},
		{"identity in home", func(t *sshlaunch.Target) { t.Identity = "~/.ssh/id" }, []string{"true"}},
		{"known_hosts in home", func(t *sshlaunch.Target) { t.KnownHosts = "~root/kh" }, []string{"true"}},
		{"option as host", func(t *sshlaunch.Target) { t.Host = "-oProxyCommand=id" }, []string{"true"}},
		{"option as user", func(t *sshlaunch.Target) { t.User = "-oProxyCommand=id" }, []string{"true"}},
		{"empty host", func(t *sshlaunch.Target) { t.Host = "" }, []string{"true"}},
		{"port too big", func(t *sshlaunch.Target) { t.Port = 65536 }, []string{"true"}},
		{"negative port", func(t *sshlaunch.Target) { t.Port = -1 }, []string{"true"}},
		{"negative timeout", func(t *sshlaunch.Target) { t.ConnectTimeout = -time.Second }, []string{"true"}},
		{"no remote command", func(*sshlaunch.Target) {}, nil},
		{"NUL in argument", func(*sshlaunch.Target) {}, []string{"echo", "a\x00b"}},
	}
	for _, tt := range bad {
		tg := base
		tt.modify(&tg)
		if got, err := tg.Args(tt.argv); !errors.Is(err, sshlaunch.ErrInvalidTarget) {
			t.Errorf("%s: Args = %q, %v; want ErrInvalidTarget", tt.name, got, err)
		}
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		tg   sshlaunch.Target
		want string
	}{
		{sshlaunch.Target{User: "a", Host: "h"}, "a@h"},
		{sshlaunch.Target{Host: "h", Port: 22}, "h"},
		{sshlaunch.Target{User: "a", Host: "h", Port: 2222}, "a@h:2222"},
	}
	for _, tt := range tests {
		if got := tt.tg.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.tg, got, tt.want)
		}
	}
}

// shDecode lets the local sh split the quoted command line, as the remote
// login shell will, and returns the argv it sees.
func shDecode(t testing.TB, c *proccensus.Census, argv []string) []string {
	t.Helper()
	line, err := sshlaunch.QuoteArgs(append([]string{"printf", `%s\0`}, argv...))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", line)
	cmd.Env = []string{c.Env(), "PATH=/usr/bin:/bin"}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sh -c %q: %v", line, err)
	}
	got := strings.Split(string(out), "\x00")
	return got[:len(got)-1]
}

var tricky = [][]string{
	{"plain"},
	{""},
	{"", "x", ""},
	{"a b", "  lead", "trail  ", "\ttab"},
	{"it's", `"double"`, "'", "''", "a'b'c", `'\''`},
	{"$HOME", "${PATH}", "$(id)", "`id`", "$1", "$@", "$$"},
	{`\`, `\\n`, `a\'b`, `\"`, `\`},
	{"line1\nline2", "\n", "\r\n", "x\n\n"},
	{"*", "?", "[a]", "~", "~root", "#c", ";", "&&", "|", ">f", "<f", "!", "!!", "{a,b}", "a=b"},
	{"-n", "--", "-e", "-"},
	{"héllo", "日本語", "\x01\x7f", "\xff\xfe"},
}

func TestQuoteArgsShellRoundTrip(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	for _, argv := range tricky {
		if diff := cmp.Diff(argv, shDecode(t, c, argv)); diff != "" {
			t.Errorf("sh decoded %q wrongly (-want +got):\n%s", argv, diff)
		}
	}
}

// TestQuoteArgsProperty checks random argv built from the characters a
// shell treats specially.
func TestQuoteArgsProperty(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	const alphabet = " \t\n\r'\"$`\\*?[]~#;&|<>(){}!=%^-_.aZ0é\x01\x7f"
	runes := []rune(alphabet)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100 {
		argv := make([]string, 1+rng.IntN(4))
		for i := range argv {
			var b strings.Builder
			for range rng.IntN(12) {
				b.WriteRune(runes[rng.IntN(len(runes))])
			}
			argv[i] = b.String()
		}
		if diff := cmp.Diff(argv, shDecode(t, c, argv)); diff != "" {
			t.Fatalf("sh decoded %q wrongly (-want +got):\n%s", argv, diff)
		}
	}
}

func TestClassify(t *testing.T) {
	fdcensus.Verify(t)
	c := proccensus.New(t)
	tg := sshlaunch.Target{User: "alice", Host: "h", Port: 2222}
	tests := []struct {
		name       string
		code       int
		stderr     string
		want       error // a sentinel, or nil for "returned unchanged"
		wantReason string
	}{
		{"changed host key", 255, "@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@@\nHost key for [h]:2222 has changed and you have requested strict checking.\nHost key verification failed.\n",
			sshlaunch.ErrHostKey, "Host key for [h]:2222 has changed and you have requested strict checking."},
		{"host key banner only", 255, "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n",
			sshlaunch.ErrHostKey, "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @"},
		{"unknown host key", 255, "No ED25519 host key is known for [h]:2222 and you have requested strict checking.\nHost key verification failed.\n",
			sshlaunch.ErrHostKey, "No ED25519 host key is known for [h]:2222 and you have requested strict checking."},
		{"auth", 255, "alice@h: Permission denied (publickey).\n", sshlaunch.ErrAuth, "alice@h: Permission denied (publickey)."},
		{"refused", 255, "ssh: connect to host h port 2222: Connection refused\n", sshlaunch.ErrUnreachable, "ssh: connect to host h port 2222: Connection refused"},
		{"timeout", 255, "ssh: connect to host h port 2222: Connection timed out\n", sshlaunch.ErrUnreachable, "ssh: connect to host h port 2222: Connection timed out"},
		{"dns", 255, "ssh: Could not resolve hostname h: Name or service not known\n", sshlaunch.ErrUnreachable, "ssh: Could not resolve hostname h: Name or service not known"},
		{"keepalive", 255, "Timeout, server h not responding.\n", sshlaunch.ErrUnreachable, "Timeout, server h not responding."},
		{"other", 255, "warning\nsomething odd\n\n", sshlaunch.ErrSession, "something odd"},
		{"silent", 255, "", sshlaunch.ErrSession, "ssh exited with status 255"},
		{"control chars", 255, "\x1b[31mbad\x1b[0m\x07 thing\n", sshlaunch.ErrSession, "[31mbad[0m thing"},
		{"remote exit status", 3, "Permission denied\n", nil, ""},
	}
	for _, tt := range tests {
		waitErr := exitError(t, c, tt.code, tt.stderr)
		err := tg.Classify(waitErr, []byte(tt.stderr))
		if tt.want == nil {
			if err != waitErr {
				t.Errorf("%s: Classify = %v, want the Wait error unchanged", tt.name, err)
			}
			continue
		}
		var se *sshlaunch.SessionError
		if !errors.As(err, &se) || !errors.Is(err, tt.want) {
			t.Errorf("%s: Classify = %v, want a *SessionError wrapping %v", tt.name, err, tt.want)
			continue
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Errorf("%s: %v does not unwrap to the *exec.ExitError", tt.name, err)
		}
		want := sshlaunch.SessionError{Target: "alice@h:2222", Kind: tt.want, Reason: tt.wantReason, Err: waitErr}
		if diff := cmp.Diff(want, *se, cmp.Comparer(func(a, b error) bool { return a == b })); diff != "" {
			t.Errorf("%s: SessionError (-want +got):\n%s", tt.name, diff)
		}
	}
	if err := tg.Classify(nil, []byte("Permission denied")); err != nil {
		t.Errorf("Classify(nil) = %v", err)
	}
}
