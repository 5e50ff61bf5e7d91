package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/portmap"
)

const (
	// mapTimeout bounds asking the gateway for a punch port's mapping: the
	// introduction waits for it.
	mapTimeout = 2 * time.Second
	// gatewayProbeTimeout bounds asking the gateway which protocols it
	// serves: a gateway on the LAN answers in milliseconds, UPnP's discovery
	// and description in tens of them.
	gatewayProbeTimeout = 500 * time.Millisecond
	// reprobeAfter is how long a gateway that answered no mapping protocol
	// is left alone before it is asked again.
	reprobeAfter = 5 * time.Minute
)

// portMapper asks this host's gateway (PCP, NAT-PMP or UPnP IGD) for a
// mapping of each punch port, so that a peer can connect in whatever the
// NAT does to outgoing connections: behind a symmetric NAT, the one way to
// a direct path over IPv4. A gateway that served nothing is asked again
// only after reprobeAfter, so introductions do not wait on a silent one
// (but for the first, behind a symmetric NAT: see mapPort).
type portMapper struct {
	log    logrus.FieldLogger
	client *portmap.Client

	// first is closed once the first probe has ended.
	first     chan struct{}
	firstOnce sync.Once

	mu      sync.Mutex
	probe   portmap.ProbeResult
	probed  time.Time
	probing bool
}

// newPortMapper returns the mapper for opts, or nil and why not: port
// mapping is off, there is no IPv4 default gateway, or our address toward
// it is not one the agent may offer (--candidates), which a mapping would
// hand to peers.
func newPortMapper(ctx context.Context, opts Options, log logrus.FieldLogger) (*portMapper, string) {
	if !opts.Portmap {
		return nil, "off (--no-portmap, portmap: false)"
	}
	log = log.WithField("component", "portmap")
	c, err := portmap.New(portmap.Options{Log: log, Timeout: mapTimeout})
	if err != nil {
		return nil, "no IPv4 default gateway"
	}
	local, err := c.LocalAddr(ctx)
	if err != nil {
		return nil, err.Error()
	}
	if !offered(opts.Candidates, local) {
		return nil, fmt.Sprintf("our address toward the gateway, %v, is not offered to peers (--candidates)", local)
	}
	return &portMapper{log: log, client: c, first: make(chan struct{})}, ""
}

// offered says whether ip may be offered to peers under the --candidates
// prefixes (none: every address).
func offered(prefixes []netip.Prefix, ip netip.Addr) bool {
	if len(prefixes) == 0 {
		return true
	}
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// refresh probes the gateway, for at most timeout, and keeps what answered.
func (m *portMapper) refresh(ctx context.Context, timeout time.Duration) portmap.ProbeResult {
	m.mu.Lock()
	if m.probing {
		res := m.probe
		m.mu.Unlock()
		return res
	}
	m.probing = true
	m.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	res := m.client.Probe(pctx)
	cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.probe, m.probed, m.probing = res, time.Now(), false
	m.firstOnce.Do(func() { close(m.first) })
	if res.Protocol != "" {
		m.log.WithFields(logrus.Fields{"protocol": res.Protocol, "answered": res.Answered, "external": res.External.String()}).Info("gateway offers port mapping")
	} else {
		m.log.Debug("gateway offers no port mapping")
	}
	return res
}

// served says whether the gateway answered a mapping protocol when last
// asked, asking again in the background when it did not and that was
// reprobeAfter ago.
func (m *portMapper) served(ctx context.Context, spawn func(func())) bool {
	m.mu.Lock()
	ok, stale := m.probe.Protocol != "", !m.probing && time.Since(m.probed) > reprobeAfter
	m.mu.Unlock()
	if !ok && stale {
		spawn(func() { m.refresh(ctx, gatewayProbeTimeout) })
	}
	return ok
}

// mapPort maps the punch port port; nil when the gateway serves no mapping
// or this one failed (logged: a direct path may still be punched). When
// the mapping is needed (behind a NAT no punch gets through) and the
// probe the agent started with is still out, it waits for it, within
// gatewayProbeTimeout: a fresh `agent connect` is introduced within milliseconds
// of starting.
func (m *portMapper) mapPort(ctx context.Context, port uint16, needed bool, spawn func(func())) *portmap.Lease {
	if m == nil {
		return nil
	}
	if needed {
		t := time.NewTimer(gatewayProbeTimeout)
		select {
		case <-m.first:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	if !m.served(ctx, spawn) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, mapTimeout)
	defer cancel()
	l, err := m.client.Map(ctx, port)
	if err != nil {
		m.log.WithError(err).Info("no port mapping for this punch")
		if errors.Is(err, portmap.ErrNoGateway) {
			m.mu.Lock()
			m.probe = portmap.ProbeResult{}
			m.mu.Unlock()
		}
		return nil
	}
	return l
}

// leasedConn is a punched connection that came in through our port
// mapping: the mapping is held, and renewed, until the connection closes.
type leasedConn struct {
	net.Conn
	lease *portmap.Lease
	once  sync.Once
}

func (c *leasedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.lease.Close() })
	return err
}
