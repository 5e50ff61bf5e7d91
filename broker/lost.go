package broker

import (
	"time"

	"github.com/peerport/peerport/internal/secure"
)

// lostShares remembers, for one RegistrationGrace, the shares that were
// withdrawn or went with their session: a sharer process restarting (or
// reloading agent.yaml) registers them again within moments, and a connect
// asking meanwhile should hear "not registered yet", not "refused".
// Guarded by Server.mu.
type lostShares struct {
	at    map[lostKey]time.Time
	swept time.Time
}

type lostKey struct {
	id    secure.AgentID
	share string
}

// add records that id's share went away at now, and forgets what is older
// than grace, at most once a grace, so the map holds one grace's worth of
// (rate-limited) registrations.
func (l *lostShares) add(id secure.AgentID, share string, now time.Time, grace time.Duration) {
	if l.at == nil {
		l.at = make(map[lostKey]time.Time)
	}
	if now.Sub(l.swept) >= grace {
		for k, t := range l.at {
			if now.Sub(t) >= grace {
				delete(l.at, k)
			}
		}
		l.swept = now
	}
	l.at[lostKey{id, share}] = now
}

// since reports when id's share went away, if it is remembered.
func (l *lostShares) since(id secure.AgentID, share string) (time.Time, bool) {
	t, ok := l.at[lostKey{id, share}]
	return t, ok
}

// registeringSoon reports whether a share that none of the online sharer's
// sessions holds may still be registered: the broker or one of the
// identity's sessions started within the grace, or the share went away
// within it. Past that, the share is unknown, and refused like a bad ticket
// so that share names cannot be probed. Called with srv.mu held.
func (srv *Server) registeringSoon(id secure.AgentID, share string, sessions []*session) bool {
	now, grace := srv.cfg.Now(), srv.cfg.RegistrationGrace
	recent := func(t time.Time) bool { return now.Sub(t) < grace }
	if recent(srv.started) {
		return true
	}
	for _, s := range sessions {
		if recent(s.since) {
			return true
		}
	}
	t, ok := srv.lost.since(id, share)
	return ok && recent(t)
}
