//go:build !linux

package sockfile

func listen(path string, opts *Options) (*Listener, error) {
	if _, err := opts.network(); err != nil {
		return nil, err
	}
	return nil, ErrNotSupported
}

func adopt(_ int, _ string, _, _ uint64, opts *Options) (*Listener, error) {
	if _, err := opts.network(); err != nil {
		return nil, err
	}
	return nil, ErrNotSupported
}

func releaseLock(int) {}

func unlinkIfSame(string, uint64, uint64) error { return nil }
