package agent

import (
	"context"
	"math/rand/v2"
	"net"
	"slices"
	"time"

	"github.com/peerport/peerport/internal/backoff"
	"github.com/peerport/peerport/internal/resume"
)

// How the connector keeps a session on a path (DESIGN §3, issue 15).
const (
	// repunchMin and repunchMax bound the wait, doubling, between tries
	// of a direct path while a session is relayed.
	repunchMin = 30 * time.Second
	repunchMax = 5 * time.Minute
	// netPollEvery is how often the agent looks for a network change: a
	// local address, or our address as a broker sees it. One look is a
	// netlink dump and a map read, nothing on the wire.
	netPollEvery = 2 * time.Second
	// repathMaxWait caps the wait between tries of a new path for a
	// session that lost its own: the sharer may be back on its broker any
	// moment (a host that moved reconnects in seconds), and one try is an
	// introduction request.
	repathMaxWait = 2 * time.Second
)

// resumeConfig is the resumable layer's configuration for this agent.
func (a *Agent) resumeConfig() resume.Config {
	c := a.opts.Resume
	c.Log = a.log.WithField("component", "resume")
	return c
}

// keepPath keeps a connector's session on a path: when its carrier is
// lost it makes a new one, on any path the policy allows, and resumes the
// session there; while relayed under PathAuto it tries a direct path
// again, with backoff, and at once when the network changes.
func (a *Agent) keepPath(ctx context.Context, ps *peerSession) {
	// Paths are made for the session only while it lives: a dial still
	// running when it ends (abandoned, its peer gone) stops with it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.spawn(func() {
		select {
		case <-ps.rc.Done():
			cancel()
		case <-ctx.Done():
		}
	})
	n := 0 // direct tries since the session was last lost or moved
	for {
		wantDirect := ps.path() == PathRelay && (ps.policy == "" || ps.policy == PathAuto)
		retry := time.NewTimer(repunchDelay(n))
		if !wantDirect {
			retry.Stop()
		}
		select {
		case <-ctx.Done():
			retry.Stop()
			return
		case <-ps.rc.Done():
			retry.Stop()
			return
		case <-ps.rc.Lost():
			ps.log.WithError(ps.rc.Stats().LastLoss).WithField("path", ps.path()).Warn("path lost")
			a.repath(ctx, ps)
			n = 0
		case <-retry.C:
			n++
			a.tryDirect(ctx, ps)
		case <-a.netChange():
			n = 0
			if wantDirect {
				ps.log.Info("network changed; trying a direct path")
				a.tryDirect(ctx, ps)
			}
		}
		retry.Stop()
	}
}

// repunchDelay is the wait before direct try n+1: repunchMin doubling to
// repunchMax, less up to a fifth so that pairs do not try in step.
func repunchDelay(n int) time.Duration {
	d := repunchMax
	if n < 8 {
		d = min(repunchMax, repunchMin<<n)
	}
	return d - time.Duration(rand.Float64()*float64(d)/5)
}

// repath makes a new path for a session that lost its own, and resumes
// it there, trying until it works or the session gives up (its resume
// deadline).
func (a *Agent) repath(ctx context.Context, ps *peerSession) {
	bo := backoff.Backoff{Base: 250 * time.Millisecond, Cap: repathMaxWait}
	for {
		select {
		case <-ps.rc.Done():
			return
		default:
		}
		_, err := a.dialPaths(ctx, ps.key.peer, ps.policy, ps.dial, 0)
		if err == nil || ctx.Err() != nil {
			return
		}
		ps.log.WithError(err).Info("no new path yet")
		if backoff.Sleep(ctx, bo.Next()) != nil {
			return
		}
	}
}

// tryDirect punches a new direct path for a relayed session and moves the
// session onto it.
func (a *Agent) tryDirect(ctx context.Context, ps *peerSession) {
	a.mu.Lock()
	brokers := make([]*brokerClient, 0, len(a.brokers))
	for _, b := range a.brokers {
		brokers = append(brokers, b)
	}
	a.mu.Unlock()
	for _, b := range brokers {
		b.rediscover(ctx)
	}
	c, out, err := ps.dial(ctx, a.paths.direct, func() {})
	if err == nil {
		_, err = a.upgrade(ctx, ps.key.peer, attempt{c: c, out: out}, ps.policy, ps.dial)
	}
	if err != nil {
		ps.log.WithError(err).Debug("direct path not up yet")
	}
}

// netChange is closed at the next network change.
func (a *Agent) netChange() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.netChanged
}

// watchNet closes netChanged whenever a local address comes or goes, or a
// broker sees us at a new address, until ctx ends.
func (a *Agent) watchNet(ctx context.Context) {
	t := time.NewTicker(netPollEvery)
	defer t.Stop()
	last := a.netView()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if v := a.netView(); !slices.Equal(v, last) {
			last = v
			a.log.WithField("addresses", v).Debug("network changed")
			a.mu.Lock()
			close(a.netChanged)
			a.netChanged = make(chan struct{})
			a.mu.Unlock()
		}
	}
}

// netView is what a network change changes: local addresses and our
// addresses as brokers see them, sorted.
func (a *Agent) netView() []string {
	var v []string
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, ad := range addrs {
			v = append(v, ad.String())
		}
	}
	a.mu.Lock()
	for _, b := range a.brokers {
		if o := b.status().Observed; o != "" {
			v = append(v, "observed "+o)
		}
	}
	a.mu.Unlock()
	slices.Sort(v)
	return v
}

// addrGone reports whether a's IP is no longer one of the host's
// addresses: a socket bound to it is dead whatever its peer does.
func addrGone(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok && n.IP.Equal(tcp.IP) {
			return false
		}
	}
	return true
}
