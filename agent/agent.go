// Package agent is peerport's agent: it shares local TCP targets and connects
// to the shares of other agents. It keeps a control session to each broker it
// uses, answers introductions, holds one multiplexed peer session per remote
// agent, forwards each TCP connection as a stream, and reports its state over
// a local admin socket.
//
// Roles are fixed by the share: the connector dials and is the TLS client;
// the sharer listens, checks the connector's ticket proof or identity for
// every stream, and alone maps a share name to its target.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// Version is the agent's software version, set by cmd at build time.
var Version = "dev"

// ShareSpec declares a share.
type ShareSpec struct {
	Name   string
	Target string // host:port
	Allow  []secure.AgentID
}

// ConnectSpec declares a forward to a share: by ticket, or by peer ID and
// share name when the sharer allows this agent's identity.
type ConnectSpec struct {
	Ticket *secure.Ticket
	Peer   secure.AgentID
	Share  string
	Listen string // host:port; "" picks 127.0.0.1:<target port>, or a free port
}

// Options configure an Agent.
type Options struct {
	Identity *secure.Identity
	StateDir string
	// Broker is the broker this agent logged in to; shares register there.
	// Connects by ticket use the ticket's broker.
	Broker   *secure.BrokerURL
	Shares   []ShareSpec
	Connects []ConnectSpec
	Log      logrus.FieldLogger

	// OnTicket is called once a share is registered with the broker, with
	// the ticket that reaches it.
	OnTicket func(name string, t secure.Ticket)
	// OnListen is called once a connect's local listener is open.
	OnListen func(c ConnectSpec, addr net.Addr)
}

// Agent runs shares and connects until its context ends.
type Agent struct {
	opts Options
	id   *secure.Identity
	log  logrus.FieldLogger

	started time.Time
	shares  map[string]*share

	mu       sync.Mutex
	brokers  map[string]*brokerClient // by broker address and pin
	sessions map[sessionKey]*peerSession
	dialing  map[secure.AgentID]*dialCall
	forwards []*forward
	wg       sync.WaitGroup
	ctx      context.Context
	fail     context.CancelCauseFunc // ends Run with a final error
}

type share struct {
	ShareSpec
	name   string
	ticket *secure.Ticket
	broker *brokerClient
	stats  counters
}

// New validates opts and returns an agent ready to Run.
func New(opts Options) (*Agent, error) {
	if opts.Identity == nil {
		return nil, errors.New("agent: no identity")
	}
	if opts.Log == nil {
		l := logrus.New()
		opts.Log = l
	}
	a := &Agent{
		opts:     opts,
		id:       opts.Identity,
		log:      opts.Log.WithField("agent", opts.Identity.ID().Short()),
		shares:   map[string]*share{},
		brokers:  map[string]*brokerClient{},
		sessions: map[sessionKey]*peerSession{},
		dialing:  map[secure.AgentID]*dialCall{},
	}
	if len(opts.Shares) > 0 && opts.Broker == nil {
		return nil, errors.New("sharing needs a broker: run `agent login BROKER_URL`, pass --broker, or let `agent share` embed one")
	}
	for _, s := range opts.Shares {
		if err := secure.ValidShareName(s.Name); err != nil {
			return nil, err
		}
		if _, ok := a.shares[s.Name]; ok {
			return nil, fmt.Errorf("share %q declared twice", s.Name)
		}
		t, err := secure.NewTicket(opts.Broker.Addr, opts.Broker.Pin, a.id.ID(), s.Name)
		if err != nil {
			return nil, err
		}
		a.shares[s.Name] = &share{ShareSpec: s, name: s.Name, ticket: &t}
	}
	for _, c := range opts.Connects {
		if c.Ticket == nil && (c.Peer.IsZero() || c.Share == "") {
			return nil, errors.New("connect needs a ticket, or a peer and a share")
		}
		if c.Ticket == nil && opts.Broker == nil {
			return nil, errors.New("connect by peer ID needs a broker: run `agent login BROKER_URL` or pass --broker")
		}
	}
	return a, nil
}

// ID returns the agent's identity.
func (a *Agent) ID() secure.AgentID { return a.id.ID() }

// Run serves until ctx ends. It returns an error when something final
// happens: the broker refused our token, or a listener could not be opened.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a.ctx, a.fail = ctx, cancel
	a.started = time.Now()

	admin, err := a.listenAdmin()
	if err != nil {
		return err
	}
	if len(a.shares) > 0 {
		b := a.broker(*a.opts.Broker)
		for _, s := range a.shares {
			s.broker = b
		}
		a.spawn(func() { a.announceShares(ctx, b) })
	}
	for _, c := range a.opts.Connects {
		f := newForward(a, c)
		a.mu.Lock()
		a.forwards = append(a.forwards, f)
		a.mu.Unlock()
		a.spawn(func() {
			if err := f.run(ctx); err != nil && ctx.Err() == nil {
				cancel(err)
			}
		})
	}
	<-ctx.Done()
	admin.Close()
	a.closeSessions()
	a.wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func (a *Agent) spawn(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
}

// broker returns the control client for u, starting it on first use.
func (a *Agent) broker(u secure.BrokerURL) *brokerClient {
	key := u.Addr + "#" + u.Pin.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	if b, ok := a.brokers[key]; ok {
		return b
	}
	b := newBrokerClient(a, u)
	a.brokers[key] = b
	a.spawn(func() {
		if err := b.run(a.ctx); err != nil && a.ctx.Err() == nil {
			a.fail(fmt.Errorf("broker %s refused this agent: %w", u.Addr, err))
		}
	})
	return b
}

// brokerFor picks the control session a ticket's connector uses: the logged-in
// broker when the ticket points there (so the token admits us fully), else a
// tokenless guest session to the ticket's broker.
func (a *Agent) brokerFor(t *secure.Ticket) *brokerClient {
	if t == nil || (a.opts.Broker != nil && a.opts.Broker.Addr == t.Broker && a.opts.Broker.Pin == t.Pin) {
		return a.broker(*a.opts.Broker)
	}
	return a.broker(secure.BrokerURL{Addr: t.Broker, Pin: t.Pin})
}

// announceShares reports each share's ticket once the broker has it.
func (a *Agent) announceShares(ctx context.Context, b *brokerClient) {
	if _, err := b.conn(ctx); err != nil {
		return // a final refusal ends the agent through b.run
	}
	for _, s := range a.shares {
		if a.opts.OnTicket != nil {
			a.opts.OnTicket(s.name, *s.ticket)
		}
	}
}

func (a *Agent) sharesFor(b *brokerClient) []*share {
	var out []*share
	for _, s := range a.shares {
		if s.broker == b {
			out = append(out, s)
		}
	}
	return out
}

// onIntro answers a broker's introduction of a connector to one of our
// shares. An introduction without candidates only asks for the share's port
// (a forward learning where to listen on a session that is already up).
func (a *Agent) onIntro(ctx context.Context, b *brokerClient, in *proto.Intro) *proto.IntroReply {
	rep := &proto.IntroReply{Intro: in.Intro}
	log := a.log.WithFields(logrus.Fields{"share": in.Share, "peer": shortID(in.Connector)})
	s, ok := a.shares[in.Share]
	connector, err := secure.ParseAgentID(in.Connector)
	if !ok || err != nil {
		rep.Code, rep.Message = proto.CodeRefused, "no such share"
		log.Warn("introduction refused: no such share")
		return rep
	}
	if _, p, err := net.SplitHostPort(s.Target); err == nil {
		n, _ := strconv.ParseUint(p, 10, 16)
		rep.Port = uint16(n)
	}
	if len(in.Candidates) > 0 {
		a.punchForIntro(ctx, b, in, connector, rep)
	}
	log.WithFields(logrus.Fields{"candidates": len(rep.Candidates), "peer_nat": natType(in.NAT)}).Info("introduced")
	return rep
}

func shortID(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
