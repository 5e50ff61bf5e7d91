package portmap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Protocol names, as in Mapping.Protocol and Options.Protocols.
const (
	PCP    = "pcp"
	NATPMP = "natpmp"
	UPnP   = "upnp"
)

// AllProtocols is the default of Options.Protocols, in order of preference.
var AllProtocols = []string{PCP, NATPMP, UPnP}

// Mapping is a TCP port mapping held on the gateway: connections to External
// reach Internal.
type Mapping struct {
	Protocol string         // PCP, NATPMP or UPnP
	External netip.AddrPort // as the gateway reports it; the address may be unspecified or private
	Internal netip.AddrPort // our LAN address and port
	Lease    time.Duration  // lifetime granted
	Expires  time.Time      // when the gateway forgets it unless renewed

	nonce [12]byte // PCP: the mapping's nonce, needed to renew and delete it
}

func (m Mapping) String() string {
	return fmt.Sprintf("%s %s->%s lease %v", m.Protocol, m.External, m.Internal, m.Lease)
}

// protocol is one way to ask a gateway for mappings (pcp.go, natpmp.go,
// upnp.go). Every call is bounded by ctx.
type protocol interface {
	name() string
	// probe reports whether the gateway serves the protocol and, where the
	// protocol can tell without mapping, the external address (else the
	// zero Addr).
	probe(ctx context.Context) (netip.Addr, error)
	// mapPort asks for a mapping of internal for lease. prev, when set, is
	// the mapping being renewed: its external port is suggested again and
	// protocol state (the PCP nonce) is reused.
	mapPort(ctx context.Context, internal netip.AddrPort, lease time.Duration, prev *Mapping) (Mapping, error)
	// unmap deletes m.
	unmap(ctx context.Context, m Mapping) error
}

// Clock is the time source of leases; tests inject a fake one.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a Clock's one-shot timer.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time                 { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// Options configure a Client. The zero value asks the default gateway with
// every protocol.
type Options struct {
	// Gateway is the router to ask; zero: the default gateway
	// (DefaultGateway). IPv4 only.
	Gateway netip.Addr
	// LocalAddr is our address on the gateway's LAN, the internal client of
	// mappings; zero: the source address the system picks toward Gateway.
	LocalAddr netip.Addr
	// Protocols restricts and orders the protocols tried (PCP, NATPMP,
	// UPnP); nil: AllProtocols.
	Protocols []string
	// Lease is the lifetime asked for; zero: 2h (RFC 6886 §3.3). Gateways
	// may grant another.
	Lease time.Duration
	// Timeout bounds one Map, Probe or renewal (each protocol's part runs
	// within it); zero: 4s.
	Timeout time.Duration
	// CloseTimeout bounds deleting the mapping in Lease.Close; zero: 2s.
	CloseTimeout time.Duration
	// Description names our mappings in the gateway's UPnP table; zero:
	// "peerport".
	Description string
	// Log receives the package's log lines, scoped with component=portmap;
	// nil: discarded.
	Log logrus.FieldLogger
	// Clock times renewals; nil: the wall clock.
	Clock Clock
	// Dial opens connections to the gateway (UDP for PCP and NAT-PMP,
	// TCP for UPnP's HTTP); nil: a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// ListenPacket opens the unconnected UDP socket SSDP answers come back
	// on; nil: net.ListenConfig.
	ListenPacket func(ctx context.Context, network, address string) (net.PacketConn, error)

	// Ports of the gateway's services; zero: the protocols' own (5351 for
	// PCP and NAT-PMP, 1900 for SSDP). Tests on loopback move them.
	pmpPort, ssdpPort uint16
}

func (o *Options) setDefaults() {
	if o.Protocols == nil {
		o.Protocols = AllProtocols
	}
	if o.Lease <= 0 {
		o.Lease = 2 * time.Hour
	}
	if o.Timeout <= 0 {
		o.Timeout = 4 * time.Second
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = 2 * time.Second
	}
	if o.Description == "" {
		o.Description = "peerport"
	}
	if o.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		o.Log = l
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	if o.ListenPacket == nil {
		var lc net.ListenConfig
		o.ListenPacket = lc.ListenPacket
	}
	if o.pmpPort == 0 {
		o.pmpPort = 5351
	}
	if o.ssdpPort == 0 {
		o.ssdpPort = 1900
	}
}

func (o *Options) validate() error {
	var errs []error
	seen := map[string]bool{}
	for i, p := range o.Protocols {
		if !slices.Contains(AllProtocols, p) {
			errs = append(errs, fmt.Errorf("protocols[%d]: unknown protocol %q (want %s, %s or %s)", i, p, PCP, NATPMP, UPnP))
		} else if seen[p] {
			errs = append(errs, fmt.Errorf("protocols[%d]: %q listed twice", i, p))
		}
		seen[p] = true
	}
	if len(o.Protocols) == 0 {
		errs = append(errs, errors.New("protocols: empty list; leave it nil for all"))
	}
	if o.Gateway.IsValid() && !o.Gateway.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("gateway: %v is not IPv4 (NAT-PMP, PCP over IPv4 and UPnP IGD map IPv4 ports)", o.Gateway))
	}
	if o.LocalAddr.IsValid() && !o.LocalAddr.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("localAddr: %v is not IPv4", o.LocalAddr))
	}
	return errors.Join(errs...)
}

// Client asks one gateway for mappings. It is safe for concurrent use.
type Client struct {
	opts   Options
	gw     netip.Addr
	log    logrus.FieldLogger
	protos []protocol

	mu    sync.Mutex
	local netip.Addr
}

// New returns a Client for opts. Without Options.Gateway it reads the
// default gateway now; no default route is ErrNoGateway.
func New(opts Options) (*Client, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("portmap: options: %w", err)
	}
	gw := opts.Gateway.Unmap()
	if !gw.IsValid() {
		var err error
		if gw, err = DefaultGateway(); err != nil {
			return nil, err
		}
	}
	c := &Client{
		opts:  opts,
		gw:    gw,
		log:   opts.Log.WithFields(logrus.Fields{"component": "portmap", "gateway": gw.String()}),
		local: opts.LocalAddr.Unmap(),
	}
	for _, name := range opts.Protocols {
		log := c.log.WithField("protocol", name)
		switch name {
		case PCP:
			c.protos = append(c.protos, &pcpProto{c: c, log: log})
		case NATPMP:
			c.protos = append(c.protos, &natpmpProto{c: c, log: log})
		case UPnP:
			c.protos = append(c.protos, newUPnP(c, log))
		}
	}
	return c, nil
}

// Gateway returns the gateway the Client asks.
func (c *Client) Gateway() netip.Addr { return c.gw }

// LocalAddr returns our address toward the gateway: Options.LocalAddr or
// the source address of a UDP socket connected to it (nothing is sent).
func (c *Client) LocalAddr(ctx context.Context) (netip.Addr, error) {
	c.mu.Lock()
	local := c.local
	c.mu.Unlock()
	if local.IsValid() {
		return local, nil
	}
	conn, err := c.opts.Dial(ctx, "udp4", netip.AddrPortFrom(c.gw, c.opts.pmpPort).String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: find our address toward %v: %w: %w", c.gw, ErrNoGateway, err)
	}
	defer conn.Close()
	ap, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil || !ap.Addr().Unmap().Is4() {
		return netip.Addr{}, fmt.Errorf("portmap: find our address toward %v: local address %v: %w", c.gw, conn.LocalAddr(), ErrNoGateway)
	}
	local = ap.Addr().Unmap()
	c.mu.Lock()
	c.local = local
	c.mu.Unlock()
	return local, nil
}

// Map asks the gateway for a mapping of our TCP port internalPort. It races
// the allowed protocols' probes (PCP ANNOUNCE, NAT-PMP's external address
// request, UPnP discovery), which map nothing, and maps with the first
// protocol whose probe got a valid answer; if that mapping fails, with the
// next to answer, and so on. Only one protocol ever maps, so no other
// protocol's mapping is left to delete: racing the map requests themselves
// would be destructive on gateways that serve all three from one table
// (miniupnpd keeps one rule per port and ties the PCP nonce to it, so a
// NAT-PMP or UPnP request for the same port takes the rule over and the PCP
// delete is then refused), and a map request cancelled in flight can leave
// a mapping we never heard of. The Lease renews the mapping until Close.
// When no protocol got an answer the error wraps ErrNoGateway, otherwise
// ErrNoMapping; it names each protocol's failure.
func (c *Client) Map(ctx context.Context, internalPort uint16) (*Lease, error) {
	if internalPort == 0 {
		return nil, fmt.Errorf("portmap: map: internal port 0: %w", ErrNoMapping)
	}
	local, err := c.LocalAddr(ctx)
	if err != nil {
		return nil, err
	}
	internal := netip.AddrPortFrom(local, internalPort)
	rctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	type result struct {
		p   protocol
		err error
	}
	probes := make(chan result, len(c.protos))
	for _, p := range c.protos {
		go func() {
			_, err := p.probe(rctx)
			probes <- result{p, err}
		}()
	}
	var (
		win         *Mapping
		winner      protocol
		errs        []error
		gatewaySeen bool
	)
	for range c.protos {
		r := <-probes
		if win != nil {
			continue // draining: the probes end at once, rctx is cancelled
		}
		if r.err != nil {
			gatewaySeen = gatewaySeen || !errors.Is(r.err, ErrNoGateway)
			errs = append(errs, r.err)
			c.log.WithFields(logrus.Fields{"protocol": r.p.name(), "error": r.err}).Debug("portmap: protocol not served")
			continue
		}
		gatewaySeen = true
		m, err := r.p.mapPort(rctx, internal, c.opts.Lease, nil)
		if err != nil {
			errs = append(errs, err)
			c.log.WithFields(logrus.Fields{"protocol": r.p.name(), "error": err}).Info("portmap: protocol answered but did not map")
			continue
		}
		win, winner = &m, r.p
		cancel()
		c.log.WithField("mapping", m.String()).Info("portmap: mapped")
	}
	if win == nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("portmap: map tcp %v: %w", internal, ctx.Err())
		}
		sentinel := ErrNoMapping
		if !gatewaySeen {
			sentinel = ErrNoGateway
		}
		return nil, fmt.Errorf("portmap: map tcp %v via %v: %w: %w", internal, c.gw, sentinel, errors.Join(errs...))
	}
	return newLease(c, winner, *win), nil
}

// ProbeResult is what Probe learnt.
type ProbeResult struct {
	// Protocol is the first protocol that answered; "" when none did.
	Protocol string
	// Answered lists every protocol that answered, in Options.Protocols order.
	Answered []string
	// External is the external address a protocol reported (NAT-PMP and
	// UPnP tell it, a PCP ANNOUNCE does not); zero when none did.
	External netip.Addr
	// Errors holds, per protocol that did not answer, why.
	Errors map[string]error
}

// Probe asks every allowed protocol at once whether the gateway serves it,
// mapping nothing, and waits for all of them (bounded by Options.Timeout).
func (c *Client) Probe(ctx context.Context) ProbeResult {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	type result struct {
		i    int
		ext  netip.Addr
		err  error
		when time.Time
	}
	results := make(chan result, len(c.protos))
	for i, p := range c.protos {
		go func() {
			ext, err := p.probe(ctx)
			results <- result{i, ext, err, time.Now()}
		}()
	}
	got := make([]*result, len(c.protos))
	res := ProbeResult{Errors: map[string]error{}}
	for range c.protos {
		r := <-results
		got[r.i] = &r
		if r.err == nil && res.Protocol == "" {
			res.Protocol = c.protos[r.i].name()
		}
	}
	for i, r := range got {
		name := c.protos[i].name()
		if r.err != nil {
			res.Errors[name] = r.err
			continue
		}
		res.Answered = append(res.Answered, name)
		if !res.External.IsValid() && r.ext.IsValid() {
			res.External = r.ext
		}
	}
	c.log.WithFields(logrus.Fields{"answered": res.Answered, "external": res.External.String()}).Debug("portmap: probed")
	return res
}

// seconds converts a lease to whole seconds for the wire, at least 1 and at
// most what a uint32 holds.
func seconds(d time.Duration) uint32 {
	s := d / time.Second
	switch {
	case s < 1:
		return 1
	case s > 1<<32-1:
		return 1<<32 - 1
	}
	return uint32(s)
}
