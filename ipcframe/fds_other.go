//go:build !linux

package ipcframe

// canPassFDs is false: the descriptor attribution rule this package relies
// on is a property of Linux's AF_UNIX stream implementation. Readers use
// plain Read here and Writers refuse descriptors with ErrNotSupported.
const canPassFDs = false

// closeFDs has nothing to do here: with canPassFDs false a Reader never
// calls Recv, so it never holds a descriptor.
func closeFDs([]int) {}
