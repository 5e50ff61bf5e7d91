package limit

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// ListenerConfig configures a Listener.
type ListenerConfig struct {
	// PerIP limits the accept rate and the concurrent unauthenticated
	// connections of each source IP; nil: no per-IP limit. Authenticated
	// connections leave the count, so many agents behind one NAT are fine.
	PerIP *Keyed[netip.Addr]
	// Budget is the global budget, shared by all listeners; nil: none.
	Budget *Budget
	// PreAuthTimeout closes a connection that has not authenticated
	// (Authenticated) this long after it was accepted; 0: no deadline.
	PreAuthTimeout time.Duration
	Clock          Clock
	// OnRefuse is told of each connection refused at accept or closed at
	// its deadline, with the reason (Reason*); for metrics and a BurstLog.
	OnRefuse func(reason string, remote netip.Addr)
}

// Listener applies a ListenerConfig to the connections it accepts: the
// refused ones are closed at once and never returned. The others are
// *Conn, which owners mark Authenticated once the peer has proved itself.
type Listener struct {
	net.Listener
	cfg ListenerConfig
}

// NewListener wraps ln.
func NewListener(ln net.Listener, cfg ListenerConfig) *Listener {
	if cfg.Clock == nil {
		cfg.Clock = RealClock
	}
	return &Listener{Listener: ln, cfg: cfg}
}

// Accept returns the next admitted connection. Errors are the inner
// listener's, for the caller to back off on (EMFILE) or stop.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ac := l.admit(c); ac != nil {
			return ac, nil
		}
	}
}

func (l *Listener) admit(c net.Conn) *Conn {
	ip := remoteIP(c)
	release := func() {}
	if l.cfg.PerIP != nil {
		r, reason := l.cfg.PerIP.Acquire(ip)
		if reason != "" {
			l.refuse(c, reason, ip)
			return nil
		}
		release = r
	}
	var slot *Slot
	if l.cfg.Budget != nil {
		s, reason := l.cfg.Budget.Admit()
		if reason != "" {
			release()
			l.refuse(c, reason, ip)
			return nil
		}
		slot = s
	}
	ac := &Conn{Conn: c, ip: ip, perIP: release, slot: slot}
	if d := l.cfg.PreAuthTimeout; d > 0 {
		ac.mu.Lock()
		ac.stop = l.cfg.Clock.AfterFunc(d, func() { ac.expire(l) })
		ac.mu.Unlock()
	}
	return ac
}

func (l *Listener) refuse(c net.Conn, reason string, ip netip.Addr) {
	// RST, not FIN: the peer learns at once, and no TIME_WAIT is left here.
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
	if l.cfg.OnRefuse != nil {
		l.cfg.OnRefuse(reason, ip)
	}
}

// remoteIP is the key of c's source: its IPv4 address, or its IPv6 /64,
// since one host commonly holds a whole /64.
func remoteIP(c net.Conn) netip.Addr {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip := ta.AddrPort().Addr().Unmap().WithZone("")
	if ip.Is6() {
		ip = netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	return ip
}

// Conn is an admitted connection. Close gives its slots back.
type Conn struct {
	net.Conn
	ip    netip.Addr
	perIP func()
	slot  *Slot

	mu     sync.Mutex
	stop   func() bool
	authed bool
	closed bool
}

// Authenticated ends c's pre-authentication phase: its deadline, its
// per-IP count and its share of the pre-authentication budget.
func (c *Conn) Authenticated() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.authed || c.closed {
		return
	}
	c.authed = true
	c.stopLocked()
	c.perIP()
	if c.slot != nil {
		c.slot.Authenticated()
	}
}

// NoDeadline lifts c's pre-authentication deadline but keeps it counted
// as unauthenticated: for a protocol with timeouts of its own (HTTPS).
func (c *Conn) NoDeadline() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopLocked()
}

func (c *Conn) stopLocked() {
	if c.stop != nil {
		c.stop()
		c.stop = nil
	}
}

func (c *Conn) expire(l *Listener) {
	c.mu.Lock()
	fire := !c.authed && !c.closed && c.stop != nil
	c.mu.Unlock()
	if !fire {
		return
	}
	c.Close()
	if l.cfg.OnRefuse != nil {
		l.cfg.OnRefuse(ReasonPreAuth, c.ip)
	}
}

// Close closes the connection and gives its slots back.
func (c *Conn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.stopLocked()
		if !c.authed {
			c.perIP()
		}
		if c.slot != nil {
			c.slot.Release()
		}
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// Authenticated marks c, if it is a *Conn (or wraps one, exposing
// Authenticated), as authenticated.
func Authenticated(c net.Conn) {
	if a, ok := c.(interface{ Authenticated() }); ok {
		a.Authenticated()
	}
}

// NoDeadline lifts c's pre-authentication deadline, if it has one.
func NoDeadline(c net.Conn) {
	if a, ok := c.(interface{ NoDeadline() }); ok {
		a.NoDeadline()
	}
}
