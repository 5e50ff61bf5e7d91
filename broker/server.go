package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/relay"
	"github.com/peerport/peerport/internal/secure"
)

// Defaults of Config.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 90 * time.Second // agents Ping every 20s
	// MaxSessionsPerAgent bounds the member sessions of one identity.
	MaxSessionsPerAgent      = 16
	DefaultIntroTimeout      = 10 * time.Second
	DefaultMaxAgents         = 100000
	DefaultMaxSharesPerAgent = 64
	DefaultMaxPendingIntros  = 64
	// DefaultRegistrationGrace is twice the agents' longest reconnect
	// backoff (30s): by then every process of a sharer that is coming back
	// has logged in and registered its shares.
	DefaultRegistrationGrace = time.Minute
)

// writeTimeout bounds every write to an agent, so one stuck agent cannot hold
// a connector's introduction (or the sharer's session) forever.
const writeTimeout = 10 * time.Second

// lingerTimeout and lingerBytes bound how long a session that is closed for a
// bad request keeps reading after its Error: closing a TCP socket with unread
// input sends RST, which could destroy the Error before the agent reads it.
const (
	lingerTimeout = time.Second
	lingerBytes   = 1 << 20
)

// Config configures a Server. Zero values mean the defaults.
type Config struct {
	Token             string          // admits sharers (broker URL's TOKEN); connectors with a ticket need none
	Cert              tls.Certificate // broker key; its SPKI pin is in the broker URL
	Log               logrus.FieldLogger
	Version           string        // software version, sent in Welcome
	STUN              []string      // STUN servers agents are told of in Welcome
	HandshakeTimeout  time.Duration // TLS handshake + Hello; default 10s
	IdleTimeout       time.Duration // no message for this long drops the session; default 90s
	IntroTimeout      time.Duration // wait for the sharer's IntroReply; default 10s
	MaxAgents         int           // sessions (members and guests); default 100000
	MaxSharesPerAgent int           // default 64
	MaxPendingIntros  int           // Connects in flight per session; default 64
	MaxMessageSize    int           // default proto.MaxMessageSize
	MaxRelayPairs     int           // broker relay pairs, bound or waiting; default 10000
	RelayPairTimeout  time.Duration // how long a broker relay token waits for both agents; default 20s
	// RegistrationGrace is how long a share the online sharer does not
	// hold counts as "not registered yet" (retry) rather than unknown
	// (refused): from the broker's start, from the newest login of the
	// sharer's identity, and from when the share was last withdrawn or
	// lost. Default 1m, about the agents' longest reconnect backoff.
	RegistrationGrace time.Duration
	Now               func() time.Time // injected clock, default time.Now
	// Relay issues TURN credentials to sharers for relay introductions
	// (Connect with Path relay), for the embedded relay (NewRelay) or an
	// external TURN server; nil: this broker offers no relay, and such a
	// Connect fails with no_relay.
	Relay *RelayIssuer
	// GetCertificate, when set, picks the broker's certificate for each
	// handshake instead of Cert: one from ACME or from files that may
	// change (cert.go). Agents then trust it by its chain, not by a pin.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// ACME makes the listener offer ALPN "acme-tls/1", so the ACME server
	// can validate the TLS-ALPN-01 challenge that GetCertificate answers; a
	// connection that negotiated it is closed after the handshake.
	ACME bool
	// Conns bound connections at the listeners Limit wraps, Rates the
	// logins, registrations and connects of control sessions (limits.go).
	Conns ConnLimits
	Rates RateLimits
}

func (c *Config) setDefaults() {
	if c.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		c.Log = l
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.IntroTimeout == 0 {
		c.IntroTimeout = DefaultIntroTimeout
	}
	if c.MaxAgents == 0 {
		c.MaxAgents = DefaultMaxAgents
	}
	if c.MaxSharesPerAgent == 0 {
		c.MaxSharesPerAgent = DefaultMaxSharesPerAgent
	}
	if c.MaxPendingIntros == 0 {
		c.MaxPendingIntros = DefaultMaxPendingIntros
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = proto.MaxMessageSize
	}
	if c.MaxRelayPairs == 0 {
		c.MaxRelayPairs = DefaultMaxRelayPairs
	}
	if c.RelayPairTimeout == 0 {
		c.RelayPairTimeout = DefaultRelayPairTimeout
	}
	if c.RegistrationGrace == 0 {
		c.RegistrationGrace = DefaultRegistrationGrace
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Conns.setDefaults()
	c.Rates.setDefaults()
	if c.Relay != nil {
		r := *c.Relay // the caller's stays as it was
		if r.TTL == 0 {
			r.TTL = DefaultCredentialTTL
		}
		c.Relay = &r
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Token == "" {
		errs = append(errs, errors.New("token: empty; nobody could register a share"))
	}
	if c.GetCertificate == nil && (len(c.Cert.Certificate) == 0 || c.Cert.PrivateKey == nil) {
		errs = append(errs, errors.New("cert: no certificate or private key, and no GetCertificate"))
	}
	if c.ACME && c.GetCertificate == nil {
		errs = append(errs, errors.New("acme: set, but no GetCertificate to answer the challenge"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"handshake_timeout", c.HandshakeTimeout}, {"idle_timeout", c.IdleTimeout}, {"intro_timeout", c.IntroTimeout}, {"relay_pair_timeout", c.RelayPairTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %v is negative", d.name, d.v))
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"max_agents", c.MaxAgents}, {"max_shares_per_agent", c.MaxSharesPerAgent}, {"max_pending_intros", c.MaxPendingIntros}, {"max_message_size", c.MaxMessageSize}, {"max_relay_pairs", c.MaxRelayPairs}} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %d is negative", n.name, n.v))
		}
	}
	if r := c.Relay; r != nil {
		if !strings.HasPrefix(r.URL, "turn:") {
			errs = append(errs, fmt.Errorf("relay.url: %q, want turn:HOST:PORT?transport=tcp", r.URL))
		}
		if len(r.Secret) == 0 {
			errs = append(errs, errors.New("relay.secret: empty"))
		}
		if r.TTL < 0 {
			errs = append(errs, fmt.Errorf("relay.ttl: %v is negative", r.TTL))
		}
	}
	errs = append(errs, c.Conns.validate()...)
	if c.MaxMessageSize > 0 && c.MaxMessageSize < 1024 {
		errs = append(errs, fmt.Errorf("max_message_size: %d is too small for a Register (min 1024)", c.MaxMessageSize))
	}
	return errors.Join(errs...)
}

// Server is the broker's control server. It is safe for concurrent use.
type Server struct {
	cfg       Config
	log       logrus.FieldLogger
	tls       *tls.Config
	tokenHash [sha256.Size]byte

	mu        sync.Mutex
	agents    map[secure.AgentID][]*session // member sessions by agent ID, oldest first
	sessions  int                           // members and guests, for MaxAgents
	guests    int
	shares    int
	nextIntro uint64
	started   time.Time
	lost      lostShares  // shares withdrawn or gone with their session, for RegistrationGrace
	presence  presence    // who is online and who met whom, for Presence
	codes     codeSlots   // short codes' slots
	relay     *Relay      // the embedded TURN relay, if NewRelay made one
	port      *tls.Config // the listener's: agents' protocols and HTTPS (port.go)
	pairs     *pairRelay  // the broker relay
	web       http.Handler
	// cluster links this node to the others; nil when the broker runs
	// alone. Set once, by Start, before the first session.
	cluster atomic.Pointer[cluster]

	introductions atomic.Uint64
	metrics       *metrics
	limits        *limits
}

// Stats are counters for status and metrics.
type Stats struct {
	Agents        int    // member sessions online
	Guests        int    // guest (ticket-only) sessions online
	Shares        int    // shares registered
	Introductions uint64 // introductions the sharer answered with candidates
}

// New returns a Server for cfg, with defaults filled in.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("broker config: %w", err)
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Log.WithField("component", "broker"),
		tls:       cfg.controlTLS(),
		tokenHash: sha256.Sum256([]byte(cfg.Token)),
		agents:    make(map[secure.AgentID][]*session),
		presence:  newPresence(),
		started:   cfg.Now(),
	}
	s.metrics = newMetrics(s)
	s.limits = newLimits(&s.cfg, s.metrics.reg, s.log)
	s.port = s.portTLS(s.tls)
	s.pairs = newPairRelay(s.log, cfg.MaxRelayPairs, cfg.RelayPairTimeout, s.metrics.reg)
	s.web = s.webHandler()
	return s, nil
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Agents: len(s.agents), Guests: s.guests, Shares: s.shares, Introductions: s.introductions.Load()}
}

// Serve accepts connections from ln and serves each until ctx is done. It
// closes ln and returns nil when ctx is done; if the listener fails, it ends
// every session and returns the error. Either way it returns only after every
// session has ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		ln.Close()
		cancel()
		wg.Wait()
		s.limits.refusals.Close()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("broker accept: %w", err)
			}
			// Out of file descriptors and the like: back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.WithError(err).Warnf("accept failed; retrying in %v", delay)
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Accept(ctx, conn)
		}()
	}
}

// Accept serves one raw connection to the broker's port: the TLS server
// handshake, then by ALPN a control session, a broker relay connection or
// plain HTTPS (port.go). It blocks until that ends or ctx is done, and closes
// conn.
func (s *Server) Accept(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	log := s.log.WithField("remote", conn.RemoteAddr().String())

	conn.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	tc := tls.Server(conn, s.port)
	if err := tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() == nil {
			s.metrics.refused.WithLabelValues(refusedHandshake).Inc()
			log.WithError(err).Info("handshake failed")
		}
		return
	}
	s.dispatch(ctx, tc, conn, log)
}

// memberOnline reports whether id holds a member (token) session now.
func (s *Server) memberOnline(id secure.AgentID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.agents[id]) > 0
}

// issueTURN makes a TURN credential for sharer, good for Config.Relay.TTL,
// with the TURN URL for an agent at remote (its control connection's far end).
func (s *Server) issueTURN(sharer secure.AgentID, remote net.Addr) *proto.TURN {
	r := s.cfg.Relay
	user, pass := relay.Credentials(r.Secret, sharer.String(), s.cfg.Now().Add(r.TTL))
	s.metrics.turnIssued.Inc()
	return &proto.TURN{URL: r.urlFor(remote), Username: user, Password: pass}
}

// urlFor is the TURN URL an agent at remote is told: URL6 for one on IPv6,
// where the broker has it, else URL.
func (r *RelayIssuer) urlFor(remote net.Addr) string {
	if r.URL6 != "" {
		if ap, err := netip.ParseAddrPort(addrString(remote)); err == nil && ap.Addr().Unmap().Is6() {
			return r.URL6
		}
	}
	return r.URL
}

// checkToken compares in constant time, also in length (both are hashed).
func (s *Server) checkToken(token string) bool {
	h := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(h[:], s.tokenHash[:]) == 1
}
