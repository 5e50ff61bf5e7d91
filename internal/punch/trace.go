package punch

import (
	"net/netip"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// EventType names a step of a punch.
type EventType string

// Event types, in the order a punch goes through them.
const (
	EventCandidate     EventType = "candidate"      // a remote candidate will be dialed
	EventSYN           EventType = "syn"            // a dial attempt started (its SYN is sent)
	EventAttemptFailed EventType = "attempt-failed" // a dial attempt failed; Backoff is the wait before the next
	EventConnected     EventType = "connected"      // a TCP connection came up (Via dial or accept)
	EventChosen        EventType = "chosen"         // this connection is kept
	EventFailed        EventType = "failed"         // the punch gave up (Err says why)
)

// Event is one step of a punch.
type Event struct {
	Type      EventType
	Time      time.Time
	Candidate Candidate      // the remote candidate concerned, if any
	Local     netip.AddrPort // connected and chosen: the connection's ends
	Remote    netip.AddrPort
	Via       string // connected and chosen: "dial" or "accept"
	Attempt   int    // syn and attempt-failed: 1-based attempt on this candidate
	Backoff   time.Duration
	Err       error
}

// Tracer receives the events of a punch, one at a time (calls are
// serialized) and in order; it must not block.
type Tracer func(Event)

// LogTracer logs every event at debug level, and the outcome at info.
func LogTracer(log logrus.FieldLogger) Tracer {
	return func(e Event) {
		f := logrus.Fields{"event": string(e.Type)}
		if e.Candidate.Addr.IsValid() {
			f["candidate"] = e.Candidate.String()
		}
		if e.Remote.IsValid() {
			f["local"], f["remote"], f["via"] = e.Local.String(), e.Remote.String(), e.Via
		}
		if e.Attempt > 0 {
			f["attempt"] = e.Attempt
		}
		if e.Err != nil {
			f["error"] = e.Err.Error()
		}
		l := log.WithFields(f)
		switch e.Type {
		case EventChosen:
			l.Debug("punch: connected") // "hole punched" says it, with the pair
		case EventFailed:
			l.Info("punch: failed")
		default:
			l.Debug("punch: " + string(e.Type))
		}
	}
}

// tracer serializes calls to a Tracer.
type tracer struct {
	mu sync.Mutex
	fn Tracer
}

func (t *tracer) emit(e Event) {
	if t.fn == nil {
		return
	}
	e.Time = time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fn(e)
}
