package supervise

import "os"

// ExecSpec describes the program Exec replaces the supervisor's process
// with.
type ExecSpec struct {
	// Path is executed as is (execve(2) does not search PATH).
	Path string
	// Argv is the new image's argument vector, argv[0] included.
	Argv []string
	// Env, if not nil, returns the new image's environment; nil means
	// os.Environ(). It is called on the spawner thread right before
	// execve(2), while no worker can be spawned or disowned and once the
	// Launch.Done of every worker spawned has returned, with the worker
	// processes that will be children of the new image, so a state blob
	// built from them names exactly those. An error cancels the exec (Exec
	// returns it). It must not call the Supervisor's methods.
	Env func(workers []ExecWorker) ([]string, error)
	// Prepare, if not nil, is Env for a new image whose descriptors
	// depend on the workers too: it is called in Env's place, with the
	// same guarantees (Env must then be nil), and returns the environment
	// (nil: os.Environ()) and more files to keep open across the exec, as
	// Files are. Files it opened for the purpose stay the caller's to
	// close when Exec returns (it returns only on failure).
	Prepare func(workers []ExecWorker) (env []string, files []*os.File, err error)
	// Files are kept open across the exec, under the same descriptor
	// numbers (FileFD gives them): close-on-exec is cleared on them just
	// before execve and set again if it fails. They stay owned by the
	// caller.
	Files []*os.File
}

// ExecWorker is a worker process that Exec hands to the new image as its
// child. Its ID is the caller's business: the supervisor of the new image
// does not know it.
type ExecWorker struct {
	PID int
	// Stdout and Stderr are the descriptor numbers, kept open across the
	// exec, of duplicates of the read ends of the worker's captured output
	// (Options.CaptureOutput), or -1. The new image must keep reading them
	// until EOF: a worker writing to a pipe nobody reads blocks, and one
	// writing to a closed pipe gets SIGPIPE.
	Stdout, Stderr int
}
