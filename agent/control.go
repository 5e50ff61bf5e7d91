package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/backoff"
	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/proxy"
	"github.com/peerport/peerport/internal/secure"
)

// Control-channel timing. Pings keep the broker's idle timer (90s) and NAT
// mappings of the control connection fresh.
const (
	controlDialTimeout = 10 * time.Second
	controlPingEvery   = 20 * time.Second
	// controlCheckWait is how long, after a network change, the broker
	// has to answer a ping before the control session is re-made.
	controlCheckWait = 5 * time.Second
	controlWriteWait = 10 * time.Second
	requestTimeout   = 20 * time.Second
)

// ErrUnauthorized means the broker refused our token or ticket: retrying
// cannot help, the user has to fix the URL or ticket.
var ErrUnauthorized = errors.New("unauthorized")

// ErrBrokerDown means no control session is up right now.
var ErrBrokerDown = errors.New("broker not connected")

// RemoteError is an error code and message the broker sent back.
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string { return e.Message + " (" + e.Code + ")" }

// Unwrap lets callers test errors.Is(err, ErrUnauthorized).
func (e *RemoteError) Unwrap() error {
	if proto.Final(e.Code) {
		return ErrUnauthorized
	}
	return nil
}

func remoteErr(code, msg string) error {
	if code == "" {
		return nil
	}
	return &RemoteError{Code: code, Message: msg}
}

// controlConn is one established control session.
type controlConn struct {
	conn    *tls.Conn
	addr    string // the broker node's host:port, one of the URL's addresses
	via     string // the proxy it goes through, redacted; "" when direct
	welcome *proto.Welcome
	log     logrus.FieldLogger
	onIntro func(*proto.Intro) *proto.IntroReply
	// onCodePass answers a step of a claim of one of our short codes.
	onCodePass func(*proto.CodePass) *proto.CodePassReply
	// netChange, when set, is closed at the agent's next network change.
	netChange func() <-chan struct{}
	writeMu   sync.Mutex
	mu        sync.Mutex
	waiters   map[uint64]chan proto.Message
	nextID    atomic.Uint64
	pingSent  atomic.Int64 // unix nanos of the outstanding ping
	rtt       atomic.Int64 // nanoseconds
	done      chan struct{}
	err       error // set before done is closed
}

// brokerDialer is how this agent reaches brokers: TCP directly or through
// an HTTP CONNECT proxy, then TLS with the agent's identity, verifying the
// broker by its pin or, for a pin-less URL, by its certificate chain.
type brokerDialer struct {
	id    *secure.Identity
	proxy proxy.Dialer
	// instance names this process among those of its identity, in every
	// Hello (see proto.Hello.Instance).
	instance string
}

func newBrokerDialer(id *secure.Identity, proxyURL *url.URL) *brokerDialer {
	return &brokerDialer{id: id, instance: newInstance(), proxy: proxy.Dialer{
		Config:  proxy.Config{URL: proxyURL},
		Forward: &net.Dialer{Timeout: controlDialTimeout, KeepAlive: 15 * time.Second},
	}}
}

// newInstance is a process's instance name: 64 random bits, enough that
// the processes of one identity never collide.
func newInstance() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// dial opens a TLS connection to the broker node of u speaking alpn: the
// control channel or a broker relay connection. u names one address (a
// URL of several is narrowed by BrokerURL.At first), so a pin-less URL's
// certificate is verified for the host of the node dialed.
//
// The address goes to the dialer as written, a name not resolved here:
// net.Dialer tries each address a name resolves to in turn (sharing the
// timeout among them), and an HTTP proxy resolves the name itself. So a
// broker of several nodes behind one name with several A records fails over
// within this one dial; nothing here may resolve the name and dial one IP.
func (d *brokerDialer) dial(ctx context.Context, u secure.BrokerURL, alpn string) (*tls.Conn, error) {
	if len(u.Addrs()) != 1 {
		return nil, fmt.Errorf("dial broker %s: %w: dial one address of the URL at a time", u.Addr, secure.ErrBadBrokerURL)
	}
	cfg, err := secure.BrokerClientConfig(d.id, u, alpn)
	if err != nil {
		return nil, err
	}
	cfg.NextProtos = []string{alpn}
	dctx, cancel := context.WithTimeout(ctx, controlDialTimeout)
	defer cancel()
	raw, err := d.proxy.DialContext(dctx, "tcp", u.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial broker %s: %w", u.Addr, err)
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(dctx); err != nil {
		raw.Close()
		if errors.Is(err, secure.ErrUntrustedBroker) {
			return nil, err // already names the broker, and says what to do
		}
		return nil, fmt.Errorf("broker %s: tls: %w", u.Addr, err)
	}
	return conn, nil
}

// finalErr reports whether a broker's answer rules out retrying: a wrong
// token (the same for every node of a broker) or a key that is not the
// pinned one or a certificate that does not verify (a wrong URL, someone in
// the middle, or a node that is not the broker's: the error names it).
func finalErr(err error) bool {
	return errors.Is(err, ErrUnauthorized) || errors.Is(err, secure.ErrPinMismatch) || errors.Is(err, secure.ErrUntrustedBroker)
}

// dialAny makes a control session to the first of u's addresses that
// answers, trying them in order, for the one-shot commands (login,
// netcheck). A final refusal ends the search at once.
func dialAny(ctx context.Context, d *brokerDialer, u secure.BrokerURL, log logrus.FieldLogger) (*controlConn, error) {
	var errs []error
	for _, addr := range u.Addrs() {
		c, err := dialControl(ctx, d, u.At(addr), log.WithField("broker", addr))
		if err == nil || finalErr(err) || ctx.Err() != nil {
			return c, err
		}
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, fmt.Errorf("no address of broker %s answered: %w", u.Addr, errors.Join(errs...))
}

// dialControl connects to the one node u names, authenticates and reads
// the Welcome.
func dialControl(ctx context.Context, d *brokerDialer, u secure.BrokerURL, log logrus.FieldLogger) (*controlConn, error) {
	conn, err := d.dial(ctx, u, secure.ALPNControl)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(controlDialTimeout))
	start := time.Now()
	if err := proto.Write(conn, &proto.Hello{Token: u.Token, Version: Version, Instance: d.instance}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("broker %s: hello: %w", u.Addr, err)
	}
	m, err := proto.Read(conn, 0)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("broker %s: hello: %w", u.Addr, err)
	}
	conn.SetDeadline(time.Time{})
	c := &controlConn{conn: conn, addr: u.Addr, via: proxy.Via(conn.NetConn()), log: log, waiters: map[uint64]chan proto.Message{}, done: make(chan struct{})}
	c.rtt.Store(int64(time.Since(start)))
	switch m := m.(type) {
	case *proto.Welcome:
		c.welcome = m
		return c, nil
	case *proto.Error:
		conn.Close()
		return nil, fmt.Errorf("broker %s: %w", u.Addr, remoteErr(m.Code, m.Message))
	default:
		conn.Close()
		return nil, fmt.Errorf("broker %s: unexpected %T before Welcome", u.Addr, m)
	}
}

// serve reads messages until the connection fails or ctx ends.
func (c *controlConn) serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer stop()
	go c.pinger()
	err := c.readLoop()
	c.conn.Close()
	c.mu.Lock()
	c.err = err
	for id, w := range c.waiters {
		close(w)
		delete(c.waiters, id)
	}
	c.mu.Unlock()
	close(c.done)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (c *controlConn) readLoop() error {
	for {
		c.conn.SetReadDeadline(time.Now().Add(3 * controlPingEvery))
		m, err := proto.Read(c.conn, proto.MaxMessageSize)
		if err != nil {
			return fmt.Errorf("control read: %w", err)
		}
		switch m := m.(type) {
		case *proto.Ping:
			go c.send(&proto.Pong{Nonce: m.Nonce})
		case *proto.Pong:
			if sent := c.pingSent.Swap(0); sent != 0 && uint64(sent) == m.Nonce {
				c.rtt.Store(time.Now().UnixNano() - sent)
			}
		case *proto.Intro:
			go func() {
				if err := c.send(c.onIntro(m)); err != nil {
					c.log.WithError(err).Warn("answer introduction")
				}
			}()
		case *proto.CodePass:
			if c.onCodePass == nil {
				continue // a connector's own session: it offers no codes
			}
			go func() {
				if err := c.send(c.onCodePass(m)); err != nil {
					c.log.WithError(err).Warn("answer code claim")
				}
			}()
		case *proto.Result:
			c.deliver(m.ID, m)
		case *proto.ConnectReply:
			c.deliver(m.ID, m)
		case *proto.CodeOpened:
			c.deliver(m.ID, m)
		case *proto.CodeClaimReply:
			c.deliver(m.ID, m)
		case *proto.Error:
			return fmt.Errorf("broker closed the session: %w", remoteErr(m.Code, m.Message))
		default:
			c.log.Debugf("ignoring unexpected %T from broker", m)
		}
	}
}

func (c *controlConn) pinger() {
	t := time.NewTicker(controlPingEvery)
	defer t.Stop()
	for {
		var changed <-chan struct{}
		if c.netChange != nil {
			changed = c.netChange()
		}
		select {
		case <-c.done:
			return
		case <-t.C:
		case <-changed:
			// The network under us changed (a new address, a new Wi-Fi): the
			// path to the broker may be gone with no packet to say so, and
			// introductions would wait for a session that cannot hear them.
			// Ask now, and end the session unless an answer comes soon; at
			// once if its own address left the host (nothing sent from
			// it can arrive).
			wait := controlCheckWait
			if addrGone(c.conn.LocalAddr()) {
				c.log.Info("the control session's address is gone; connecting again")
				wait = 0
			}
			c.conn.SetReadDeadline(time.Now().Add(wait))
		}
		now := time.Now().UnixNano()
		c.pingSent.Store(now)
		if err := c.send(&proto.Ping{Nonce: uint64(now)}); err != nil {
			return
		}
	}
}

func (c *controlConn) deliver(id uint64, m proto.Message) {
	c.mu.Lock()
	w, ok := c.waiters[id]
	delete(c.waiters, id)
	c.mu.Unlock()
	if ok {
		w <- m
	}
}

func (c *controlConn) send(m proto.Message) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.conn.SetWriteDeadline(time.Now().Add(controlWriteWait))
	return proto.Write(c.conn, m)
}

// request sends a message carrying id and waits for the answer with that id.
func (c *controlConn) request(ctx context.Context, id uint64, m proto.Message) (proto.Message, error) {
	w := make(chan proto.Message, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrBrokerDown, c.err)
	}
	c.waiters[id] = w
	c.mu.Unlock()
	if err := c.send(m); err != nil {
		c.mu.Lock()
		delete(c.waiters, id)
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrBrokerDown, err)
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	select {
	case r, ok := <-w:
		if !ok {
			return nil, ErrBrokerDown
		}
		return r, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.waiters, id)
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

func (c *controlConn) register(ctx context.Context, s *share) error {
	id := c.nextID.Add(1)
	reg := &proto.Register{ID: id, Share: s.Name}
	if s.ticket != nil {
		h := s.ticket.AdmitHash()
		reg.AdmitHash = h[:]
	}
	for _, a := range slices.Concat(s.Allow, s.admitted.list()) {
		reg.Allow = append(reg.Allow, a.String())
	}
	r, err := c.request(ctx, id, reg)
	if err != nil {
		return fmt.Errorf("register share %s: %w", s.Name, err)
	}
	res, ok := r.(*proto.Result)
	if !ok {
		return fmt.Errorf("register share %s: unexpected %T", s.Name, r)
	}
	if err := remoteErr(res.Code, res.Message); err != nil {
		return fmt.Errorf("register share %s: %w", s.Name, err)
	}
	return nil
}

// requestAs is request for an answer of type R.
func requestAs[R proto.Message](ctx context.Context, c *controlConn, id uint64, m proto.Message) (R, error) {
	var none R
	r, err := c.request(ctx, id, m)
	if err != nil {
		return none, err
	}
	rep, ok := r.(R)
	if !ok {
		return none, fmt.Errorf("unexpected %T", r)
	}
	return rep, nil
}

func (c *controlConn) connect(ctx context.Context, req *proto.Connect) (*proto.ConnectReply, error) {
	req.ID = c.nextID.Add(1)
	rep, err := requestAs[*proto.ConnectReply](ctx, c, req.ID, req)
	if err != nil {
		return nil, err
	}
	if err := remoteErr(rep.Code, rep.Message); err != nil {
		return nil, err
	}
	return rep, nil
}

// presence asks whether peer (its process instance, when named) is online
// at the broker; known is false when the broker cannot say (it did not
// introduce us).
func (c *controlConn) presence(ctx context.Context, peer secure.AgentID, instance string) (online, known bool, err error) {
	id := c.nextID.Add(1)
	r, err := c.request(ctx, id, &proto.Presence{ID: id, Agent: peer.String(), Instance: instance})
	if err != nil {
		return false, false, err
	}
	res, ok := r.(*proto.Result)
	if !ok {
		return false, false, fmt.Errorf("presence: unexpected %T", r)
	}
	switch res.Code {
	case "":
		return true, true, nil
	case proto.CodeNotFound:
		return false, true, nil
	}
	return false, false, nil
}

// brokerClient keeps one control session to one broker alive, reconnecting
// with backoff, and re-registers the agent's shares after each reconnect.
// A broker URL of several addresses (the nodes of one broker) is one
// brokerClient: its session is with one node at a time, and moves to
// another when that one fails (see run).
type brokerClient struct {
	url   secure.BrokerURL
	agent *Agent
	log   logrus.FieldLogger // names the URL's addresses; a session's names its node (logger)

	// regMu orders registrations: a session registers the shares it
	// finds and becomes current under it, and registerNow waits for it.
	// So a share added meanwhile is either among those found or is
	// registered by registerNow on that session, never missed by both.
	regMu sync.Mutex

	mu        sync.Mutex
	cur       *controlConn
	node      string        // the address of the node that last accepted a session; "" before the first
	up        chan struct{} // closed while cur is set; replaced when it drops
	lastErr   error
	reconnect int
	fatal     error
	stun      []string      // the broker's STUN servers, resolved
	report    *nat.Report   // NAT discovery over those, nil until it ran
	firstScan chan struct{} // closed when this session's first discovery ended
}

func newBrokerClient(a *Agent, u secure.BrokerURL) *brokerClient {
	return &brokerClient{url: u, agent: a, up: make(chan struct{}),
		log: a.log.WithFields(logrus.Fields{"component": "control", "broker": u.Addr})}
}

// run keeps the session up until ctx ends or the broker refuses us for good:
// a wrong token, or a key that is not the pinned one (a wrong URL or someone
// in the middle), is final; anything else is retried with backoff.
//
// With several addresses, the attempts go in rounds: a round starts at the
// address that last worked (the first address before any did) and, when a
// dial or handshake fails or a session ends, moves on to the next address
// at once; only a round in which every address failed is followed by the
// backoff sleep. A session on one node that ends counts as that node's
// attempt, so an agent whose node dies is on the next one within a dial,
// while nodes that all accept and drop it still back off. A final refusal
// from any node ends it all: a token is refused by every node alike, and a
// node with the wrong key is named in the error.
func (b *brokerClient) run(ctx context.Context) error {
	bo := backoff.Backoff{Base: 500 * time.Millisecond, Cap: 30 * time.Second, Stable: time.Minute}
	addrs := b.url.Addrs()
	if len(addrs) == 0 {
		return fmt.Errorf("%w: no address", secure.ErrBadBrokerURL)
	}
	next := failoverOrder(len(addrs), b.agent.id.ID())
	start, i, tried := 0, 0, 0 // start: the address that last worked
	for ctx.Err() == nil {
		addr := addrs[i]
		c, err := dialControl(ctx, b.agent.dialer, b.url.At(addr), b.log.WithField("broker", addr))
		connected := err == nil
		if connected {
			start, tried = i, 0
			b.mu.Lock()
			b.node = addr
			b.mu.Unlock()
			c.onIntro = func(in *proto.Intro) *proto.IntroReply { return b.agent.onIntro(ctx, b, in) }
			c.onCodePass = func(m *proto.CodePass) *proto.CodePassReply { return b.agent.codes.pass(ctx, c, m) }
			err = b.session(ctx, c, &bo)
		}
		if ctx.Err() != nil {
			break
		}
		b.mu.Lock()
		b.lastErr = err
		if finalErr(err) {
			b.fatal = err
			close(b.up) // wake waiters; they see fatal
			b.mu.Unlock()
			return err
		}
		b.reconnect++
		b.mu.Unlock()
		i, tried = next[i], tried+1
		if tried < len(addrs) {
			what := "unreachable"
			if connected {
				what = "lost"
			}
			b.log.WithError(err).WithField("next", addrs[i]).Warnf("broker node %s %s; trying the next address", addr, what)
			continue
		}
		i, tried = start, 0
		d := bo.Next()
		if len(addrs) == 1 {
			b.log.WithError(err).Warnf("broker unreachable; retrying in %v", d.Round(time.Millisecond))
		} else {
			b.log.WithError(err).Warnf("broker unreachable at all %d addresses; retrying in %v, from %s", len(addrs), d.Round(time.Millisecond), addrs[i])
		}
		if backoff.Sleep(ctx, d) != nil {
			break
		}
	}
	return ctx.Err()
}

// failoverOrder is the address an agent tries after each of n: next[i]
// follows i, and following it from any address visits all n once. The
// cycle is a permutation of the URL's order seeded by the agent's ID, so
// the agents of a node that dies move to every other node, spread, rather
// than all to the one listed after it; an agent still starts at the first
// address and keeps its order from run to run.
func failoverOrder(n int, id secure.AgentID) []int {
	cycle := mrand.New(mrand.NewPCG(binary.BigEndian.Uint64(id[:8]), binary.BigEndian.Uint64(id[8:16]))).Perm(n)
	next := make([]int, n)
	for k, a := range cycle {
		next[a] = cycle[(k+1)%n]
	}
	return next
}

// logger is the current session's logger, which names its node; b.log
// between sessions.
func (b *brokerClient) logger() logrus.FieldLogger {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur != nil {
		return b.cur.log
	}
	return b.log
}

// nodeAddr is the address of the node this client's session is with (or,
// between sessions, was last with): the one the broker relay of its
// introductions is on.
func (b *brokerClient) nodeAddr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.node != "" {
		return b.node
	}
	addr, _, _ := strings.Cut(b.url.Addr, ",") // before any session: the first address
	return addr
}

func (b *brokerClient) session(ctx context.Context, c *controlConn, bo *backoff.Backoff) error {
	errc := make(chan error, 1)
	c.netChange = b.agent.netChange
	go func() { errc <- c.serve(ctx) }() // replies to Register arrive through it
	b.regMu.Lock()
	for _, s := range b.agent.sharesFor(b) {
		if err := c.register(ctx, s); err != nil {
			b.regMu.Unlock()
			c.conn.Close()
			<-errc
			return err
		}
		s.on = c
		c.log.WithField("share", s.Name).Info("share online")
		b.agent.announce(s)
		if err := b.agent.codes.open(ctx, c, s); err != nil {
			c.log.WithError(err).WithField("share", s.Name).Warn("no short code; the ticket works")
		}
	}
	if hook := b.agent.testHookRegistered; hook != nil {
		hook()
	}
	bo.Connected(time.Now())
	l := c.log.WithField("observed", c.welcome.Observed)
	if c.via != "" {
		l = l.WithField("proxy", c.via)
	}
	l.Info("connected to broker")
	dctx, stopDiscover := context.WithCancel(ctx)
	discovered := make(chan struct{})
	scanned := make(chan struct{})
	b.mu.Lock()
	b.cur = c
	b.stun = stunServers(c.welcome.STUN, c.addr) // the node's own host, not the URL's first
	b.firstScan = scanned
	close(b.up)
	b.mu.Unlock()
	b.regMu.Unlock()
	go func() {
		defer close(discovered)
		b.discover(dctx, b.stun, scanned)
	}()
	err := <-errc
	stopDiscover()
	<-discovered
	b.mu.Lock()
	b.cur = nil
	b.up = make(chan struct{})
	b.mu.Unlock()
	bo.Lost(time.Now())
	return err
}

// registerNow registers a share added while running; when the broker is
// away, the next session registers it with the rest.
func (b *brokerClient) registerNow(ctx context.Context, s *share) {
	b.regMu.Lock()
	defer b.regMu.Unlock()
	c := b.current()
	if c == nil || s.on == c {
		return // the next session registers it; or this one did
	}
	if err := c.register(ctx, s); err != nil {
		c.log.WithError(err).WithField("share", s.Name).Warn("register share")
		return
	}
	s.on = c
	c.log.WithField("share", s.Name).Info("share online")
	b.agent.announce(s)
}

// unregister withdraws a removed share.
func (b *brokerClient) unregister(ctx context.Context, name string) {
	c := b.current()
	if c == nil {
		return
	}
	id := c.nextID.Add(1)
	if _, err := c.request(ctx, id, &proto.Unregister{ID: id, Share: name}); err != nil {
		c.log.WithError(err).WithField("share", name).Warn("unregister share")
		return
	}
	c.log.WithField("share", name).Info("share withdrawn")
}

// current is the live session, or nil while there is none; conn waits
// for one.
func (b *brokerClient) current() *controlConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cur
}

// conn waits for a live session.
func (b *brokerClient) conn(ctx context.Context) (*controlConn, error) {
	for {
		b.mu.Lock()
		cur, up, fatal := b.cur, b.up, b.fatal
		b.mu.Unlock()
		if fatal != nil {
			return nil, fatal
		}
		if cur != nil {
			return cur, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			b.mu.Lock()
			last := b.lastErr
			b.mu.Unlock()
			if last != nil {
				return nil, fmt.Errorf("%w: %w", ErrBrokerDown, last)
			}
			return nil, ctx.Err()
		}
	}
}

// rttMillis is the last measured control RTT.
func (b *brokerClient) rttMillis() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur == nil {
		return 0
	}
	return millis(time.Duration(b.cur.rtt.Load()))
}

func (b *brokerClient) status() BrokerStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := BrokerStatus{Addr: b.url.Addr, Connected: b.cur != nil, Reconnects: b.reconnect}
	if addrs := b.url.Addrs(); len(addrs) > 1 {
		st.Addrs = addrs
	}
	if b.cur != nil {
		st.Addr = b.cur.addr // the node connected to
		st.RTTMillis = millis(time.Duration(b.cur.rtt.Load()))
		st.Observed = b.cur.welcome.Observed
	}
	if b.lastErr != nil {
		st.LastError = b.lastErr.Error()
	}
	if b.report != nil {
		st.NAT = b.report.Type
		st.Verdict = b.report.Verdict
	}
	return st
}
