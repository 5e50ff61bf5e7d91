package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/resume"
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
	// sessionEndWait bounds the wait for a closed session's resumable
	// layer, past its own bound on delivering the close.
	sessionEndWait = 5 * time.Second
)

// Roles in a peer session, from this agent's point of view.
const (
	roleSharer    = "sharer"    // we share, the peer connects
	roleConnector = "connector" // we connect to the peer's share
)

// maxPathHistory bounds the path changes a session remembers for status.
const maxPathHistory = 32

// sessionKey names a peer session. A sharer keys its sessions by the
// connector's process too (instance, its proto.Hello.Instance as the
// broker passed it on): several connect processes of one identity each
// keep their own session, where one key per identity made each new one
// replace the other's, round and round. The path is not part of the name:
// a session outlives its paths (resume.Conn), moving between direct and
// relayed ones with its streams.
type sessionKey struct {
	peer     secure.AgentID
	instance string // the connector's process, at a sharer; "" at a connector
	role     string
}

// resumeIdentity is who may resume a sharer's session: the connector
// process that started it, as the peer TLS channel authenticates it.
func resumeIdentity(peer secure.AgentID, instance string) string {
	return peer.String() + "/" + instance
}

// peerSession is one resumable session with a peer (resume.Conn) and the
// yamux session over it. Its carrier, a TLS peer channel over some path,
// changes when a path dies or a better one comes up; the mux and its
// streams do not notice.
type peerSession struct {
	key   sessionKey
	sess  *mux.Session
	rc    *resume.Conn
	state tls.ConnectionState // the first carrier's: ticket proofs bind to it
	log   logrus.FieldLogger
	since time.Time
	rtt   atomic.Int64
	stats counters
	// policy and dial re-make the connector's path when it is lost.
	policy string
	dial   dialFunc

	mu      sync.Mutex
	cur     carrier
	history []PathChange
	losses  int // carriers lost as of the last move

	proofMu sync.Mutex
	proofs  map[string][]byte // per share, connector side
}

// carrier is the peer channel a session rides now, and how it was made.
type carrier struct {
	tls   *secure.Conn
	out   outcome
	since time.Time
}

// PathChange is one move of a session between paths, for status.
type PathChange struct {
	At      time.Time `json:"at"`
	From    string    `json:"from"` // "direct", "relay"
	To      string    `json:"to"`
	Why     string    `json:"why"`      // "path lost: ...", "direct path up"
	PauseMS int64     `json:"pause_ms"` // how long the session had no path
}

// counters are shared by sessions, shares and forwards.
type counters struct {
	bytesIn, bytesOut atomic.Int64
	streams           atomic.Int64 // open now
	total             atomic.Int64 // opened since start
}

func newPeerSession(key sessionKey, rc *resume.Conn, c *secure.Conn, out outcome, log logrus.FieldLogger) (*peerSession, error) {
	ps := &peerSession{key: key, rc: rc, state: c.ConnectionState(), since: time.Now(),
		log: log.WithFields(logrus.Fields{"peer": key.peer.Short(), "role": key.role})}
	ps.cur = carrier{tls: c, out: out, since: ps.since}
	var err error
	if key.role == roleConnector {
		ps.sess, err = mux.Client(rc, ps.log)
	} else {
		ps.sess, err = mux.Server(rc, ps.log)
	}
	if err != nil {
		return nil, fmt.Errorf("start session: %w", err)
	}
	return ps, nil
}

// path is the kind of path the session rides now.
func (ps *peerSession) path() string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.cur.out.path
}

// moved records that the session now rides c, and says so: "resumed on
// relay after 3.1 s" after a loss, "moved to direct" for a better path.
func (a *Agent) moved(ps *peerSession, c *secure.Conn, out outcome) {
	st := ps.rc.Stats()
	ps.mu.Lock()
	from := ps.cur.out.path
	ch := PathChange{At: time.Now(), From: from, To: out.path}
	lost := st.PathLosses > ps.losses // a loss since the last move: this one ends it
	ps.losses = st.PathLosses
	if lost {
		ch.PauseMS = st.LastPause.Milliseconds()
		ch.Why = "path lost"
		if st.LastLoss != nil {
			ch.Why = "path lost: " + st.LastLoss.Error()
		}
	} else {
		ch.Why = out.path + " path up"
	}
	ps.cur = carrier{tls: c, out: out, since: ch.At}
	ps.history = append(ps.history, ch)
	if len(ps.history) > maxPathHistory {
		ps.history = ps.history[1:]
	}
	ps.mu.Unlock()
	a.resumes.Add(1)
	if from != out.path {
		a.migrations.Add(1)
	}
	log := ps.log.WithFields(logrus.Fields{"path": out.path, "from": from, "remote": c.RemoteAddr().String(),
		"relay": out.relay, "relay_kind": out.relayKind})
	if lost {
		log.Infof("resumed on %s after %.1f s", out.path, st.LastPause.Seconds())
	} else {
		log.Infof("moved to %s", out.path)
	}
}

// keepRTT measures the round trip now and then. The resumable layer finds
// dead paths; a ping that fails means the session gave up on resuming.
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
	// Run closes the sessions it finds once a.ctx has ended: one made
	// meanwhile (a signal while a punch was under way) would be found by
	// nobody, and Run would wait for it for ever.
	if err := a.ctx.Err(); err != nil {
		return fmt.Errorf("the agent is stopping: %w", err)
	}
	if len(a.sessions) >= maxSessions {
		return fmt.Errorf("%d peer sessions open, limit reached", len(a.sessions))
	}
	// The peer started a new session (it restarted, or its last one could
	// not resume in time): new streams use the new one, those on the old
	// one finish there before it closes.
	if old := a.sessions[ps.key]; old != nil {
		a.spawn(func() { old.sess.Retire(a.ctx) })
	}
	a.sessions[ps.key] = ps
	return nil
}

// connectorSession is the session to sharer that new streams use; while
// it has no path, their streams wait for the resume. Callers hold a.mu.
func (a *Agent) connectorSession(sharer secure.AgentID) *peerSession {
	if ps := a.sessions[sessionKey{peer: sharer, role: roleConnector}]; ps != nil && !ps.sess.IsClosed() && !ps.sess.Retiring() {
		return ps
	}
	return nil
}

// awaitEnd waits, once the mux is closed, for the resumable layer under it
// to end: the mux's close hands it a close frame to deliver, which a peer
// that stops too may never answer, and the agent must not stop with a
// session still waiting. A session that found no path in time says so.
func (ps *peerSession) awaitEnd() {
	t := time.NewTimer(sessionEndWait)
	defer t.Stop()
	select {
	case <-ps.rc.Done():
	case <-t.C:
		ps.rc.Abandon(net.ErrClosed)
	}
	if err := ps.rc.Err(); errors.Is(err, resume.ErrResumeTimeout) {
		ps.log.WithError(err).Warn("session not resumed: its connections close")
	}
}

func (a *Agent) removeSession(ps *peerSession) {
	a.mu.Lock()
	if a.sessions[ps.key] == ps {
		delete(a.sessions, ps.key)
	}
	a.mu.Unlock()
}

// trimSessions lets every session drop the buffers an idle one keeps.
func (a *Agent) trimSessions() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ps := range a.sessions {
		ps.rc.Trim()
	}
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

// servePeer is the sharer's side of a punched or relayed peer channel:
// only the connector the broker introduced (want, its process instance)
// may complete it. It starts a new session, or carries on one the
// connector resumes; each stream still has to prove a ticket or be allowed.
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
	defer cancel()
	if err := c.HandshakeContext(hctx); err != nil {
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
	// The path's owner (a TURN allocation, a punch) keeps it while this
	// returns not: serve until the session lets go of the carrier.
	cc := &carrierConn{Conn: c, closed: make(chan struct{})}
	defer func() {
		select {
		case <-cc.closed:
		case <-ctx.Done():
		}
	}()
	rc, resumed, err := a.resumable.Accept(hctx, cc, resumeIdentity(peer, instance))
	if err != nil {
		log.WithError(err).WithField("peer", peer.Short()).Warn("peer refused")
		return
	}
	key := sessionKey{peer: peer, instance: instance, role: roleSharer}
	if resumed {
		a.mu.Lock()
		ps := a.sessions[key]
		a.mu.Unlock()
		if ps != nil && ps.rc == rc {
			a.moved(ps, c, out)
		}
		return
	}
	ps, err := newPeerSession(key, rc, c, out, a.log.WithField("component", "peer"))
	if err == nil {
		err = a.addSession(ps)
	}
	if err != nil {
		log.WithError(err).Warn("peer refused")
		rc.Close()
		return
	}
	ps.log.WithFields(logrus.Fields{"path": out.path, "remote": c.RemoteAddr().String()}).Info("peer session up")
	a.spawn(func() { ps.keepRTT(ctx) })
	a.spawn(func() { a.watchPeer(ctx, ps) })
	a.spawn(func() { a.serveSession(ctx, ps) })
}

// carrierConn tells when the resumable layer is done with a carrier.
type carrierConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *carrierConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// serveSession takes the connector's streams on a sharer's session until
// it ends, whatever carriers it crosses.
func (a *Agent) serveSession(ctx context.Context, ps *peerSession) {
	defer ps.awaitEnd()
	defer a.removeSession(ps)
	defer ps.sess.Close()
	for {
		st, err := ps.sess.AcceptStream()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, resume.ErrResumeTimeout) { // awaitEnd says that one
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
			call.ps, call.err = a.dialPaths(a.ctx, sharer, policy, dial, relayHeadStart)
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

// startConnectorSession starts the connector's resumable session over a
// new peer channel, or, when one to sharer is running, moves that one onto
// it (after a loss, or from a relay to a direct path).
func (a *Agent) startConnectorSession(ctx context.Context, sharer secure.AgentID, c *secure.Conn, out outcome, policy string, dial dialFunc) (*peerSession, error) {
	key := sessionKey{peer: sharer, role: roleConnector}
	a.mu.Lock()
	ps := a.sessions[key]
	a.mu.Unlock()
	if ps != nil && !ps.sess.IsClosed() {
		if err := ps.rc.Resume(ctx, c); err != nil {
			return nil, fmt.Errorf("resume the session on the %s path: %w", out.path, err)
		}
		a.moved(ps, c, out)
		return ps, nil
	}
	rc, err := resume.Dial(ctx, c, a.resumeConfig())
	if err != nil {
		return nil, fmt.Errorf("start a resumable session: %w", err)
	}
	ps, err = newPeerSession(key, rc, c, out, a.log.WithField("component", "peer"))
	if err == nil {
		ps.policy, ps.dial = policy, dial
		err = a.addSession(ps)
	}
	if err != nil {
		rc.Close()
		return nil, err
	}
	ps.log.WithFields(logrus.Fields{"path": out.path, "punch_ms": out.punchMS(), "candidate": out.pair().Kind, "attempts": out.attempts(),
		"nat": out.localNAT, "peer_nat": out.peerNAT, "relay": out.relay, "relay_kind": out.relayKind}).Info("peer session up")
	a.spawn(func() { ps.keepRTT(ctx) })
	a.spawn(func() { a.watchPeer(ctx, ps) })
	a.spawn(func() { a.keepPath(ctx, ps) })
	a.spawn(func() {
		<-ps.sess.CloseChan()
		a.removeSession(ps)
		ps.awaitEnd()
	})
	return ps, nil
}
