package dashboard

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// hub reads the status once per poll for every open stream, and only while
// one is open: an agent nobody watches does no work for its page.
type hub struct {
	mu   sync.Mutex
	subs map[chan []byte]struct{}
	wake chan struct{} // a first stream opened
}

func newHub() *hub { return &hub{subs: map[chan []byte]struct{}{}, wake: make(chan struct{}, 1)} }

// subscribe returns a channel that holds the newest snapshot: a slow
// reader skips states rather than holding the others up.
func (h *hub) subscribe() chan []byte {
	ch := make(chan []byte, 1)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return ch
}

func (h *hub) unsubscribe(ch chan []byte) {
	h.mu.Lock()
	delete(h.subs, ch)
	h.mu.Unlock()
}

// run sends a snapshot when it differs from the last one sent, and at
// least every interval (the page's rates need a fresh reading each second
// even when nothing else moved).
func (h *hub) run(ctx context.Context, poll, interval time.Duration, snapshot func() []byte) {
	var last []byte
	var sent time.Time
	for {
		h.mu.Lock()
		n := len(h.subs)
		h.mu.Unlock()
		if n == 0 {
			last = nil
			select { // no ticker while nobody watches
			case <-ctx.Done():
				return
			case <-h.wake:
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(poll):
		}
		b := snapshot()
		if b == nil || (bytes.Equal(b, last) && time.Since(sent) < interval) {
			continue
		}
		last, sent = b, time.Now()
		h.mu.Lock()
		for ch := range h.subs {
			select {
			case <-ch: // unread: replaced by the newer one
			default:
			}
			ch <- b // the hub is the only sender, so there is room now
		}
		h.mu.Unlock()
	}
}

// eventWriteTimeout bounds each event's write: a browser that stopped
// reading loses its stream instead of holding a slot.
const eventWriteTimeout = 10 * time.Second

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		http.Error(w, fmt.Sprintf("dashboard: %d pages open already; close one", cap(s.slots)), http.StatusServiceUnavailable)
		return
	}
	ch := s.hub.subscribe()
	defer s.hub.unsubscribe(ch)
	w.Header().Set("Content-Type", "text/event-stream")
	rc := http.NewResponseController(w)
	send := func(prefix string, b []byte) error {
		if err := rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout)); err != nil {
			return err
		}
		// Compact JSON has no newline: one data line per event.
		if _, err := fmt.Fprintf(w, "%sdata: %s\n\n", prefix, b); err != nil {
			return err
		}
		return rc.Flush()
	}
	first := s.snapshot()
	if first == nil {
		first = []byte("null")
	}
	if send("retry: 2000\n", first) != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case b := <-ch:
			if send("", b) != nil {
				return
			}
		}
	}
}
