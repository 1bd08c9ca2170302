//go:build linux || freebsd || darwin || dragonfly || netbsd || openbsd

package reuseport

// SetReuseOption makes the package set option opt, named name, in place of
// SO_REUSEPORT until restore is called, so a test can play a kernel that
// does not know the option. Not for parallel tests.
func SetReuseOption(opt int, name string) (restore func()) {
	saved := reuseOpt
	reuseOpt = reuseSockopt{opt, name}
	return func() { reuseOpt = saved }
}
