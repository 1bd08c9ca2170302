//go:build linux

package supervise

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// execReq asks the spawner thread to execve.
type execReq struct {
	spec  *ExecSpec
	reply chan error
}

// execHook is the spawner's exec request queue of one running Supervisor.
type execHook struct {
	reqs chan execReq
	gone chan struct{} // closed when the spawner returned
}

var (
	execHooksMu sync.Mutex
	execHooks   = map[*Supervisor]*execHook{}
)

// startNOFILE is the soft RLIMIT_NOFILE the process started with, learnt
// from the first failed execve (see exec), or 0.
var startNOFILE atomic.Uint64

// execRequests registers the spawner of s as the receiver of Exec requests.
// The spawner calls it once, on its locked thread, and calls the returned
// function when it returns.
func (s *Supervisor) execRequests() (<-chan execReq, func()) {
	h := &execHook{reqs: make(chan execReq), gone: make(chan struct{})}
	execHooksMu.Lock()
	execHooks[s] = h
	execHooksMu.Unlock()
	return h.reqs, func() {
		execHooksMu.Lock()
		if execHooks[s] == h {
			delete(execHooks, s)
		}
		execHooksMu.Unlock()
		close(h.gone)
	}
}

// Exec replaces the process image with spec.Path (execve(2)) while Run
// runs, keeping every worker alive as a child of the same pid. It returns
// only on failure, with an error wrapping ErrNotRunning, ErrInvalid or the
// execve *os.SyscallError (ENOENT, EACCES, ETXTBSY, ENOEXEC: the kernel
// fails those before the point of no return, and the process, its threads
// and its workers are exactly as before: supervision goes on).
//
// The process groups of workers that exited while asked to stop, and are
// still given the rest of their grace (Options.StopTimeout), are SIGKILLed
// right before execve: nobody would watch them after it. So Exec first
// refuses, with the errno execve would give and nothing else done, a
// path execve would fail for a reason that can be checked: missing or
// unreachable, not a regular file, not executable, or a #! script whose
// interpreter is one of those. An execve that fails all the same (ETXTBSY,
// an unknown format, a missing ELF interpreter) has cut those graces
// short; an error from spec.Env or spec.Prepare has not.
//
// The execve runs on the thread that forked every worker. Workers get
// Pdeathsig SIGKILL, which fires when the forking thread exits, and execve
// from a multi-threaded process kills every other thread: from any other
// thread it would SIGKILL all workers. From the forking thread, that thread
// becomes the new image's main thread, so the workers stay alive, remain
// children of the process (the new image can wait for them through pidfds:
// os.FindProcess) and are still killed if the new image dies.
//
// Descriptors are close-on-exec except spec.Files, the files
// spec.Prepare returns, and the read ends of the surviving workers'
// captured output, which the new image inherits
// (see ExecWorker). Nothing else of the supervisor survives: the new image
// must adopt the workers it was told about and retire them.
//
// Exec waits for the Launch.Done of workers already forked to return: it
// must not be called from Launch.Done or Spec.Prepare.
//
// After an execve that failed, workers started later get the
// supervisor's raised soft RLIMIT_NOFILE instead of the one the process
// started with: syscall.Exec, the only execve that takes the runtime's
// exec lock, makes the runtime forget that original. A later successful
// Exec still starts the new image with it.
func (s *Supervisor) Exec(spec *ExecSpec) error {
	if spec == nil || spec.Path == "" || len(spec.Argv) == 0 {
		return fmt.Errorf("%w: Exec needs a path and argv", ErrInvalid)
	}
	if spec.Env != nil && spec.Prepare != nil {
		return fmt.Errorf("%w: ExecSpec with both Env and Prepare", ErrInvalid)
	}
	execHooksMu.Lock()
	h := execHooks[s]
	execHooksMu.Unlock()
	if h == nil {
		return ErrNotRunning
	}
	r := execReq{spec: spec, reply: make(chan error, 1)}
	select {
	case h.reqs <- r:
		return <-r.reply
	case <-h.gone:
		return ErrNotRunning
	}
}

// claimPosted reports whether the owned worker pid of spawn seq had its
// exit posted, its watcher not reaping it at this moment: its exit was
// reported, so it is no worker for the new image. Its proc is returned
// with reapMu held, so the watcher neither reaps it nor ends a linger
// (killing its group) while the exec is prepared; the caller finishes it
// with endPosted right before execve, or unlocks reapMu if the exec is
// given up. A watcher reaping at this very moment keeps it in the list
// (the new image reaps what is left). The caller holds procs.mu, so no
// fork can take the pid.
func (p *platform) claimPosted(pid int, seq uint64) *proc {
	pr := p.posted[pid]
	if pr == nil || pr.seq != seq || !pr.reapMu.TryLock() {
		return nil
	}
	return pr
}

// endPosted reaps a worker claimPosted returned, right before execve: after
// a successful execve no watcher would reap it. The caller holds its
// reapMu.
func (p *platform) endPosted(pr *proc) {
	pr.mu.Lock()
	if pr.lingering && !pr.reaped {
		// Its group was being given the rest of a stop's grace; nobody
		// will watch it after the execve, so it goes now, while the
		// unreaped leader still pins the group id. Done only now that
		// the exec is checked and prepared, so an exec refused for a
		// reason known beforehand leaves the group its grace.
		_ = unix.Kill(-pr.pid, unix.SIGKILL)
		select {
		case pr.kick <- struct{}{}:
		default:
		}
	}
	pr.mu.Unlock()
	if !pr.execReaped {
		// ECHILD: its watcher reaped it already and waits for procs.mu
		// to disown it.
		pr.execReaped = reap(pr.pid) == nil
	}
}

// checkExec fails as execve(2) would for a path that it is sure to refuse
// (before the point of no return): missing or unreachable (ENOENT,
// ENOTDIR, ELOOP, ENAMETOOLONG, EACCES), not a regular file or not
// executable (EACCES), or a script whose #! interpreter is one of those.
// Exec checks first, since preparing an exec is not free: the lingering
// groups of stopped workers are killed then (see endPosted). It says
// nothing about what it cannot tell for sure (ETXTBSY, an ELF
// interpreter, a format only binfmt_misc knows): execve still decides.
func checkExec(path string) error {
	fail := func(err error) error {
		return &os.PathError{Op: "execve", Path: path, Err: os.NewSyscallError("execve", err)}
	}
	// The kernel follows at most 4 interpreters (BINPRM_MAX_RECURSION)
	// beyond the file itself.
	for name, depth := path, 0; name != "" && depth <= 4; depth++ {
		var st unix.Stat_t
		if err := unix.Stat(name, &st); err != nil {
			switch err {
			case unix.ENOENT, unix.ENOTDIR, unix.ELOOP, unix.ENAMETOOLONG, unix.EACCES:
				return fail(err)
			}
			return nil
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fail(unix.EACCES)
		}
		if !mayExecute(name) {
			return fail(unix.EACCES)
		}
		name = scriptInterpreter(name)
	}
	return nil
}

// mayExecute reports false only when faccessat(2) says, for the effective
// ids as execve(2) uses them, that name may not be executed (it checks
// noexec mounts too); an answer it cannot get is true.
func mayExecute(name string) bool {
	err := unix.Faccessat2(unix.AT_FDCWD, name, unix.X_OK, unix.AT_EACCESS)
	if (err == unix.ENOSYS || err == unix.EPERM) && unix.Getuid() == unix.Geteuid() && unix.Getgid() == unix.Getegid() {
		// Before Linux 5.8 only real ids can be asked about, which are
		// the effective ones here. (x/sys's Faccessat would emulate
		// AT_EACCESS from the mode bits, blind to ACLs.)
		err = unix.Faccessat(unix.AT_FDCWD, name, unix.X_OK, 0)
	}
	return err != unix.EACCES
}

// scriptInterpreter returns the interpreter a "#!" line names
// (binfmt_script: the first word after "#!", within the first 256 bytes),
// or "" for a file that is no script or cannot be read (an execute-only
// binary).
func scriptInterpreter(name string) string {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(fd)
	var b [256]byte
	n, err := unix.Read(fd, b[:])
	if err != nil || n < 2 || string(b[:2]) != "#!" {
		return ""
	}
	line, _, ok := strings.Cut(string(b[2:n]), "\n")
	if !ok && n == len(b) {
		return "" // truncated: the kernel's own rules decide
	}
	fields := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
	if len(fields) == 0 {
		return ""
	}
	return fields[0]
}

// exec runs on the spawner thread. On success it does not return.
func (p *platform) exec(r execReq) error {
	// A worker forked just before this request is not the caller's yet
	// (its Launch.Done runs on the loop, which never waits for this
	// thread meanwhile): its channel, say, would be missing from the
	// state the caller builds, and closed by the execve. No fork can
	// start while this thread is here.
	p.unsettled.Wait()
	if err := checkExec(r.spec.Path); err != nil {
		return err
	}
	// Held until execve: no worker is forked, disowned or reaped as an
	// orphan meanwhile, so the list handed to the new image is complete.
	// A watcher may still reap a worker that exits now; the new image
	// checks each pid's parent before trusting it.
	procs.mu.Lock()
	defer procs.mu.Unlock()
	var outputs map[string]int
	if p.s.opt.CaptureOutput {
		outputs = pipeReadEnds()
	}
	// The output readers close a pipe's read end when its worker exits,
	// which may happen right up to execve: the new image gets duplicates,
	// which stay open whatever the readers do (closed again if the exec
	// fails).
	var outDups []int
	defer func() {
		for _, fd := range outDups {
			unix.Close(fd)
		}
	}()
	// Workers whose exit was posted: none is handed over, and each is
	// reaped (its lingering group killed) only right before execve.
	var posted []*proc
	defer func() {
		for _, pr := range posted {
			pr.reapMu.Unlock()
		}
	}()
	workers := make([]ExecWorker, 0, len(p.owned))
	for pid, seq := range p.owned {
		if pr := p.claimPosted(pid, seq); pr != nil {
			posted = append(posted, pr)
			continue
		}
		w := ExecWorker{PID: pid, Stdout: -1, Stderr: -1}
		if outputs != nil {
			w.Stdout = dupOutput(outputOf(pid, 1, outputs), &outDups)
			w.Stderr = dupOutput(outputOf(pid, 2, outputs), &outDups)
		}
		workers = append(workers, w)
	}
	var keep []int
	for _, f := range r.spec.Files {
		if f == nil {
			return fmt.Errorf("%w: nil file in ExecSpec.Files", ErrInvalid)
		}
		fd, err := rawFD(f)
		if err != nil {
			return err
		}
		keep = append(keep, int(fd))
	}
	for _, w := range workers {
		for _, fd := range []int{w.Stdout, w.Stderr} {
			if fd >= 0 {
				keep = append(keep, fd)
			}
		}
	}
	env := os.Environ()
	var prepared []*os.File
	switch {
	case r.spec.Prepare != nil:
		e, files, err := r.spec.Prepare(workers)
		if err != nil {
			return err
		}
		if e != nil {
			env = e
		}
		for _, f := range files {
			if f == nil {
				return fmt.Errorf("%w: nil file from ExecSpec.Prepare", ErrInvalid)
			}
			fd, err := rawFD(f)
			if err != nil {
				return err
			}
			keep = append(keep, int(fd))
		}
		prepared = files
	case r.spec.Env != nil:
		var err error
		if env, err = r.spec.Env(workers); err != nil {
			return err
		}
	}
	var cleared []int
	restore := func() {
		for _, fd := range cleared {
			_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
		}
	}
	for _, fd := range keep {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			restore()
			return os.NewSyscallError("fcntl", err)
		}
		cleared = append(cleared, fd)
	}
	// syscall.Exec lowers the soft RLIMIT_NOFILE to the one the process
	// started with (the Go runtime raised it), for the new image, and in
	// doing so (Setrlimit) makes the runtime forget that original: after a
	// failed execve, workers forked later inherit the current limit, and a
	// later syscall.Exec restores nothing. So the first failure records
	// the original, later execs lower to it themselves, and the limit is
	// raised again after a failure (lowering it for good would leave a
	// supervisor of many workers at EMFILE).
	var lim unix.Rlimit
	limErr := unix.Prlimit(0, unix.RLIMIT_NOFILE, nil, &lim)
	if n := startNOFILE.Load(); limErr == nil && n != 0 && n < lim.Cur {
		low := lim
		low.Cur = n
		_ = unix.Prlimit(0, unix.RLIMIT_NOFILE, &low, nil)
	}
	for _, pr := range posted {
		p.endPosted(pr)
	}
	err := unix.Exec(r.spec.Path, r.spec.Argv, env)
	if limErr == nil {
		var now unix.Rlimit
		if unix.Prlimit(0, unix.RLIMIT_NOFILE, nil, &now) == nil && now.Cur < lim.Cur {
			startNOFILE.CompareAndSwap(0, now.Cur)
		}
		_ = unix.Prlimit(0, unix.RLIMIT_NOFILE, &lim, nil)
	}
	restore()
	runtime.KeepAlive(r.spec.Files)
	runtime.KeepAlive(prepared)
	return &os.PathError{Op: "execve", Path: r.spec.Path, Err: os.NewSyscallError("execve", err)}
}

// dupOutput duplicates the pipe read end fd (close-on-exec until Exec
// clears it) and checks that the duplicate is still the pipe of the worker
// (its reader may have closed fd, and the number been reused, since it was
// looked up); -1 if not.
func dupOutput(out outputFD, dups *[]int) int {
	if out.fd < 0 {
		return -1
	}
	d, err := unix.FcntlInt(uintptr(out.fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return -1
	}
	var st unix.Stat_t
	if unix.Fstat(d, &st) != nil || "pipe:["+strconv.FormatUint(st.Ino, 10)+"]" != out.link {
		unix.Close(d)
		return -1
	}
	*dups = append(*dups, d)
	return d
}

// outputFD is a worker's output pipe: our read end's descriptor and the
// pipe's /proc link ("pipe:[inode]").
type outputFD struct {
	fd   int
	link string
}

// pipeReadEnds maps "pipe:[inode]" to this process's descriptor (from 3
// up) that holds its read end.
func pipeReadEnds() map[string]int {
	out := map[string]int{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return out
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		t, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || !strings.HasPrefix(t, "pipe:") {
			continue
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_ACCMODE != unix.O_RDONLY {
			continue
		}
		out[t] = fd
	}
	return out
}

// outputOf returns our read end of the pipe on the worker's descriptor n,
// or fd -1: the worker may have replaced its stdout, or already exited.
func outputOf(pid, n int, readEnds map[string]int) outputFD {
	t, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + strconv.Itoa(n))
	if err != nil {
		return outputFD{fd: -1}
	}
	if fd, ok := readEnds[t]; ok {
		delete(readEnds, t) // one reader per pipe
		return outputFD{fd: fd, link: t}
	}
	return outputFD{fd: -1}
}

// LockFile returns the open lock file whose lock marks the pid file live,
// for ExecSpec.Files: the lock belongs to the open file description, so it
// survives execve(2) as long as the descriptor does. The file stays owned
// by p; it fails with os.ErrClosed after Close.
func (p *PIDFile) LockFile() (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lock == nil {
		return nil, os.ErrClosed
	}
	return p.lock, nil
}

// AdoptPIDFile takes over a pid file whose lock file (path + ".lock")
// this process inherited open, as descriptor lock, across an exec (see
// LockFile). It checks that lock is that very file (same device and inode,
// not a symlink, not writable by others) and holds its locks again (a
// no-op for locks this open file description already holds; EAGAIN if
// another holds them). A pid file that does not name this process can
// only be a dead owner's, and is removed. The lock record (see
// CreatePIDFile) is rewritten to name the pid file kept, or none, so a
// lock inherited from an earlier release, which kept no record, is
// protected from then on. On success the PIDFile owns lock; on error lock
// is left open for the caller to close, with every byte this call could
// have locked unlocked (a duplicate of it may stay open).
//
// When lock already held the lock (it came through the exec), a path that
// CreatePIDFile would refuse for its directories is no error: the file
// checks passed, and giving up a lock this process holds would stop the
// service at an upgrade (CreatePIDFile would refuse the same path), for a
// path an older release, or the administrator, chose. The refusal is
// returned by the PIDFile's Warning instead. A lock that was free is
// taken only where CreatePIDFile would take it.
func AdoptPIDFile(path string, lock *os.File) (_ *PIDFile, err error) {
	if lock == nil {
		return nil, fmt.Errorf("%w: nil lock file", ErrInvalid)
	}
	path = filepath.Clean(path)
	dirErr := checkDir(filepath.Dir(path))
	if dirErr != nil && !errors.Is(dirErr, ErrUnsafePIDFile) {
		return nil, dirErr
	}
	if err := checkExisting(path); err != nil {
		return nil, err
	}
	if err := checkFile(lock, path+".lock"); err != nil {
		return nil, err
	}
	held, err := lock.Stat()
	if err != nil {
		return nil, err
	}
	named, err := os.Lstat(path + ".lock")
	if err != nil {
		return nil, err
	}
	if !os.SameFile(held, named) {
		return nil, fmt.Errorf("%w: inherited descriptor is not %s.lock", ErrUnsafePIDFile, path)
	}
	if _, err := ofdLock(lock, unix.F_OFD_SETLK, unix.F_WRLCK, ownerByte); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("%w: %s", ErrPIDFileLocked, path)
		}
		return nil, err
	}
	// The caller's close would not release the locks while a duplicate
	// of lock stays open (the caller then takes the lock anew with
	// CreatePIDFile, which our ownerByte or recordByte would fail): give
	// up every byte on any error from here on.
	defer func() {
		if err != nil {
			for _, b := range []int64{liveByte, recordByte, ownerByte} {
				_, _ = ofdLock(lock, unix.F_OFD_SETLK, unix.F_UNLCK, b)
			}
		}
	}()
	if dirErr != nil {
		// Owners take liveByte after ownerByte and drop both at once,
		// so now that lock holds ownerByte, liveByte is held only if
		// lock held it across the exec.
		inherited, err := liveHeld(path+".lock", held)
		if err == nil && !inherited {
			err = dirErr
		}
		if err != nil {
			return nil, err
		}
	}
	// The lock may have been free (lock is another open of the file than
	// the one that held it, whose owner died): then the file names a dead
	// owner's pid, which must be gone before liveByte makes it read as
	// live (as in CreatePIDFile). Ours is kept: the file is never absent
	// across the exec. readPIDFile, not ReadPIDFile: a path refused
	// (dirErr) must not make us remove our own file.
	kept := 0
	if pid, _, err := readPIDFile(path); err == nil && pid == os.Getpid() {
		kept = pid
	} else if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	// The record names the file kept, or none; the previous image kept it
	// so if it was of this release, and an earlier release left none.
	if err := initRecord(lock, path+".lock", kept); err != nil {
		return nil, err
	}
	record := true
	if _, err := ofdLock(lock, unix.F_OFD_SETLK, unix.F_WRLCK, recordByte); err != nil {
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			return nil, err
		}
		// Another process read-locked recordByte, which a lock held by
		// an earlier release leaves free. Stopping the service at an
		// upgrade for it would be worse than what that release did:
		// keep the lock without recordByte and let Write try again.
		// Readers check the record written above all the same: they
		// check it whenever recordByte holds any lock. A free lock is
		// refused, as CreatePIDFile refuses it.
		if inherited, lerr := liveHeld(path+".lock", held); lerr != nil || !inherited {
			if lerr != nil {
				return nil, lerr
			}
			return nil, fmt.Errorf("%w: %s", ErrPIDFileLocked, path)
		}
		record = false
	}
	if _, err := ofdLock(lock, unix.F_OFD_SETLK, unix.F_WRLCK, liveByte); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("%w: %s", ErrPIDFileLocked, path)
		}
		return nil, err
	}
	return &PIDFile{path: path, lock: lock, warn: dirErr, record: record, written: kept}, nil
}
