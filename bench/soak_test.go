package main

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// TestSoakShort is `bench soak` in its CI form: about a minute of
// sha256-checked transfers through a punched and a relayed pair in the NAT
// lab under every fault kind, then no transfer may be silently wrong (a
// clean end with short or wrong data) and no agent may hold more streams,
// goroutines or fds than before the traffic.
func TestSoakShort(t *testing.T) {
	natlab.Require(t)
	if testing.Short() {
		t.Skip("the soak runs for a minute")
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	bin, err := build(ctx, root, filepath.Join(tmp, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	o := soakOptions{duration: time.Minute, faultEvery: 4 * time.Second, workers: 3, maxSize: 1 << 20, seed: uint64(time.Now().UnixNano()), faults: allFaults}
	res, err := runSoak(ctx, bin, tmp, o, &log)
	if err != nil {
		t.Fatalf("soak: %v\n%s", err, log.String())
	}
	var table bytes.Buffer
	res.print(&table)
	t.Logf("seed %d\n%s", o.seed, table.String())
	for _, f := range allFaults {
		if res.Faults[f] == 0 {
			t.Errorf("fault %q was never injected", f)
		}
	}
	if n := res.wrong(); n > 0 {
		t.Errorf("%d transfers silently wrong (clean end, short or wrong data)", n)
	}
	for _, l := range res.Leaks {
		if l.leaked() {
			t.Errorf("%s leaked: %d streams, %d peer streams, goroutines %d (before %d), fds %d (before %d): new %v, gone %v",
				l.Agent, l.Streams, l.PeerStreams, l.Goroutines, l.GoroutinesBase, l.FDs, l.FDsBase, l.NewFDs, l.GoneFDs)
		}
	}
}
