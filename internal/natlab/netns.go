package natlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

const netnsDir = "/run/netns"

// writeSysctls writes /proc/sys/<key> values inside ns.
func writeSysctls(ns string, kv [][2]string) error {
	return inNetns(ns, func() error {
		var errs []error
		for _, e := range kv {
			p := "/proc/sys/" + strings.ReplaceAll(e[0], ".", "/")
			if err := os.WriteFile(p, []byte(e[1]), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("sysctl %s=%s in %s: %w", e[0], e[1], ns, err))
			}
		}
		return errors.Join(errs...)
	})
}

// run runs a helper command (ip, nft, conntrack) in the root context and
// returns a wrapped error carrying its stderr.
func run(ctx context.Context, stdin string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// ipBatch runs "ip -n ns -batch -" with the given lines.
func ipBatch(ctx context.Context, ns string, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	_, err := run(ctx, strings.Join(lines, "\n")+"\n", "ip", "-n", ns, "-batch", "-")
	return err
}

// nsPids lists the processes inside a named namespace.
func nsPids(ctx context.Context, ns string) []int {
	out, err := run(ctx, "", "ip", "netns", "pids", ns)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		// Never our own process (a thread of it may be visiting ns).
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// deleteNetns kills whatever still runs in ns and deletes it.
func deleteNetns(ctx context.Context, ns string) error {
	for _, pid := range nsPids(ctx, ns) {
		killPid(pid)
	}
	if err := removeEtcNetns(ns); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_, err := run(ctx, "", "ip", "netns", "del", ns)
	return err
}
