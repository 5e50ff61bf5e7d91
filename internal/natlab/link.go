package natlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Link is a userspace WAN link: two TAP devices, one in the node's namespace
// (its uplink) and one in its parent's (a port of the parent's bridge), with
// goroutines forwarding frames between them. Each direction is a FIFO: loss
// is drawn first, then the rate cap (serialization time behind the frames
// already queued), then delay ± jitter; a frame never overtakes the one
// before it. ARP frames are never lost, so loss shows only on IP traffic.
type Link struct {
	label string
	cfg   LinkConfig
	inner *os.File // TAP in the node's namespace
	outer *os.File // TAP in the parent's namespace
	up    *linkDir // node -> parent
	down  *linkDir // parent -> node

	// lossOverride, when set (a math.Float64bits value + 1), replaces
	// cfg.Loss: a fault a soak turns on and off while traffic runs.
	lossOverride atomic.Uint64

	pool      sync.Pool // of frameBuf-sized []byte
	startOnce sync.Once
	closeOnce sync.Once
	stop      chan struct{}
	wg        sync.WaitGroup
}

// LinkStats counts frames of one direction.
type LinkStats struct {
	Forwarded uint64 // written to the far side
	Lost      uint64 // dropped by the Loss setting
	Overflow  uint64 // dropped because the queue was full or too long for the rate cap
}

type frame struct {
	buf []byte
	n   int
	at  time.Time
}

type linkDir struct {
	name                      string
	src, dst                  *os.File
	q                         chan frame
	forwarded, lost, overflow atomic.Uint64
}

const frameBuf = 2048 // MTU 1500 plus the Ethernet header, without offloads

// openLink opens the two TAP devices (not forwarding yet; see start).
func openLink(label string, cfg LinkConfig, innerNS, innerIf, outerNS, outerIf string) (*Link, error) {
	if cfg.Queue == 0 {
		cfg.Queue = 1024
	}
	if cfg.MaxQueueDelay == 0 {
		cfg.MaxQueueDelay = 500 * time.Millisecond
	}
	inner, err := openTAP(innerNS, innerIf)
	if err != nil {
		return nil, fmt.Errorf("natlab: link %s: %w", label, err)
	}
	outer, err := openTAP(outerNS, outerIf)
	if err != nil {
		inner.Close()
		return nil, fmt.Errorf("natlab: link %s: %w", label, err)
	}
	l := &Link{label: label, cfg: cfg, inner: inner, outer: outer, stop: make(chan struct{})}
	l.pool.New = func() any { return make([]byte, frameBuf) }
	l.up = &linkDir{name: "up", src: inner, dst: outer, q: make(chan frame, cfg.Queue)}
	l.down = &linkDir{name: "down", src: outer, dst: inner, q: make(chan frame, cfg.Queue)}
	return l, nil
}

func (l *Link) start() {
	l.startOnce.Do(func() {
		seed := rand.Uint64()
		for i, d := range []*linkDir{l.up, l.down} {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			l.wg.Add(2)
			go l.read(d, rng)
			go l.write(d)
		}
	})
}

// Config returns the link's settings (with defaults filled in).
func (l *Link) Config() LinkConfig { return l.cfg }

// SetLoss replaces the configured loss (a fraction, 0 to 1) on both
// directions from now on; ResetLoss goes back to the configured one.
func (l *Link) SetLoss(p float64) { l.lossOverride.Store(math.Float64bits(p) + 1) }

// ResetLoss undoes SetLoss.
func (l *Link) ResetLoss() { l.lossOverride.Store(0) }

func (l *Link) loss() float64 {
	if v := l.lossOverride.Load(); v != 0 {
		return math.Float64frombits(v - 1)
	}
	return l.cfg.Loss
}

// Stats returns the counters of the up (node to parent) and down directions.
func (l *Link) Stats() (up, down LinkStats) { return l.up.stats(), l.down.stats() }

func (d *linkDir) stats() LinkStats {
	return LinkStats{Forwarded: d.forwarded.Load(), Lost: d.lost.Load(), Overflow: d.overflow.Load()}
}

func isARP(b []byte) bool { return len(b) >= 14 && binary.BigEndian.Uint16(b[12:14]) == 0x0806 }

func (l *Link) read(d *linkDir, rng *rand.Rand) {
	defer l.wg.Done()
	cfg := l.cfg
	var busyUntil, last time.Time
	for {
		buf := l.pool.Get().([]byte)
		n, err := d.src.Read(buf)
		if err != nil {
			l.pool.Put(buf)
			if errors.Is(err, os.ErrClosed) {
				return
			}
			select {
			case <-l.stop:
				return
			case <-time.After(10 * time.Millisecond): // transient (e.g. EIO before the device is up)
				continue
			}
		}
		now := time.Now()
		if loss := l.loss(); loss > 0 && !isARP(buf[:n]) && rng.Float64() < loss {
			d.lost.Add(1)
			l.pool.Put(buf)
			continue
		}
		at := now
		if cfg.Rate > 0 {
			if busyUntil.Before(now) {
				busyUntil = now
			}
			if busyUntil.Sub(now) > cfg.MaxQueueDelay {
				d.overflow.Add(1)
				l.pool.Put(buf)
				continue
			}
			busyUntil = busyUntil.Add(time.Duration(int64(n) * 8 * int64(time.Second) / cfg.Rate))
			at = busyUntil
		}
		at = at.Add(cfg.Delay)
		if cfg.Jitter > 0 {
			at = at.Add(time.Duration(rng.Int64N(int64(2*cfg.Jitter)+1)) - cfg.Jitter)
		}
		if at.Before(last) {
			at = last // FIFO: jitter never reorders
		}
		last = at
		select {
		case d.q <- frame{buf: buf, n: n, at: at}:
		default:
			d.overflow.Add(1)
			l.pool.Put(buf)
		}
	}
}

func (l *Link) write(d *linkDir) {
	defer l.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var f frame
		select {
		case f = <-d.q:
		case <-l.stop:
			return
		}
		if wait := time.Until(f.at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-l.stop:
				timer.Stop()
				return
			}
		}
		if _, err := d.dst.Write(f.buf[:f.n]); err == nil {
			d.forwarded.Add(1)
		}
		l.pool.Put(f.buf)
	}
}

// Close stops forwarding and removes both TAP devices.
func (l *Link) Close() {
	l.closeOnce.Do(func() {
		close(l.stop)
		l.inner.Close()
		l.outer.Close()
		l.wg.Wait()
	})
}
