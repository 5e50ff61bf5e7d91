package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestReleaseWhenQuiet: with connections open (busy), a burst of traffic
// that stops is released once, after a quiet period; none while bytes
// move, and none again until the next burst.
func TestReleaseWhenQuiet(t *testing.T) {
	old := releaseAfter
	releaseAfter = 20 * time.Millisecond
	defer func() { releaseAfter = old }()
	var count, trims atomic.Int64
	var moving atomic.Bool
	moving.Store(true)
	// While moving, every reading differs from the last, however late the
	// watch's ticks come on a loaded machine.
	moved := func() int64 {
		if moving.Load() {
			return count.Add(1)
		}
		return count.Load()
	}
	r := &releaser{busy: func() bool { return true }, trim: func() { trims.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.watch(ctx, moved)
	}()
	// Bytes move for a while: no release.
	time.Sleep(10 * releaseAfter)
	if n := trims.Load(); n != 0 {
		t.Fatalf("%d releases while bytes moved", n)
	}
	// Quiet: one release, and only one.
	moving.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for trims.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(releaseAfter)
	}
	time.Sleep(5 * releaseAfter)
	if n := trims.Load(); n != 1 {
		t.Fatalf("%d releases after the burst, want 1", n)
	}
	// The next burst, then quiet: one more.
	count.Add(1)
	deadline = time.Now().Add(5 * time.Second)
	for trims.Load() == 1 && time.Now().Before(deadline) {
		time.Sleep(releaseAfter)
	}
	if n := trims.Load(); n != 2 {
		t.Fatalf("%d releases after two bursts, want 2", n)
	}
	cancel()
	<-done
	// busy still holds for the idle path: a plain release with
	// connections open does nothing.
	r.release()
	if n := trims.Load(); n != 2 {
		t.Fatalf("a release with connections open ran: %d", n)
	}
}
