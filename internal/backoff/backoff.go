// Package backoff computes retry delays: exponential growth with full jitter
// (each delay uniform in [0, min(cap, base*2^n)]), as recommended for many
// clients retrying against one server, reset after a stable period.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is not safe for concurrent use; each retry loop owns one.
type Backoff struct {
	Base   time.Duration // first ceiling; default 500ms
	Cap    time.Duration // largest ceiling; default 30s
	Stable time.Duration // a success lasting this long resets the count; default 1m

	// Rand returns a float in [0,1); tests inject a fixed source.
	Rand func() float64

	n        int
	okSince  time.Time
	hasSince bool
}

// Next returns the delay before the next attempt and counts the failure.
func (b *Backoff) Next() time.Duration {
	ceil := b.Ceiling()
	b.n++
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return time.Duration(r() * float64(ceil))
}

// Ceiling is the upper bound of the next delay.
func (b *Backoff) Ceiling() time.Duration {
	base, maxd := b.Base, b.Cap
	if base <= 0 {
		base = 500 * time.Millisecond
	}
	if maxd <= 0 {
		maxd = 30 * time.Second
	}
	d := base
	for i := 0; i < b.n && d < maxd; i++ {
		d *= 2
	}
	return min(d, maxd)
}

// Attempts is the number of failures counted since the last reset.
func (b *Backoff) Attempts() int { return b.n }

// Connected records that an attempt succeeded at now.
func (b *Backoff) Connected(now time.Time) { b.okSince, b.hasSince = now, true }

// Lost records that a connection made at Connected ended at now: the count
// resets only if it had lasted Stable, so a flapping peer keeps backing off.
func (b *Backoff) Lost(now time.Time) {
	stable := b.Stable
	if stable <= 0 {
		stable = time.Minute
	}
	if b.hasSince && now.Sub(b.okSince) >= stable {
		b.n = 0
	}
	b.hasSince = false
}

// Reset forgets every failure.
func (b *Backoff) Reset() { b.n, b.hasSince = 0, false }

// Sleep waits d or until ctx is done, whichever is first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
