package portmap

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// RenewEvent is the outcome of one renewal: the mapping now held, or why the
// renewal failed (then Mapping is the last one held, which may have expired).
type RenewEvent struct {
	Mapping Mapping
	Err     error
}

// Lease is a mapping the Client keeps alive: it renews it at about half its
// lifetime in a goroutine until Close, which deletes it.
type Lease struct {
	c     *Client
	p     protocol
	log   logrus.FieldLogger
	clock Clock

	mu  sync.Mutex
	cur Mapping

	events chan RenewEvent
	ctx    context.Context // cancelled by Close: aborts a renewal under way
	cancel context.CancelFunc
	done   chan struct{}

	closeOnce sync.Once
	closeErr  error
}

func newLease(c *Client, p protocol, m Mapping) *Lease {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lease{
		c: c, p: p, clock: c.opts.Clock,
		log:    c.log.WithFields(logrus.Fields{"protocol": p.name(), "internal": m.Internal.String()}),
		cur:    m,
		events: make(chan RenewEvent, 8),
		ctx:    ctx, cancel: cancel,
		done: make(chan struct{}),
	}
	go l.run()
	return l
}

// Current returns the mapping held now.
func (l *Lease) Current() Mapping {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur
}

// Events delivers the outcome of every renewal, so the owner can update the
// address it offers or stop offering it. It is closed by Close. Events the
// owner does not take are dropped once 8 wait (a log line says so).
func (l *Lease) Events() <-chan RenewEvent { return l.events }

// renewIn returns how long to wait before renewing m: half its lease, or on
// a failed renewal half of what is left (at least a second, at most a
// minute, so a gateway that was away is asked again soon).
func renewIn(m Mapping, now time.Time, failed bool) time.Duration {
	if !failed {
		return max(m.Lease/2, time.Second)
	}
	left := m.Expires.Sub(now)
	return min(max(left/2, time.Second), time.Minute)
}

func (l *Lease) run() {
	defer close(l.done)
	defer close(l.events)
	failed := false
	for {
		m := l.Current()
		t := l.clock.NewTimer(renewIn(m, l.clock.Now(), failed))
		select {
		case <-l.ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		ctx, cancel := context.WithTimeout(l.ctx, l.c.opts.Timeout)
		nm, err := l.p.mapPort(ctx, m.Internal, l.c.opts.Lease, &m)
		cancel()
		if l.ctx.Err() != nil {
			if err == nil && nm.External != m.External {
				// Closed while renewing: the new mapping is ours to delete too.
				l.mu.Lock()
				l.cur = nm
				l.mu.Unlock()
			}
			return
		}
		failed = err != nil
		ev := RenewEvent{Mapping: nm, Err: err}
		if err != nil {
			if l.clock.Now().After(m.Expires) {
				err = fmt.Errorf("portmap: mapping %v expired: %w: %w", m.External, ErrNoMapping, err)
			}
			ev = RenewEvent{Mapping: m, Err: err}
			l.log.WithFields(logrus.Fields{"mapping": m.String(), "error": err}).Warn("portmap: renewal failed")
		} else {
			if nm.External != m.External {
				l.log.WithFields(logrus.Fields{"old": m.External.String(), "new": nm.External.String()}).Warn("portmap: gateway moved the mapping")
			} else {
				l.log.WithField("mapping", nm.String()).Debug("portmap: renewed")
			}
			l.mu.Lock()
			l.cur = nm
			l.mu.Unlock()
		}
		select {
		case l.events <- ev:
		default:
			l.log.Debug("portmap: renewal event dropped; nobody reads Events")
		}
	}
}

// Close stops renewing and deletes the mapping, waiting at most
// Options.CloseTimeout for the gateway. It is idempotent; later calls return
// the first call's result.
func (l *Lease) Close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		<-l.done
		m := l.Current()
		ctx, cancel := context.WithTimeout(context.Background(), l.c.opts.CloseTimeout)
		defer cancel()
		if err := l.p.unmap(ctx, m); err != nil {
			l.closeErr = fmt.Errorf("portmap: delete %v: %w", m, err)
			l.log.WithField("error", err).Warn("portmap: could not delete mapping; it lapses at its lease end")
			return
		}
		l.log.WithField("mapping", m.String()).Info("portmap: deleted")
	})
	if l.closeErr != nil {
		return l.closeErr
	}
	return nil
}

// Err reports ErrClosed once the lease is closed, else nil.
func (l *Lease) Err() error {
	if errors.Is(l.ctx.Err(), context.Canceled) {
		return ErrClosed
	}
	return nil
}
