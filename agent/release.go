package agent

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// releaseAfter is how long the agent has had no forwarded connection open
// before it hands its free heap back to the OS (a variable for tests).
var releaseAfter = 10 * time.Second

// A releaser gives the memory a burst of traffic grew back to the OS once
// the agent has been idle for releaseAfter. Bulk transfers fill receive
// windows of up to mux.StreamWindow per stream; once read, those buffers
// are garbage, but the runtime returns freed pages only slowly and only
// after a collection, which an idle agent, allocating nothing, may not
// run for minutes: so a busy agent kept its peak RSS. Two collections,
// because the buffer pools (sync.Pool) keep what they hold for one.
type releaser struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
	// busy tells, when the timer fires, whether connections opened again
	// meanwhile; nil means never busy.
	busy func() bool
	// trim, when set, lets go of buffers kept for reuse (the sessions'
	// resend and receive queues) before the collections.
	trim func()
	// force makes the next release run although busy says connections
	// are open: the quiet watch saw no byte move for releaseAfter.
	force bool
}

// idle (re)starts the wait: the last forwarded connection just ended.
func (r *releaser) idle() {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.stopped:
	case r.t == nil:
		r.t = time.AfterFunc(releaseAfter, r.release)
	default:
		r.t.Reset(releaseAfter)
	}
}

func (r *releaser) release() {
	r.mu.Lock()
	skip := r.stopped || (!r.force && r.busy != nil && r.busy())
	r.force = false
	r.mu.Unlock()
	if skip {
		return
	}
	if r.trim != nil {
		r.trim()
	}
	runtime.GC()
	debug.FreeOSMemory()
}

// watch releases once traffic stops although connections stay open: an
// idle ssh session beside a bulk copy that finished would otherwise keep
// the agent at its peak for as long as it stays open. moved is the bytes
// forwarded so far; a release follows the first whole releaseAfter in
// which it did not change, once per burst.
func (r *releaser) watch(ctx context.Context, moved func() int64) {
	t := time.NewTicker(releaseAfter)
	defer t.Stop()
	last, burst := moved(), false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		switch n := moved(); {
		case n != last:
			last, burst = n, true
		case burst:
			burst = false
			r.mu.Lock()
			r.force = true
			r.mu.Unlock()
			r.release()
		}
	}
}

// stop ends the releaser as the agent stops.
func (r *releaser) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	if r.t != nil {
		r.t.Stop()
	}
}
