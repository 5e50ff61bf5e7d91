package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/mux"
)

const (
	peerHandshakeTimeout = 10 * time.Second
	peerDialTimeout      = 5 * time.Second
	// dialStagger spaces the start of dials to successive candidates, as
	// Happy Eyeballs does: the preferred (LAN) candidate gets a head start
	// without a dead candidate costing its full timeout.
	dialStagger    = 150 * time.Millisecond
	rttEvery       = 15 * time.Second
	maxPeerStreams = 1024 // concurrent streams a connector may hold open at a sharer
	maxSessions    = 256
)

// Roles in a peer session, from this agent's point of view.
const (
	roleSharer    = "sharer"    // we share, the peer connects
	roleConnector = "connector" // we connect to the peer's share
)

type sessionKey struct {
	peer secure.AgentID
	role string
}

// peerSession is one TLS peer channel with its yamux session.
type peerSession struct {
	key      sessionKey
	sess     *yamux.Session
	tls      *tls.Conn
	state    tls.ConnectionState
	log      logrus.FieldLogger
	since    time.Time
	path     string
	punch    time.Duration
	attempts int
	pair     CandidatePair
	rtt      atomic.Int64
	stats    counters

	proofMu sync.Mutex
	proofs  map[string][]byte // per share, connector side
}

// counters are shared by sessions, shares and forwards.
type counters struct {
	bytesIn, bytesOut atomic.Int64
	streams           atomic.Int64 // open now
	total             atomic.Int64 // opened since start
}

func newPeerSession(key sessionKey, c *tls.Conn, log logrus.FieldLogger) (*peerSession, error) {
	ps := &peerSession{key: key, tls: c, state: c.ConnectionState(), since: time.Now(), path: "direct",
		log: log.WithFields(logrus.Fields{"peer": key.peer.Short(), "role": key.role, "remote": c.RemoteAddr().String()})}
	var err error
	if key.role == roleConnector {
		ps.sess, err = mux.Client(c, ps.log)
	} else {
		ps.sess, err = mux.Server(c, ps.log)
	}
	if err != nil {
		return nil, fmt.Errorf("start session: %w", err)
	}
	return ps, nil
}

// keepRTT measures the round trip now and then; a failed ping means the
// path is gone, and closing the session lets forwards reconnect.
func (ps *peerSession) keepRTT(ctx context.Context) {
	t := time.NewTicker(rttEvery)
	defer t.Stop()
	for {
		d, err := ps.sess.Ping()
		if err != nil {
			if !ps.sess.IsClosed() {
				ps.log.WithError(err).Warn("peer keepalive failed; closing session")
				ps.sess.Close()
			}
			return
		}
		ps.rtt.Store(int64(d))
		select {
		case <-ctx.Done():
			return
		case <-ps.sess.CloseChan():
			return
		case <-t.C:
		}
	}
}

// proof returns the connector's ticket proof for share on this session.
func (ps *peerSession) proof(t *secure.Ticket) ([]byte, error) {
	if t == nil {
		return nil, nil
	}
	ps.proofMu.Lock()
	defer ps.proofMu.Unlock()
	if p, ok := ps.proofs[t.Share]; ok {
		return p, nil
	}
	p, err := secure.Proof(ps.state, t.ProofKey())
	if err != nil {
		return nil, err
	}
	if ps.proofs == nil {
		ps.proofs = map[string][]byte{}
	}
	ps.proofs[t.Share] = p
	return p, nil
}

func (a *Agent) addSession(ps *peerSession) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.sessions) >= maxSessions {
		return fmt.Errorf("%d peer sessions open, limit reached", len(a.sessions))
	}
	if old := a.sessions[ps.key]; old != nil {
		// The peer reconnected (new path, or it restarted). New streams
		// use the new session; streams on the old one finish there.
		go func() { <-old.idle(); old.sess.Close() }()
	}
	a.sessions[ps.key] = ps
	return nil
}

func (a *Agent) removeSession(ps *peerSession) {
	a.mu.Lock()
	if a.sessions[ps.key] == ps {
		delete(a.sessions, ps.key)
	}
	a.mu.Unlock()
}

// idle is closed once the session has no open stream (or is closed).
func (ps *peerSession) idle() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for ps.sess.NumStreams() > 0 {
			select {
			case <-ps.sess.CloseChan():
				return
			case <-t.C:
			}
		}
	}()
	return ch
}

func (a *Agent) closeSessions() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ps := range a.sessions {
		ps.sess.Close()
	}
}

// acceptPeers is the sharer's peer listener.
func (a *Agent) acceptPeers(ctx context.Context, ln net.Listener) {
	cfg, err := secure.PeerServerConfig(a.id)
	if err != nil {
		a.log.WithError(err).Error("peer tls config")
		return
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				a.log.WithError(err).Error("peer listener failed")
			}
			return
		}
		a.spawn(func() { a.servePeer(ctx, tls.Server(c, cfg)) })
	}
}

func (a *Agent) servePeer(ctx context.Context, c *tls.Conn) {
	log := a.log.WithFields(logrus.Fields{"component": "peer", "remote": c.RemoteAddr().String()})
	hctx, cancel := context.WithTimeout(ctx, peerHandshakeTimeout)
	err := c.HandshakeContext(hctx)
	cancel()
	if err != nil {
		log.WithError(err).Info("peer handshake failed")
		c.Close()
		return
	}
	peer, err := secure.PeerID(c.ConnectionState())
	if err != nil || c.ConnectionState().NegotiatedProtocol != secure.ALPNPeer {
		log.Info("peer refused: no identity or wrong protocol")
		c.Close()
		return
	}
	if !a.isExpected(peer) {
		// Only a connector the broker introduced may dial in; it still has
		// to prove a ticket or be allowed for each stream.
		log.WithField("peer", peer.Short()).Warn("peer refused: not introduced by the broker")
		c.Close()
		return
	}
	ps, err := newPeerSession(sessionKey{peer, roleSharer}, c, a.log.WithField("component", "peer"))
	if err == nil {
		err = a.addSession(ps)
	}
	if err != nil {
		log.WithError(err).Warn("peer refused")
		c.Close()
		return
	}
	ps.log.Info("peer session up")
	a.spawn(func() { ps.keepRTT(ctx) })
	defer a.removeSession(ps)
	defer ps.sess.Close()
	for {
		st, err := ps.sess.AcceptStream()
		if err != nil {
			if ctx.Err() == nil {
				ps.log.WithError(err).Info("peer session ended")
			}
			return
		}
		if ps.stats.streams.Load() >= maxPeerStreams {
			st.Close()
			continue
		}
		a.spawn(func() { a.serveStream(ctx, ps, st) })
	}
}

// dialCall lets concurrent forwards to one sharer share a single dial.
type dialCall struct {
	done chan struct{}
	ps   *peerSession
	err  error
}

// session returns the live session to sharer, dialing candidates once when
// there is none. intro performs the introduction through the broker.
func (a *Agent) session(ctx context.Context, sharer secure.AgentID, intro func(context.Context) (*proto.ConnectReply, error)) (*peerSession, error) {
	key := sessionKey{sharer, roleConnector}
	a.mu.Lock()
	if ps := a.sessions[key]; ps != nil && !ps.sess.IsClosed() {
		a.mu.Unlock()
		return ps, nil
	}
	call, ok := a.dialing[sharer]
	if !ok {
		call = &dialCall{done: make(chan struct{})}
		a.dialing[sharer] = call
		a.spawn(func() {
			call.ps, call.err = a.dialSharer(a.ctx, sharer, intro)
			a.mu.Lock()
			delete(a.dialing, sharer)
			a.mu.Unlock()
			close(call.done)
		})
	}
	a.mu.Unlock()
	select {
	case <-call.done:
		return call.ps, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// CandidatePair is the pair of addresses a peer channel was made over.
type CandidatePair struct {
	Local  string `json:"local"`
	Remote string `json:"remote"`
	Kind   string `json:"kind"`
}

func (a *Agent) dialSharer(ctx context.Context, sharer secure.AgentID, intro func(context.Context) (*proto.ConnectReply, error)) (*peerSession, error) {
	start := time.Now()
	rep, err := intro(ctx)
	if err != nil {
		return nil, err
	}
	cfg, err := secure.PeerClientConfig(a.id, sharer)
	if err != nil {
		return nil, err
	}
	c, cand, attempts, err := raceDial(ctx, rep.Candidates, cfg)
	if err != nil {
		return nil, err
	}
	ps, err := newPeerSession(sessionKey{sharer, roleConnector}, c, a.log.WithField("component", "peer"))
	if err == nil {
		err = a.addSession(ps)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	ps.punch, ps.attempts = time.Since(start), attempts
	ps.pair = CandidatePair{Local: c.LocalAddr().String(), Remote: cand.Addr, Kind: cand.Kind}
	ps.log.WithFields(logrus.Fields{"ms": ps.punch.Milliseconds(), "candidate": cand.Kind, "attempts": attempts}).Info("peer session up")
	a.spawn(func() { ps.keepRTT(ctx) })
	a.spawn(func() {
		<-ps.sess.CloseChan()
		a.removeSession(ps)
	})
	return ps, nil
}

// raceDial dials every candidate, each starting dialStagger after the one
// before, and keeps the first that completes a TLS handshake proving the
// sharer's key. A candidate whose key is wrong fails alone: another machine
// on a LAN address is not an error, a broker that swaps keys everywhere is.
func raceDial(ctx context.Context, cands []proto.Candidate, cfg *tls.Config) (*tls.Conn, proto.Candidate, int, error) {
	if len(cands) == 0 {
		return nil, proto.Candidate{}, 0, errors.New("sharer sent no candidate address")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		c    *tls.Conn
		cand proto.Candidate
		err  error
	}
	results := make(chan result, len(cands))
	for i, cand := range cands {
		go func() {
			select {
			case <-ctx.Done():
				results <- result{cand: cand, err: ctx.Err()}
				return
			case <-time.After(time.Duration(i) * dialStagger):
			}
			c, err := dialPeer(ctx, cand, cfg)
			results <- result{c, cand, err}
		}()
	}
	var errs []error
	var won *result
	for range cands {
		r := <-results
		switch {
		case r.err != nil:
			errs = append(errs, fmt.Errorf("%s %s: %w", r.cand.Kind, r.cand.Addr, r.err))
		case won == nil:
			won = &r
			cancel()
		default:
			r.c.Close()
		}
	}
	if won == nil {
		return nil, proto.Candidate{}, len(cands), fmt.Errorf("no candidate reached the sharer: %w", errors.Join(errs...))
	}
	return won.c, won.cand, len(cands), nil
}

func dialPeer(ctx context.Context, cand proto.Candidate, cfg *tls.Config) (*tls.Conn, error) {
	ap, err := netip.ParseAddrPort(cand.Addr)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: peerDialTimeout, KeepAlive: 15 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	hctx, cancel := context.WithTimeout(ctx, peerHandshakeTimeout)
	defer cancel()
	if err := c.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	return c, nil
}
