package cluster

// EncodeUpgradeStateWith renders the state base, with an "h" record of
// each of hs (its fields after "h ") added, as encode does, though the
// whole may exceed the bound; it says how many "h" records encode left
// out for the state to fit.
func EncodeUpgradeStateWith(base string, hs []string) (out string, dropped int, err error) {
	st, err := parseUpgradeState(base)
	if err != nil {
		return "", 0, err
	}
	for _, rec := range hs {
		h, err := parseHandoffCarry(rec)
		if err != nil {
			return "", 0, err
		}
		st.handoff = append(st.handoff, h)
	}
	out, err = st.encode()
	return out, st.handoffDropped, err
}

// MaxUpgradeState is maxUpgradeState.
const MaxUpgradeState = maxUpgradeState
