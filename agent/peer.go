package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/mux"
)

const (
	peerHandshakeTimeout = 10 * time.Second
	rttEvery             = 15 * time.Second
	maxPeerStreams       = 1024 // concurrent streams a connector may hold open at a sharer
	maxSessions          = 256
	// sessionCloseWait bounds how long a stopping agent waits for its
	// sessions to deliver what is queued.
	sessionCloseWait = 2 * time.Second
)

// Roles in a peer session, from this agent's point of view.
const (
	roleSharer    = "sharer"    // we share, the peer connects
	roleConnector = "connector" // we connect to the peer's share
)

// sessionKey names a peer session. A pair of agents may hold a relayed and
// a direct session side by side while new streams move to the direct one.
// A sharer keys its sessions by the connector's process too (instance, its
// proto.Hello.Instance as the broker passed it on): several connect
// processes of one identity each keep their own session, where one key per
// identity made each new one replace the other's, round and round.
type sessionKey struct {
	peer     secure.AgentID
	instance string // the connector's process, at a sharer; "" at a connector
	role     string
	path     string // proto.PathDirect or proto.PathRelay
}

// peerSession is one TLS peer channel with its yamux session.
type peerSession struct {
	key       sessionKey
	sess      *mux.Session
	tls       *secure.Conn
	state     tls.ConnectionState
	log       logrus.FieldLogger
	since     time.Time
	punch     time.Duration
	attempts  int
	pair      CandidatePair
	localNAT  string
	peerNAT   string
	relay     string        // the relay's address, on the relay path
	relayKind string        // RelayTURN or RelayBroker, on the relay path
	relayed   *atomic.Int64 // bytes through the relay; nil on the direct path
	rtt       atomic.Int64
	stats     counters

	proofMu sync.Mutex
	proofs  map[string][]byte // per share, connector side
}

// counters are shared by sessions, shares and forwards.
type counters struct {
	bytesIn, bytesOut atomic.Int64
	streams           atomic.Int64 // open now
	total             atomic.Int64 // opened since start
}

func newPeerSession(key sessionKey, c *secure.Conn, log logrus.FieldLogger) (*peerSession, error) {
	ps := &peerSession{key: key, tls: c, state: c.ConnectionState(), since: time.Now(),
		log: log.WithFields(logrus.Fields{"peer": key.peer.Short(), "role": key.role, "path": key.path, "remote": c.RemoteAddr().String()})}
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
	// The peer reconnected (new path, or it restarted), or a direct path
	// came up beside a relayed one: new streams use the new session, those
	// on the old one finish there before it closes.
	olds := []sessionKey{ps.key}
	if ps.key.role == roleConnector && ps.key.path == proto.PathDirect {
		olds = append(olds, sessionKey{peer: ps.key.peer, role: roleConnector, path: proto.PathRelay})
	}
	for _, k := range olds {
		if old := a.sessions[k]; old != nil {
			if k != ps.key {
				old.log.Info("direct path up: new streams move to it; the relayed session closes once idle")
				delete(a.sessions, k)
			}
			a.spawn(func() { old.sess.Retire(a.ctx) })
		}
	}
	a.sessions[ps.key] = ps
	return nil
}

// connectorSession is the live session to sharer that new streams use: the
// direct one when it is up, else the relayed one. Callers hold a.mu.
func (a *Agent) connectorSession(sharer secure.AgentID) *peerSession {
	for _, path := range []string{proto.PathDirect, proto.PathRelay} {
		if ps := a.sessions[sessionKey{peer: sharer, role: roleConnector, path: path}]; ps != nil && !ps.sess.IsClosed() && !ps.sess.Retiring() {
			return ps
		}
	}
	return nil
}

func (a *Agent) removeSession(ps *peerSession) {
	a.mu.Lock()
	if a.sessions[ps.key] == ps {
		delete(a.sessions, ps.key)
	}
	a.mu.Unlock()
}

// closeSessions ends every session as the agent stops: those whose streams
// are done deliver what is still queued (within sessionCloseWait); the
// rest close at once.
func (a *Agent) closeSessions() {
	a.mu.Lock()
	sessions := make([]*peerSession, 0, len(a.sessions))
	for _, ps := range a.sessions {
		sessions = append(sessions, ps)
	}
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), sessionCloseWait)
	defer cancel()
	var wg sync.WaitGroup
	for _, ps := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ps.sess.Retire(ctx)
		}()
	}
	wg.Wait()
}

// setOutcome records how the path was made.
func (ps *peerSession) setOutcome(out outcome) {
	ps.localNAT, ps.peerNAT = out.localNAT, out.peerNAT
	ps.relay, ps.relayed, ps.relayKind = out.relay, out.relayed, out.relayKind
	if r := out.res; r != nil {
		ps.punch, ps.attempts = r.Elapsed, r.Attempts
		ps.pair = CandidatePair{Local: r.Local.String(), Remote: r.Remote.String(), Kind: string(r.Candidate.Kind)}
	}
}

// servePeer is the sharer's side of a punched peer channel: only the
// connector the broker introduced (want, its process instance) may complete
// it, and each of its streams still has to prove a ticket or be allowed.
func (a *Agent) servePeer(ctx context.Context, conn net.Conn, want secure.AgentID, instance string, out outcome) {
	log := a.log.WithFields(logrus.Fields{"component": "peer", "remote": conn.RemoteAddr().String(), "path": out.path})
	cfg, err := secure.PeerServerConfig(a.id)
	if err != nil {
		log.WithError(err).Error("peer tls config")
		conn.Close()
		return
	}
	c := secure.Server(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, peerHandshakeTimeout)
	err = c.HandshakeContext(hctx)
	cancel()
	if err != nil {
		log.WithError(err).Info("peer handshake failed")
		c.Close()
		return
	}
	peer, err := secure.PeerID(c.ConnectionState())
	if err != nil || c.ConnectionState().NegotiatedProtocol != secure.ALPNPeer || peer != want {
		log.WithField("peer", peer.Short()).Warn("peer refused: not the connector the broker introduced")
		c.Close()
		return
	}
	ps, err := newPeerSession(sessionKey{peer: peer, instance: instance, role: roleSharer, path: out.path}, c, a.log.WithField("component", "peer"))
	if err == nil {
		ps.setOutcome(out)
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
		if ps.stats.streams.Load() >= maxPeerStreams || a.draining.Load() {
			st.Close() // shutting down, or over the limit: no new connection
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

// dialFunc makes a connection to a sharer over one path: introduction,
// then punch or relay. The race runs TLS over the one it keeps.
type dialFunc func(ctx context.Context, p path, hurry func()) (net.Conn, outcome, error)

// session returns the live session to sharer, dialing once when there is
// none; concurrent callers share that one dial. policy is PathAuto,
// PathDirect or PathRelay.
func (a *Agent) session(ctx context.Context, sharer secure.AgentID, policy string, dial dialFunc) (*peerSession, error) {
	a.mu.Lock()
	if ps := a.connectorSession(sharer); ps != nil {
		a.mu.Unlock()
		return ps, nil
	}
	call, ok := a.dialing[sharer]
	if !ok {
		call = &dialCall{done: make(chan struct{})}
		a.dialing[sharer] = call
		a.spawn(func() {
			call.ps, call.err = a.dialPaths(a.ctx, sharer, policy, dial)
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

// startConnectorSession runs the connector's session over a new peer channel.
func (a *Agent) startConnectorSession(ctx context.Context, sharer secure.AgentID, c *secure.Conn, out outcome) (*peerSession, error) {
	ps, err := newPeerSession(sessionKey{peer: sharer, role: roleConnector, path: out.path}, c, a.log.WithField("component", "peer"))
	if err == nil {
		ps.setOutcome(out)
		err = a.addSession(ps)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	ps.log.WithFields(logrus.Fields{"punch_ms": ps.punch.Milliseconds(), "candidate": ps.pair.Kind, "attempts": ps.attempts,
		"nat": ps.localNAT, "peer_nat": ps.peerNAT, "relay": ps.relay, "relay_kind": ps.relayKind}).Info("peer session up")
	a.spawn(func() { ps.keepRTT(ctx) })
	a.spawn(func() {
		<-ps.sess.CloseChan()
		a.removeSession(ps)
	})
	return ps, nil
}
