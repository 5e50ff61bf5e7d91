package natlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Name resolution in the lab. "ip netns exec NS" (how Start and Run launch
// every program) runs it in a new mount namespace where each file of
// /etc/netns/NS/ is bind-mounted over its namesake in /etc. So a hosts file
// there is the lab's DNS: no resolver daemon, nothing that could reach the
// machine's own network. Go code run with Node.Do does not see it (it only
// joins the network namespace); it dials IP literals.

// etcNetnsDir is where "ip netns exec" looks for a namespace's /etc files.
const etcNetnsDir = "/etc/netns"

// hostNameRE admits the names a hosts file can carry.
var hostNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$`)

// hostsHeader keeps localhost resolving: the file replaces /etc/hosts whole.
const hostsHeader = "# natlab: names of this lab (Lab.AddHost); removed with the lab\n" +
	"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

// labResolvConf points the resolver at the namespace's own loopback, where
// nothing listens: a name missing from the hosts file fails at once
// (connection refused), instead of a query heading for the machine's DNS
// server through the lab's internet, where it would wait for its timeout.
const labResolvConf = "# natlab: no DNS in the lab; names come from the hosts file\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n"

// AddHost makes name resolve to ip for every program the lab runs, in each
// of its namespaces, through /etc/netns/<namespace>/hosts. Adding a name
// again replaces its address. Close (and the removal of a dead run's lab)
// deletes the files.
//
// Programs started before the lab's first AddHost keep the machine's
// /etc/hosts; call it before starting them. Later calls reach running
// programs too (glibc reads the file at each lookup, Go within 5 seconds),
// because the file is rewritten in place: each program sees it through a
// bind mount of its inode, so a file renamed over it would stay invisible.
func (l *Lab) AddHost(name string, ip netip.Addr) error {
	if !hostNameRE.MatchString(name) || !ip.IsValid() {
		return fmt.Errorf("natlab: add host %q %v: want a host name and an IP address", name, ip)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("natlab: add host: lab closed")
	}
	errs := []error{cleanStaleEtc()}
	for _, n := range l.order {
		if !n.created {
			continue
		}
		if err := addHostLine(n.ns, name, ip); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("natlab: add host %s: %w", name, err)
	}
	return nil
}

// addHostLine writes ns's hosts file with name -> ip in it, and its
// resolv.conf on first use.
func addHostLine(ns, name string, ip netip.Addr) error {
	dir := filepath.Join(etcNetnsDir, ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	hostsPath := filepath.Join(dir, "hosts")
	old, err := os.ReadFile(hostsPath)
	if errors.Is(err, os.ErrNotExist) {
		old = []byte(hostsHeader)
		if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(labResolvConf), 0o644); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	lines := strings.SplitAfter(string(old), "\n")
	lines = slices.DeleteFunc(lines, func(l string) bool {
		f := strings.Fields(l)
		return l == "" || (len(f) == 2 && !strings.HasPrefix(f[0], "#") && f[1] == name)
	})
	lines = append(lines, ip.Unmap().String()+"\t"+name+"\n")
	// In place, not renamed over (see AddHost); a lookup racing the write
	// may miss the names for that one lookup, which tests do not do.
	return os.WriteFile(hostsPath, []byte(strings.Join(lines, "")), 0o644)
}

// cleanStaleEtc removes the /etc/netns directories of lab namespaces
// that no longer exist and whose creating process is dead. Teardown
// removes them before the namespace, so these are left only by a hand's
// "ip netns del"; sweeping where they are made keeps them from piling up.
func cleanStaleEtc() error {
	ents, err := os.ReadDir(etcNetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("natlab: list %s: %w", etcNetnsDir, err)
	}
	var errs []error
	for _, e := range ents {
		m := staleRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if pid, err := strconv.Atoi(m[1]); err != nil || pidAlive(pid) {
			continue
		}
		if _, err := os.Stat(filepath.Join(netnsDir, e.Name())); err == nil {
			continue // the namespace's own removal (CleanStale) takes it
		}
		errs = append(errs, removeEtcNetns(e.Name()))
	}
	return errors.Join(errs...)
}

// removeEtcNetns deletes ns's /etc/netns directory, if any. Teardown calls
// it before deleting the namespace: a run killed in between leaves the
// namespace, which the next Build removes as stale, calling this again.
func removeEtcNetns(ns string) error {
	if ns == "" || ns == "." || ns == ".." || strings.Contains(ns, "/") {
		return fmt.Errorf("natlab: refusing to remove %s/%q", etcNetnsDir, ns)
	}
	if err := os.RemoveAll(filepath.Join(etcNetnsDir, ns)); err != nil {
		return fmt.Errorf("natlab: remove %s/%s: %w", etcNetnsDir, ns, err)
	}
	return nil
}
