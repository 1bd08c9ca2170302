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

// UpgradeFields are the free-text fields of a state for
// EncodeUpgradeFields: each non-empty one names one descriptor.
type UpgradeFields struct {
	Listener, File, Bind, Notify string
}

// upgradeFieldsState is a state of pid 100 naming f's fields.
func upgradeFieldsState(f UpgradeFields) *upgradeState {
	st := &upgradeState{pid: 100, pidLock: -1, notify: f.Notify}
	if f.Listener != "" {
		st.listeners = []Activated{{FD: 3, Name: f.Listener}}
	}
	if f.File != "" {
		st.files = []namedFD{{name: f.File, fd: 4}}
	}
	if f.Bind != "" {
		st.binds = []namedFD{{name: f.Bind, fd: 5}}
	}
	return st
}

// EncodeUpgradeFields encodes a state naming f's fields.
func EncodeUpgradeFields(f UpgradeFields) (string, error) {
	return upgradeFieldsState(f).encode()
}

// UpgradeFieldsReadBack renders a state naming f's fields without
// encode's field checks and reports whether it reads back as that state
// (encode's last check).
func UpgradeFieldsReadBack(f UpgradeFields) error {
	st := upgradeFieldsState(f)
	return st.readsBack(st.render())
}
