package broker

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// Presence (DESIGN §3, issue 15): an agent whose peer session lost its path
// asks whether the peer is still online here. While the peer is, the
// session waits to resume; once it is not, the agent resets the session's
// connections at once instead of holding them for minutes, so a killed
// sharer still reaches the connector's application as a reset.
//
// The broker answers only about agents it introduced to the asker, so an
// agent ID alone tells nobody whether its agent is online.

const (
	// maxMet bounds the introduced pairs the broker remembers.
	maxMet = 1 << 16
	// metFor is how long a pair is remembered after its last introduction.
	metFor = 24 * time.Hour
)

// presence is who is online, by agent and process, and who was introduced
// to whom. Guarded by Server.mu.
type presence struct {
	online map[secure.AgentID]map[string]int // sessions per process instance
	met    map[[2]secure.AgentID]time.Time
}

func newPresence() presence {
	return presence{online: map[secure.AgentID]map[string]int{}, met: map[[2]secure.AgentID]time.Time{}}
}

func (p *presence) arrive(id secure.AgentID, instance string) {
	if p.online[id] == nil {
		p.online[id] = map[string]int{}
	}
	p.online[id][instance]++
}

func (p *presence) depart(id secure.AgentID, instance string) {
	byInst := p.online[id]
	if byInst[instance]--; byInst[instance] <= 0 {
		delete(byInst, instance)
	}
	if len(byInst) == 0 {
		delete(p.online, id)
	}
}

// isOnline: any process of id, or the process instance when it is named.
func (p *presence) isOnline(id secure.AgentID, instance string) bool {
	if instance == "" {
		return len(p.online[id]) > 0
	}
	return p.online[id][instance] > 0
}

// pair is the map key of a and b, in either order.
func pair(a, b secure.AgentID) [2]secure.AgentID {
	if bytes.Compare(b[:], a[:]) < 0 {
		a, b = b, a
	}
	return [2]secure.AgentID{a, b}
}

// meet remembers that a and b were introduced. When full it forgets the
// pairs older than metFor and the oldest down to fifteen sixteenths: a
// forgotten pair only makes its agents wait for a resume timeout. Evicting
// in a batch keeps the sweep, a pass over every pair under Server.mu, to
// one per maxMet/16 new pairs instead of one per pair.
func (p *presence) meet(a, b secure.AgentID, now time.Time) {
	k := pair(a, b)
	if _, ok := p.met[k]; !ok && len(p.met) >= maxMet {
		p.forgetMet(now)
	}
	p.met[k] = now
}

// forgetMet drops the stale pairs, then the oldest pairs down to fifteen
// sixteenths of maxMet.
func (p *presence) forgetMet(now time.Time) {
	for o, at := range p.met {
		if now.Sub(at) > metFor {
			delete(p.met, o)
		}
	}
	keep := maxMet - maxMet/16
	if len(p.met) <= keep {
		return
	}
	times := make([]time.Time, 0, len(p.met))
	for _, at := range p.met {
		times = append(times, at)
	}
	slices.SortFunc(times, time.Time.Compare)
	drop := len(p.met) - keep
	cut := times[drop-1] // the newest of those to drop
	ties := drop - sort.Search(drop, func(i int) bool { return !times[i].Before(cut) })
	for o, at := range p.met {
		switch {
		case at.Before(cut):
			delete(p.met, o)
		case at.Equal(cut) && ties > 0:
			delete(p.met, o)
			ties--
		}
	}
}

func (p *presence) knows(a, b secure.AgentID, now time.Time) bool {
	at, ok := p.met[pair(a, b)]
	return ok && now.Sub(at) <= metFor
}

// presence answers a Presence: success while the agent (and process, when
// named) is online, here or on another node of the cluster, not_found once
// it is not, refused for an agent no node introduced to the asker.
func (s *session) presence(m *proto.Presence) *proto.Result {
	id, err := secure.ParseAgentID(m.Agent)
	if err != nil {
		return &proto.Result{ID: m.ID, Code: proto.CodeBadRequest, Message: fmt.Sprintf("agent: %v", err)}
	}
	q := &presenceQuery{Asker: s.id.String(), Agent: m.Agent, Instance: m.Instance}
	online, knows := s.srv.presenceHere(q)
	if cl := s.srv.cluster.Load(); cl != nil && !online {
		// The agent may be on another node, or this agent may have come
		// here from the node that introduced them.
		on, kn, err := cl.presence(context.Background(), q, id)
		if err != nil {
			return &proto.Result{ID: m.ID, Code: proto.CodeClusterUnavailable, Message: err.Error()}
		}
		online, knows = on, knows || kn
	}
	switch {
	case !knows:
		return &proto.Result{ID: m.ID, Code: proto.CodeRefused, Message: "this broker did not introduce that agent to you"}
	case !online:
		return &proto.Result{ID: m.ID, Code: proto.CodeNotFound, Message: fmt.Sprintf("agent %s is not online", id.Short())}
	}
	return &proto.Result{ID: m.ID}
}

// presenceHere tells whether q's agent is online on this node, and whether
// this node introduced it to the asker.
func (srv *Server) presenceHere(q *presenceQuery) (online, knows bool) {
	id, err := secure.ParseAgentID(q.Agent)
	if err != nil {
		return false, false
	}
	asker, err := secure.ParseAgentID(q.Asker)
	if err != nil {
		return false, false
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.presence.isOnline(id, q.Instance), srv.presence.knows(asker, id, srv.cfg.Now())
}
