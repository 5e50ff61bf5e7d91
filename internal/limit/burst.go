package limit

import (
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// DefaultBurstWindow is how long a BurstLog folds refusals into one line.
const DefaultBurstWindow = 10 * time.Second

// BurstLog logs refusals one line per burst: the first refusal of a
// (message, reason) is logged at once with count=1; the ones after it,
// within Window, are counted and logged in one line with their count when
// the window ends. A flood of a thousand refusals makes two lines, not a
// thousand. It is safe for concurrent use; Close stops its timers.
type BurstLog struct {
	Log    logrus.FieldLogger
	Window time.Duration // default DefaultBurstWindow
	Clock  Clock

	mu     sync.Mutex
	bursts map[burstKey]*burst
	closed bool
}

type burstKey struct{ msg, reason string }

type burst struct {
	n      int           // refusals folded since the last line
	fields logrus.Fields // of the last one
	stop   func() bool
}

// Refused records one refusal; fields (the source, say) of the last one in
// a burst go with its line.
func (b *BurstLog) Refused(msg, reason string, fields logrus.Fields) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if b.bursts == nil {
		b.bursts = make(map[burstKey]*burst)
	}
	k := burstKey{msg, reason}
	if u := b.bursts[k]; u != nil {
		u.n++
		u.fields = fields
		return
	}
	b.line(msg, reason, 1, fields)
	u := &burst{}
	b.bursts[k] = u
	u.stop = b.clock().AfterFunc(b.window(), func() { b.flush(k, u) })
}

// flush ends the burst k: its folded refusals, if any, make one line, and
// a new window starts if there were some (so a steady flood logs once a
// window).
func (b *BurstLog) flush(k burstKey, u *burst) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bursts[k] != u || b.closed {
		return
	}
	if u.n == 0 {
		delete(b.bursts, k)
		return
	}
	b.line(k.msg, k.reason, u.n, u.fields)
	u.n, u.fields = 0, nil
	u.stop = b.clock().AfterFunc(b.window(), func() { b.flush(k, u) })
}

func (b *BurstLog) line(msg, reason string, n int, fields logrus.Fields) {
	b.Log.WithFields(fields).WithFields(logrus.Fields{"reason": reason, "count": n, "window": b.window().String()}).Warn(msg)
}

// Close logs what is folded and stops the timers.
func (b *BurstLog) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	for k, u := range b.bursts {
		u.stop()
		if u.n > 0 {
			b.line(k.msg, k.reason, u.n, u.fields)
		}
	}
	b.bursts = nil
}

func (b *BurstLog) clock() Clock {
	if b.Clock == nil {
		return RealClock
	}
	return b.Clock
}

func (b *BurstLog) window() time.Duration {
	if b.Window <= 0 {
		return DefaultBurstWindow
	}
	return b.Window
}
