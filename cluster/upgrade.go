package cluster

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/handoff-go/handoff/internal/listenfds"
)

// envUpgradeState carries the state of an in-place upgrade (SIGUSR2) from
// the old master image to the new one, in the environment of the execve.
const envUpgradeState = "HANDOFF_UPGRADE_STATE"

// upgradePrefix and the version open the state. The version changes with
// an incompatible format; an image parses every version in
// upgradeVersions, so a new image takes over from an older one as long as
// it still lists the older one's version.
const upgradePrefix = "handoff-upgrade "

// upgradeVersion is the version this image writes.
const upgradeVersion = "v1"

// upgradeMagic opens the state this image writes.
const upgradeMagic = upgradePrefix + upgradeVersion

// upgradeVersions are the versions this image parses (and RunUpgradeProbe
// reports), the one it writes included.
var upgradeVersions = []string{upgradeVersion}

// maxUpgradeState bounds the state, which travels in one environment
// string: execve(2) refuses a string (name, "=" and NUL included) longer
// than MAX_ARG_STRLEN, 32 pages (128 KiB), with E2BIG, before its point of
// no return. A state this large names about 1200 worker processes in
// handoff mode with one listener (W record, three channel records and the
// dispatch state, some 105 bytes in all; each further listener a worker
// takes adds about 3: 900 workers with 16), about 1500 in handoff mode
// without the optional dispatch state ("h" records), which encode leaves
// out, of as few workers as it can, when only that fits
// (TestUpgradeStateHandoffSize measures these),
// and about 2500 in the other modes (W record and control channel). A
// larger one fails the upgrade, which then changes nothing.
const maxUpgradeState = 128<<10 - 64

// ErrUpgradeState reports a malformed upgrade state. The master logs it
// and starts clean: it never adopts descriptors or processes it could not
// make sense of.
var ErrUpgradeState = errors.New("cluster: malformed upgrade state")

// ErrUpgradeProbe reports a new binary that failed the upgrade probe (see
// UpgradeProbeArg): the upgrade is refused and the master keeps running.
// New returns it in a process started as the probe.
var ErrUpgradeProbe = errors.New("cluster: upgrade: the new binary failed the upgrade probe")

// upgradeState is what the old image hands over. Every descriptor is a
// number in the new image, unchanged by execve(2).
type upgradeState struct {
	// pid is the master's pid; a state for another process is garbage.
	pid int
	// listeners in -listen order, as socket activation would name them.
	listeners []Activated
	// pidLock is the pid file's lock file (supervise.PIDFile.LockFile), or
	// -1.
	pidLock int
	// files are other named descriptors parts of the master keep across
	// the exec (keepAcrossUpgrade), such as the control socket's listener.
	files []namedFD
	// binds are the listeners workers had the master bind at run time
	// (cluster.Listen), by their -listen form (Addr.String).
	binds []namedFD
	// slots are reuseport mode's per-slot sockets (slot >= 1).
	slots []slotFD
	// sockFiles are the socket files the old image created for unix
	// listeners among listeners and binds (the optional "u" record): the
	// new image takes over their lock and removal (sockfile.Adopt).
	// Socket-activated listeners have none: their files are the
	// activator's.
	sockFiles []sockFileFD
	// workers are the old image's worker processes.
	workers []oldWorker
	// children are the old image's other child processes of its own (the
	// optional "p" record): workers it no longer hands over, which the new
	// image kills and reaps. Children of the program embedding the master
	// are never named, and never killed.
	children []int
	// notify is the old image's notify socket path, removed by the new
	// image (its directory too).
	notify string
	// slotCount is the number of slots in force (after scale requests,
	// SIGTTIN, SIGTTOU), or 0 when not recorded: the new image starts that
	// many, not its -n flag, so an upgrade never undoes a scale.
	slotCount int
	// handoff is handoff mode's dispatch state of old workers (the
	// optional "h" record): a worker named here stays in the new image's
	// rotation until the new image's own workers are ready; one not named
	// (an image that wrote no such record) is sent nothing.
	handoff []handoffCarry
	// handoffDropped, set by encode, counts the "h" records it left out
	// for the state to fit (or parse); handoffWhy says why, and of which
	// workers.
	handoffDropped int
	handoffWhy     error
}

// handoffCarry is what the master knew of an old worker's connection
// channel at the exec, for the new image to go on sending it connections.
type handoffCarry struct {
	pid int
	// out: connections sent and not yet acknowledged; sent: connections
	// sent on the channel (modulo 2³²), the sequence a grant refers to.
	out  int
	sent uint32
	// limited, limit: the worker's last grant (see hoGrant).
	limited bool
	limit   uint32
	// ready: it reported ready; away: it said STOPPING=1 or RELOADING=1.
	ready, away bool
	// subs are the listeners it subscribes to, by the descriptor of
	// their L or B record: a number is a few bytes where a name can be
	// 255, for every worker and listener.
	subs []int
	// owed are the DONEs the old image owed the worker (its channel was
	// full), in order: the new image sends them before anything else,
	// since the worker pairs each DONE with its oldest unanswered UNSUB
	// of the name ("o" records).
	owed []owedRun
}

// owedRun is a run of n DONEs of one listener name owed to a worker.
type owedRun struct {
	name string
	n    int
}

// Bounds of an "o" record: the runs a master keeps per worker (hoMaxOwed
// in handoff mode), their length, and a name's (hoMaxName).
const (
	maxCarryOwed    = 64
	maxCarryOwedRun = 1 << 30
	maxCarryOwedLen = 255
)

type namedFD struct {
	name string
	fd   int
}

// slotFD is socket index (in -listen order) of reuseport slot slot.
type slotFD struct {
	fd, slot, index int
}

// sockFileFD is the socket file, device dev and inode ino, of the unix
// listener at descriptor fd.
type sockFileFD struct {
	fd       int
	dev, ino uint64
}

// oldWorker is a worker of the old image, retired by the new one once its
// own workers are ready.
type oldWorker struct {
	pid, slot, generation int
	// stdout and stderr are the read ends of its captured output, or -1.
	stdout, stderr int
}

// Bounds of parsed numbers: descriptors are small non-negative ints above
// stdio; PID_MAX_LIMIT is 2^22.
const (
	maxStateFD   = 1 << 20
	maxStatePID  = 1 << 22
	maxStateSlot = 4096
	maxStateGen  = 1 << 30
	maxFileName  = 64
	// maxStateSlots bounds reuseport slot sockets: the state's size bound
	// comes first in practice.
	maxStateSlots = 1 << 14
)

// encode renders the state, one record a line:
//
//	handoff-upgrade VERSION PID
//	L FD NAME             a listener (NAME as in LISTEN_FDNAMES)
//	K FD                  the pid file's lock file
//	F FD NAME             another kept descriptor
//	B FD ADDR             a listener bound for a worker (ADDR: scheme://address)
//	S FD SLOT INDEX       reuseport mode: socket INDEX of slot SLOT
//	u FD DEV INO          the socket file (device, inode) the old image
//	                      created for the unix listener FD (an L or B)
//	W PID SLOT GEN OUT ERR   an old worker (OUT, ERR: output pipes or -1)
//	p PID                 another child of the old image's own, to kill
//	N PATH                the old notify socket
//	C COUNT               the number of slots in force (1..4096)
//	h PID OUT SENT GRANT FLAGS FD...  handoff mode: the dispatch state of
//	                      worker PID (named by a W record): OUT connections
//	                      unacknowledged, SENT sent (mod 2^32), GRANT its
//	                      last grant (a sequence number, or - for none),
//	                      FLAGS r (ready) and a (away) or -, then the
//	                      listeners it subscribes to, each by the
//	                      descriptor of its L or B record
//	o PID N NAME          handoff mode: N DONEs owed to worker PID (named
//	                      by an earlier h record) for the listener NAME
//	                      (hexadecimal: a worker's names are any bytes),
//	                      in order with the worker's other o records
//
// A record whose kind is a lower-case letter is optional: an image that
// does not know it ignores it (anything it names is then closed or
// stopped as a leftover, never adopted), so a later image may add one
// without a new version. An unknown upper-case kind rejects the state.
//
// Every text field is checked first: a newline in one (a unix path a
// worker had the master bind, say) would end its record and forge the
// next, so one with a control character (a byte below 0x20, or DEL)
// fails the encoding, and the upgrade with it. What is encoded must also
// parse back to exactly this state, record for record: anything the
// checks missed fails the upgrade too, rather than handing the new image
// records nobody wrote.
func (s *upgradeState) encode() (string, error) {
	for _, f := range s.textFields() {
		if i := ctlByte(f.value); i >= 0 {
			return "", fmt.Errorf("%w: %s %q: control character %#x", ErrUpgradeState, f.what, trunc(f.value), f.value[i])
		}
	}
	s.dropUnlistedSubs()
	s.handoffDropped, s.handoffWhy = 0, nil
	out := s.render()
	if len(s.handoff) > 0 {
		var why error
		if len(out) > maxUpgradeState {
			why = fmt.Errorf("%d bytes with them, more than %d", len(out), maxUpgradeState)
		} else if err := s.readsBack(out); err != nil {
			why = err
		}
		if why != nil {
			out = s.dropHandoff(len(out), why)
		}
	}
	if len(out) > maxUpgradeState {
		return "", fmt.Errorf("%w: %d bytes, more than %d (too many workers)", ErrUpgradeState, len(out), maxUpgradeState)
	}
	if err := s.readsBack(out); err != nil {
		return "", err
	}
	return out, nil
}

// readsBack checks that out, s rendered, is what the new image accepts,
// and reads as s.
func (s *upgradeState) readsBack(out string) error {
	got, err := parseUpgradeState(out)
	if err != nil {
		return err
	}
	if !sameState(got, s) {
		return fmt.Errorf("%w: the encoded state does not parse back to the state encoded", ErrUpgradeState)
	}
	return nil
}

// render writes the records of the state, unchecked (see encode).
func (s *upgradeState) render() string {
	var b strings.Builder
	b.WriteString(upgradeMagic + " " + strconv.Itoa(s.pid) + "\n")
	for _, l := range s.listeners {
		fmt.Fprintf(&b, "L %d %s\n", l.FD, l.Name)
	}
	if s.pidLock >= 0 {
		fmt.Fprintf(&b, "K %d\n", s.pidLock)
	}
	for _, f := range s.files {
		fmt.Fprintf(&b, "F %d %s\n", f.fd, f.name)
	}
	for _, l := range s.binds {
		fmt.Fprintf(&b, "B %d %s\n", l.fd, l.name)
	}
	for _, l := range s.slots {
		fmt.Fprintf(&b, "S %d %d %d\n", l.fd, l.slot, l.index)
	}
	for _, f := range s.sockFiles {
		fmt.Fprintf(&b, "u %d %d %d\n", f.fd, f.dev, f.ino)
	}
	for _, w := range s.workers {
		fmt.Fprintf(&b, "W %d %d %d %d %d\n", w.pid, w.slot, w.generation, w.stdout, w.stderr)
	}
	for _, pid := range s.children {
		fmt.Fprintf(&b, "p %d\n", pid)
	}
	// The notify path is only cleaned up by the new image: one it could
	// not parse is left out, not a reason to fail the upgrade.
	if s.notify != "" && ctlByte(s.notify) < 0 {
		b.WriteString("N " + s.notify + "\n")
	}
	if s.slotCount > 0 {
		fmt.Fprintf(&b, "C %d\n", s.slotCount)
	}
	s.writeHandoff(&b)
	return b.String()
}

// dropHandoff leaves out the "h" records (and "o" records) of the
// workers that keep the state from fitting or parsing back (why), size
// being its length with all of them. The records are optional: a worker
// left out is retired at once (sent nothing, as by an image that writes
// none), which beats failing the upgrade, but only the workers that make
// it so are: first those whose records do not read back even alone, then
// the largest (a worker owed DONEs of many long names takes some 33 KB,
// most workers some 100 bytes) until the state fits, which keeps the most
// workers in the rotation. The state left should then read back; if it
// does not (something these checks miss), every record is left out, as
// before. It returns the state rendered, and sets handoffDropped and
// handoffWhy, which names the workers left out.
func (s *upgradeState) dropHandoff(size int, why error) string {
	sizes := make([]int, len(s.handoff))
	keep := make([]bool, len(s.handoff))
	total := size
	var b strings.Builder
	for i, h := range s.handoff {
		b.Reset()
		writeCarry(&b, h)
		sizes[i] = b.Len()
		keep[i] = s.carryReadsBack(h)
		if !keep[i] {
			total -= sizes[i]
		}
	}
	// The largest first; of equal ones the last (a stable choice).
	order := make([]int, len(s.handoff))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int {
		if sizes[i] != sizes[j] {
			return sizes[j] - sizes[i]
		}
		return j - i
	})
	for _, i := range order {
		if total <= maxUpgradeState {
			break
		}
		if keep[i] {
			keep[i] = false
			total -= sizes[i]
		}
	}
	all := s.handoff
	var kept []handoffCarry
	var pids []int
	for i, h := range all {
		if keep[i] {
			kept = append(kept, h)
		} else {
			pids = append(pids, h.pid)
		}
	}
	s.handoff = kept
	out := s.render()
	if len(kept) > 0 && (len(out) > maxUpgradeState || s.readsBack(out) != nil) {
		pids = pids[:0]
		for _, h := range all {
			pids = append(pids, h.pid)
		}
		s.handoff = nil
		out = s.render()
	}
	s.handoffDropped = len(pids)
	s.handoffWhy = fmt.Errorf("the state of %s left out: %w", pidList(pids), why)
	return out
}

// carryReadsBack says whether the records of h read back, in a state of
// their own with the W record and the listeners they name.
func (s *upgradeState) carryReadsBack(h handoffCarry) bool {
	one := &upgradeState{pid: s.pid, pidLock: -1, handoff: []handoffCarry{h}}
	i := slices.IndexFunc(s.workers, func(w oldWorker) bool { return w.pid == h.pid })
	if i < 0 {
		return false
	}
	one.workers = []oldWorker{s.workers[i]}
	for _, l := range s.listeners {
		if slices.Contains(h.subs, l.FD) {
			one.listeners = append(one.listeners, l)
		}
	}
	for _, l := range s.binds {
		if slices.Contains(h.subs, l.fd) {
			one.binds = append(one.binds, l)
		}
	}
	return one.readsBack(one.render()) == nil
}

// pidList names the workers of pids for a log: the first few by pid, then
// how many more.
func pidList(pids []int) string {
	const show = 16
	var b strings.Builder
	b.WriteString("pid")
	if len(pids) != 1 {
		b.WriteString("s")
	}
	for i, pid := range pids {
		if i == show {
			fmt.Fprintf(&b, " and %d more", len(pids)-show)
			break
		}
		b.WriteString(" " + strconv.Itoa(pid))
	}
	return b.String()
}

// writeHandoff appends the "h" records.
func (s *upgradeState) writeHandoff(b *strings.Builder) {
	for _, h := range s.handoff {
		writeCarry(b, h)
	}
}

// writeCarry appends the "h" record of h, and its "o" records.
func writeCarry(b *strings.Builder, h handoffCarry) {
	grant, flags := "-", ""
	if h.limited {
		grant = strconv.FormatUint(uint64(h.limit), 10)
	}
	if h.ready {
		flags += "r"
	}
	if h.away {
		flags += "a"
	}
	if flags == "" {
		flags = "-"
	}
	fmt.Fprintf(b, "h %d %d %d %s %s", h.pid, h.out, h.sent, grant, flags)
	for _, fd := range h.subs {
		b.WriteString(" " + strconv.Itoa(fd))
	}
	b.WriteString("\n")
	for _, o := range h.owed {
		fmt.Fprintf(b, "o %d %d %x\n", h.pid, o.n, o.name)
	}
}

// dropUnlistedSubs leaves out of the "h" records every subscription to a
// listener the state has no L or B record of (one that could not be kept):
// the new image would not have that listener.
func (s *upgradeState) dropUnlistedSubs() {
	listed := make(map[int]bool, len(s.listeners)+len(s.binds))
	for _, l := range s.listeners {
		listed[l.FD] = true
	}
	for _, l := range s.binds {
		listed[l.fd] = true
	}
	for i := range s.handoff {
		h := &s.handoff[i]
		h.subs = slices.DeleteFunc(slices.Clone(h.subs), func(fd int) bool { return !listed[fd] })
	}
}

// textField is one free-text field of a state, for encode's check.
type textField struct{ what, value string }

// textFields lists the state's free-text fields.
func (s *upgradeState) textFields() []textField {
	var out []textField
	for _, l := range s.listeners {
		out = append(out, textField{"listener name", l.Name})
	}
	for _, f := range s.files {
		out = append(out, textField{"file name", f.name})
	}
	for _, l := range s.binds {
		out = append(out, textField{"bound address", l.name})
	}
	return out
}

// sameState reports whether parsed, a state encode rendered and
// parseUpgradeState read back, is s as encode writes it: the same records
// with the same fields, no more, no fewer.
func sameState(parsed, s *upgradeState) bool {
	notify, pidLock, slotCount := s.notify, max(s.pidLock, -1), max(s.slotCount, 0)
	if ctlByte(notify) >= 0 {
		notify = "" // left out (see encode)
	}
	return parsed.pid == s.pid && parsed.pidLock == pidLock && parsed.notify == notify && parsed.slotCount == slotCount &&
		slices.Equal(parsed.listeners, s.listeners) && slices.Equal(parsed.files, s.files) &&
		slices.Equal(parsed.binds, s.binds) && slices.Equal(parsed.slots, s.slots) && slices.Equal(parsed.sockFiles, s.sockFiles) &&
		slices.Equal(parsed.workers, s.workers) && slices.Equal(parsed.children, s.children) &&
		slices.EqualFunc(parsed.handoff, s.handoff, sameCarry)
}

// sameCarry reports whether the "h" record parsed is h as encode writes
// it (the grant's sequence number only if there is one).
func sameCarry(parsed, h handoffCarry) bool {
	return parsed.pid == h.pid && parsed.out == h.out && parsed.sent == h.sent &&
		parsed.limited == h.limited && (!h.limited || parsed.limit == h.limit) &&
		parsed.ready == h.ready && parsed.away == h.away && slices.Equal(parsed.subs, h.subs) &&
		slices.Equal(parsed.owed, h.owed)
}

// parseUpgradeState parses encode's output. Anything else (a bad number, a
// descriptor named twice, an unknown record, too large) is an error
// wrapping ErrUpgradeState; it never panics.
func parseUpgradeState(s string) (*upgradeState, error) {
	bad := func(format string, args ...any) (*upgradeState, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrUpgradeState}, args...)...)
	}
	if len(s) > maxUpgradeState {
		return bad("%d bytes", len(s))
	}
	lines := strings.Split(s, "\n")
	if n := len(lines); n > 0 && lines[n-1] == "" {
		lines = lines[:n-1]
	}
	if len(lines) == 0 {
		return bad("empty")
	}
	head, ok := strings.CutPrefix(lines[0], upgradePrefix)
	ver, head, _ := strings.Cut(head, " ")
	if !ok || !slices.Contains(upgradeVersions, ver) {
		return bad("unknown header %q (this image parses %s)", trunc(lines[0]), strings.Join(upgradeVersions, ", "))
	}
	st := &upgradeState{pidLock: -1}
	var err error
	if st.pid, err = atoiIn(head, 1, maxStatePID); err != nil {
		return bad("pid: %v", err)
	}
	fds := map[int]bool{}
	fd := func(field string) (int, error) {
		n, err := atoiIn(field, listenFDsStart, maxStateFD)
		if err != nil {
			return 0, err
		}
		if fds[n] {
			return 0, fmt.Errorf("descriptor %d named twice", n)
		}
		fds[n] = true
		return n, nil
	}
	optFD := func(field string) (int, error) {
		if field == "-1" {
			return -1, nil
		}
		return fd(field)
	}
	pids := map[int]bool{}
	for i, ln := range lines[1:] {
		kind, rest, _ := strings.Cut(ln, " ")
		recErr := func(err error) (*upgradeState, error) {
			return bad("line %d %q: %v", i+2, trunc(ln), err)
		}
		switch kind {
		case "L", "F", "B":
			num, name, ok := strings.Cut(rest, " ")
			if !ok {
				return recErr(errors.New("no name"))
			}
			n, err := fd(num)
			if err != nil {
				return recErr(err)
			}
			if kind == "L" {
				if err := listenfds.ValidName(name); err != nil {
					return recErr(err)
				}
				if len(st.listeners) >= maxListenFDs {
					return recErr(errors.New("too many listeners"))
				}
				st.listeners = append(st.listeners, Activated{FD: n, Name: name})
				continue
			}
			if kind == "B" {
				a, err := ParseAddr(name)
				if err != nil || a.String() != name {
					return recErr(errors.New("bad address"))
				}
				for _, l := range st.binds {
					if l.name == name {
						return recErr(errors.New("address named twice"))
					}
				}
				if len(st.binds) >= maxListenFDs {
					return recErr(errors.New("too many bound listeners"))
				}
				st.binds = append(st.binds, namedFD{name: name, fd: n})
				continue
			}
			if !validFileName(name) {
				return recErr(errors.New("bad file name"))
			}
			for _, f := range st.files {
				if f.name == name {
					return recErr(errors.New("file named twice"))
				}
			}
			st.files = append(st.files, namedFD{name: name, fd: n})
		case "S":
			f := strings.Split(rest, " ")
			if len(f) != 3 {
				return recErr(errors.New("want 3 fields"))
			}
			var l slotFD
			if l.fd, err = fd(f[0]); err != nil {
				return recErr(err)
			}
			if l.slot, err = atoiIn(f[1], 1, maxStateSlot-1); err != nil {
				return recErr(err)
			}
			if l.index, err = atoiIn(f[2], 0, maxListenFDs-1); err != nil {
				return recErr(err)
			}
			for _, o := range st.slots {
				if o.slot == l.slot && o.index == l.index {
					return recErr(errors.New("slot socket named twice"))
				}
			}
			if len(st.slots) >= maxStateSlots {
				return recErr(errors.New("too many slot sockets"))
			}
			st.slots = append(st.slots, l)
		case "K":
			if st.pidLock >= 0 {
				return recErr(errors.New("second pid file lock"))
			}
			if st.pidLock, err = fd(rest); err != nil {
				return recErr(err)
			}
		case "W":
			f := strings.Split(rest, " ")
			if len(f) != 5 {
				return recErr(errors.New("want 5 fields"))
			}
			var w oldWorker
			if w.pid, err = atoiIn(f[0], 2, maxStatePID); err != nil {
				return recErr(err)
			}
			if w.pid == st.pid || pids[w.pid] {
				return recErr(errors.New("pid repeated"))
			}
			pids[w.pid] = true
			if w.slot, err = atoiIn(f[1], 0, maxStateSlot-1); err != nil {
				return recErr(err)
			}
			if w.generation, err = atoiIn(f[2], 1, maxStateGen); err != nil {
				return recErr(err)
			}
			if w.stdout, err = optFD(f[3]); err != nil {
				return recErr(err)
			}
			if w.stderr, err = optFD(f[4]); err != nil {
				return recErr(err)
			}
			st.workers = append(st.workers, w)
		case "N":
			if st.notify != "" || !strings.HasPrefix(rest, "/") || ctlByte(rest) >= 0 {
				return recErr(errors.New("want one absolute path"))
			}
			st.notify = rest
		case "C":
			if st.slotCount != 0 {
				return recErr(errors.New("second slot count"))
			}
			if st.slotCount, err = atoiIn(rest, 1, maxStateSlot); err != nil {
				return recErr(err)
			}
		case "u":
			f := strings.Split(rest, " ")
			if len(f) != 3 {
				return recErr(errors.New("want 3 fields"))
			}
			var sf sockFileFD
			// Not fd(): the descriptor is an L or B record's, checked
			// once every record is read.
			if sf.fd, err = atoiIn(f[0], listenFDsStart, maxStateFD); err != nil {
				return recErr(err)
			}
			if sf.dev, err = uintIn(f[1]); err != nil {
				return recErr(err)
			}
			if sf.ino, err = uintIn(f[2]); err != nil {
				return recErr(err)
			}
			for _, o := range st.sockFiles {
				if o.fd == sf.fd {
					return recErr(errors.New("socket file named twice"))
				}
			}
			if len(st.sockFiles) >= 2*maxListenFDs {
				return recErr(errors.New("too many socket files"))
			}
			st.sockFiles = append(st.sockFiles, sf)
		case "h":
			h, err := parseHandoffCarry(rest)
			if err != nil {
				return recErr(err)
			}
			for _, o := range st.handoff {
				if o.pid == h.pid {
					return recErr(errors.New("pid repeated"))
				}
			}
			st.handoff = append(st.handoff, h)
		case "o":
			pid, o, err := parseOwedRun(rest)
			if err != nil {
				return recErr(err)
			}
			i := slices.IndexFunc(st.handoff, func(h handoffCarry) bool { return h.pid == pid })
			if i < 0 {
				return recErr(errors.New("no h record of the pid before"))
			}
			if len(st.handoff[i].owed) >= maxCarryOwed {
				return recErr(fmt.Errorf("more than %d for the pid", maxCarryOwed))
			}
			st.handoff[i].owed = append(st.handoff[i].owed, o)
		case "p":
			pid, err := atoiIn(rest, 2, maxStatePID)
			if err != nil {
				return recErr(err)
			}
			if pid == st.pid || pids[pid] {
				return recErr(errors.New("pid repeated"))
			}
			pids[pid] = true
			st.children = append(st.children, pid)
		default:
			if len(kind) == 1 && kind[0] >= 'a' && kind[0] <= 'z' {
				// Optional: a later image's, ignored (see encode).
				continue
			}
			return recErr(errors.New("unknown record"))
		}
	}
	for _, sf := range st.sockFiles {
		if !slices.ContainsFunc(st.listeners, func(a Activated) bool { return a.FD == sf.fd }) &&
			!slices.ContainsFunc(st.binds, func(b namedFD) bool { return b.fd == sf.fd }) {
			return bad("socket file of descriptor %d, which is no listener", sf.fd)
		}
	}
	// An "h" record describes a worker handed over, never anything else,
	// and its subscriptions name listeners of the state.
	for _, h := range st.handoff {
		if !slices.ContainsFunc(st.workers, func(w oldWorker) bool { return w.pid == h.pid }) {
			return bad("h record of pid %d, which no W record names", h.pid)
		}
		for _, fd := range h.subs {
			if !slices.ContainsFunc(st.listeners, func(a Activated) bool { return a.FD == fd }) &&
				!slices.ContainsFunc(st.binds, func(b namedFD) bool { return b.fd == fd }) {
				return bad("h record of pid %d subscribes to descriptor %d, which is no listener", h.pid, fd)
			}
		}
	}
	return st, nil
}

// sockFile returns the socket file the state names for the listener at
// descriptor fd.
func (s *upgradeState) sockFile(fd int) (dev, ino uint64, ok bool) {
	for _, sf := range s.sockFiles {
		if sf.fd == fd {
			return sf.dev, sf.ino, true
		}
	}
	return 0, 0, false
}

// maxCarryOut bounds an "h" record's OUT (a worker's window is far
// smaller; the new image keeps what it is given).
const maxCarryOut = 1 << 16

// maxCarrySubs bounds an "h" record's subscriptions: one per L or B
// record, of which a state has at most maxListenFDs each.
const maxCarrySubs = 2 * maxListenFDs

// parseHandoffCarry parses the fields of an "h" record. Whether each
// subscription is an L or B record's descriptor is checked once every
// record is read.
func parseHandoffCarry(rest string) (handoffCarry, error) {
	var h handoffCarry
	f := strings.Split(rest, " ")
	if len(f) < 5 || len(f) > 5+maxCarrySubs {
		return h, fmt.Errorf("want 5 to %d fields", 5+maxCarrySubs)
	}
	var err error
	if h.pid, err = atoiIn(f[0], 2, maxStatePID); err != nil {
		return h, err
	}
	if h.out, err = atoiIn(f[1], 0, maxCarryOut); err != nil {
		return h, err
	}
	if h.sent, err = atoiUint32(f[2]); err != nil {
		return h, err
	}
	if f[3] != "-" {
		h.limited = true
		if h.limit, err = atoiUint32(f[3]); err != nil {
			return h, err
		}
	}
	switch f[4] {
	case "-":
	case "r":
		h.ready = true
	case "a":
		h.away = true
	case "ra":
		h.ready, h.away = true, true
	default:
		return h, fmt.Errorf("flags %q", trunc(f[4]))
	}
	for _, x := range f[5:] {
		fd, err := atoiIn(x, listenFDsStart, maxStateFD)
		if err != nil {
			return h, fmt.Errorf("listener: %w", err)
		}
		if slices.Contains(h.subs, fd) {
			return h, fmt.Errorf("listener %d named twice", fd)
		}
		h.subs = append(h.subs, fd)
	}
	return h, nil
}

// parseOwedRun parses the fields of an "o" record.
func parseOwedRun(rest string) (int, owedRun, error) {
	var o owedRun
	f := strings.Split(rest, " ")
	if len(f) != 3 {
		return 0, o, errors.New("want 3 fields")
	}
	pid, err := atoiIn(f[0], 2, maxStatePID)
	if err != nil {
		return 0, o, err
	}
	if o.n, err = atoiIn(f[1], 1, maxCarryOwedRun); err != nil {
		return 0, o, err
	}
	// Lower case only, as encode writes it: one state, one encoding.
	if f[2] == "" || len(f[2]) > 2*maxCarryOwedLen || strings.ToLower(f[2]) != f[2] {
		return 0, o, fmt.Errorf("name %q", trunc(f[2]))
	}
	name, err := hex.DecodeString(f[2])
	if err != nil {
		return 0, o, fmt.Errorf("name %q", trunc(f[2]))
	}
	o.name = string(name)
	return pid, o, nil
}

// atoiUint32 parses a canonical decimal in [0, 2³²-1], on 32-bit
// platforms too.
func atoiUint32(s string) (uint32, error) {
	if s == "" || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("number %q", trunc(s))
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("number %q", trunc(s))
	}
	return uint32(n), nil
}

// validFileName accepts the names of kept descriptors: short, and of
// characters that cannot break a record.
func validFileName(s string) bool {
	if s == "" || len(s) > maxFileName {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// atoiIn parses a canonical decimal in [lo, hi]: no sign, no leading zero.
func atoiIn(s string, lo, hi int) (int, error) {
	if s == "" || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("number %q", trunc(s))
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("number %q", trunc(s))
		}
		n = n*10 + int(s[i]-'0')
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%d out of range %d..%d", n, lo, hi)
	}
	return n, nil
}

// uintIn parses a canonical decimal uint64: no sign, no leading zero.
func uintIn(s string) (uint64, error) {
	if s == "" || len(s) > 20 || (len(s) > 1 && s[0] == '0') || s[0] < '0' || s[0] > '9' {
		return 0, fmt.Errorf("number %q", trunc(s))
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("number %q", trunc(s))
	}
	return n, nil
}

// trunc shortens garbage quoted in an error.
func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// UpgradeProbeArgs reports whether args (os.Args[1:]) select the upgrade
// probe, and returns the arguments the new image would be started with
// (after UpgradeProbeArg and "--"). A running master probes as "BIN
// UpgradeProbeArg -- ARGS...", ARGS being its own os.Args[1:]; the bare
// "BIN UpgradeProbeArg" form yields no arguments.
func UpgradeProbeArgs(args []string) (rest []string, ok bool) {
	if len(args) == 0 || args[0] != UpgradeProbeArg {
		return nil, false
	}
	if len(args) == 1 {
		return []string{}, true
	}
	if args[1] != "--" {
		return nil, false
	}
	return args[2:], true
}

// RunUpgradeProbe is the upgrade probe selected by UpgradeProbeArg (see
// UpgradeProbeArgs): it writes to w the header of every upgrade state this
// binary accepts, one a line ("handoff-upgrade v1"), for the running
// master to check before it executes this binary in place. A program
// should call it only once it has parsed and validated the arguments
// UpgradeProbeArgs returns, and its configuration, exactly as it would at
// start-up, without binding or starting anything; if they fail it should
// print why on stderr and exit non-zero instead: the master then refuses
// the upgrade and keeps serving, where the new image would have exited
// after the execve and taken every worker down with it. On platforms
// other than Linux it writes nothing and returns an error wrapping
// ErrNotSupported.
func RunUpgradeProbe(w io.Writer) error {
	if runtime.GOOS != "linux" {
		return ErrNotSupported
	}
	var b strings.Builder
	for _, v := range upgradeVersions {
		b.WriteString(upgradePrefix + v + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
