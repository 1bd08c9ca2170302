//go:build linux

package cluster

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/handoff-go/handoff/internal/listenfds"

	"github.com/google/go-cmp/cmp"
)

// TestParseWorkerActivation: a worker takes LISTEN_FDNAMES naming fewer
// descriptors than LISTEN_FDS as names for the first ones and "unknown"
// extras after them (TESTPLAN A19); other garbage stays an error (A20).
func TestParseWorkerActivation(t *testing.T) {
	const pid = 4242
	for _, tc := range []struct {
		name      string
		env       map[string]string
		want      []Activated
		wantExtra int
		wantErr   error
	}{
		{"names match", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:admin"},
			[]Activated{{3, "http"}, {4, "admin"}}, 0, nil},
		{"no names", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2"},
			[]Activated{{3, "unknown"}, {4, "unknown"}}, 0, nil},
		{"names short", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "4", "LISTEN_FDNAMES": "web:newer"},
			[]Activated{{3, "web"}, {4, "newer"}, {5, "unknown"}, {6, "unknown"}}, 2, nil},
		{"other pid", map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "4", "LISTEN_FDNAMES": "web"}, nil, 0, nil},
		{"names long", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, nil, 0, ErrActivation},
		{"names short, bad name", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a\nb"}, nil, 0, ErrActivation},
		{"names short, empty name", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a:"}, nil, 0, ErrActivation},
		{"names short, huge count", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "9999", "LISTEN_FDNAMES": "a"}, nil, 0, ErrActivation},
		{"names short, bad count", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3x", "LISTEN_FDNAMES": "a"}, nil, 0, ErrActivation},
		{"names short, bad pid", map[string]string{"LISTEN_PID": "me", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a"}, nil, 0, ErrActivation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, extra, err := parseWorkerActivation(envOf(tc.env), pid)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("descriptors (-want +got):\n%s", diff)
			}
			if extra != tc.wantExtra {
				t.Errorf("extra = %d, want %d", extra, tc.wantExtra)
			}
		})
	}
}

func FuzzWorkerActivation(f *testing.F) {
	f.Add("4242", "4", "web:newer")
	f.Add("4242", "2", "http:admin")
	f.Add("4242", "1", "a:b")
	f.Add("4242", "1025", "a")
	f.Add("", "", ":")
	f.Fuzz(func(t *testing.T, pid, n, names string) {
		got, extra, err := parseWorkerActivation(envOf(map[string]string{"LISTEN_PID": pid, "LISTEN_FDS": n, "LISTEN_FDNAMES": names}), 4242)
		if err != nil {
			if got != nil || extra != 0 {
				t.Fatal("descriptors returned with an error")
			}
			return
		}
		if len(got) > maxListenFDs || extra < 0 || extra > len(got) {
			t.Fatalf("%d descriptors, %d extra", len(got), extra)
		}
		for i, a := range got {
			if a.FD != 3+i || listenfds.ValidName(a.Name) != nil || (i >= len(got)-extra && a.Name != "unknown") {
				t.Fatalf("entry %d = %+v (extra %d)", i, a, extra)
			}
		}
	})
}

// TestClaimInherited: Listen's match among inherited sockets. A descriptor
// beyond LISTEN_FDNAMES is never served: "" skips it, its address fails
// with ErrNoListener (TESTPLAN A20 for workers). A claim without a
// duplicate (handoff mode, where the master accepts) leaves the socket to
// Ready.
func TestClaimInherited(t *testing.T) {
	web := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	extra := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8081}
	// The descriptors are never touched without dup.
	w := &wstate{inh: []inherited{
		{fd: 50, name: "unknown", addr: extra, stream: true, unnamed: true},
		{fd: 51, name: "web", addr: web, stream: true},
	}}
	for _, tc := range []struct {
		address string
		ok      bool
		name    string
		err     error
	}{
		{"", true, "web", nil},
		{"127.0.0.1:8080", true, "web", nil},
		{"127.0.0.1:8081", false, "", ErrNoListener},
		{"127.0.0.1:8082", false, "", nil},
		// A wildcard never takes a specific address's socket, nor is
		// an unnamed one's refusal triggered by it (TestClaimWildcard).
		{":8080", false, "", nil},
		{":8081", false, "", nil},
	} {
		c, ok, err := w.claim(mustReq(t, w, "tcp", tc.address), true, false)
		if ok != tc.ok || c.name != tc.name || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("claim(%q) = %+v, %v, %v; want name %q, %v, %v", tc.address, c, ok, err, tc.name, tc.ok, tc.err)
		}
	}
	if w.inh[1].claimed {
		t.Error("a claim without a duplicate kept the socket from Ready")
	}
	if _, _, err := w.claim(mustReq(t, w, "tcp", ""), true, false); err != nil {
		t.Fatal(err)
	}
	only := &wstate{inh: w.inh[:1]}
	if _, ok, err := only.claim(mustReq(t, only, "tcp", ""), true, false); ok || !errors.Is(err, ErrNoListener) {
		t.Errorf("claim of \"\" with only an unnamed socket: %v, %v; want ErrNoListener", ok, err)
	}
}

func mustReq(t *testing.T, w *wstate, network, address string) *listenReq {
	t.Helper()
	q, err := w.resolve(context.Background(), network, address)
	if err != nil {
		t.Fatalf("resolve(%s, %q): %v", network, address, err)
	}
	return q
}

// TestClaimWildcard: an empty host, 0.0.0.0 and :: ask for a wildcard
// socket and match an inherited one of a compatible family, as net.Listen
// would bind it: "tcp" and "udp" take 0.0.0.0 or a dual-stack :: (what
// systemd's ListenStream=8080 binds), "tcp4" only 0.0.0.0, "tcp6" only
// ::. A wildcard never matches a specific address, nor a specific one a
// wildcard. A host name is resolved once, and the master gets what the
// match used: a literal, and for an empty host a wildcard it accepts.
func TestClaimWildcard(t *testing.T) {
	tcp := func(ip net.IP, port int) *net.TCPAddr { return &net.TCPAddr{IP: ip, Port: port} }
	w := &wstate{inh: []inherited{
		{fd: 50, name: "v4any", addr: tcp(net.IPv4zero.To4(), 8090), stream: true},
		{fd: 51, name: "dual", addr: tcp(net.IPv6zero, 8091), stream: true},
		{fd: 52, name: "v6only", addr: tcp(net.IPv6zero, 8092), stream: true, v6only: true},
		{fd: 53, name: "web", addr: tcp(net.IPv4(127, 0, 0, 1).To4(), 8080), stream: true},
		{fd: 54, name: "dns", addr: &net.UDPAddr{IP: net.IPv6zero, Port: 8093}},
		{fd: 55, name: "v6lo", addr: tcp(net.IPv6loopback, 8095), stream: true},
	}}
	for _, tc := range []struct {
		network, address string
		stream           bool
		want, forMaster  string // want "": no match
	}{
		{"tcp", ":8090", true, "v4any", "0.0.0.0:8090"},
		{"tcp4", ":8090", true, "v4any", "0.0.0.0:8090"},
		{"tcp6", ":8090", true, "", "[::]:8090"},
		{"tcp", ":8091", true, "dual", "0.0.0.0:8091"},
		{"tcp", "0.0.0.0:8091", true, "dual", "0.0.0.0:8091"},
		{"tcp", "[::]:8091", true, "dual", "[::]:8091"},
		{"tcp", "[::]:8090", true, "v4any", "[::]:8090"},
		{"tcp4", ":8091", true, "", "0.0.0.0:8091"},
		{"tcp6", ":8091", true, "dual", "[::]:8091"},
		{"tcp", ":8092", true, "", "0.0.0.0:8092"},
		{"tcp6", ":8092", true, "v6only", "[::]:8092"},
		{"tcp", "127.0.0.1:8091", true, "", "127.0.0.1:8091"},
		{"tcp", ":8080", true, "", "0.0.0.0:8080"},
		{"tcp", "127.0.0.1:8080", true, "web", "127.0.0.1:8080"},
		{"tcp", "localhost:8080", true, "web", "127.0.0.1:8080"},
		{"tcp", "[::1]:8095", true, "v6lo", "[::1]:8095"},
		{"tcp", ":0", true, "", "0.0.0.0:0"},
		{"udp", ":8093", false, "dns", "0.0.0.0:8093"},
		{"udp", ":8091", false, "", "0.0.0.0:8091"},
	} {
		q := mustReq(t, w, tc.network, tc.address)
		c, ok, err := w.claim(q, tc.stream, false)
		if err != nil || ok != (tc.want != "") || c.name != tc.want || q.forMaster != tc.forMaster {
			t.Errorf("claim(%s, %q) = %q, %v, %v, for the master %q; want %q, %q", tc.network, tc.address, c.name, ok, err, q.forMaster, tc.want, tc.forMaster)
		}
	}
}

// TestIsListenerAddr: which worker requests name one of the master's own
// listeners (workerListener). Literals only, port 0 never, zones compared
// when both sides have one.
func TestIsListenerAddr(t *testing.T) {
	v4 := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9000}
	ll := &net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 9000, Zone: "eth1"}
	udp := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9000}
	unixA := &net.UnixAddr{Name: "/run/x.sock", Net: "unix"}
	for _, tc := range []struct {
		network, address string
		a                net.Addr
		want             bool
	}{
		{"tcp", "127.0.0.1:9000", v4, true},
		{"tcp", "[::ffff:127.0.0.1]:9000", v4, true},
		{"tcp", "127.0.0.1:9001", v4, false},
		{"tcp", "127.0.0.1:0", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, false},
		{"tcp", "localhost:9000", v4, false},
		{"udp", "127.0.0.1:9000", v4, false},
		{"udp", "127.0.0.1:9000", udp, true},
		{"tcp", "[fe80::1%eth1]:9000", ll, true},
		{"tcp", "[fe80::1%eth0]:9000", ll, false},
		{"tcp", "[fe80::1]:9000", ll, true},
		{"unix", "/run/x.sock", unixA, true},
		{"unix", "/run/./x.sock", unixA, false},
		{"unix", "", &net.UnixAddr{Name: "", Net: "unix"}, false},
		{"tcp", "/run/x.sock", unixA, false},
	} {
		if got := isListenerAddr(tc.network, tc.address, tc.a); got != tc.want {
			t.Errorf("isListenerAddr(%s, %q, %v) = %v, want %v", tc.network, tc.address, tc.a, got, tc.want)
		}
	}
}
