package natlab_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// TestAddHost: a name added to the lab resolves in every namespace for the
// programs the lab runs, a second AddHost replaces the address, a name not
// added fails at once, and Close (or a later lab, for a dead run's
// leftovers) removes the files.
func TestAddHost(t *testing.T) {
	natlab.Require(t)
	ctx := testCtx(t, 30*time.Second)

	// Leftovers of a dead run whose namespace is already gone.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join("/etc/netns", fmt.Sprintf("ppl%d-0000bb-x", dead.Process.Pid))
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(stale) })

	lab, err := natlab.Build(ctx, natlab.Pair(natlab.Public, natlab.BehindCone))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	broker := lab.Host("broker").IP()
	// A program started after the first AddHost sees later ones too: the
	// file is rewritten in place, under its bind mount.
	if err := lab.AddHost("first.test", broker); err != nil {
		t.Fatal(err)
	}
	hostsFile := filepath.Join("/etc/netns", lab.Host("a").Namespace(), "hosts")
	before, err := os.Stat(hostsFile)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := lab.Host("a").Start(ctx, "sh", "-c", "read x; getent ahostsv4 broker.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		ip   netip.Addr
	}{{"broker.test", netip.MustParseAddr("192.0.2.1")}, {"broker.test", broker}, {"other.test", broker}} {
		if err := lab.AddHost(tt.name, tt.ip); err != nil {
			t.Fatal(err)
		}
	}
	if after, err := os.Stat(hostsFile); err != nil || !os.SameFile(before, after) {
		t.Errorf("%s was replaced, not rewritten in place (%v)", hostsFile, err)
	}
	if _, err := sh.Stdin().Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	if err := sh.Wait(ctx); err != nil || !strings.HasPrefix(sh.Stdout(), broker.String()+" ") {
		t.Errorf("a program started before AddHost resolves broker.test to %q (%v), want %s", sh.Stdout(), err, broker)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale %s survived AddHost: %v", stale, err)
	}
	for _, h := range []string{"a", "b", "broker"} {
		for _, name := range []string{"broker.test", "other.test"} {
			out, err := lab.Host(h).Run(ctx, "getent", "ahostsv4", name)
			if err != nil || !strings.HasPrefix(string(out), broker.String()+" ") {
				t.Errorf("%s: getent %s = %q, %v; want %s", h, name, out, err, broker)
			}
		}
		if out, err := lab.Host(h).Run(ctx, "getent", "hosts", "localhost"); err != nil || !strings.Contains(string(out), "localhost") {
			t.Errorf("%s: localhost does not resolve: %q, %v", h, out, err)
		}
	}
	start := time.Now()
	if out, err := lab.Host("a").Run(ctx, "getent", "hosts", "missing.test"); err == nil {
		t.Errorf("missing.test resolves: %q", out)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a missing name took %v to fail; want at once", d)
	}
	for _, bad := range []string{"", "a b", "-x", "x/y"} {
		if err := lab.AddHost(bad, broker); err == nil {
			t.Errorf("AddHost(%q) succeeded", bad)
		}
	}
	var dirs []string
	for _, n := range lab.Nodes() {
		dirs = append(dirs, filepath.Join("/etc/netns", n.Namespace()))
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Close: %v", d, err)
		}
	}
	if err := lab.AddHost("late.test", broker); err == nil {
		t.Error("AddHost after Close succeeded")
	}
}
