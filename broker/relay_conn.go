package broker

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// trackingListener is the TURN listener as pion sees it: it retries
// transient accept errors (pion's accept loop would end for good on one)
// and keeps the accepted connections, so Serve can close them at shutdown
// (pion's Close leaves them open) and wait until pion is done with them.
type trackingListener struct {
	net.Listener
	log logrus.FieldLogger
	// guard wraps each accepted connection before pion sees it (turnGuard).
	guard func(net.Conn) net.Conn
	done  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	closing bool // closeConns ran: accept no more
	conns   map[*trackedConn]struct{}
	wg      sync.WaitGroup
}

func newTrackingListener(ln net.Listener, log logrus.FieldLogger, guard func(net.Conn) net.Conn) *trackingListener {
	return &trackingListener{Listener: ln, log: log, guard: guard, done: make(chan struct{}), conns: make(map[*trackedConn]struct{})}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			if l.guard != nil {
				c = l.guard(c)
			}
			tc := &trackedConn{Conn: c, l: l}
			l.mu.Lock()
			if l.closing {
				l.mu.Unlock()
				c.Close()
				return nil, net.ErrClosed
			}
			l.conns[tc] = struct{}{}
			l.wg.Add(1)
			l.mu.Unlock()
			return tc, nil
		}
		select {
		case <-l.done:
			return nil, err
		default:
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		delay = min(max(2*delay, 5*time.Millisecond), time.Second)
		l.log.WithError(err).Warnf("TURN accept failed; retrying in %v", delay)
		t := time.NewTimer(delay)
		select {
		case <-l.done:
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

func (l *trackingListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// closeConns closes every accepted connection under pion, whose reads then
// fail, so its goroutines end; each is done when pion closes it.
func (l *trackingListener) closeConns() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closing = true
	for c := range l.conns {
		c.Conn.Close()
	}
}

// wait waits, at most d, until pion has closed every connection.
func (l *trackingListener) wait(d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.wg.Done()
	})
	return err
}

// relayListener is an allocation's relayed TCP port. Inbound connections
// from peers the policy refuses are closed before pion sees them (pion
// also checks for a permission); Close frees the allocation's quota slot.
type relayListener struct {
	net.Listener
	r    *Relay
	a    *allocation
	once sync.Once
}

func (l *relayListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := netip.Addr{}
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			peer = ta.AddrPort().Addr()
		}
		l.r.mu.Lock()
		reason, detail := l.r.refusalLocked(l.a, peer, false)
		src := l.a.src
		l.r.mu.Unlock()
		if reason != "" {
			c.Close()
			l.r.refused(l.a, src, peer, reason, detail+" (inbound)")
			continue
		}
		return l.a.wrap(c, l.r), nil
	}
}

func (l *relayListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { l.r.released(l.a) })
	return err
}

// wrap makes c, a connection between the relay and a peer, count its bytes
// and keep to the allocation's bandwidth.
func (a *allocation) wrap(c net.Conn, r *Relay) net.Conn {
	return &relayConn{
		// The bucket runs on the clock its waits sleep on, not RelayConfig.Now.
		Conn: c, a: a, now: time.Now,
		toPeer:   r.m.bytes.WithLabelValues(directionToPeer),
		fromPeer: r.m.bytes.WithLabelValues(directionFromPeer),
		done:     make(chan struct{}),
	}
}

// Directions of relayed bytes, the "direction" label of
// peerport_broker_turn_relayed_bytes_total.
const (
	directionToPeer   = "to_peer"   // from the TURN client to its peer
	directionFromPeer = "from_peer" // from the peer to the TURN client
)

// relayConn is the relay's end of a connection to a peer; pion copies
// between it and the client's data connection. Reads are bytes from the
// peer, writes bytes to it.
type relayConn struct {
	net.Conn
	a                *allocation
	now              func() time.Time
	toPeer, fromPeer interface{ Add(float64) }
	done             chan struct{}
	once             sync.Once
}

func (c *relayConn) Read(p []byte) (int, error) {
	lim := c.a.down
	if lim != nil && len(p) > lim.chunk {
		p = p[:lim.chunk]
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.fromPeer.Add(float64(n))
		c.a.fromPeer.Add(int64(n))
		if lim != nil {
			if werr := c.wait(lim.reserve(c.now(), n)); werr != nil && err == nil {
				err = werr
			}
		}
	}
	return n, err
}

func (c *relayConn) Write(p []byte) (int, error) {
	lim := c.a.up
	total := 0
	for len(p) > 0 {
		k := len(p)
		if lim != nil {
			k = min(k, lim.chunk)
			if err := c.wait(lim.reserve(c.now(), k)); err != nil {
				return total, err
			}
		}
		n, err := c.Conn.Write(p[:k])
		total += n
		if n > 0 {
			c.toPeer.Add(float64(n))
			c.a.toPeer.Add(int64(n))
		}
		if err != nil {
			return total, err
		}
		p = p[k:]
	}
	return total, nil
}

// wait sleeps d, or until the connection is closed.
func (c *relayConn) wait(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-c.done:
		return net.ErrClosed
	}
}

func (c *relayConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}

// bucket is a token bucket of bytes: rate per second, up to burst saved.
// Callers take what they moved and wait what reserve says, so a burst of
// debt is repaid by waiting, never by refusing.
type bucket struct {
	rate  float64 // bytes per second
	burst float64
	chunk int // the most one Read or Write moves at once

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// newBucket makes a bucket of rate bytes/s that saves up to a tenth of a
// second's worth (at least 4 KiB, at most 1 MiB), full at first.
func newBucket(rate int64) *bucket {
	burst := min(max(float64(rate)/10, 4<<10), 1<<20)
	return &bucket{rate: float64(rate), burst: burst, chunk: int(min(burst, 32<<10)), tokens: burst}
}

// reserve takes n bytes at now and returns how long to wait before
// moving on.
func (b *bucket) reserve(now time.Time, n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}
