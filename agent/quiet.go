package agent

import (
	"sync"
	"time"
)

// A quietWatch finds the pipes whose stream went quiet, for their toLocal
// to park. toLocal waits on its stream with no timer: a read deadline per
// wait cost some 7 µs of a 280 µs round trip (bench latency). Instead, once
// per parkAfter, the watch kicks (mux Stream.Kick) the waits of the pipes
// that read nothing since it last looked. The watch's timer runs only while
// some toLocal runs.
type quietWatch struct {
	after time.Duration // the quiet that parks; 0: parkAfter

	mu    sync.Mutex
	pipes map[*pipe]struct{}
	t     *time.Timer
}

// add watches p, whose toLocal starts.
func (w *quietWatch) add(p *pipe) {
	p.reading.Store(true) // a fresh start is not quiet yet
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pipes == nil {
		w.pipes = map[*pipe]struct{}{}
	}
	w.pipes[p] = struct{}{}
	if w.t == nil {
		w.t = time.AfterFunc(w.period(), w.look)
	}
}

// remove stops watching p, whose toLocal returns.
func (w *quietWatch) remove(p *pipe) {
	w.mu.Lock()
	delete(w.pipes, p)
	w.mu.Unlock()
}

func (w *quietWatch) look() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for p := range w.pipes {
		if !p.reading.Swap(false) {
			p.st.Kick()
		}
	}
	if len(w.pipes) > 0 {
		w.t.Reset(w.period())
	} else {
		w.t = nil
	}
}

// period is how long a connection's side stays quiet before it parks.
func (w *quietWatch) period() time.Duration {
	if w.after > 0 {
		return w.after
	}
	return parkAfter
}
