package cluster

// ReencodeUpgradeState parses an upgrade state and renders it again, for
// the external tests: a state that parses must round-trip.
func ReencodeUpgradeState(s string) (string, error) {
	st, err := parseUpgradeState(s)
	if err != nil {
		return "", err
	}
	return st.encode()
}
