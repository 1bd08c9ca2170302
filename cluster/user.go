package cluster

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"github.com/handoff-go/handoff/supervise"
)

// ErrUser is matched (errors.Is) by the errors of LookupUser, by New and
// NewFleet when the process cannot run workers as Config.Credential (it is
// not root), and by a worker user that could not reach the notify socket.
var ErrUser = errors.New("cluster: bad worker user")

// maxUserSpec bounds a "USER[:GROUP]" string: user and group names are at
// most 32 bytes on Linux (useradd), so anything near this is garbage.
const maxUserSpec = 256

// LookupUser resolves "USER[:GROUP]" (-user, the configuration file's
// "user") into the credential workers run as, like gunicorn's --user and
// --group, uwsgi's uid and gid or nginx's user directive. USER is a name
// or a numeric uid; GROUP, a name or a numeric gid, defaults to the user's
// primary group. The supplementary groups are the user's, as initgroups(3)
// sets them with GROUP as the base group: GROUP plus every group that
// lists the user as a member. A numeric uid without a passwd entry needs a
// GROUP and gets no supplementary group but it. Names are looked up with
// os/user; nothing else is checked (see Config.Credential for what New
// requires). Errors match ErrUser.
func LookupUser(spec string) (*supervise.Credential, error) {
	name, group, hasGroup := strings.Cut(spec, ":")
	switch {
	case len(spec) > maxUserSpec:
		return nil, fmt.Errorf("%w: %q: longer than %d bytes", ErrUser, spec[:32]+"...", maxUserSpec)
	case name == "" || (hasGroup && group == "") || strings.ContainsAny(spec, "\x00\n"):
		return nil, fmt.Errorf("%w: %q: want USER[:GROUP] (a name or a number each)", ErrUser, spec)
	case strings.Contains(group, ":"):
		return nil, fmt.Errorf("%w: %q: want USER[:GROUP] (one colon at most)", ErrUser, spec)
	}
	u, uid, err := lookupUserName(name)
	if err != nil {
		return nil, err
	}
	var gid uint32
	switch {
	case hasGroup:
		if gid, err = lookupGroupName(group); err != nil {
			return nil, err
		}
	case u == nil:
		return nil, fmt.Errorf("%w: uid %d has no passwd entry, so no primary group: give one (%d:GROUP)", ErrUser, uid, uid)
	default:
		if gid, err = parseID(u.Gid); err != nil {
			return nil, fmt.Errorf("%w: user %q: primary group %q: %w", ErrUser, name, u.Gid, err)
		}
	}
	groups := []uint32{gid}
	if u != nil {
		ids, err := u.GroupIds()
		if err != nil {
			return nil, fmt.Errorf("%w: groups of user %q: %w", ErrUser, u.Username, err)
		}
		primary, _ := parseID(u.Gid)
		for _, s := range ids {
			g, err := parseID(s)
			if err != nil {
				return nil, fmt.Errorf("%w: groups of user %q: group id %q: %w", ErrUser, u.Username, s, err)
			}
			// GroupIds is getgrouplist(3) with the passwd group as the
			// base; initgroups with another base group leaves it out
			// unless the group file lists the user in it, which
			// GroupIds does not tell apart.
			if hasGroup && g == primary {
				continue
			}
			groups = append(groups, g)
		}
	}
	slices.Sort(groups)
	return &supervise.Credential{UID: uid, GID: gid, Groups: slices.Compact(groups)}, nil
}

// lookupUserName finds a user by name, then, as chown(1) does, by uid when
// the name is a number; u is nil for a uid without a passwd entry.
func lookupUserName(name string) (u *user.User, uid uint32, err error) {
	u, err = user.Lookup(name)
	if err == nil {
		uid, err = parseID(u.Uid)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: user %q: uid %q: %w", ErrUser, name, u.Uid, err)
		}
		return u, uid, nil
	}
	var unknown user.UnknownUserError
	if !errors.As(err, &unknown) {
		return nil, 0, fmt.Errorf("%w: user %q: %w", ErrUser, name, err)
	}
	id, perr := parseID(name)
	if perr != nil {
		return nil, 0, fmt.Errorf("%w: unknown user %q", ErrUser, name)
	}
	u, err = user.LookupId(name)
	var unknownID user.UnknownUserIdError
	switch {
	case errors.As(err, &unknownID):
		return nil, id, nil
	case err != nil:
		return nil, 0, fmt.Errorf("%w: uid %d: %w", ErrUser, id, err)
	}
	return u, id, nil
}

// lookupGroupName finds a group by name, then by gid when it is a number
// (a gid without a group entry is taken as is, as chown(1) does).
func lookupGroupName(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err == nil {
		gid, err := parseID(g.Gid)
		if err != nil {
			return 0, fmt.Errorf("%w: group %q: gid %q: %w", ErrUser, name, g.Gid, err)
		}
		return gid, nil
	}
	var unknown user.UnknownGroupError
	if !errors.As(err, &unknown) {
		return 0, fmt.Errorf("%w: group %q: %w", ErrUser, name, err)
	}
	gid, perr := parseID(name)
	if perr != nil {
		return 0, fmt.Errorf("%w: unknown group %q", ErrUser, name)
	}
	return gid, nil
}

// parseID parses a uid or gid; (uid_t)-1 means "unchanged" to the
// set*id(2) calls, so it is refused.
func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, errors.New("not a number from 0 to 4294967294")
	}
	if n == 1<<32-1 {
		return 0, errors.New("4294967295 is (uid_t)-1, not an id")
	}
	return uint32(n), nil
}
