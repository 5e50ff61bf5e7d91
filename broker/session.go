package broker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// session is one agent's control session, from its Hello to its end.
type session struct {
	srv   *Server
	conn  net.Conn // the TLS connection messages travel on
	raw   net.Conn // the connection under it, for lingering after an Error
	id    secure.AgentID
	guest bool // no token: may only Connect with an admit key, and Ping
	// instance is the agent process's Hello.Instance, handed to sharers
	// with its introductions (see proto.Intro.ConnectorInstance).
	instance string
	log      logrus.FieldLogger
	since    time.Time

	writeMu   sync.Mutex
	done      chan struct{} // closed when the session is closed, for whatever reason
	closeOnce sync.Once
	pending   chan struct{} // one token per Connect in flight
	wg        sync.WaitGroup

	// Guarded by srv.mu.
	shares map[string]*share
	intros map[uint64]chan *proto.IntroReply    // introductions waiting on this sharer
	passes map[uint64]chan *proto.CodePassReply // code claims waiting on this sharer
}

// share is one registered share.
type share struct {
	admitHash []byte // sha256 of the ticket's admit key; empty: reachable by allow only
	allow     map[secure.AgentID]struct{}
}

func newSession(srv *Server, conn, raw net.Conn, id secure.AgentID, log logrus.FieldLogger) *session {
	return &session{
		srv:     srv,
		conn:    conn,
		raw:     raw,
		id:      id,
		log:     log.WithField("agent", id.Short()),
		since:   srv.cfg.Now(),
		done:    make(chan struct{}),
		pending: make(chan struct{}, srv.cfg.MaxPendingIntros),
		shares:  make(map[string]*share),
		intros:  make(map[uint64]chan *proto.IntroReply),
		passes:  make(map[uint64]chan *proto.CodePassReply),
	}
}

// run reads the Hello, admits the agent and serves it until the connection
// ends. The read deadline for the Hello is already set by the caller.
func (s *session) run() {
	defer s.close()
	hello := s.readHello()
	if hello == nil {
		s.srv.metrics.refused.WithLabelValues(refusedHello).Inc()
		return
	}
	if !s.admit(hello) {
		return
	}
	s.loop()
	s.close()
	s.leave()
	s.wg.Wait()
	s.log.WithField("duration", s.srv.cfg.Now().Sub(s.since).Round(time.Second).String()).Info("agent offline")
}

func (s *session) readHello() *proto.Hello {
	m, err := proto.Read(s.conn, s.srv.cfg.MaxMessageSize)
	if err != nil {
		if isProtoErr(err) {
			s.log.WithError(err).Warn("bad hello")
			s.fail(proto.CodeBadRequest, err.Error())
		} else {
			s.log.WithError(err).Info("no hello")
		}
		return nil
	}
	h, ok := m.(*proto.Hello)
	if !ok {
		s.log.Warnf("%s before hello", typeName(m))
		s.fail(proto.CodeBadRequest, fmt.Sprintf("expected hello, got %s", typeName(m)))
		return nil
	}
	return h
}

// admit checks the token, enters the session in the registry and sends the
// Welcome. One identity may hold several sessions: two `agent share`
// processes of one state dir, or a sharer reconnecting while its old session
// has not timed out yet. Introductions go to the newest session holding the
// share, so neither knocks the other off.
func (s *session) admit(h *proto.Hello) bool {
	if ok, msg := s.srv.allowRequest(reqLogin, s.raw.RemoteAddr(), s.id); !ok {
		s.srv.metrics.refused.WithLabelValues(proto.CodeLimit).Inc()
		s.fail(proto.CodeLimit, msg)
		return false
	}
	if h.Token != "" && !s.srv.checkToken(h.Token) {
		s.srv.metrics.refused.WithLabelValues(proto.CodeUnauthorized).Inc()
		s.srv.limits.refusals.Refused("logins refused: wrong broker token", proto.CodeUnauthorized, logrus.Fields{"remote": s.raw.RemoteAddr().String(), "agent": s.id.Short()})
		s.fail(proto.CodeUnauthorized, "wrong broker token: check the broker URL (agent login)")
		return false
	}
	s.guest, s.instance = h.Token == "", h.Instance
	srv := s.srv
	srv.mu.Lock()
	known := len(srv.agents[s.id]) > 0
	if !known && srv.sessions >= srv.cfg.MaxAgents {
		srv.mu.Unlock()
		srv.metrics.refused.WithLabelValues(proto.CodeLimit).Inc()
		s.log.Warnf("refused: %d agents online, the limit", srv.cfg.MaxAgents)
		s.fail(proto.CodeLimit, "broker is full; retry later")
		return false
	}
	if !s.guest && len(srv.agents[s.id]) >= MaxSessionsPerAgent {
		srv.mu.Unlock()
		srv.metrics.refused.WithLabelValues(proto.CodeLimit).Inc()
		s.log.Warnf("refused: %d sessions of this agent online, the limit", MaxSessionsPerAgent)
		s.fail(proto.CodeLimit, "too many sessions of this agent identity; use separate state dirs")
		return false
	}
	srv.sessions++
	srv.presence.arrive(s.id, s.instance)
	if s.guest {
		srv.guests++
	} else {
		srv.agents[s.id] = append(srv.agents[s.id], s)
	}
	srv.mu.Unlock()
	if cl := srv.cluster.Load(); cl != nil {
		cl.hold(agentSubject(s.id))
	}
	role := "member"
	if s.guest {
		role = "guest"
	}
	srv.metrics.sessions.WithLabelValues(role).Inc()
	s.conn.SetDeadline(time.Time{})
	obs := observed(s.raw.RemoteAddr())
	w := &proto.Welcome{AgentID: s.id.String(), Observed: obs, Version: srv.cfg.Version, STUN: srv.cfg.STUN}
	if srv.cfg.Relay != nil {
		w.TURN = srv.cfg.Relay.urlFor(s.raw.RemoteAddr())
	}
	if err := s.send(w); err != nil {
		s.log.WithError(err).Info("welcome")
		s.leave()
		return false
	}
	s.log.WithFields(logrus.Fields{"guest": s.guest, "agent_version": h.Version}).Info("agent online")
	return true
}

// leave removes the session and its shares from the registry. Introductions
// waiting on it see done closed; the relay learns when an agent's last
// member session is gone.
func (s *session) leave() {
	srv := s.srv
	srv.mu.Lock()
	srv.sessions--
	srv.presence.depart(s.id, s.instance)
	gone := false
	if s.guest {
		srv.guests--
	} else {
		rest := slices.DeleteFunc(srv.agents[s.id], func(o *session) bool { return o == s })
		if len(rest) == 0 {
			delete(srv.agents, s.id)
			gone = true
		} else {
			srv.agents[s.id] = rest
		}
	}
	srv.shares -= len(s.shares)
	held := []string{agentSubject(s.id)}
	for name := range s.shares {
		srv.lost.add(s.id, name, srv.cfg.Now(), srv.cfg.RegistrationGrace)
		held = append(held, shareSubject(s.id, name))
	}
	clear(s.shares)
	clear(s.intros)
	clear(s.passes)
	srv.codes.leave(s)
	emb := srv.relay
	srv.mu.Unlock()
	if cl := srv.cluster.Load(); cl != nil {
		for _, subj := range held {
			cl.release(subj)
		}
	}
	srv.releaseCodes()
	if gone && emb != nil {
		emb.agentOffline(s.id)
	}
}

func (s *session) loop() {
	for {
		s.conn.SetReadDeadline(time.Now().Add(s.srv.cfg.IdleTimeout))
		m, err := proto.Read(s.conn, s.srv.cfg.MaxMessageSize)
		if err != nil {
			s.readFailed(err)
			return
		}
		if !s.handle(m) {
			return
		}
	}
}

func (s *session) readFailed(err error) {
	var ne net.Error
	switch {
	case s.closed():
		s.log.Debug("session closed")
	case isProtoErr(err):
		s.log.WithError(err).Warn("bad message; closing the session")
		s.fail(proto.CodeBadRequest, err.Error())
	case errors.As(err, &ne) && ne.Timeout():
		s.log.Infof("no message for %v; dropping the session", s.srv.cfg.IdleTimeout)
	case errors.Is(err, io.EOF):
		s.log.Debug("agent closed the session")
	case errors.Is(err, net.ErrClosed):
		s.log.Debug("session closed: the broker is stopping")
	default:
		s.log.WithError(err).Info("session read failed")
	}
}

// handle serves one message; false ends the session.
func (s *session) handle(m proto.Message) bool {
	switch m := m.(type) {
	case *proto.Ping:
		return s.send(&proto.Pong{Nonce: m.Nonce}) == nil
	case *proto.Pong:
		return true
	case *proto.Register:
		return s.send(s.register(m)) == nil
	case *proto.Unregister:
		return s.send(s.unregister(m)) == nil
	case *proto.Connect:
		return s.connect(m)
	case *proto.Presence:
		return s.send(s.presence(m)) == nil
	case *proto.IntroReply:
		s.introReply(m)
		return true
	case *proto.CodeOpen:
		return s.send(s.codeOpen(m)) == nil
	case *proto.CodeClose:
		return s.send(s.codeClose(m)) == nil
	case *proto.CodeClaim:
		return s.codeClaim(m)
	case *proto.CodePassReply:
		s.codePassReply(m)
		return true
	case *proto.Outcome:
		s.srv.metrics.punches.WithLabelValues(m.Result, m.NAT, m.PeerNAT).Inc()
		s.log.WithFields(logrus.Fields{"result": m.Result, "nat": m.NAT, "peer_nat": m.PeerNAT, "punch_ms": m.PunchMS}).Info("punch outcome")
		return true
	default:
		s.log.Warnf("unexpected %s; closing the session", typeName(m))
		s.fail(proto.CodeBadRequest, fmt.Sprintf("unexpected %s message from an agent", typeName(m)))
		return false
	}
}

const guestRefusal = "this session has no broker token, so it can only connect with a ticket; to share, log in with the broker URL (agent login)"

func (s *session) register(m *proto.Register) *proto.Result {
	if ok, msg := s.srv.allowRequest(reqRegister, s.raw.RemoteAddr(), s.id); !ok {
		return &proto.Result{ID: m.ID, Code: proto.CodeLimit, Message: msg}
	}
	if s.guest {
		return &proto.Result{ID: m.ID, Code: proto.CodeUnauthorized, Message: guestRefusal}
	}
	if err := secure.ValidShareName(m.Share); err != nil {
		return &proto.Result{ID: m.ID, Code: proto.CodeBadRequest, Message: err.Error()}
	}
	sh := &share{admitHash: slices.Clone(m.AdmitHash), allow: make(map[secure.AgentID]struct{}, len(m.Allow))}
	for i, a := range m.Allow {
		id, err := secure.ParseAgentID(a)
		if err != nil {
			return &proto.Result{ID: m.ID, Code: proto.CodeBadRequest, Message: fmt.Sprintf("allow[%d]: %v", i, err)}
		}
		sh.allow[id] = struct{}{}
	}
	srv := s.srv
	srv.mu.Lock()
	_, exists := s.shares[m.Share]
	if !exists && len(s.shares) >= srv.cfg.MaxSharesPerAgent {
		srv.mu.Unlock()
		return &proto.Result{ID: m.ID, Code: proto.CodeLimit, Message: fmt.Sprintf("this broker allows at most %d shares per agent", srv.cfg.MaxSharesPerAgent)}
	}
	s.shares[m.Share] = sh
	if !exists {
		srv.shares++
	}
	srv.mu.Unlock()
	if cl := srv.cluster.Load(); cl != nil && !exists {
		cl.hold(shareSubject(s.id, m.Share))
	}
	s.log.WithFields(logrus.Fields{"share": m.Share, "ticket": len(sh.admitHash) > 0, "allow": len(sh.allow)}).Info("share registered")
	return &proto.Result{ID: m.ID}
}

// unregister is idempotent: withdrawing an unknown share succeeds.
func (s *session) unregister(m *proto.Unregister) *proto.Result {
	if s.guest {
		return &proto.Result{ID: m.ID, Code: proto.CodeUnauthorized, Message: guestRefusal}
	}
	srv := s.srv
	srv.mu.Lock()
	_, had := s.shares[m.Share]
	if had {
		delete(s.shares, m.Share)
		srv.shares--
		srv.lost.add(s.id, m.Share, srv.cfg.Now(), srv.cfg.RegistrationGrace)
	}
	srv.mu.Unlock()
	if cl := srv.cluster.Load(); cl != nil && had {
		cl.release(shareSubject(s.id, m.Share))
	}
	s.log.WithField("share", m.Share).Info("share withdrawn")
	return &proto.Result{ID: m.ID}
}

// connect runs the introduction in its own goroutine: it waits on another
// agent, and the session must keep reading meanwhile (it may be that agent).
func (s *session) connect(m *proto.Connect) bool {
	if ok, msg := s.srv.allowRequest(reqConnect, s.raw.RemoteAddr(), s.id); !ok {
		s.srv.metrics.introFailed.WithLabelValues(proto.CodeLimit).Inc()
		return s.send(&proto.ConnectReply{ID: m.ID, Code: proto.CodeLimit, Message: msg}) == nil
	}
	select {
	case s.pending <- struct{}{}:
	default:
		s.srv.metrics.introFailed.WithLabelValues(proto.CodeLimit).Inc()
		return s.send(&proto.ConnectReply{ID: m.ID, Code: proto.CodeLimit,
			Message: fmt.Sprintf("more than %d introductions in flight on this session; retry later", s.srv.cfg.MaxPendingIntros)}) == nil
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.pending }()
		rep := s.srv.introduce(s, m)
		switch {
		case rep == nil:
			s.srv.metrics.introFailed.WithLabelValues(connectorGone).Inc()
		case rep.Code != "":
			s.srv.metrics.introFailed.WithLabelValues(metricCode(rep.Code)).Inc()
		}
		if rep != nil {
			s.send(rep)
		}
	}()
	return true
}

func (s *session) introReply(m *proto.IntroReply) {
	s.srv.mu.Lock()
	ch, ok := s.intros[m.Intro]
	delete(s.intros, m.Intro)
	s.srv.mu.Unlock()
	if !ok {
		s.log.WithField("intro", m.Intro).Debug("reply to an unknown or expired introduction")
		return
	}
	ch <- m // buffered, and the entry is gone: never blocks
}

// send writes one message. A failed write breaks the TLS stream for good, so
// it closes the session.
func (s *session) send(m proto.Message) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := proto.Write(s.conn, m); err != nil {
		s.close()
		return fmt.Errorf("send %s: %w", typeName(m), err)
	}
	return nil
}

// fail sends a final Error, then reads (and drops) what the agent still sends
// for a moment, so that closing does not reset the connection under the Error.
func (s *session) fail(code, msg string) {
	if len(msg) > 500 {
		msg = msg[:500]
	}
	if s.send(&proto.Error{Code: code, Message: msg}) != nil {
		return
	}
	s.writeMu.Lock()
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := s.conn.(closeWriter); ok {
		cw.CloseWrite()
	}
	if cw, ok := s.raw.(closeWriter); ok && s.raw != s.conn {
		cw.CloseWrite()
	}
	s.writeMu.Unlock()
	s.raw.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.CopyN(io.Discard, s.raw, lingerBytes)
	s.close()
}

func (s *session) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.raw.Close()
	})
}

func (s *session) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func isProtoErr(err error) bool {
	return errors.Is(err, proto.ErrTooLarge) || errors.Is(err, proto.ErrMalformed) ||
		errors.Is(err, proto.ErrVersion) || errors.Is(err, proto.ErrUnknownType)
}

func typeName(m proto.Message) string {
	return strings.ToLower(strings.TrimPrefix(fmt.Sprintf("%T", m), "*proto."))
}

// observed is the agent's source address as ip:port, or empty when the
// connection has none (net.Pipe).
func observed(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return ""
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// withObserved returns cands with obs (ip:port) as an observed candidate
// when no candidate has that address; at the candidate limit it takes the
// last one's place. cands itself is not changed.
func withObserved(cands []proto.Candidate, obs string) []proto.Candidate {
	if obs == "" || slices.ContainsFunc(cands, func(c proto.Candidate) bool { return c.Addr == obs }) {
		return cands
	}
	out := slices.Clone(cands)
	if len(out) >= proto.MaxCandidates {
		out = out[:proto.MaxCandidates-1]
	}
	return append(out, proto.Candidate{Kind: proto.KindObserved, Addr: obs})
}

// connectorIPs are the addresses a connector's relayed connection may come
// from: the source the broker saw (obs), and its server-reflexive and
// observed candidates.
func connectorIPs(obs string, cands []proto.Candidate) []netip.Addr {
	var ips []netip.Addr
	add := func(s string) {
		if ap, err := netip.ParseAddrPort(s); err == nil && !slices.Contains(ips, ap.Addr().Unmap()) {
			ips = append(ips, ap.Addr().Unmap())
		}
	}
	add(obs)
	for _, c := range cands {
		if c.Kind == proto.KindSrflx || c.Kind == proto.KindObserved {
			add(c.Addr)
		}
	}
	return ips
}

// metricCode bounds the label values of a failure code: the sharer chooses
// its own code, and a label per arbitrary string would grow without end.
func metricCode(code string) string {
	switch code {
	case proto.CodeUnauthorized, proto.CodeNotFound, proto.CodeRefused, proto.CodeBadRequest,
		proto.CodeLimit, proto.CodeTimeout, proto.CodeInternal, proto.CodeNoRelay, proto.CodeNotRegistered, proto.CodeWrongCode:
		return code
	}
	return "other"
}
