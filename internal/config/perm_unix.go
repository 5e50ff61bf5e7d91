//go:build unix

package config

import (
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// exposed returns a warning when users other than this process's may read or
// change the file holding secrets, or "" when they may not. Group access is
// fine when the group is one of ours: the service setup keeps agent.yaml
// 0640 root:peerport, readable by the agent's own group and nobody else.
func exposed(path string, fi os.FileInfo, secrets []string) string {
	mode := fi.Mode().Perm()
	var who []string
	var bits os.FileMode // the rwx bits of the classes that count, as "other" bits
	if o := mode & 0o006; o != 0 {
		who = append(who, "every user")
		bits |= o
	}
	if g := mode & 0o060; g != 0 {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !inOurGroups(st.Gid) {
			who = append(who, "group "+groupName(st.Gid))
			bits |= g >> 3
		}
	}
	if len(who) == 0 {
		return ""
	}
	verb := "read"
	switch bits & 0o006 {
	case 0o002:
		verb = "change"
	case 0o006:
		verb = "read and change"
	}
	return fmt.Sprintf("%s: mode %04o lets %s %s %s in it; run chmod 600 on it (or 640 with a group only the agent's user is in)",
		path, mode, strings.Join(who, " and "), verb, strings.Join(secrets, " and "))
}

func inOurGroups(gid uint32) bool {
	if uint32(os.Getegid()) == gid {
		return true
	}
	groups, err := os.Getgroups()
	return err == nil && slices.Contains(groups, int(gid))
}

// describeOwner says who owns fi and its mode, e.g. "owner root, group
// peerport, mode 0640", for a permission error.
func describeOwner(fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Sprintf("mode %04o", fi.Mode().Perm())
	}
	return fmt.Sprintf("owner %s, group %s, mode %04o", userName(st.Uid), groupName(st.Gid), fi.Mode().Perm())
}

func userName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return "uid " + id
}

func groupName(gid uint32) string {
	id := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name
	}
	return "gid " + id
}
