package agent

import (
	"context"
	"errors"
	"time"

	"github.com/peerport/peerport/internal/secure"
)

// A session without a path waits up to the resume deadline for its peer to
// come back on a new one. A peer that is gone (killed, stopped, its host
// off) will not, and holding its connections for minutes would hide the cut
// from the applications. The brokers know: they see the peer's control
// session end. While a session has no path, both sides ask; once the
// brokers that introduced the pair say the peer is offline for
// peerGoneAfter, the session ends and its connections are reset.
const (
	presenceEvery   = time.Second
	presenceTimeout = 2 * time.Second
	// peerGoneAfter leaves a moving peer time to log in again at its
	// broker from its new network.
	peerGoneAfter = 5 * time.Second
)

// ErrPeerGone ends a session whose peer the brokers say is offline.
var ErrPeerGone = errors.New("peer gone: its broker says it is offline")

// watchPeer ends ps when, while it has no path, its peer is gone.
func (a *Agent) watchPeer(ctx context.Context, ps *peerSession) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-ps.rc.Done():
			return
		case <-ps.rc.Lost():
		}
		if a.peerGone(ctx, ps) {
			ps.log.WithField("after", peerGoneAfter).Warn("peer gone: its broker says it is offline; resetting its connections")
			ps.rc.Abandon(ErrPeerGone)
			return
		}
	}
}

// peerGone asks the brokers about ps's peer every presenceEvery until the
// session has a path again (false) or they said offline, and nothing but
// offline, for peerGoneAfter (true). No answer (our own broker session is
// down too, or a broker restarted and forgot the pair) decides nothing.
func (a *Agent) peerGone(ctx context.Context, ps *peerSession) bool {
	t := time.NewTicker(presenceEvery)
	defer t.Stop()
	var offSince time.Time
	for {
		switch a.presence(ctx, ps.key.peer, ps.key.instance) {
		case peerOnline:
			offSince = time.Time{}
		case peerOffline:
			now := time.Now()
			if offSince.IsZero() {
				offSince = now
			} else if now.Sub(offSince) >= peerGoneAfter {
				return true
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-ps.rc.Done():
			return false
		case <-t.C:
		}
		select {
		case <-ps.rc.Lost():
		default:
			return false // resumed
		}
	}
}

type peerPresence int

const (
	peerUnknown peerPresence = iota
	peerOnline
	peerOffline
)

// presence is what the connected brokers say of peer: online if any says
// so, offline if one does and none says online, else unknown.
func (a *Agent) presence(ctx context.Context, peer secure.AgentID, instance string) peerPresence {
	a.mu.Lock()
	brokers := make([]*brokerClient, 0, len(a.brokers))
	for _, b := range a.brokers {
		brokers = append(brokers, b)
	}
	a.mu.Unlock()
	ans := peerUnknown
	for _, b := range brokers {
		c := b.current()
		if c == nil {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, presenceTimeout)
		online, known, err := c.presence(rctx, peer, instance)
		cancel()
		switch {
		case err != nil || !known:
		case online:
			return peerOnline
		default:
			ans = peerOffline
		}
	}
	return ans
}
