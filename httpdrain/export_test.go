package httpdrain

// SetTestHookQuiesce makes Serve call f once it starts waiting for fresh
// connections (the listener is closed, Shutdown not yet called), until
// the returned restore runs. Tests use it to act at that instant without
// sleeping.
func SetTestHookQuiesce(f func()) (restore func()) {
	testHookQuiesce = f
	return func() { testHookQuiesce = nil }
}

// SetTestHookServing makes Serve call f right after it started srv.Serve,
// before it waits for srv.Serve or ctx, until the returned restore runs.
func SetTestHookServing(f func()) (restore func()) {
	testHookServing = f
	return func() { testHookServing = nil }
}
