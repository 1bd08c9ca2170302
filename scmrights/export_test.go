//go:build unix && !aix

package scmrights

// WalkRights exposes the control-message walker to the fuzz target.
func WalkRights(oob []byte, fn func(fd int)) error { return walkRights(oob, fn) }

// PutRights exposes the control-message builder to the fuzz target.

// WalkControl exposes the full control-message walker to tests.
func WalkControl(oob []byte, rights, unwanted func(fd int), cred func([]byte)) error {
	return walkControl(oob, rights, unwanted, cred)
}

// RightsOnly exposes deliver's fast path to the fuzz target.
func RightsOnly(oob []byte, fds []int) (int, bool) { return rightsOnly(oob, fds) }
