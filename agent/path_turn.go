package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/relay"
	"github.com/peerport/peerport/internal/secure"
)

// The TURN relay path: when no direct path can be punched, the sharer
// allocates a TCP relay on a TURN server (RFC 6062), permits the connector's
// public address, and the connector dials the relayed address. The TLS peer
// channel and its session run over that connection exactly as over a
// punched one; the relay sees only ciphertext.

const (
	// relayTimeout bounds the sharer's allocation and the connector's dial
	// to the relayed address.
	relayTimeout = 10 * time.Second
	// relayAcceptTimeout is how long an allocation waits for its connector.
	relayAcceptTimeout = 20 * time.Second
	// ownCredentialTTL is the lifetime of credentials this agent makes for
	// an external TURN server from its shared secret. Such a server may
	// refuse to refresh an allocation past it, which ends that session (the
	// forward then reconnects), so it is long.
	ownCredentialTTL = 12 * time.Hour
)

// TURNServer is an external TURN server (coturn with use-auth-secret, say)
// whose shared secret this agent holds, used instead of the broker's relay.
type TURNServer struct {
	URL    string // turn:host:port?transport=tcp
	Secret []byte
}

// errSharerWantsRelay: the share takes relayed connections only.
var errSharerWantsRelay = errors.New("the share takes relayed connections only")

// errNoRelayAddr: a relay introduction was answered without an address.
var errNoRelayAddr = errors.New("the sharer answered a relay introduction without a relayed address")

// turnPath is the TURN relay.
type turnPath struct{ a *Agent }

func (turnPath) wire() string { return proto.PathRelay }

// dial is the connector's TURN-relayed way to a sharer: a relay
// introduction makes the sharer allocate and permit us, and we dial the
// relayed address it answers with.
func (p turnPath) dial(ctx context.Context, b *brokerClient, sharer secure.AgentID, intro introFunc, _ func()) (net.Conn, outcome, *proto.ConnectReply, error) {
	out := outcome{path: PathRelay, relayKind: RelayTURN}
	if err := b.ready(ctx); err != nil { // our NAT type, for status and the broker's logs
		return nil, out, nil, err
	}
	local := natInfo(b.natReport())
	rep, err := intro(ctx, &proto.Connect{Path: proto.PathRelay, NAT: local, RTTMillis: b.rttMillis()})
	if err != nil {
		return nil, out, nil, fmt.Errorf("relay to %s: %w", sharer.Short(), err)
	}
	out.localNAT, out.peerNAT = natType(local), natType(rep.NAT)
	i := slices.IndexFunc(rep.Candidates, func(c proto.Candidate) bool { return c.Kind == proto.KindRelay })
	if i < 0 {
		return nil, out, rep, fmt.Errorf("relay to %s: %w", sharer.Short(), errNoRelayAddr)
	}
	addr := rep.Candidates[i].Addr
	dctx, cancel := context.WithTimeout(ctx, relayTimeout)
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return nil, out, rep, fmt.Errorf("relay to %s: dial relayed address: %w", sharer.Short(), err)
	}
	cc := &countConn{Conn: conn}
	out.relay, out.relayed = addr, &cc.n
	return cc, out, rep, nil
}

// answer is the sharer's side of a TURN introduction: allocate, permit the
// connector, answer with the relayed address, and serve the peer channel
// that arrives through it. The allocation lives as long as that session.
func (p turnPath) answer(ctx context.Context, b *brokerClient, in *proto.Intro, connector secure.AgentID, rep *proto.IntroReply) {
	a := p.a
	log := a.log.WithFields(logrus.Fields{"component": "relay", "peer": connector.Short(), "share": in.Share})
	fail := func(code string, err error) {
		rep.Code, rep.Message = code, "sharer: "+err.Error()
		log.WithError(err).Warn("relay introduction failed")
	}
	cfg, err := a.turnConfig(in.TURN)
	if err != nil {
		fail(proto.CodeNoRelay, err)
		return
	}
	all := permitIPs(in.Candidates)
	if len(all) == 0 {
		fail(proto.CodeBadRequest, errors.New("the introduction names no address of the connector to permit"))
		return
	}
	// A relayed address reaches peers of its own family only: IPv4 where
	// the connector has an IPv4 address (a dual-stack relay then bridges
	// an IPv6-only sharer to it), else IPv6.
	cfg.IPv6 = !slices.ContainsFunc(all, netip.Addr.Is4)
	peers := slices.DeleteFunc(slices.Clone(all), func(ip netip.Addr) bool { return ip.Is4() == cfg.IPv6 })
	actx, cancel := context.WithTimeout(ctx, relayTimeout)
	defer cancel()
	cfg.Log = log
	alloc, err := relay.Allocate(actx, cfg)
	if err != nil {
		fail(proto.CodeNoRelay, fmt.Errorf("allocate a relay: %w", err))
		return
	}
	if alloc.Addr().Addr().Is4() == cfg.IPv6 {
		// An IPv6-only relay that ignores the family asked for.
		peers = slices.DeleteFunc(slices.Clone(all), func(ip netip.Addr) bool { return ip.Is4() != alloc.Addr().Addr().Is4() })
		if len(peers) == 0 {
			alloc.Close()
			fail(proto.CodeNoRelay, fmt.Errorf("the relay allocated %s, of another IP family than the connector's %v", alloc.Addr(), all))
			return
		}
	}
	if err := alloc.Permit(actx, peers...); err != nil {
		alloc.Close()
		fail(proto.CodeNoRelay, fmt.Errorf("permit the connector on the relay: %w", err))
		return
	}
	local := natInfo(b.natReport())
	rep.NAT = local
	rep.Candidates = []proto.Candidate{{Kind: proto.KindRelay, Addr: alloc.Addr().String()}}
	log = log.WithFields(logrus.Fields{"relay": alloc.Addr().String(), "server": alloc.Server()})
	log.WithField("permit", peers).Info("relay allocated")
	a.spawn(func() {
		defer alloc.Close()
		wctx, cancel := context.WithTimeout(ctx, relayAcceptTimeout)
		conn, err := alloc.Accept(wctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				log.WithError(err).Warn("the connector did not come through the relay")
			}
			return
		}
		cc := &countConn{Conn: conn}
		a.servePeer(ctx, cc, connector, in.ConnectorInstance, outcome{path: PathRelay, relayKind: RelayTURN, relay: alloc.Addr().String(), relayed: &cc.n,
			localNAT: natType(local), peerNAT: natType(in.NAT)})
	})
}

// turnConfig picks the TURN server for an allocation: this agent's own
// external server if configured, else the one the broker named.
func (a *Agent) turnConfig(fromBroker *proto.TURN) (relay.Config, error) {
	if t := a.opts.TURN; t != nil {
		user, pass := relay.Credentials(t.Secret, a.id.ID().String(), time.Now().Add(ownCredentialTTL))
		return relay.Config{URL: t.URL, Username: user, Password: pass}, nil
	}
	if fromBroker == nil {
		return relay.Config{}, errors.New("no relay: the broker offers none and none is configured")
	}
	return relay.Config{URL: fromBroker.URL, Username: fromBroker.Username, Password: fromBroker.Password}, nil
}

// permitIPs are the connector's public addresses as the broker saw them
// and as its STUN mapping says: where its connection to the relay will
// come from.
func permitIPs(cands []proto.Candidate) []netip.Addr {
	var ips []netip.Addr
	for _, c := range cands {
		if c.Kind != proto.KindObserved && c.Kind != proto.KindSrflx {
			continue
		}
		ap, err := netip.ParseAddrPort(c.Addr)
		if err != nil {
			continue
		}
		if ip := ap.Addr().Unmap(); !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	return ips
}

// countConn counts the bytes that pass a connection, both ways.
type countConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}
