//go:build linux

package natlab_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

func rootLinks(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		names = append(names, strings.Fields(l)[1])
	}
	return strings.Join(names, " ")
}

func labNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	ents, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestTeardown checks Close leaves no namespace, link or process behind and
// never touches the machine's own namespace; and that Build removes the
// namespaces of dead runs but not those of live ones.
func TestTeardown(t *testing.T) {
	natlab.Require(t)
	ctx := testCtx(t, 30*time.Second)
	before := rootLinks(t)

	// A stale lab of a dead process, and one of a live process (pid 1).
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("ppl%d-0000aa-x", dead.Process.Pid) // dead pid
	tag := fmt.Sprintf("%06x", rand.IntN(1<<24))
	live := "ppl1-" + tag + "-x" // pid 1 is alive
	for _, ns := range []string{stale, live} {
		out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput()
		if err != nil && ns == stale {
			// Lab tests of other packages run at the same time, and any
			// of them may remove a dead run's namespace while ip creates it:
			// that is the cleanup under test, done by someone else.
			t.Logf("stale namespace removed while being made (another run cleaned it): %s", bytes.TrimSpace(out))
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", out, err)
		}
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", live).Run() })

	topo, err := natlab.Pair(natlab.BehindCone, natlab.BehindSym).WithLink("gw-a", natlab.LinkConfig{Delay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	lab, err := natlab.Build(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	built := time.Since(start)
	if got := labNamespaces(t, stale); len(got) != 0 {
		t.Errorf("stale namespace %s survived Build", stale)
	}
	if got := labNamespaces(t, live); len(got) != 1 {
		t.Errorf("namespace %s of a live process was removed", live)
	}
	if got := rootLinks(t); got != before {
		t.Errorf("root namespace links changed by Build:\nbefore %s\nafter  %s", before, got)
	}
	var pids []int
	for _, h := range []string{"a", "b", "broker"} {
		p, _ := startProbe(t, ctx, lab.Host(h), "listening", "serve", "-listen", ":7001")
		pids = append(pids, p.Pid())
	}
	// A grandchild that would outlive its parent.
	gp, err := lab.Host("a").Start(context.Background(), "sh", "-c", "sleep 60."+tag+" & echo started; wait")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gp.Expect(ctx, "started"); err != nil {
		t.Fatal(err)
	}
	if got := len(labNamespaces(t, lab.Prefix())); got != len(lab.Nodes()) {
		t.Errorf("%d namespaces with prefix %s, want %d", got, lab.Prefix(), len(lab.Nodes()))
	}
	start = time.Now()
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("build %v, close %v (%d namespaces, one WAN link, 4 processes)", built.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), len(lab.Nodes()))
	if got := labNamespaces(t, lab.Prefix()); len(got) != 0 {
		t.Errorf("namespaces left: %v", got)
	}
	for _, pid := range append(pids, gp.Pid()) {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still there: %v", pid, err)
		}
	}
	if out, _ := exec.Command("pgrep", "-f", "sleep 60."+tag).Output(); len(out) > 0 {
		t.Errorf("grandchild sleep still running: %s", out)
	}
	if got := rootLinks(t); got != before {
		t.Errorf("root namespace links changed:\nbefore %s\nafter  %s", before, got)
	}
	if err := lab.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
