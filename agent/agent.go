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
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/resume"
	"github.com/peerport/peerport/internal/secure"
)

// Version is the agent's software version, set by cmd at build time.
var Version = "dev"

// ShareSpec declares a share.
type ShareSpec struct {
	Name   string
	Target string // host:port
	Allow  []secure.AgentID
	Path   string // a path policy: PathAuto (or empty), PathDirect, PathRelay, PathTURN or PathBroker
	// Code, when set, makes the share offer a short code once it is
	// registered (Options.OnCode says it).
	Code *CodeSpec
}

// ConnectSpec declares a forward to a share: by ticket, or by peer ID and
// share name when the sharer allows this agent's identity.
type ConnectSpec struct {
	Ticket *secure.Ticket
	Peer   secure.AgentID
	Share  string
	Listen string // host:port; "" picks 127.0.0.1:<target port>, or a free port
	Path   string // a path policy, as ShareSpec's
	// Timeout bounds how long the forward tries to reach its share for the
	// first time before it fails with ErrGaveUp and the reason; 0 tries
	// for ever. Once it has worked, it retries for ever.
	Timeout time.Duration
}

// key identifies a forward across reloads: the same ticket (or peer and
// share) on the same listen address is the same forward. Its path policy
// may change in place.
func (c ConnectSpec) key() string {
	if c.Ticket != nil {
		return c.Ticket.String() + "|" + c.Listen
	}
	return c.Peer.String() + "/" + c.Share + "|" + c.Listen
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
	// KeepTickets keeps each share's ticket secret in the state dir, so a
	// share's ticket survives restarts; otherwise every run makes new
	// tickets.
	KeepTickets bool
	// DrainTimeout bounds how long shutdown waits for open connections to
	// finish; default 30s.
	DrainTimeout time.Duration
	// Reload re-reads the configuration, for SIGHUP and `agent reload`;
	// nil when the agent has none.
	Reload func() (Options, error)
	// MetricsListen serves Prometheus /metrics there; empty: off.
	MetricsListen string
	// Dashboard serves the local status page there (loopback only; a
	// taken port falls back to a free one); empty: off.
	Dashboard string
	// Candidates limits the local addresses offered to peers (host
	// candidates) to these prefixes; empty: every interface address. The
	// STUN mapping is always offered.
	Candidates []netip.Prefix
	// Portmap asks this host's gateway for a mapping (PCP, NAT-PMP or UPnP
	// IGD) of every punch port and offers it to peers: a direct path
	// through a NAT that no punch gets through. The CLI turns it on
	// (--no-portmap, portmap: false turn it off).
	Portmap bool
	// TURN, when set, is the relay this agent's shares allocate on instead
	// of the broker's.
	TURN *TURNServer
	// Proxy is the HTTP CONNECT proxy every connection to a broker goes
	// through (control and broker relay); nil: HTTPS_PROXY / ALL_PROXY /
	// NO_PROXY from the environment decide.
	Proxy *url.URL
	// KeepGoing makes a forward that fails for good (its ticket refused)
	// stop alone, reported in status, instead of ending the agent: for
	// agent up, where one bad entry must not take the others down.
	KeepGoing bool

	// Resume tunes the resumable layer under every peer session: dead-path
	// detection, the resend buffer, the resume deadline. Zero: defaults.
	Resume resume.Config

	// OnTicket is called once a share is registered with the broker, with
	// the ticket that reaches it.
	OnTicket func(name string, t secure.Ticket)
	// OnCode is called when a share's short code is opened, and again
	// if it changes (its number was taken while the broker was away).
	OnCode func(share, code string)
	// OnListen is called once a connect's local listener is open.
	OnListen func(c ConnectSpec, addr net.Addr)
}

// DefaultProcs is how many CPUs an agent process runs Go code on at once
// (GOMAXPROCS) unless its environment sets GOMAXPROCS: cmd/agent applies
// it. Every forwarded byte and every round trip passes from goroutine to
// goroutine (local reader, session sender, carrier writer; carrier reader,
// session receiver, local writer), and with more than one P each hand-off
// may wake a thread on another CPU: measured on loopback (bench/RESULTS.md,
// issue 20) that cost more than a quarter of a round trip and 10-25 % of
// the CPU per byte, for no more throughput. One CPU still moves about
// 1 GB/s through one agent, more than the paths between agents carry; a
// host that forwards more sets GOMAXPROCS.
const DefaultProcs = 1

// DefaultDrainTimeout is how long shutdown waits for open connections.
const DefaultDrainTimeout = 30 * time.Second

// Agent runs shares and connects until its context ends.
type Agent struct {
	opts Options
	id   *secure.Identity
	log  logrus.FieldLogger

	dialer   *brokerDialer
	paths    paths
	portmap  *portMapper // nil: no port mapping
	started  time.Time
	stats    counters // every forwarded connection, for drain and status
	parker   parker   // the local sides of idle connections
	release  releaser // returns the heap a burst of traffic grew once idle
	codes    codeBook // the short codes our shares offer
	draining atomic.Bool
	// pending counts accepted connections still waiting for their peer
	// session: a drain lets them finish like open streams.
	pending  atomic.Int64
	reloadMu sync.Mutex // one reload at a time
	// resumable holds the sessions connectors started with this agent's
	// shares, for them to resume on a new path.
	resumable  *resume.Table
	resumes    atomic.Int64 // sessions moved onto a new carrier
	migrations atomic.Int64 // of those, moves to another kind of path
	recent     recentConns  // the last connections, for status
	quiet      quietWatch   // parks the stream side of quiet connections
	// Test hooks, when set: clientStarted runs in apply once the
	// shares' broker client runs, before the shares are added;
	// registered runs as a control session has registered the shares
	// it found, before it becomes current.
	testHookClientStarted, testHookRegistered func()

	dashURL atomic.Pointer[string] // the dashboard's URL with its token, once it listens

	mu       sync.Mutex
	shares   map[string]*share // replaced, never changed in place
	forwards map[string]*forward
	brokers  map[string]*brokerClient // by broker address and pin
	sessions map[sessionKey]*peerSession
	dialing  map[secure.AgentID]*dialCall
	// netChanged is closed, and replaced, at every network change.
	netChanged chan struct{}
	wg         sync.WaitGroup
	ctx        context.Context         // lives until the drain ends
	fail       context.CancelCauseFunc // ends Run with a final error
	stop       <-chan struct{}         // closed when shutdown begins: stop accepting
}

// share is one share as declared now. A reload that changes it puts a new
// share in the map, keeping ticket and counters.
type share struct {
	ShareSpec
	ticket    *secure.Ticket
	broker    *brokerClient
	stats     *counters
	announced *atomic.Bool
	admitted  *admitted // agents admitted by a short code
	// on is the control session that registered the share, under its
	// broker client's regMu.
	on *controlConn
}

// New validates opts and returns an agent ready to Run.
func New(opts Options) (*Agent, error) {
	if opts.Identity == nil {
		return nil, errors.New("agent: no identity")
	}
	if opts.Log == nil {
		opts.Log = logrus.New()
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	if err := validate(opts); err != nil {
		return nil, err
	}
	a := &Agent{
		opts:     opts,
		id:       opts.Identity,
		log:      opts.Log.WithField("agent", opts.Identity.ID().Short()),
		shares:   map[string]*share{},
		forwards: map[string]*forward{},
		brokers:  map[string]*brokerClient{},
		sessions: map[sessionKey]*peerSession{},
		dialing:  map[secure.AgentID]*dialCall{},

		netChanged: make(chan struct{}),
	}
	a.codes = codeBook{a: a, byShare: map[string]*codeOffer{}, failed: map[string]int{}}
	a.resumable = resume.NewTable(a.resumeConfig())
	a.parker.spawn = a.spawn
	a.release.busy = func() bool { return a.stats.streams.Load() > 0 }
	a.release.trim = a.trimSessions
	a.dialer = newBrokerDialer(opts.Identity, opts.Proxy)
	a.paths = newPaths(a)
	return a, nil
}

func validate(o Options) error {
	if len(o.Shares) > 0 && o.Broker == nil {
		return errors.New("sharing needs a broker: run `agent login BROKER_URL`, pass --broker, or let `agent share` embed one")
	}
	names := map[string]bool{}
	for _, s := range o.Shares {
		if err := secure.ValidShareName(s.Name); err != nil {
			return err
		}
		if names[s.Name] {
			return fmt.Errorf("share %q declared twice", s.Name)
		}
		names[s.Name] = true
		if err := ValidPath(s.Path); err != nil {
			return fmt.Errorf("share %q: %w", s.Name, err)
		}
	}
	for _, c := range o.Connects {
		if c.Ticket == nil && (c.Peer.IsZero() || c.Share == "") {
			return errors.New("connect needs a ticket, or a peer and a share")
		}
		if c.Ticket == nil && o.Broker == nil {
			return errors.New("connect by peer ID needs a broker: run `agent login BROKER_URL` or pass --broker")
		}
		if err := ValidPath(c.Path); err != nil {
			return err
		}
	}
	if t := o.TURN; t != nil && len(t.Secret) == 0 {
		return errors.New("relay: an external TURN server needs its shared secret")
	}
	return nil
}

// ID returns the agent's identity.
func (a *Agent) ID() secure.AgentID { return a.id.ID() }

// Run serves until ctx ends, then drains: it stops accepting, lets open
// connections finish for up to DrainTimeout, and closes. It returns an
// error when something final happens: the broker refused our token, or a
// listener could not be opened.
func (a *Agent) Run(ctx context.Context) error {
	inner, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	a.ctx, a.fail, a.stop = inner, cancel, ctx.Done()
	a.started = time.Now()

	admin, err := a.listenAdmin()
	if err != nil {
		return err
	}
	if a.opts.MetricsListen != "" {
		if err := a.serveMetrics(inner, a.opts.MetricsListen); err != nil {
			admin.Close()
			return err
		}
	}
	if a.opts.Dashboard != "" {
		if err := a.serveDashboard(inner, a.opts.Dashboard); err != nil {
			admin.Close()
			return err
		}
	}
	var why string
	if a.portmap, why = newPortMapper(inner, a.opts, a.log); a.portmap != nil {
		// Probed now, so that the first introduction knows whether a
		// mapping is worth asking for.
		a.spawn(func() { a.portmap.refresh(inner, gatewayProbeTimeout) })
	} else {
		a.log.WithField("why", why).Debug("no port mapping")
	}
	if err := a.apply(a.opts); err != nil {
		admin.Close()
		return err
	}
	a.spawn(func() { a.watchNet(inner) })
	a.spawn(func() {
		a.release.watch(inner, func() int64 { return a.stats.bytesIn.Load() + a.stats.bytesOut.Load() })
	})
	select {
	case <-ctx.Done():
		a.drain()
	case <-inner.Done():
	}
	cancel(nil)
	admin.Close()
	a.mu.Lock()
	for _, f := range a.forwards {
		f.cancel()
	}
	a.mu.Unlock()
	a.closeSessions()
	a.resumable.Close()
	a.codes.stop()
	a.parker.close()
	a.wg.Wait()
	a.release.stop()
	if err := context.Cause(inner); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// drain stops accepting and waits for open connections, up to DrainTimeout.
func (a *Agent) drain() {
	a.draining.Store(true)
	a.mu.Lock()
	for _, f := range a.forwards {
		f.cancel() // closes its listener; accepted connections go on
	}
	a.mu.Unlock()
	busy := func() int64 { return a.stats.streams.Load() + a.pending.Load() }
	open := busy()
	if open == 0 {
		return
	}
	a.log.WithFields(logrus.Fields{"open": open, "timeout": a.opts.DrainTimeout}).Infof(
		"stopping: %d open connection(s) may finish within %v; a second Ctrl-C (or SIGTERM) stops at once", open, a.opts.DrainTimeout)
	deadline := time.Now().Add(a.opts.DrainTimeout)
	for busy() > 0 && time.Now().Before(deadline) {
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	if n := busy(); n > 0 {
		a.log.WithField("open", n).Warn("drain timeout: closing open connections")
	}
}

// Reload re-reads the configuration and applies it. An invalid file is
// refused with its error and the running configuration stays.
func (a *Agent) Reload() error {
	if a.opts.Reload == nil {
		return errors.New("this agent has no configuration file to reload (only agent up has)")
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	o, err := a.opts.Reload()
	if err == nil {
		err = validate(o)
	}
	if err == nil {
		err = a.apply(o)
	}
	if err != nil {
		a.log.WithError(err).Error("reload refused; the running configuration stays")
		return err
	}
	if r, o := a.opts.Resume, o.Resume; r.KeepAlive != o.KeepAlive || r.DeadFloor != o.DeadFloor || r.ResumeTimeout != o.ResumeTimeout || r.MaxUnacked != o.MaxUnacked {
		// Running sessions and the sharer's session table were made with
		// the old ones; mixing the two within one agent is not worth it.
		a.log.Warn("resume settings changed: they apply when the agent restarts")
	}
	a.log.WithFields(logrus.Fields{"shares": len(o.Shares), "connects": len(o.Connects)}).Info("configuration reloaded")
	return nil
}

// apply brings shares and forwards to what o declares: added ones start,
// removed ones stop (their open connections finish), changed shares take
// effect for new connections, and unchanged ones are not touched.
func (a *Agent) apply(o Options) error {
	a.mu.Lock()
	if len(a.shares) > 0 && o.Broker != nil && a.opts.Broker != nil && o.Broker.String() != a.opts.Broker.String() {
		a.mu.Unlock()
		return errors.New("the broker changed: restart the agent to move its shares")
	}
	if o.Broker != nil {
		a.opts.Broker = o.Broker
	}
	a.mu.Unlock()
	var b *brokerClient
	if len(o.Shares) > 0 {
		b = a.broker(*a.brokerURL())
		if hook := a.testHookClientStarted; hook != nil {
			hook()
		}
	}
	// Tickets first: the one step that can fail, before anything changes.
	tickets := map[string]*secure.Ticket{}
	for _, spec := range o.Shares {
		if a.shareNamed(spec.Name) == nil {
			t, err := a.ticketFor(spec.Name)
			if err != nil {
				return err
			}
			tickets[spec.Name] = &t
		}
	}
	wantShares := map[string]ShareSpec{}
	for _, s := range o.Shares {
		wantShares[s.Name] = s
	}
	var register, unregister []*share
	a.mu.Lock()
	for name, old := range a.shares {
		if _, ok := wantShares[name]; !ok {
			delete(a.shares, name)
			unregister = append(unregister, old)
		}
	}
	for name, spec := range wantShares {
		old := a.shares[name]
		if old != nil && old.Target == spec.Target && slices.Equal(old.Allow, spec.Allow) && old.Path == spec.Path && old.Code == spec.Code {
			continue
		}
		s := &share{ShareSpec: spec, broker: b, ticket: tickets[name], stats: &counters{}, announced: &atomic.Bool{}, admitted: &admitted{}}
		if old != nil {
			s.ticket, s.stats, s.announced, s.admitted = old.ticket, old.stats, old.announced, old.admitted
		}
		a.shares[name] = s
		register = append(register, s)
	}
	wantForwards := map[string]ConnectSpec{}
	for _, c := range o.Connects {
		wantForwards[c.key()] = c
	}
	var start []*forward
	for k, f := range a.forwards {
		if _, ok := wantForwards[k]; !ok {
			f.log.Info("forward removed")
			f.cancel()
			delete(a.forwards, k)
		}
	}
	for k, c := range wantForwards {
		if f, ok := a.forwards[k]; ok {
			f.setPath(c.Path)
		} else {
			f := newForward(a, c)
			a.forwards[k] = f
			start = append(start, f)
		}
	}
	a.mu.Unlock()

	for _, s := range unregister {
		s.broker.unregister(a.ctx, s.Name)
	}
	for _, s := range register {
		b.registerNow(a.ctx, s)
	}
	for _, f := range start {
		a.spawn(func() {
			err := f.run()
			switch {
			case err == nil || f.ctx.Err() != nil:
			case a.opts.KeepGoing:
				f.setErr(err)
				f.log.WithError(err).Error("forward stopped")
			default:
				a.fail(err)
			}
		})
	}
	return nil
}

// ticketPath is where a kept ticket's secret lives.
func ticketPath(stateDir, name string) string {
	return filepath.Join(stateDir, "tickets", name+".secret")
}

// KeptTickets names the shares whose tickets stateDir keeps.
func KeptTickets(stateDir string) []string {
	files, _ := filepath.Glob(ticketPath(stateDir, "*"))
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".secret"))
	}
	return names
}

// ForgetTicket drops the kept secret of share name's ticket, so the next
// run makes a new ticket and the old one stops working.
func ForgetTicket(stateDir, name string) error {
	if err := os.Remove(ticketPath(stateDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forget the ticket of %s: %w", name, err)
	}
	return nil
}

// ticketFor makes the ticket of a new share: with KeepTickets its secret
// is kept in the state dir, so the share keeps its ticket across restarts.
func (a *Agent) ticketFor(name string) (secure.Ticket, error) {
	u := a.brokerURL()
	t, err := secure.NewTicket(u.Addr, u.Pin, a.id.ID(), name)
	if err != nil || !a.opts.KeepTickets {
		return t, err
	}
	path := ticketPath(a.opts.StateDir, name)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return t, fmt.Errorf("keep ticket: %w", err)
		}
		err = secure.CreateFileExclusive(path, []byte(hex.EncodeToString(t.Secret[:])+"\n"), 0o600)
		if err == nil {
			return t, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return t, fmt.Errorf("keep ticket: %w", err)
		}
		b, err = os.ReadFile(path) // a process sharing it beside us made it
	}
	switch {
	case err == nil:
		raw, derr := hex.DecodeString(strings.TrimSpace(string(b)))
		if derr != nil || len(raw) != secure.SecretSize {
			return t, fmt.Errorf("ticket secret %s is corrupt; delete it to issue share %s a new ticket", path, name)
		}
		copy(t.Secret[:], raw)
		return t, nil
	default:
		return t, fmt.Errorf("read ticket secret: %w", err)
	}
}

// announce reports a share's ticket the first time the broker accepts it,
// and warns if nothing listens on its target.
func (a *Agent) announce(s *share) {
	if !s.announced.CompareAndSwap(false, true) {
		return
	}
	if a.opts.OnTicket != nil {
		a.opts.OnTicket(s.Name, *s.ticket)
	}
	a.checkTarget(s)
}

// checkTarget warns when nothing listens on a share's target: a typo'd
// port, or a server not started yet, shows now rather than as a reset the
// connector's user cannot explain.
func (a *Agent) checkTarget(s *share) {
	if listening, known := tcpListening(s.Target); known && !listening {
		a.log.WithField("share", s.Name).Warnf("nothing listens on %s (yet): its connections fail until something does", s.Target)
	}
}

// shareNamed returns the share as declared now.
func (a *Agent) shareNamed(name string) *share {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.shares[name]
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

// brokerURL is the broker this agent logged in to, or nil.
func (a *Agent) brokerURL() *secure.BrokerURL {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.opts.Broker
}

// brokerFor picks the control session a ticket's connector uses: the logged-in
// broker when the ticket points there (so the token admits us fully), else a
// tokenless guest session to the ticket's broker.
func (a *Agent) brokerFor(t *secure.Ticket) *brokerClient {
	if u := a.brokerURL(); t == nil || (u != nil && sameBroker(*u, *t)) {
		return a.broker(*u)
	}
	return a.broker(secure.BrokerURL{Addr: t.Broker, Pin: t.Pin})
}

// sameBroker says whether the ticket was made at the broker of u: the same
// pin and an address in common. The nodes of one cluster share the pin, and
// the same cluster's URL and tickets may list its nodes in another order, or
// more or fewer of them; one address in common is one node, hence one
// cluster.
func sameBroker(u secure.BrokerURL, t secure.Ticket) bool {
	if u.Pin != t.Pin {
		return false
	}
	for _, a := range u.Addrs() {
		if slices.Contains(t.Addrs(), a) {
			return true
		}
	}
	return false
}

func (a *Agent) sharesFor(b *brokerClient) []*share {
	a.mu.Lock()
	defer a.mu.Unlock()
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
	s := a.shareNamed(in.Share)
	connector, err := secure.ParseAgentID(in.Connector)
	if s == nil || err != nil {
		rep.Code, rep.Message = proto.CodeRefused, "no such share"
		log.Warn("introduction refused: no such share")
		return rep
	}
	if _, p, err := net.SplitHostPort(s.Target); err == nil {
		n, _ := strconv.ParseUint(p, 10, 16)
		rep.Port = uint16(n)
	}
	p := a.paths.byWire(in.Path)
	switch {
	case p == nil:
		rep.Code, rep.Message = proto.CodeBadRequest, "unknown path "+in.Path
		return rep
	case isRelay(in.Path) && !allows(s.Path, in.Path):
		rep.Code, rep.Message = proto.CodeRefused, "share "+in.Share+" does not take this path (its policy: "+s.Path+")"
		log.WithField("policy", s.Path).Info("relay introduction refused by the share's path policy")
		return rep
	case isRelay(in.Path):
		p.answer(ctx, b, in, connector, rep)
	case len(in.Candidates) > 0 && !allows(s.Path, in.Path):
		rep.Path = proto.PathRelay // no punch: ask the connector for a relay introduction
	case len(in.Candidates) > 0:
		p.answer(ctx, b, in, connector, rep)
	}
	log.WithFields(logrus.Fields{"candidates": len(rep.Candidates), "peer_nat": natType(in.NAT), "path": in.Path}).Debug("introduced") // "peer session up" follows
	return rep
}

func shortID(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
