package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// introRequest is an introduction as the sharer's node sees it: the
// connector's Connect, and what the connector's node knows of it. In a
// cluster the connector's node may not be the sharer's (cluster.go).
type introRequest struct {
	Connector string        `json:"connector"`
	Instance  string        `json:"instance,omitempty"`
	Guest     bool          `json:"guest,omitempty"`
	Observed  string        `json:"observed,omitempty"` // the connector's address as its node saw it
	Remote    string        `json:"remote"`             // the same, for logs
	Connect   proto.Connect `json:"connect"`

	connector, sharer secure.AgentID
}

// parse checks the identities; a request from another node is checked as
// carefully as one from an agent.
func (r *introRequest) parse() error {
	var err error
	if r.connector, err = secure.ParseAgentID(r.Connector); err != nil {
		return fmt.Errorf("connector: %w", err)
	}
	if r.sharer, err = secure.ParseAgentID(r.Connect.Sharer); err != nil {
		return fmt.Errorf("sharer: %w", err)
	}
	return nil
}

// holding is how much of a sharer a node holds.
type holding int

const (
	holdsNone  holding = iota // no session of the sharer's identity
	holdsAgent                // sessions of it, none holding the share
	holdsShare                // a session holding the share: its answer is final
)

func failReply(code, format string, args ...any) *proto.ConnectReply {
	return &proto.ConnectReply{Code: code, Message: fmt.Sprintf(format, args...)}
}

// introduce checks the connector c may reach the share, passes its Connect to
// the sharer, here or on another node of the cluster, and returns the answer
// for c, or nil when c is gone.
func (srv *Server) introduce(c *session, m *proto.Connect) *proto.ConnectReply {
	req := &introRequest{Connector: c.id.String(), Instance: c.instance, Guest: c.guest,
		Observed: observed(c.raw.RemoteAddr()), Remote: c.raw.RemoteAddr().String(), Connect: *m}
	req.Connect.ID = 0
	if err := req.parse(); err != nil {
		return &proto.ConnectReply{ID: m.ID, Code: proto.CodeBadRequest, Message: err.Error()}
	}
	log := c.log.WithFields(logrus.Fields{"sharer": req.sharer.Short(), "share": m.Share})
	rep, held := srv.deliver(req, c.done, log)
	where := "local"
	if cl := srv.cluster.Load(); held != holdsShare && cl != nil {
		// The share may be on another node. Whatever this node knows of
		// the sharer, a cluster that cannot be asked must not turn into a
		// refusal, which the connector would take as final.
		ctx, cancel := untilClosed(c.done)
		r, rheld, err := cl.introduce(ctx, req, log)
		cancel()
		switch {
		case c.closed():
			return nil
		case err != nil:
			rep, where = clusterFailure(err), "remote"
		case rheld > held:
			rep, held, where = r, rheld, "remote"
		}
	}
	if rep == nil {
		return nil
	}
	if held == holdsNone && rep.Code == "" {
		log.Info("introduction: sharer not online")
		rep = failReply(proto.CodeNotFound, "sharer %s is not online", req.sharer.Short())
	}
	if rep.Code == "" {
		srv.introductions.Add(1)
		srv.metrics.introductions.WithLabelValues(where).Inc()
		if where == "remote" {
			srv.mu.Lock()
			srv.presence.meet(req.connector, req.sharer, srv.cfg.Now())
			srv.mu.Unlock()
		}
	}
	rep.ID = m.ID
	return rep
}

// deliver is the sharer's node's part of an introduction: find the session
// holding the share, check the connector may reach it, hand it the Intro and
// wait for its answer. gone ends the wait when the connector (or the node
// that asked) is gone; the answer is then nil. When this node holds no
// session of the sharer's identity it says so, and answers nothing.
func (srv *Server) deliver(req *introRequest, gone <-chan struct{}, log logrus.FieldLogger) (*proto.ConnectReply, holding) {
	m, sharerID := &req.Connect, req.sharer
	srv.mu.Lock()
	sessions := srv.agents[sharerID]
	if len(sessions) == 0 {
		srv.mu.Unlock()
		return &proto.ConnectReply{}, holdsNone
	}
	var sharer *session
	for i := len(sessions) - 1; i >= 0; i-- {
		if sessions[i].shares[m.Share] != nil {
			sharer = sessions[i]
			break
		}
	}
	if sharer == nil && srv.registeringSoon(sharerID, m.Share, sessions) {
		// Not a refusal: after a broker restart the sharer's processes log
		// in and register their shares one by one, so a process of the
		// same identity may be back before the one that holds this share.
		srv.mu.Unlock()
		log.Info("introduction: sharer online, share not registered (yet)")
		return failReply(proto.CodeNotRegistered, "sharer %s is online but has not registered share %q (yet)", sharerID.Short(), m.Share), holdsAgent
	}
	if sharer == nil || !req.mayConnect(sharer.shares[m.Share]) {
		srv.mu.Unlock()
		srv.limits.refusals.Refused("introductions refused: ticket not valid for this share", proto.CodeUnauthorized,
			logrus.Fields{"remote": req.Remote, "agent": req.connector.Short(), "sharer": sharerID.Short(), "share": m.Share})
		held := holdsShare
		if sharer == nil {
			held = holdsAgent
		}
		return failReply(proto.CodeUnauthorized, "ticket not valid for this share, and this agent is not on its allow list"), held
	}
	relayed := m.Path == proto.PathRelay
	if relayed && srv.cfg.Relay == nil {
		srv.mu.Unlock()
		log.Info("introduction refused: a relay was asked for, and this broker offers none")
		return failReply(proto.CodeNoRelay, "this broker offers no relay (its TURN server is off and no external one is configured); "+
			"connect with path direct, or ask the broker's operator to turn the relay on"), holdsShare
	}
	emb := srv.relay
	srv.nextIntro++
	id := srv.nextIntro
	ch := make(chan *proto.IntroReply, 1)
	sharer.intros[id] = ch
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(sharer.intros, id)
		srv.mu.Unlock()
	}()
	log = log.WithField("intro", id)

	introduced := false // the sharer accepted: a broker relay token stays
	intro := &proto.Intro{Intro: id, Connector: req.Connector, ConnectorInstance: req.Instance, Share: m.Share, Candidates: m.Candidates, NAT: m.NAT, RTTMillis: m.RTTMillis, Path: m.Path}
	if relayed {
		// The sharer permits the connector's public address on its relay
		// (this node's: the sharer's home): the connector's node saw it,
		// whatever the connector found out itself.
		intro.Candidates = withObserved(m.Candidates, req.Observed)
		intro.TURN = srv.issueTURN(sharerID, sharer.raw.RemoteAddr())
		if emb != nil {
			emb.introduce(sharerID, connectorIPs(req.Observed, m.Candidates))
		}
		log = log.WithField("path", proto.PathRelay)
	}
	if m.Path == proto.PathBroker {
		token, err := srv.pairs.expect(sharerID, req.connector)
		if err != nil {
			log.WithError(err).Warn("introduction refused: the broker relay is full")
			return failReply(proto.CodeLimit, "the broker relay is full; retry later"), holdsShare
		}
		defer func() {
			if !introduced {
				srv.pairs.forget(token)
			}
		}()
		intro.RelayToken = token
		log = log.WithField("path", proto.PathBroker)
	}
	if err := sharer.send(intro); err != nil {
		log.WithError(err).Info("introduction: sharer went offline")
		return failReply(proto.CodeNotFound, "sharer %s went offline", sharerID.Short()), holdsShare
	}
	t := time.NewTimer(srv.cfg.IntroTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.Code != "" {
			log.WithField("code", r.Code).Info("introduction declined by the sharer")
			msg := r.Message
			if msg == "" {
				msg = "the sharer declined the connection"
			}
			return failReply(r.Code, "%s", msg), holdsShare
		}
		log.WithField("candidates", len(r.Candidates)).Info("introduced")
		introduced = true
		srv.mu.Lock()
		srv.presence.meet(req.connector, sharerID, srv.cfg.Now())
		srv.mu.Unlock()
		return &proto.ConnectReply{Candidates: r.Candidates, Port: r.Port, NAT: r.NAT, Path: r.Path, RelayToken: intro.RelayToken}, holdsShare
	case <-sharer.done:
		log.Info("introduction: sharer went offline")
		return failReply(proto.CodeNotFound, "sharer %s went offline", sharerID.Short()), holdsShare
	case <-t.C:
		log.Warnf("introduction: sharer did not answer within %v", srv.cfg.IntroTimeout)
		return failReply(proto.CodeTimeout, "sharer %s did not answer within %v", sharerID.Short(), srv.cfg.IntroTimeout), holdsShare
	case <-gone:
		return nil, holdsShare
	}
}

// mayConnect: the ticket's admit key, or (for members) the connector's own
// identity on the share's allow list. An unknown share is refused like a bad
// ticket, so share names cannot be probed.
func (r *introRequest) mayConnect(sh *share) bool {
	if sh == nil {
		return false
	}
	if admit := r.Connect.Admit; len(admit) > 0 && len(sh.admitHash) == sha256.Size {
		h := sha256.Sum256(admit)
		if subtle.ConstantTimeCompare(h[:], sh.admitHash) == 1 {
			return true
		}
	}
	if r.Guest {
		return false
	}
	_, ok := sh.allow[r.connector]
	return ok
}

// untilClosed is a context that ends when done is closed, or when cancelled.
func untilClosed(done <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
