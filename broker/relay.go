package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/logging"
	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/relay"
	"github.com/peerport/peerport/internal/secure"
)

// The broker's relay (DESIGN §3, "Relay"): a TURN server over TCP that
// offers TCP allocations only (RFC 6062), embedded with pion/turn.
//
// A sharer that cannot be reached directly gets, with the Intro of a relay
// introduction, a short-lived TURN REST credential for its own agent ID
// (internal/relay: "expiry:agentid", HMAC-SHA1 of it under the broker's
// secret). It allocates, permits the connector's public IP and answers with
// the relayed address; the connector dials it. The relay is tied to the
// control channel:
//
//   - Allocate needs an unexpired credential of an agent that holds a member
//     (token) session on this broker right now. Refresh, CreatePermission,
//     Connect and ConnectionBind on an allocation take an expired one, so a
//     relayed session outlives the credential's TTL; not the agent's broker
//     session, though: OfflineGrace after its last one ends, its allocations
//     are closed, and a new credential is refused.
//   - A peer is permitted (CreatePermission, Connect, and inbound
//     connections to the relayed address) only if the broker introduced it
//     to the allocation's agent (the connector's observed IP and the IPs of
//     its srflx and observed candidates, kept IntroducedTTL), and it is not
//     in a denied range (see peerPolicy) nor one of the broker's own
//     addresses, unless AllowPeers opens it.
//   - Quotas: allocations per agent, distinct peer IPs per allocation, and
//     bytes per second per allocation in each direction.

// Defaults of the relay.
const (
	DefaultTURNPort                    = 3480 // STUN has 3478 and 3479
	DefaultRelayPortMin                = 49152
	DefaultRelayPortMax                = 65535
	DefaultCredentialTTL               = time.Hour
	DefaultMaxAllocationsPerAgent      = 16
	DefaultMaxPermissionsPerAllocation = 8
	DefaultRelayOfflineGrace           = 30 * time.Second
	// DefaultIntroducedTTL is how long an introduction admits the
	// connector's IPs to the sharer's relay. Every permission refresh (each
	// few minutes while a relayed session lives) asks again, so it bounds a
	// relayed session's life, and it must cover a long working session; it
	// also bounds how long a connector's old address, perhaps handed to
	// someone else since, stays reachable. A day does both.
	DefaultIntroducedTTL = 24 * time.Hour
	// DefaultMaxIntroducedPerAgent bounds the IPs remembered per sharer: an
	// introduction brings at most proto.MaxCandidates+1; the oldest go first.
	DefaultMaxIntroducedPerAgent = 256
)

// TURNRealm is the realm of the embedded relay.
const TURNRealm = "peerport"

const (
	// relayConnectTimeout bounds the relay's dial for a Connect request
	// (RFC 6062 §5.2 asks for at least 30 seconds).
	relayConnectTimeout = 30 * time.Second
	// relayShutdownWait bounds how long Serve waits for its connections.
	relayShutdownWait = 5 * time.Second
	// relayPortTries bounds the ports tried for one allocation.
	relayPortTries = 64
)

// Errors of the relay's address generator; pion answers them with 508,
// but errRelayUDP with 442 (turnGuard rewrites it).
var (
	errRelayUDP      = errors.New("relay: UDP allocations are not offered (use TCP, RFC 6062)")
	errRelayFamily   = errors.New("relay: no relay address of this address family")
	errRelayQuota    = errors.New("relay: allocation quota of this agent reached")
	errRelayNoPort   = errors.New("relay: no free port in the relay port range")
	errRelayClosed   = errors.New("relay: shutting down")
	errRelayRefused  = errors.New("relay: peer refused")
	errRelayNoAlloc  = errors.New("relay: no allocation at this relayed address")
	errRelayNotTCP   = errors.New("relay: peer address is not TCP")
	errRelayBadAgent = errors.New("relay: allocation without a valid agent ID")
)

// RelayIssuer is what a Server needs to answer relay introductions: where
// the TURN server is and the shared secret of its credentials. The
// embedded relay and an external TURN server (coturn with use-auth-secret)
// look the same from here.
type RelayIssuer struct {
	URL string // turn:host:port?transport=tcp, as sharers are told
	// URL6 is the URL agents on IPv6 are told instead: a dual-stack
	// broker's IPv6 address. Empty: URL for every agent.
	URL6   string
	Secret []byte        // TURN REST shared secret
	TTL    time.Duration // credential lifetime; default DefaultCredentialTTL
}

// ExternalTURN is a TURN server the broker does not run but issues
// credentials for, from its shared secret.
type ExternalTURN struct {
	URL    string // turn:host:port?transport=tcp
	Secret []byte
}

// RelayConfig configures the embedded relay. Zero values mean defaults.
type RelayConfig struct {
	// RelayIP is the address relayed transport addresses are given at: the
	// broker's public IP. Required; Start derives it from the public address.
	RelayIP netip.Addr
	// BindIP is where relay ports are bound; default RelayIP. It differs
	// behind a 1:1 NAT (a cloud VM), where the public IP is not local.
	BindIP netip.Addr
	// RelayIP6 and BindIP6 are a dual-stack relay's IPv6 addresses, beside
	// an IPv4 RelayIP: an allocation asking for IPv6 (RFC 6156
	// REQUESTED-ADDRESS-FAMILY) gets its relayed address there, one asking
	// for nothing an IPv4 one, whatever the family the client came over.
	// Zero: the relay has RelayIP's family only. BindIP6 defaults to RelayIP6.
	RelayIP6, BindIP6 netip.Addr
	// PortMin and PortMax bound the relay ports; default 49152-65535.
	PortMin, PortMax uint16
	// AllowPeers opens ranges of the denied peer addresses (see peerPolicy),
	// the broker's own addresses too: a broker on a private network, or on
	// loopback for tests.
	AllowPeers []netip.Prefix
	// OwnAddrs are the broker's own addresses, refused as peers unless
	// AllowPeers opens them. RelayIP and BindIP are added.
	OwnAddrs []netip.Addr
	// MaxAllocationsPerAgent bounds live allocations per agent ID; default 16.
	MaxAllocationsPerAgent int
	// MaxPermissionsPerAllocation bounds the distinct peer IPs one
	// allocation is ever permitted; default 8.
	MaxPermissionsPerAllocation int
	// Bandwidth limits each allocation to this many bytes per second in
	// each direction, over all its connections; 0: unlimited.
	Bandwidth int64
	// OfflineGrace is how long an agent's allocations outlive its last
	// member session, so a control connection that reconnects keeps its
	// relayed sessions; default 30s.
	OfflineGrace time.Duration
	// IntroducedTTL and MaxIntroducedPerAgent bound the introduced peer
	// IPs remembered per agent; defaults 24h and 256.
	IntroducedTTL         time.Duration
	MaxIntroducedPerAgent int
	// Log defaults to the Server's logger; Now to its clock (credential
	// expiry is checked against it).
	Log logrus.FieldLogger
	Now func() time.Time
	// Dial makes the relay's outbound connection for a Connect request,
	// from local (the relayed port) to remote. Default: TCP with
	// SO_REUSEADDR+SO_REUSEPORT, as the port is also listening.
	Dial func(ctx context.Context, local, remote netip.AddrPort) (net.Conn, error)
}

func (c *RelayConfig) setDefaults(srv *Server) {
	c.RelayIP = c.RelayIP.Unmap()
	if !c.BindIP.IsValid() {
		c.BindIP = c.RelayIP
	}
	c.BindIP = c.BindIP.Unmap()
	if c.RelayIP6.IsValid() && !c.BindIP6.IsValid() {
		c.BindIP6 = c.RelayIP6
	}
	if c.PortMin == 0 && c.PortMax == 0 {
		c.PortMin, c.PortMax = DefaultRelayPortMin, DefaultRelayPortMax
	}
	if c.MaxAllocationsPerAgent == 0 {
		c.MaxAllocationsPerAgent = DefaultMaxAllocationsPerAgent
	}
	if c.MaxPermissionsPerAllocation == 0 {
		c.MaxPermissionsPerAllocation = DefaultMaxPermissionsPerAllocation
	}
	if c.OfflineGrace == 0 {
		c.OfflineGrace = DefaultRelayOfflineGrace
	}
	if c.IntroducedTTL == 0 {
		c.IntroducedTTL = DefaultIntroducedTTL
	}
	if c.MaxIntroducedPerAgent == 0 {
		c.MaxIntroducedPerAgent = DefaultMaxIntroducedPerAgent
	}
	if c.Log == nil {
		c.Log = srv.cfg.Log
	}
	if c.Now == nil {
		c.Now = srv.cfg.Now
	}
	if c.Dial == nil {
		c.Dial = dialReusePort
	}
}

func (c *RelayConfig) validate() error {
	var errs []error
	if !c.RelayIP.IsValid() || c.RelayIP.IsUnspecified() {
		errs = append(errs, fmt.Errorf("relay_ip: %v is not an address agents can reach", c.RelayIP))
	}
	if c.BindIP.IsValid() && c.RelayIP.IsValid() && c.BindIP.Is4() != c.RelayIP.Is4() {
		errs = append(errs, fmt.Errorf("bind_ip: %v is not of the family of relay_ip %v", c.BindIP, c.RelayIP))
	}
	if c.RelayIP6.IsValid() {
		switch {
		case !c.RelayIP6.Is6() || c.RelayIP6.Is4In6() || c.RelayIP6.IsUnspecified():
			errs = append(errs, fmt.Errorf("relay_ip6: %v is not an IPv6 address agents can reach", c.RelayIP6))
		case c.RelayIP.IsValid() && !c.RelayIP.Is4():
			errs = append(errs, fmt.Errorf("relay_ip6: %v beside relay_ip %v: a dual-stack relay has an IPv4 relay_ip", c.RelayIP6, c.RelayIP))
		}
		if c.BindIP6.IsValid() && (!c.BindIP6.Is6() || c.BindIP6.Is4In6()) {
			errs = append(errs, fmt.Errorf("bind_ip6: %v is not an IPv6 address", c.BindIP6))
		}
	}
	if c.PortMin == 0 || c.PortMin > c.PortMax {
		errs = append(errs, fmt.Errorf("relay_ports: %d-%d is not a port range", c.PortMin, c.PortMax))
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"max_allocations_per_agent", c.MaxAllocationsPerAgent}, {"max_permissions_per_allocation", c.MaxPermissionsPerAllocation}, {"max_introduced_per_agent", c.MaxIntroducedPerAgent}} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %d is negative", n.name, n.v))
		}
	}
	if c.Bandwidth < 0 {
		errs = append(errs, fmt.Errorf("bandwidth: %d is negative", c.Bandwidth))
	}
	if c.OfflineGrace < 0 || c.IntroducedTTL < 0 {
		errs = append(errs, errors.New("offline_grace, introduced_ttl: negative"))
	}
	return errors.Join(errs...)
}

// Relay is the broker's embedded TURN server. NewRelay ties it to a Server,
// whose sessions and introductions it checks; Serve runs it on a listener.
type Relay struct {
	srv    *Server
	cfg    RelayConfig
	secret []byte
	log    logrus.FieldLogger
	policy *peerPolicy
	m      *relayMetrics
	ctx    context.Context // ends when Serve ends: aborts dials
	cancel context.CancelFunc

	mu       sync.Mutex
	served   bool
	closed   bool
	byPort   map[uint16]*allocation       // live relay listeners
	bySrc    map[string]*allocation       // by the client's control connection, as pion reports it
	perAgent map[secure.AgentID]int       // live allocations
	intros   map[secure.AgentID]introBook // peer IPs introduced to each agent
	offline  map[secure.AgentID]*time.Timer
}

// allocation is one TCP allocation: its relay listener and what is counted
// against it.
type allocation struct {
	agent secure.AgentID
	port  uint16
	relay netip.AddrPort // as the client is told
	bind  netip.Addr     // where its port is bound, of relay's family
	since time.Time
	ln    *relayListener

	// Guarded by Relay.mu.
	src   string                  // the client's control connection; "" until pion reports the allocation
	peers map[netip.Addr]struct{} // distinct peer IPs permitted

	up, down         *bucket // to and from peers; nil: unlimited
	toPeer, fromPeer atomic.Int64
}

// NewRelay makes the embedded relay of srv, which must issue credentials
// (Config.Relay) with the secret the relay checks them with. A Server has at
// most one.
func NewRelay(srv *Server, cfg RelayConfig) (*Relay, error) {
	cfg.setDefaults(srv)
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("broker relay config: %w", err)
	}
	if srv.cfg.Relay == nil {
		return nil, errors.New("broker relay: the server issues no TURN credentials (Config.Relay)")
	}
	r := &Relay{
		srv:      srv,
		cfg:      cfg,
		secret:   srv.cfg.Relay.Secret,
		log:      cfg.Log.WithField("component", "relay"),
		byPort:   make(map[uint16]*allocation),
		bySrc:    make(map[string]*allocation),
		perAgent: make(map[secure.AgentID]int),
		intros:   make(map[secure.AgentID]introBook),
		offline:  make(map[secure.AgentID]*time.Timer),
	}
	own := append([]netip.Addr{cfg.RelayIP, cfg.BindIP, cfg.RelayIP6, cfg.BindIP6}, cfg.OwnAddrs...)
	r.policy = newPeerPolicy(cfg.AllowPeers, own)
	r.ctx, r.cancel = context.WithCancel(context.Background())
	srv.mu.Lock()
	if srv.relay != nil {
		srv.mu.Unlock()
		r.cancel()
		return nil, errors.New("broker relay: the server already has one")
	}
	srv.relay = r
	srv.mu.Unlock()
	r.m = newRelayMetrics(srv.Registry(), r.allocations)
	return r, nil
}

// Serve runs the TURN server on ln (TURN over TCP) until ctx is done, then
// closes ln, every allocation and connection, and returns nil. It returns
// early only if the server cannot start.
func (r *Relay) Serve(ctx context.Context, ln net.Listener) error {
	r.mu.Lock()
	if r.served {
		r.mu.Unlock()
		ln.Close()
		return errors.New("broker relay: Serve called twice")
	}
	r.served = true
	r.mu.Unlock()
	tl := newTrackingListener(ln, r.log, r.guard)
	ts, err := turn.NewServer(turn.ServerConfig{
		ListenerConfigs: []turn.ListenerConfig{{
			Listener:              tl,
			RelayAddressGenerator: relayGenerator{r},
			PermissionHandler:     r.permit,
		}},
		LoggerFactory: logging.Pion(r.log),
		Realm:         TURNRealm,
		// Without REQUESTED-ADDRESS-FAMILY, an IPv4 (or dual-stack) relay
		// allocates IPv4 also for a client that came over IPv6 (RFC 6156):
		// the sharer asks for the family of its connector, which the relay
		// then bridges to the sharer's. An IPv6-only relay follows the
		// client's family, so a request for nothing gets IPv6 there.
		StrictAddressFamily: r.cfg.RelayIP.Is4(),
		AuthHandler:         r.auth,
		QuotaHandler:        r.quota,
		EventHandler: turn.EventHandler{
			OnAuth:              r.onAuth,
			OnAllocationCreated: r.onAllocationCreated,
			OnAllocationDeleted: r.onAllocationDeleted,
		},
	})
	if err != nil {
		tl.Close()
		r.shutdown()
		return fmt.Errorf("broker relay: %w", err)
	}
	f := logrus.Fields{"listen": ln.Addr().String(), "relay_ip": r.cfg.RelayIP.String(), "bind_ip": r.cfg.BindIP.String(),
		"ports": fmt.Sprintf("%d-%d", r.cfg.PortMin, r.cfg.PortMax)}
	if r.cfg.RelayIP6.IsValid() {
		f["relay_ip6"], f["bind_ip6"] = r.cfg.RelayIP6.String(), r.cfg.BindIP6.String()
	}
	r.log.WithFields(f).Info("TURN relay listening (TCP allocations)")
	<-ctx.Done()
	ts.Close() // closes tl; pion then closes its allocations, in the background
	tl.closeConns()
	r.shutdown()
	if !tl.wait(relayShutdownWait) {
		r.log.Warnf("TURN connections still open %v after shutdown", relayShutdownWait)
	}
	return nil
}

// shutdown refuses new allocations and closes the live ones.
func (r *Relay) shutdown() {
	r.mu.Lock()
	r.closed = true
	for id, t := range r.offline {
		t.Stop()
		delete(r.offline, id)
	}
	lns := make([]*relayListener, 0, len(r.byPort))
	for _, a := range r.byPort {
		lns = append(lns, a.ln)
	}
	r.mu.Unlock()
	r.cancel()
	for _, l := range lns {
		l.Close()
	}
}

// allocations is the number of live allocations, for the gauge.
func (r *Relay) allocations() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byPort)
}

// auth is pion's AuthHandler: it answers with the key of a credential made
// with our secret, for an agent with a live member session; Allocate also
// needs it unexpired. pion checks the message integrity with the key (a
// forged password fails there: onAuth counts it).
func (r *Relay) auth(ra *turn.RequestAttributes) (userID string, key []byte, ok bool) {
	log := r.log.WithFields(logrus.Fields{"client": addrString(ra.SrcAddr), "method": ra.Method.String()})
	refuse := func(reason, msg string) (string, []byte, bool) {
		r.m.authFailures.WithLabelValues(reason).Inc()
		log.WithField("reason", reason).Info("TURN request refused: " + msg)
		return "", nil, false
	}
	exp, id, err := relay.ParseUsername(ra.Username)
	if err != nil {
		return refuse(authMalformed, err.Error())
	}
	agent, err := secure.ParseAgentID(id)
	if err != nil {
		return refuse(authMalformed, "username names no agent ID")
	}
	log = log.WithField("agent", agent.Short())
	if !r.srv.memberOnline(agent) {
		return refuse(authOffline, "the agent has no broker session")
	}
	if ra.Method == stun.MethodAllocate && !r.cfg.Now().Before(exp) {
		return refuse(authExpired, "credential expired")
	}
	return agent.String(), turn.GenerateAuthKey(ra.Username, ra.Realm, relay.Password(r.secret, ra.Username)), true
}

// onAuth counts what auth let through but the message integrity refused: a
// password not made with our secret.
func (r *Relay) onAuth(src, _ net.Addr, _, username, _, method string, verdict bool) {
	if verdict {
		return
	}
	r.m.authFailures.WithLabelValues(authForged).Inc()
	_, id, _ := relay.ParseUsername(username)
	r.log.WithFields(logrus.Fields{"client": addrString(src), "method": method, "agent": shortID(id), "reason": authForged}).
		Info("TURN request refused: wrong password")
}

// quota is pion's QuotaHandler, asked before an Allocate: the agent's live
// allocations. AllocateListener enforces it again, exactly.
func (r *Relay) quota(userID, _ string, src net.Addr) bool {
	agent, err := secure.ParseAgentID(userID)
	if err != nil {
		return false
	}
	r.mu.Lock()
	n := r.perAgent[agent]
	r.mu.Unlock()
	if n < r.cfg.MaxAllocationsPerAgent {
		return true
	}
	r.m.allocRefused.WithLabelValues(refusedQuota).Inc()
	r.log.WithFields(logrus.Fields{"agent": agent.Short(), "client": addrString(src), "allocations": n}).
		Warn("TURN allocation refused: the agent's allocation quota is reached")
	return false
}

// permit is pion's PermissionHandler, asked for CreatePermission,
// ChannelBind and Connect requests: src is the client's control connection.
func (r *Relay) permit(src net.Addr, peerIP net.IP) bool {
	ip, _ := netip.AddrFromSlice(peerIP)
	r.mu.Lock()
	a := r.bySrc[src.String()]
	reason, detail := r.refusalLocked(a, ip, true)
	r.mu.Unlock()
	if reason == "" {
		return true
	}
	r.refused(a, src.String(), ip, reason, detail)
	return false
}

// Reasons a peer is refused, the "reason" label of
// peerport_broker_turn_permission_denials_total.
const (
	deniedNoAllocation  = "no_allocation"
	deniedAddress       = "denied_address"
	deniedNotIntroduced = "not_introduced"
	deniedQuota         = "quota"
)

// Reasons of auth failures, the "reason" label of
// peerport_broker_turn_auth_failures_total.
const (
	authMalformed = "malformed" // not "expiry:agentid"
	authOffline   = "offline"   // the agent has no member session
	authExpired   = "expired"   // Allocate with an expired credential
	authForged    = "forged"    // the password is not ours
)

// refusedQuota labels allocations refused for the per-agent quota.
const refusedQuota = "quota"

// refusalLocked says why ip may not be a peer of a, or "" when it may; with
// permit it also counts ip against the allocation's permission quota.
// Called with r.mu held.
func (r *Relay) refusalLocked(a *allocation, ip netip.Addr, permit bool) (reason, detail string) {
	ip = ip.Unmap().WithZone("")
	switch {
	case a == nil:
		return deniedNoAllocation, "no allocation on this connection"
	case !ip.IsValid():
		return deniedAddress, "not an IP address"
	}
	if why := r.policy.denied(ip); why != "" {
		return deniedAddress, why
	}
	if !r.intros[a.agent].has(ip, r.cfg.Now()) {
		return deniedNotIntroduced, "the broker introduced no such peer to this agent"
	}
	if !permit {
		return "", ""
	}
	if _, ok := a.peers[ip]; !ok {
		if len(a.peers) >= r.cfg.MaxPermissionsPerAllocation {
			return deniedQuota, fmt.Sprintf("the allocation already has %d peers, the limit", len(a.peers))
		}
		a.peers[ip] = struct{}{}
	}
	return "", ""
}

// refused counts and logs a refused peer.
func (r *Relay) refused(a *allocation, client string, ip netip.Addr, reason, detail string) {
	r.m.denials.WithLabelValues(reason).Inc()
	f := logrus.Fields{"client": client, "peer": ip.String(), "reason": reason}
	if a != nil {
		f["agent"], f["relay"] = a.agent.Short(), a.relay.String()
	}
	r.log.WithFields(f).Info("TURN peer refused: " + detail)
}

// onAllocationCreated ties the allocation made by AllocateListener to the
// client connection that asked for it, so permit can find it.
func (r *Relay) onAllocationCreated(src, _ net.Addr, _, _, _ string, relayAddr net.Addr, _ int) {
	ta, ok := relayAddr.(*net.TCPAddr)
	if !ok {
		return
	}
	r.mu.Lock()
	a := r.byPort[uint16(ta.Port)]
	if a != nil {
		a.src = src.String()
		r.bySrc[a.src] = a
	}
	n := len(r.byPort)
	r.mu.Unlock()
	if a == nil {
		return
	}
	r.m.allocations.Inc()
	r.log.WithFields(logrus.Fields{"agent": a.agent.Short(), "client": a.src, "relay": a.relay.String(), "allocations": n}).Info("TURN allocation")
}

func (r *Relay) onAllocationDeleted(src, _ net.Addr, _, _, _ string) {
	r.mu.Lock()
	a := r.bySrc[src.String()]
	if a != nil {
		delete(r.bySrc, a.src)
	}
	r.mu.Unlock()
	if a == nil {
		return
	}
	r.log.WithFields(logrus.Fields{"agent": a.agent.Short(), "client": a.src, "relay": a.relay.String(),
		"to_peer_bytes": a.toPeer.Load(), "from_peer_bytes": a.fromPeer.Load(),
		"duration": r.cfg.Now().Sub(a.since).Round(time.Second).String()}).Info("TURN allocation closed")
}

// relayGenerator is pion's RelayAddressGenerator: TCP allocations only, on
// RelayConfig's ports, with wrapped listeners and connections.
type relayGenerator struct{ r *Relay }

func (relayGenerator) Validate() error { return nil }

func (relayGenerator) AllocatePacketConn(turn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	return nil, nil, errRelayUDP
}

func (g relayGenerator) AllocateListener(c turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	return g.r.allocate(c)
}

func (g relayGenerator) AllocateConn(c turn.AllocateConnConfig) (net.Conn, error) {
	return g.r.connect(c)
}

// allocate binds a relay port for an Allocate of conf.UserID (the agent ID
// auth returned), within the agent's quota.
func (r *Relay) allocate(conf turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	agent, err := secure.ParseAgentID(conf.UserID)
	if err != nil {
		return nil, nil, errRelayBadAgent
	}
	relayIP, bindIP := r.family(conf.Network == "tcp6")
	if !relayIP.IsValid() {
		return nil, nil, errRelayFamily
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, nil, errRelayClosed
	}
	if r.perAgent[agent] >= r.cfg.MaxAllocationsPerAgent {
		r.mu.Unlock()
		r.m.allocRefused.WithLabelValues(refusedQuota).Inc()
		return nil, nil, errRelayQuota
	}
	r.perAgent[agent]++ // held while binding
	r.mu.Unlock()
	ln, port, err := r.bindPort(bindIP)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil && r.closed {
		ln.Close()
		err = errRelayClosed
	}
	if err != nil {
		r.releaseAgentLocked(agent)
		return nil, nil, err
	}
	a := &allocation{
		agent: agent,
		port:  port,
		relay: netip.AddrPortFrom(relayIP, port),
		bind:  bindIP,
		since: r.cfg.Now(),
		peers: make(map[netip.Addr]struct{}),
	}
	if bw := r.cfg.Bandwidth; bw > 0 {
		a.up, a.down = newBucket(bw), newBucket(bw)
	}
	a.ln = &relayListener{Listener: ln, r: r, a: a}
	r.byPort[port] = a
	return a.ln, net.TCPAddrFromAddrPort(a.relay), nil
}

// family is the relay and bind IP of an allocation of IPv6 (v6) or IPv4;
// invalid when the relay has no address of that family.
func (r *Relay) family(v6 bool) (relayIP, bindIP netip.Addr) {
	switch {
	case r.cfg.RelayIP.Is6() == v6:
		return r.cfg.RelayIP, r.cfg.BindIP
	case v6:
		return r.cfg.RelayIP6, r.cfg.BindIP6
	}
	return netip.Addr{}, netip.Addr{}
}

// bindPort listens on a free relay port of bind, starting at a random one.
func (r *Relay) bindPort(bind netip.Addr) (net.Listener, uint16, error) {
	lo, hi := int(r.cfg.PortMin), int(r.cfg.PortMax)
	n := hi - lo + 1
	start := rand.IntN(n)
	lc := net.ListenConfig{Control: nat.ReusePort}
	for i := range min(n, relayPortTries) {
		port := uint16(lo + (start+i)%n)
		r.mu.Lock()
		_, taken := r.byPort[port]
		r.mu.Unlock()
		if taken {
			continue // SO_REUSEPORT would let us bind it twice
		}
		ln, err := lc.Listen(r.ctx, "tcp", netip.AddrPortFrom(bind, port).String())
		if err == nil {
			return ln, port, nil
		}
	}
	return nil, 0, errRelayNoPort
}

func (r *Relay) releaseAgentLocked(agent secure.AgentID) {
	if r.perAgent[agent]--; r.perAgent[agent] <= 0 {
		delete(r.perAgent, agent)
	}
}

// released forgets a's listener once it is closed.
func (r *Relay) released(a *allocation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byPort[a.port] == a {
		delete(r.byPort, a.port)
		r.releaseAgentLocked(a.agent)
	}
	if a.src != "" && r.bySrc[a.src] == a {
		delete(r.bySrc, a.src)
	}
}

// connect dials a peer for an RFC 6062 Connect, from the allocation's
// relayed port. pion asked permit already; the check is repeated here, so
// no code path of pion's reaches a refused peer.
func (r *Relay) connect(conf turn.AllocateConnConfig) (net.Conn, error) {
	local, ok1 := conf.LocalAddr.(*net.TCPAddr)
	remote, ok2 := conf.RemoteAddr.(*net.TCPAddr)
	if !ok1 || !ok2 {
		return nil, errRelayNotTCP
	}
	peer := remote.AddrPort()
	r.mu.Lock()
	a := r.byPort[uint16(local.Port)]
	reason, detail := r.refusalLocked(a, peer.Addr(), false)
	closed := r.closed
	src := ""
	if a != nil {
		src = a.src
	}
	r.mu.Unlock()
	switch {
	case closed:
		return nil, errRelayClosed
	case a == nil:
		return nil, errRelayNoAlloc
	case reason != "":
		r.refused(a, src, peer.Addr(), reason, detail)
		return nil, errRelayRefused
	}
	ctx, cancel := context.WithTimeout(r.ctx, relayConnectTimeout)
	defer cancel()
	c, err := r.cfg.Dial(ctx, netip.AddrPortFrom(a.bind, a.port), netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()))
	if err != nil {
		r.log.WithFields(logrus.Fields{"agent": a.agent.Short(), "relay": a.relay.String(), "peer": peer.String()}).WithError(err).Info("TURN connect to peer failed")
		return nil, err
	}
	return a.wrap(c, r), nil
}

// dialReusePort is the default RelayConfig.Dial.
func dialReusePort(ctx context.Context, local, remote netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Control: nat.ReusePort}
	return d.DialContext(ctx, "tcp", remote.String())
}

// introduce records that the broker introduced a connector at ips to agent,
// whose relay may then permit them.
func (r *Relay) introduce(agent secure.AgentID, ips []netip.Addr) {
	if len(ips) == 0 {
		return
	}
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.intros[agent]
	if b == nil {
		b = make(introBook)
		r.intros[agent] = b
	}
	b.add(ips, now, now.Add(r.cfg.IntroducedTTL), r.cfg.MaxIntroducedPerAgent)
}

// agentOffline is told when agent's last member session has ended: after
// OfflineGrace, unless it is back, its allocations are closed and its
// introductions forgotten.
func (r *Relay) agentOffline(agent secure.AgentID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if t := r.offline[agent]; t != nil {
		t.Stop()
	}
	// t is written with r.mu held and read with it held.
	var t *time.Timer
	t = time.AfterFunc(r.cfg.OfflineGrace, func() {
		r.mu.Lock()
		mine := r.offline[agent] == t // else superseded, or shut down
		if mine {
			delete(r.offline, agent)
		}
		r.mu.Unlock()
		if mine && !r.srv.memberOnline(agent) {
			r.closeAgent(agent)
		}
	})
	r.offline[agent] = t
}

// closeAgent closes agent's allocations and forgets its introductions.
func (r *Relay) closeAgent(agent secure.AgentID) {
	r.mu.Lock()
	var lns []*relayListener
	for _, a := range r.byPort {
		if a.agent == agent {
			lns = append(lns, a.ln)
		}
	}
	delete(r.intros, agent)
	r.mu.Unlock()
	if len(lns) > 0 {
		r.log.WithFields(logrus.Fields{"agent": agent.Short(), "allocations": len(lns)}).
			Infof("agent offline for %v: closing its TURN allocations", r.cfg.OfflineGrace)
	}
	for _, l := range lns {
		l.Close() // pion's accept loop ends and deletes the allocation with its connections
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// shortID is an agent ID's Short form, or what was given if it is none.
func shortID(s string) string {
	if id, err := secure.ParseAgentID(s); err == nil {
		return id.Short()
	}
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// turnURL is the TURN URI (RFC 7065) of host and port, TCP transport.
func turnURL(host string, port int) string {
	return "turn:" + net.JoinHostPort(host, strconv.Itoa(port)) + "?transport=tcp"
}
