//go:build linux

package sockfile

// SetBeforeConnect installs f as the hook between checkExisting's Lstat and
// connect, for the external tests, and returns a function that removes it.
// Tests using it must not run Listen concurrently with other tests.
func SetBeforeConnect(f func(path string)) (restore func()) {
	beforeConnect = f
	return func() { beforeConnect = nil }
}
