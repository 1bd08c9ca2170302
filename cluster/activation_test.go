//go:build linux

package cluster

import (
	"errors"
	"testing"

	"github.com/handoff-go/handoff/internal/listenfds"

	"github.com/google/go-cmp/cmp"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseActivation(t *testing.T) {
	const pid = 4242
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []Activated
		err  error
	}{
		{"none", nil, nil, nil},
		{"ours", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2"},
			[]Activated{{3, "unknown"}, {4, "unknown"}}, nil},
		{"named", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:admin"},
			[]Activated{{3, "http"}, {4, "admin"}}, nil},
		{"zero", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, []Activated{}, nil},
		// A20: variables meant for another process are never adopted.
		{"other pid", map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "3"}, nil, nil},
		// A20: garbage fails clearly instead of adopting random descriptors.
		{"negative", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, nil, ErrActivation},
		{"huge", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "9999"}, nil, ErrActivation},
		{"suffix", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3x"}, nil, ErrActivation},
		{"no count", map[string]string{"LISTEN_PID": "4242"}, nil, ErrActivation},
		{"bad pid", map[string]string{"LISTEN_PID": "me", "LISTEN_FDS": "1"}, nil, ErrActivation},
		{"no pid", map[string]string{"LISTEN_FDS": "1"}, nil, ErrActivation},
		{"names short", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"}, nil, ErrActivation},
		{"names long", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, nil, ErrActivation},
		{"name control char", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a\nb"}, nil, ErrActivation},
		{"empty name", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:"}, nil, ErrActivation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseActivation(envOf(tc.env), pid)
			if !errors.Is(err, tc.err) {
				t.Fatalf("error = %v, want %v", err, tc.err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzParseActivation(f *testing.F) {
	f.Add("4242", "2", "http:admin")
	f.Add("4242", "-1", "")
	f.Add("4242", "99999999999999999999", "")
	f.Add("", "", ":")
	f.Fuzz(func(t *testing.T, pid, n, names string) {
		got, err := parseActivation(envOf(map[string]string{"LISTEN_PID": pid, "LISTEN_FDS": n, "LISTEN_FDNAMES": names}), 4242)
		if err != nil {
			if got != nil {
				t.Fatal("descriptors returned with an error")
			}
			return
		}
		if len(got) > maxListenFDs {
			t.Fatalf("%d descriptors", len(got))
		}
		for i, a := range got {
			if a.FD != 3+i || listenfds.ValidName(a.Name) != nil {
				t.Fatalf("entry %d = %+v", i, a)
			}
		}
	})
}
