package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/punch"
	"github.com/peerport/peerport/internal/secure"
)

// Paths: the ways a peer channel between a connector and a sharer can be
// made. Each kind is one type in its own file:
//
//	direct  path_direct.go  a punched TCP connection (TCP simultaneous open)
//	turn    path_turn.go    the sharer's TCP allocation on a TURN relay (RFC 6062)
//	broker  path_broker.go  both agents' TLS connections to the broker's own port, paired
//
// The connector races them (dialPaths); the sharer answers the broker's
// introduction for whichever kind it names (Agent.onIntro). Whatever the
// path, the TLS peer channel and its mux session run over it unchanged.

// Path policies, per share and per connect.
const (
	PathAuto   = "auto"           // punch; relay when punching cannot work or is slow; move to direct when it comes up
	PathDirect = proto.PathDirect // punched paths only
	PathRelay  = proto.PathRelay  // relayed paths only (any relay)
	// One relay kind only: for networks where the other is known to be
	// blocked, for debugging, and for the benchmarks.
	PathTURN   = RelayTURN
	PathBroker = RelayBroker
)

// PathPolicies lists the path policies, for help and completion.
func PathPolicies() []string { return []string{PathAuto, PathDirect, PathRelay, PathTURN, PathBroker} }

// Relay kinds, as status reports them.
const (
	RelayTURN   = "turn"
	RelayBroker = "broker"
)

// ValidPath checks a path policy; empty means PathAuto.
func ValidPath(p string) error {
	switch p {
	case "", PathAuto, PathDirect, PathRelay, PathTURN, PathBroker:
		return nil
	}
	return fmt.Errorf("path %q: want %s, %s, %s, %s or %s", p, PathAuto, PathDirect, PathRelay, PathTURN, PathBroker)
}

// allows reports whether a policy admits the path an introduction names.
func allows(policy, wire string) bool {
	switch policy {
	case PathDirect:
		return !isRelay(wire)
	case PathRelay:
		return isRelay(wire)
	case PathTURN:
		return wire == proto.PathRelay
	case PathBroker:
		return wire == proto.PathBroker
	}
	return true
}

// relayHeadStart is how long an introduction gives the punch alone before
// racing the relays beside it: a punch between cone NATs takes a few round
// trips, well under this even on long paths.
const relayHeadStart = time.Second

// path is one kind of path.
type path interface {
	// wire is the proto path its introductions carry.
	wire() string
	// dial is the connector's side: ask for an introduction with intro and
	// make the connection to the sharer. TLS is the race's: a connection
	// that loses is closed before any handshake, so the sharer never takes
	// it for a session. The reply is returned when the broker answered,
	// even when the dial then failed.
	// hurry starts the relays at once, without the head start: for a path
	// that learns it is unlikely to come up soon.
	dial(ctx context.Context, b *brokerClient, sharer secure.AgentID, intro introFunc, hurry func()) (net.Conn, outcome, *proto.ConnectReply, error)
	// answer is the sharer's side of an introduction for this path: it
	// fills rep (or its Code), and serves the peer channel that comes up,
	// in the background.
	answer(ctx context.Context, b *brokerClient, in *proto.Intro, connector secure.AgentID, rep *proto.IntroReply)
}

// introFunc asks the broker to introduce us to a sharer; the path fills in
// path, candidates and NAT, the forward who and with what ticket.
type introFunc func(context.Context, *proto.Connect) (*proto.ConnectReply, error)

// outcome is how a peer channel was made, for status and logs.
type outcome struct {
	path              string // proto.PathDirect or proto.PathRelay: the session's
	relayKind         string // RelayTURN or RelayBroker, on the relay path
	res               *punch.Result
	localNAT, peerNAT string
	relay             string        // the relay's address, on the relay path
	relayed           *atomic.Int64 // bytes through the relay, both ways
	portmap           string        // the port mapping the direct path came through: our gateway's protocol, "peer", or ""
}

// pair is the candidate pair a punched path was made over.
func (o outcome) pair() CandidatePair {
	if o.res == nil {
		return CandidatePair{}
	}
	return CandidatePair{Local: o.res.Local.String(), Remote: o.res.Remote.String(), Kind: string(o.res.Candidate.Kind)}
}

// punchMS is how long the punch took, from the first SYN to the agreed
// connection; 0 on a relayed path.
func (o outcome) punchMS() int64 {
	if o.res == nil {
		return 0
	}
	return o.res.Elapsed.Milliseconds()
}

// attempts counts the punch's dial attempts across all candidates.
func (o outcome) attempts() int {
	if o.res == nil {
		return 0
	}
	return o.res.Attempts
}

// paths are the agent's path kinds: the direct one, then the relays.
type paths struct {
	direct path
	relays []path
}

func newPaths(a *Agent) paths {
	return paths{direct: directPath{a}, relays: []path{turnPath{a}, brokerPath{a}}}
}

// byWire returns the kind an introduction names, or nil.
func (p paths) byWire(w string) path {
	if w == "" || w == p.direct.wire() {
		return p.direct
	}
	for _, r := range p.relays {
		if r.wire() == w {
			return r
		}
	}
	return nil
}

// isRelay reports whether an introduction's path is one of the relays.
func isRelay(wire string) bool { return wire == proto.PathRelay || wire == proto.PathBroker }

// attempt is one path's dial result.
type attempt struct {
	c   net.Conn // not yet TLS
	out outcome
	err error
}

// dialPaths makes the connector's session to sharer under policy. The punch
// goes first; the relays join it, all at once, as soon as the punch is
// known not to work, as soon as it says it will not come up soon (hurry),
// or after relayHeadStart. The first path up carries the
// streams. A direct path that comes up after a relay takes the session
// over, open streams included, and the relay is released; a relay that
// comes up after another one is closed unused.
//
// headStart is relayHeadStart for a new session; a session that lost its
// path races them all at once, since it can move from a relay to direct
// later without a break.
func (a *Agent) dialPaths(ctx context.Context, sharer secure.AgentID, policy string, dial dialFunc, headStart time.Duration) (*peerSession, error) {
	var first, second []path
	switch policy {
	case "", PathAuto:
		first, second = []path{a.paths.direct}, a.paths.relays
	default:
		for _, p := range append([]path{a.paths.direct}, a.paths.relays...) {
			if allows(policy, p.wire()) {
				first = append(first, p)
			}
		}
	}
	results := make(chan attempt, len(first)+len(second)) // never blocks a dial
	hurried := make(chan struct{})
	hurry := sync.OnceFunc(func() { close(hurried) })
	pending := 0
	try := func(ps []path) {
		for _, p := range ps {
			pending++
			a.spawn(func() {
				c, out, err := dial(ctx, p, hurry)
				results <- attempt{c, out, err}
			})
		}
	}
	try(first)
	// Whatever is still dialing when the race is decided finishes here.
	defer func() { a.spawn(func() { a.lateAttempts(ctx, sharer, results, pending, policy, dial) }) }()
	head := time.NewTimer(headStart)
	defer head.Stop()
	var errs []error
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-head.C:
		case <-hurried:
			hurried = nil
		case r := <-results:
			pending--
			if r.err == nil {
				ps, err := a.upgrade(ctx, sharer, r, policy, dial)
				if err == nil {
					return ps, nil
				}
				r.err = err
			}
			errs = append(errs, r.err)
			if errors.Is(r.err, ErrUnauthorized) || (second == nil && pending == 0) {
				return nil, errors.Join(errs...)
			}
		}
		if second != nil {
			try(second)
			second = nil
		}
	}
}

// lateAttempts takes the paths that finished after the race was decided:
// a direct path is worth moving the session to; a relayed one is not
// needed any more.
func (a *Agent) lateAttempts(ctx context.Context, sharer secure.AgentID, results <-chan attempt, n int, policy string, dial dialFunc) {
	for range n {
		r := <-results
		switch {
		case r.err != nil:
			a.log.WithError(r.err).WithField("peer", sharer.Short()).Debug("a slower path failed")
		case r.out.path == PathDirect && ctx.Err() == nil:
			if _, err := a.upgrade(ctx, sharer, r, policy, dial); err != nil {
				a.log.WithError(err).WithField("peer", sharer.Short()).Info("a late direct path failed")
			}
		default:
			r.c.Close()
		}
	}
}

// upgrade runs the connector's TLS handshake over a path's connection and
// starts the session on it, or moves the running one there.
func (a *Agent) upgrade(ctx context.Context, sharer secure.AgentID, r attempt, policy string, dial dialFunc) (*peerSession, error) {
	c, err := a.clientTLS(ctx, r.c, sharer)
	if err != nil {
		return nil, err
	}
	if r.out.path == PathRelay {
		a.log.WithFields(logrus.Fields{"component": "relay", "peer": sharer.Short(), "relay": r.out.relay, "relay_kind": r.out.relayKind}).Info("relayed path up")
	}
	return a.startConnectorSession(ctx, sharer, c, r.out, policy, dial)
}
