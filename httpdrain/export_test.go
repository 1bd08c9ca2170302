package httpdrain

// SetTestHookQuiesce makes Serve call f once it starts waiting for fresh
// connections (the listener is closed, Shutdown not yet called), until
// the returned restore runs. Tests use it to act at that instant without
// sleeping.
func SetTestHookQuiesce(f func()) (restore func()) {
	testHookQuiesce = f
	return func() { testHookQuiesce = nil }
}
