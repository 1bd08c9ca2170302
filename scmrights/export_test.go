//go:build unix

package scmrights

// WalkRights exposes the control-message walker to the fuzz target.
func WalkRights(oob []byte, fn func(fd int)) error { return walkRights(oob, fn) }

// PutRights exposes the control-message builder to the fuzz target.
func PutRights(b []byte, fds []int) []byte { return putRights(b, fds) }
