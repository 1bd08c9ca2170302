// Package sockfile creates listening unix sockets at a path safely: the
// control socket of mini-cluster, unix:// listeners, the rendezvous socket of
// fdrecv.
//
// Listen guarantees, for every process that creates the path through it:
//
//   - A live socket at the path (one that accepts a connection) is never
//     unlinked; Listen fails with ErrInUse.
//   - A stale socket (its owner died without unlinking it, so connect gets
//     ECONNREFUSED) is unlinked and replaced, under the lock.
//   - Anything else at the path (a regular file, a directory, a symlink, a
//     FIFO) is never touched; Listen fails with ErrNotSocket.
//   - Two processes racing on one path cannot both win: an flock on
//     PATH.lock, held for the listener's lifetime, serialises the check and
//     the replacement. The lock file is left in place (unlinking a lock file
//     reopens the race it closes); a crashed owner's lock dies with it.
//   - The socket has mode 0600 (Options.Mode) whatever the umask, and no
//     other user can ever connect to it under a looser mode: it is bound,
//     chmod-ed, and only then put in listening state. Before listen(2) a
//     bound socket refuses every connection (ECONNREFUSED). The umask is
//     never changed: it is process-wide, and other goroutines create files.
//   - Close unlinks the path only if the inode there is still the one this
//     Listener created, so a successor that replaced it keeps its socket; and
//     SetUnlinkOnClose(false) keeps the path for a successor that inherited
//     a copy of the listening socket (exec, SCM_RIGHTS).
//   - A successor that inherited the socket (an in-place execve(2), whose
//     close-on-exec lock descriptor did not survive) takes the lock and the
//     unlink-by-inode duty back with Adopt, if the path still names that
//     very socket file; if not, it gets ErrReplaced and must leave the
//     path alone. A lock path that is not a regular file, which Listen
//     refuses, makes Adopt leave the path alone too (LockErr says so),
//     while the socket serves.
//
// # Who should not use it
//
// Code that needs an abstract-namespace socket (no file to protect), or a
// socket in a directory other users can write without the sticky bit: there a
// path-based check cannot be made safe, so use a private directory.
//
// # Platforms
//
// Linux only. Elsewhere Listen returns an error wrapping ErrNotSupported.
//
// # Ownership
//
// The Listener owns its socket and the lock. Accepted connections belong to
// the caller. Descriptors are close-on-exec; hand the socket to a successor
// explicitly (exec.Cmd.ExtraFiles, SCM_RIGHTS via UnixListener).
package sockfile
