package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/portmap"
	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/punch"
	"github.com/peerport/peerport/internal/secure"
)

// Hole punching, agent side: each introduction gets a fresh punch socket
// (one local port, SO_REUSEPORT) whose NAT mapping is learnt over STUN/TCP
// from that very socket; both sides then dial each other's candidates from
// it while listening on it (package punch), and the kept connection carries
// the TLS peer channel with the connector as client.

const (
	punchTimeout  = 10 * time.Second
	maxStartDelay = time.Second // bounds a start delay computed from reported RTTs
)

// ErrRelayNeeded means no direct path can be punched between the two NATs.
var ErrRelayNeeded = punch.ErrRelayNeeded

// punchSocket is a bound punch port and the candidates that reach it.
type punchSocket struct {
	ln    net.Listener
	cands []proto.Candidate
	lease *portmap.Lease // the gateway's mapping of the port; nil: none
}

// close releases the socket unused: its listener and its mapping.
func (ps *punchSocket) close() {
	ps.ln.Close()
	if ps.lease != nil {
		ps.lease.Close()
	}
}

// openPunch binds a punch port and gathers its candidates: interface
// addresses (LAN first), the STUN mapping of this very port, the gateway's
// port mapping of it, and loopback last (it only helps two agents on one
// machine).
func (b *brokerClient) openPunch(ctx context.Context) (*punchSocket, error) {
	ln, err := punch.Listen(ctx, nil, ":0")
	if err != nil {
		return nil, err
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	host, err := punch.HostCandidates(port)
	if err != nil {
		ln.Close()
		return nil, err
	}
	ps := &punchSocket{ln: ln}
	mapped := make(chan *portmap.Lease, 1)
	// Behind a NAT no punch gets through, the mapping is the one way in
	// over IPv4: worth waiting for the gateway's answer, unless IPv6 offers
	// a way that needs none.
	needed := b.natReport().DestinationDependent() && !slices.ContainsFunc(host, func(c punch.Candidate) bool { return punch.BeyondNAT(c.Addr.Addr()) })
	go func() { mapped <- b.agent.portmap.mapPort(ctx, port, needed, b.agent.spawn) }() // beside STUN, not after it
	cands := host
	b.mu.Lock()
	servers := b.stun
	b.mu.Unlock()
	// When this session's discovery got no STUN answer at all, neither will
	// this: a network that lets only the broker's port through. Waiting for
	// the timeout would only delay the introduction.
	if len(servers) > 0 && !b.stunUnreachable() {
		sctx, cancel := context.WithTimeout(ctx, stunTimeout)
		m, err := nat.MappedAddrTCP(sctx, netip.AddrPortFrom(netip.IPv4Unspecified(), port), servers[0])
		cancel()
		if err != nil {
			b.logger().WithError(err).Info("no server-reflexive candidate")
		} else {
			cands = append(cands, punch.Candidate{Kind: punch.Srflx, Addr: m})
		}
	}
	if ps.lease = <-mapped; ps.lease != nil {
		if ext := ps.lease.Current().External; ext.Port() != 0 && ext.Addr().IsValid() && !ext.Addr().IsUnspecified() {
			cands = append(cands, punch.Candidate{Kind: punch.Mapped, Addr: ext})
		}
	}
	cands = append(punch.Order(cands),
		punch.Candidate{Kind: punch.Host, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)},
		punch.Candidate{Kind: punch.Host, Addr: netip.AddrPortFrom(netip.IPv6Loopback(), port)})
	cands = slices.DeleteFunc(cands, func(c punch.Candidate) bool { return c.Kind == punch.Host && !b.agent.offers(c.Addr.Addr()) })
	for _, c := range cands {
		if len(ps.cands) == proto.MaxCandidates {
			break
		}
		ps.cands = append(ps.cands, proto.Candidate{Kind: string(c.Kind), Addr: c.Addr.String()})
	}
	return ps, nil
}

// beyondNAT says whether the socket has a candidate no IPv4 NAT's
// mapping behaviour can spoil: a port mapping, or IPv6 leaving this host.
func (ps *punchSocket) beyondNAT() bool {
	return slices.ContainsFunc(ps.cands, func(c proto.Candidate) bool {
		ap, err := netip.ParseAddrPort(c.Addr)
		return err == nil && (c.Kind == string(punch.Mapped) || punch.BeyondNAT(ap.Addr()))
	})
}

// keepLease decides what becomes of the socket's port mapping once the
// punch is over: held with conn while the connection came in through it,
// else deleted. It returns conn and, for status, which mapping carried the
// path: our gateway's protocol, "peer" for the peer's mapping, or "".
func (ps *punchSocket) keepLease(conn net.Conn, res *punch.Result, local *nat.Report) (net.Conn, string) {
	if conn != nil && res.Candidate.Kind == punch.Mapped {
		if ps.lease != nil {
			ps.lease.Close()
		}
		return conn, "peer"
	}
	if ps.lease == nil {
		return conn, ""
	}
	if conn != nil && res.Via == "accept" {
		// It may have come in through the mapping: keep it as long. It
		// surely did when our NAT lets in nothing else; behind a friendlier
		// NAT it may have come either way, which status does not claim.
		carried := ""
		if local.DestinationDependent() {
			carried = ps.lease.Current().Protocol
		}
		return &leasedConn{Conn: conn, lease: ps.lease}, carried
	}
	ps.lease.Close()
	return conn, ""
}

// mapped says whether the socket's port mapping is offered to the peer.
func (ps *punchSocket) mapped() bool {
	return slices.ContainsFunc(ps.cands, func(c proto.Candidate) bool { return c.Kind == string(punch.Mapped) })
}

// offers reports whether a local address may be offered to peers.
func (a *Agent) offers(ip netip.Addr) bool { return offered(a.opts.Candidates, ip) }

func toPunch(cs []proto.Candidate) []punch.Candidate {
	var out []punch.Candidate
	for _, c := range cs {
		ap, err := netip.ParseAddrPort(c.Addr)
		if err != nil {
			continue
		}
		out = append(out, punch.Candidate{Kind: punch.Kind(c.Kind), Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())})
	}
	return out
}

// punchTo runs one punch and returns the kept TCP connection.
func (a *Agent) punchTo(ctx context.Context, ps *punchSocket, remote []proto.Candidate, initiator bool,
	local *nat.Report, peer *proto.NAT, startAt time.Time, log logrus.FieldLogger) (net.Conn, outcome, error) {
	out := outcome{path: proto.PathDirect, localNAT: natType(natInfo(local)), peerNAT: natType(peer)}
	conn, res, err := punch.Punch(ctx, punch.Config{
		Listener: ps.ln, Remote: toPunch(remote), Initiator: initiator, Timeout: punchTimeout,
		StartAt: startAt, LocalNAT: local, PeerNAT: peerReport(peer), Reachable: ps.mapped(), Tracer: punch.LogTracer(log),
	})
	out.res = res
	conn, out.portmap = ps.keepLease(conn, res, local)
	fields := logrus.Fields{"nat": out.localNAT, "peer_nat": out.peerNAT}
	if res != nil {
		fields["punch_ms"], fields["attempts"] = res.PunchMS, res.Attempts
	}
	if err != nil {
		if errors.Is(err, punch.ErrRelayNeeded) {
			log.WithFields(fields).Warn("relay needed: a NAT on the path maps each destination to a new port, so no direct path can be punched")
		} else {
			log.WithFields(fields).WithError(err).Warn("hole punch failed")
		}
		return nil, out, err
	}
	fields["pair"] = res.Local.String() + " -> " + res.Remote.String()
	fields["candidate"], fields["via"] = res.Candidate.Kind, res.Via
	log.WithFields(fields).Info("hole punched: direct path up")
	return conn, out, nil
}

// directPath is the punched path.
type directPath struct{ a *Agent }

func (directPath) wire() string { return proto.PathDirect }

// dial is the connector's direct way to a sharer: introduce with our punch
// candidates and punch.
func (p directPath) dial(ctx context.Context, b *brokerClient, sharer secure.AgentID, intro introFunc, hurry func()) (net.Conn, outcome, *proto.ConnectReply, error) {
	a := p.a
	none := outcome{path: proto.PathDirect}
	if err := b.ready(ctx); err != nil {
		return nil, none, nil, err
	}
	local := b.natReport()
	ps, err := b.openPunch(ctx)
	if err != nil {
		return nil, none, nil, err
	}
	if local.RelayNeeded() && !ps.beyondNAT() {
		// Our own NAT rules punching out over IPv4, and there is no IPv6
		// nor a port mapping: spare both sides the attempt.
		ps.close()
		none.localNAT = natType(natInfo(local))
		return nil, none, nil, fmt.Errorf("direct path to %s (NAT %s): %w", sharer.Short(), none.localNAT, ErrRelayNeeded)
	}
	rep, err := intro(ctx, &proto.Connect{Path: proto.PathDirect, Candidates: ps.cands, NAT: natInfo(local), RTTMillis: b.rttMillis()})
	if err != nil {
		ps.close()
		return nil, none, nil, err
	}
	if rep.Path == proto.PathRelay {
		ps.close()
		return nil, none, rep, fmt.Errorf("direct path to %s: %w", sharer.Short(), errSharerWantsRelay)
	}
	if local == nil || rep.NAT == nil || rep.NAT.Type == "" || rep.NAT.Type == "unknown" {
		// A side whose NAT discovery got no STUN answer sits behind a
		// network that lets little through: punch, but race the relays now.
		hurry()
	}
	log := a.log.WithFields(logrus.Fields{"component": "punch", "peer": sharer.Short(), "role": roleConnector})
	conn, out, err := a.punchTo(ctx, ps, rep.Candidates, true, local, rep.NAT, time.Time{}, log)
	b.tellOutcome(out, err)
	if err != nil {
		return nil, out, rep, fmt.Errorf("direct path to %s (NAT %s, peer NAT %s): %w", sharer.Short(), out.localNAT, out.peerNAT, err)
	}
	return conn, out, rep, nil
}

// clientTLS runs the connector's TLS handshake over a punched or relayed
// connection, pinning the sharer's key; it closes conn on failure.
func (a *Agent) clientTLS(ctx context.Context, conn net.Conn, sharer secure.AgentID) (*secure.Conn, error) {
	cfg, err := secure.PeerClientConfig(a.id, sharer)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := secure.Client(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, peerHandshakeTimeout)
	defer cancel()
	if err := c.HandshakeContext(hctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("peer tls: %w", err)
	}
	return c, nil
}

// tellOutcome tells the broker how the punch went, for its metrics; best effort.
func (b *brokerClient) tellOutcome(out outcome, err error) {
	o := &proto.Outcome{Result: proto.OutcomeDirect, NAT: out.localNAT, PeerNAT: out.peerNAT}
	switch {
	case errors.Is(err, punch.ErrRelayNeeded):
		o.Result = proto.OutcomeRelayNeeded
	case err != nil:
		o.Result = proto.OutcomeFailed
	}
	if out.res != nil {
		o.PunchMS = out.res.PunchMS
	}
	c := b.current()
	if c != nil {
		go c.send(o)
	}
}

// answer is the sharer's side of a direct introduction: it binds a punch
// socket for the reply's candidates and, once the connector has had time to
// receive them, punches and serves the peer channel that comes up.
func (p directPath) answer(ctx context.Context, b *brokerClient, in *proto.Intro, connector secure.AgentID, rep *proto.IntroReply) {
	a := p.a
	ps, err := b.openPunch(ctx)
	if err != nil {
		a.log.WithError(err).Warn("cannot open a punch socket")
		rep.Code, rep.Message = proto.CodeInternal, "sharer cannot open a punch socket"
		return
	}
	// An introduction right after we came online may beat our first NAT
	// discovery; the verdict matters to both sides, so wait for it, briefly.
	rctx, cancel := context.WithTimeout(ctx, discoverBudget)
	b.ready(rctx)
	cancel()
	local := b.natReport()
	rep.Candidates, rep.NAT = ps.cands, natInfo(local)
	// The reply reaches the connector about half our RTT plus half its RTT
	// from now: start then, so both sides' SYNs leave together.
	delay := time.Duration((b.rttMillis() + in.RTTMillis) / 2 * float64(time.Millisecond))
	startAt := time.Now().Add(min(delay, maxStartDelay))
	log := a.log.WithFields(logrus.Fields{"component": "punch", "peer": connector.Short(), "role": roleSharer, "share": in.Share})
	a.spawn(func() {
		pctx, cancel := context.WithTimeout(ctx, punchTimeout+maxStartDelay)
		defer cancel()
		conn, out, err := a.punchTo(pctx, ps, in.Candidates, false, local, in.NAT, startAt, log)
		if err != nil {
			return
		}
		a.servePeer(ctx, conn, connector, in.ConnectorInstance, out)
	})
}
