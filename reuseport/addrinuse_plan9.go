package reuseport

// isAddrInUse is false on plan9: its syscall package has no errno values (no
// EADDRINUSE), and every call fails with ErrNotSupported before any bind.
func isAddrInUse(error) bool { return false }
