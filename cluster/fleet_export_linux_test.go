//go:build linux

package cluster

// FleetRemoteSuspended reports, for each remote host of group, the state
// its next session starts with.
func FleetRemoteSuspended(f *Fleet, group string) []bool {
	g, err := f.f.group(group)
	if err != nil {
		panic(err)
	}
	var out []bool
	for _, r := range g.remotes {
		r.mu.Lock()
		out = append(out, r.suspended)
		r.mu.Unlock()
	}
	return out
}
