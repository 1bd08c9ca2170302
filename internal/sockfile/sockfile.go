package sockfile

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

var (
	// ErrInUse reports a live socket at the path, or another process holding
	// the path's lock (it is creating or serving the socket). Nothing was
	// removed.
	ErrInUse = errors.New("sockfile: socket path in use")

	// ErrNotSocket reports that something other than a socket (a regular
	// file, a directory, a symlink, a FIFO) exists at the path or at its
	// lock path. Nothing was removed.
	ErrNotSocket = errors.New("sockfile: path exists and is not a socket")

	// ErrPathTooLong reports a path that does not fit a sockaddr_un (107
	// bytes plus the terminating NUL).
	ErrPathTooLong = errors.New("sockfile: socket path too long")

	// ErrNotSupported reports a platform where Listen cannot work.
	ErrNotSupported = errors.New("sockfile: not supported on this platform")

	// ErrReplaced reports, from Adopt, that the path no longer names the
	// socket file of the descriptor handed over: it was removed, or
	// replaced by another file. The descriptor still serves whoever is
	// connected or queued; only the path is lost.
	ErrReplaced = errors.New("sockfile: the path no longer names the socket")

	// ErrNotListener reports, from Adopt, that the descriptor is not open,
	// or not a listening AF_UNIX socket of the expected type bound to the
	// path: it may be anything, so nothing was done with it, and nothing
	// about the path was looked at.
	ErrNotListener = errors.New("sockfile: not the listening socket of the path")
)

// maxPath is the longest path a sockaddr_un holds: sun_path is 108 bytes
// including the NUL.
const maxPath = 107

// Options adjusts Listen. A nil *Options, or a zero field, means the
// documented default.
type Options struct {
	// Network is "unix" (SOCK_STREAM, the default) or "unixpacket"
	// (SOCK_SEQPACKET).
	Network string
	// Mode is the socket file's permission bits; 0 means 0600. Connecting to
	// a unix socket needs write permission on it.
	Mode os.FileMode
}

func (o *Options) network() (string, error) {
	if o == nil || o.Network == "" {
		return "unix", nil
	}
	switch o.Network {
	case "unix", "unixpacket":
		return o.Network, nil
	}
	return "", fmt.Errorf("sockfile: unsupported network %q (want unix or unixpacket)", o.Network)
}

func (o *Options) mode() os.FileMode {
	if o == nil || o.Mode == 0 {
		return 0o600
	}
	return o.Mode.Perm()
}

// Listen creates a listening unix socket at path; see the package
// documentation for the guarantees. On error nothing is left behind but the
// lock file.
func Listen(path string, opts *Options) (*Listener, error) {
	l, err := listen(path, opts)
	if err != nil {
		return nil, fmt.Errorf("sockfile: listen %s: %w", path, err)
	}
	return l, nil
}

// Adopt takes over a listening unix socket that Listen created in another
// process, or in an earlier image of this one (across execve(2), whose
// close-on-exec lock descriptor died with the image), together with the
// duty that came with it: fd must be a listening AF_UNIX socket of
// opts.Network's type bound to path (if not, the error wraps
// ErrNotListener), and path must still be that socket's file, identified
// by dev and ino (Listener.FileID in the creator: a socket descriptor's own
// fstat names sockfs, not the file). The Listener returned closes, unlinks
// by inode and releases the lock like one Listen created. Options.Mode is
// not used: the file keeps its mode.
//
// The lock on PATH.lock is taken again, best effort: Locked says whether
// it was, and LockErr why not. A process that holds it, say a starting
// instance probing the path, is not waited for (LockErr wraps ErrInUse),
// and the live socket refuses that instance anyway; the unlink duty is
// taken over without the lock. But something other than a regular file at
// PATH.lock (a symlink, a directory, a FIFO: LockErr wraps ErrNotSocket),
// which Listen refuses, is not followed or opened, and the duty is not
// taken over either: Close leaves the path, as a Listener with
// SetUnlinkOnClose(false) does, and the socket still serves.
//
// If path no longer names that socket, the error wraps ErrReplaced and
// nothing was taken over. Either way fd stays the caller's: the Listener
// works on a duplicate. Like net.FileListener, which it uses, Adopt sets
// O_NONBLOCK on the open file description fd shares with every copy of it
// (other processes' too); a caller whose other users expect it clear reads
// the flags before and restores them.
func Adopt(fd int, path string, dev, ino uint64, opts *Options) (*Listener, error) {
	l, err := adopt(fd, path, dev, ino, opts)
	if err != nil {
		return nil, fmt.Errorf("sockfile: adopt %s: %w", path, err)
	}
	return l, nil
}

// Listener is a listening unix socket created by Listen or taken over by
// Adopt. Accept and AcceptUnix may run concurrently with each other and
// with Close; Close unblocks them. Close is idempotent: later calls return
// an error matching net.ErrClosed.
type Listener struct {
	ul   *net.UnixListener
	path string
	// dev and ino identify the socket file this Listener created, so Close
	// never unlinks a successor's.
	dev, ino uint64

	// lockErr is why Adopt did not take the lock; nil after Listen.
	lockErr error

	mu     sync.Mutex
	lockFD int // flock'ed PATH.lock; -1 once released
	unlink bool
	closed bool
}

var _ net.Listener = (*Listener)(nil)

// Accept waits for and returns the next connection.
func (l *Listener) Accept() (net.Conn, error) { return l.ul.Accept() }

// AcceptUnix waits for and returns the next connection as a *net.UnixConn.
func (l *Listener) AcceptUnix() (*net.UnixConn, error) { return l.ul.AcceptUnix() }

// Addr returns the listener's address.
func (l *Listener) Addr() net.Addr { return l.ul.Addr() }

// Path returns the path the socket was created at.
func (l *Listener) Path() string { return l.path }

// SetDeadline sets the deadline for Accept and AcceptUnix.
func (l *Listener) SetDeadline(t time.Time) error { return l.ul.SetDeadline(t) }

// UnixListener returns the underlying listener, for SyscallConn and File
// (handing the socket to a successor). Closing it directly releases neither
// the lock nor the path; call Close.
func (l *Listener) UnixListener() *net.UnixListener { return l.ul }

// FileID returns the device and inode of the socket file this Listener
// created (or adopted), for a successor's Adopt.
func (l *Listener) FileID() (dev, ino uint64) { return l.dev, l.ino }

// Locked reports whether the Listener holds the lock on PATH.lock: always
// after Listen, after Adopt unless the lock could not be taken again, and
// never after Close. It may run concurrently with Close.
func (l *Listener) Locked() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lockFD >= 0
}

// LockErr reports why Adopt did not take the lock on PATH.lock (see
// Adopt): nil if it did, and after Listen.
func (l *Listener) LockErr() error { return l.lockErr }

// SetUnlinkOnClose sets whether Close unlinks the socket file (the default
// is true). Set it to false before handing a copy of the socket to a
// successor that keeps serving the path.
func (l *Listener) SetUnlinkOnClose(unlink bool) {
	l.mu.Lock()
	l.unlink = unlink
	l.mu.Unlock()
}

// Close closes the socket, unlinks the path if SetUnlinkOnClose allows it
// and the file there is still the one Listen created, and releases the lock.
// The unlink happens while the lock is held, so a racing Listen never sees a
// half-removed path.
func (l *Listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return &net.OpError{Op: "close", Net: l.ul.Addr().Network(), Addr: l.ul.Addr(), Err: net.ErrClosed}
	}
	l.closed = true
	err := l.ul.Close()
	if l.unlink {
		if uerr := unlinkIfSame(l.path, l.dev, l.ino); uerr != nil && err == nil {
			err = uerr
		}
	}
	releaseLock(l.lockFD)
	l.lockFD = -1
	return err
}
