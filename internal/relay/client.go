// Package relay owns the TURN side of peerport's relay path (DESIGN §3,
// "Relay"): the short-lived TURN REST credentials the broker issues (cred.go)
// and the agent's client for RFC 6062 TCP allocations (client*.go), used when
// no punched path can be made.
//
// The sharer allocates a TCP relay, permits the connector's public IP and
// passes the relayed address to the connector through the broker. The
// connector dials it with a plain TCP dial. The TURN server tells the sharer
// on its control connection, and the sharer binds a fresh TCP connection to
// that peer; from then on that data connection carries the peer's bytes
// unchanged, both ways (the TLS peer channel runs over it):
//
//	sharer (Allocation)               TURN server                  connector
//	   |--- control connection, TCP ---->|                                |
//	   |  Allocate REQUESTED-TRANSPORT=6 |                                |
//	   |<------- 401 REALM NONCE --------|                                |
//	   |  Allocate USERNAME..INTEGRITY   |                                |
//	   |<------- XOR-RELAYED-ADDRESS ----|   (Addr, via the broker) ----->|
//	   |  CreatePermission XOR-PEER-ADDRESS=connector's IP                |
//	   |                                 |<---- TCP connect to Addr ------|
//	   |<-- ConnectionAttempt CONNECTION-ID XOR-PEER-ADDRESS              |
//	   |=== data connection, new TCP ===>|                                |
//	   |  ConnectionBind CONNECTION-ID   |                                |
//	   |<------ ConnectionBind success --|                                |
//	   |<============ raw bytes both ways, no framing =================>|
//
// Messages are STUN (RFC 5389: 20-byte header, then attributes; on TCP the
// header's length field frames them). Every request after the first carries
// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (long-term credentials); a 438
// answer brings a new NONCE and the request is repeated.
//
// pion/turn's client does the Allocate exchange and refreshes the allocation
// (at half its lifetime). This package does the rest itself over pion's
// transaction layer: permissions (pion's TCP allocation forgets permissions
// it did not create for its own Dial, so it would never refresh ours),
// ConnectionAttempt handling and ConnectionBind (with contexts, and reading
// the answer without a byte of the peer's data), and waiting for the
// deallocation to be answered.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/logging"
)

// Timings. Permissions last 300 s on the server (RFC 5766 §8); they are
// refreshed well before. The server keeps an unbound peer connection for 30 s
// (RFC 6062 §5.3); a bind taking longer has failed.
const (
	defaultPermRefresh = 2 * time.Minute
	permTimeout        = 10 * time.Second
	bindTimeout        = 15 * time.Second
	// defaultNonceFresh: a nonce known good this recently is used for a
	// ConnectionBind without checking it first (see bind).
	defaultNonceFresh = time.Second
	deallocTimeout    = 2 * time.Second
	// binders bind announced peer connections, each one at a time, and
	// hold it until Accept takes it. maxBacklog ConnectionAttempts wait for
	// a binder; more are dropped (the server closes those peer connections
	// after 30 s). Like a listen backlog, both work without Accept calls.
	binders    = 4
	maxBacklog = 128
)

// Config says where and as whom to allocate.
type Config struct {
	// URL is the TURN server: "turn:HOST:PORT?transport=tcp" or
	// "turn:HOST:PORT" (see ParseURL).
	URL      string
	Username string
	Password string
	// Log gets this package's events, and pion's chatter at debug level.
	// Nil means silence.
	Log logrus.FieldLogger
	// Dial opens the control and data connections to the TURN server. Nil
	// means a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// IPv6 asks for an IPv6 relayed address (RFC 6156
	// REQUESTED-ADDRESS-FAMILY); false: IPv4, whatever the family of the
	// connection to the server. Peers must be of the relayed address's
	// family, so it is the connector's family, not necessarily ours.
	IPv6 bool

	// For tests: permRefresh overrides defaultPermRefresh, nonceFresh
	// (when not 0) overrides defaultNonceFresh.
	permRefresh time.Duration
	nonceFresh  time.Duration
}

// Allocation is a TCP allocation (RFC 6062) on a TURN server, held by its
// control connection. Its methods are safe for concurrent use.
type Allocation struct {
	log         logrus.FieldLogger
	dial        func(ctx context.Context, network, address string) (net.Conn, error)
	server      string // ip:port of the control connection's far end
	relayed     netip.AddrPort
	ctrl        net.Conn
	client      *turn.Client
	listening   bool      // pion's read loop runs
	pion        io.Closer // pion's *client.TCPAllocation; Close deallocates
	username    stun.Username
	realm       stun.Realm
	integrity   stun.MessageIntegrity
	permRefresh time.Duration
	nonceFresh  time.Duration

	ctx      context.Context // canceled by Close: stops binds and refreshes
	cancel   context.CancelFunc
	done     chan struct{}  // closed by Close
	ready    chan net.Conn  // bound data connections, to Accept
	attempts chan attempt   // announced peer connections, to the binders
	wg       sync.WaitGroup // the binders and the permission refresher

	readDone chan struct{} // closed when the control connection's reader stops
	lost     chan struct{} // closed, with lostErr set, when the allocation is unusable
	lostErr  error
	lostOnce sync.Once

	deallocAnswered chan struct{} // closed, with deallocErr set, when pion's Refresh(0) is answered
	deallocErr      error

	mu        sync.Mutex
	closed    bool
	nonce     stun.Nonce
	nonceOK   time.Time // when the nonce was last known good
	perms     map[netip.Addr]struct{}
	deallocTx *[stun.TransactionIDSize]byte

	checkMu sync.Mutex // one nonce check at a time

	closeOnce sync.Once
	closeErr  error
}

// Allocate opens the control connection (TCP) to the TURN server and a TCP
// allocation on it, with an IPv4 relayed address (IPv6 with Config.IPv6).
// It returns once the
// allocation is made; pion then refreshes it, and this package the
// permissions given to Permit, until Close.
func Allocate(ctx context.Context, cfg Config) (*Allocation, error) {
	hostport, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.Username == "" {
		return nil, fmt.Errorf("relay: allocate on %s: no TURN username (the broker issues TURN credentials)", hostport)
	}
	log := cfg.Log
	if log == nil {
		log = discardLogger()
	}
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	permRefresh := cfg.permRefresh
	if permRefresh <= 0 {
		permRefresh = defaultPermRefresh
	}
	nonceFresh := cfg.nonceFresh
	if nonceFresh == 0 {
		nonceFresh = defaultNonceFresh
	}

	conn, err := dial(ctx, "tcp", hostport)
	if err != nil {
		return nil, fmt.Errorf("relay: connect to TURN server %s: %w", hostport, err)
	}
	a := &Allocation{
		log:             log,
		dial:            dial,
		server:          conn.RemoteAddr().String(),
		ctrl:            conn,
		username:        stun.NewUsername(cfg.Username),
		permRefresh:     permRefresh,
		nonceFresh:      nonceFresh,
		done:            make(chan struct{}),
		ready:           make(chan net.Conn),
		attempts:        make(chan attempt, maxBacklog),
		readDone:        make(chan struct{}),
		lost:            make(chan struct{}),
		deallocAnswered: make(chan struct{}),
		perms:           make(map[netip.Addr]struct{}),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	fail := func(err error) (*Allocation, error) {
		a.teardown()
		return nil, fmt.Errorf("relay: allocate on TURN server %s: %w", a.server, err)
	}

	// The data connections must reach the same server as the control
	// connection, so both use its address, not the name again.
	family := turn.RequestedAddressFamilyIPv4
	if cfg.IPv6 {
		family = turn.RequestedAddressFamilyIPv6
	}
	a.client, err = turn.NewClient(&turn.ClientConfig{
		TURNServerAddr:         a.server,
		Username:               cfg.Username,
		Password:               cfg.Password,
		Software:               "peerport",
		Conn:                   &controlConn{STUNConn: turn.NewSTUNConn(conn), a: a},
		LoggerFactory:          logging.Pion(log),
		RequestedAddressFamily: family,
	})
	if err != nil {
		return fail(err)
	}
	if err := a.client.Listen(); err != nil {
		return fail(err)
	}
	a.listening = true
	pa, err := a.client.AllocateTCPWithContext(ctx)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fail(turnError(err))
	}
	a.pion = pa
	relayed, ok := pa.Addr().(*net.TCPAddr)
	var ip netip.Addr
	if ok {
		ip, ok = netip.AddrFromSlice(relayed.IP)
	}
	if !ok || !ip.IsValid() || ip.IsUnspecified() || relayed.Port == 0 {
		return fail(fmt.Errorf("unusable relayed address %v", pa.Addr()))
	}
	a.relayed = netip.AddrPortFrom(ip.Unmap(), uint16(relayed.Port))
	a.realm = append(stun.Realm(nil), a.client.Realm()...)
	a.integrity = stun.NewLongTermIntegrity(cfg.Username, a.realm.String(), cfg.Password)

	a.wg.Add(1 + binders)
	go a.refreshPermissions()
	for range binders {
		go a.binder()
	}
	a.log.WithFields(logrus.Fields{"server": a.server, "relayed": a.relayed}).Debug("relay: TCP allocation made")
	return a, nil
}

// Addr is the relayed transport address: what the connector dials.
func (a *Allocation) Addr() netip.AddrPort { return a.relayed }

// Server is the TURN server's address as dialed (ip:port), for status.
func (a *Allocation) Server() string { return a.server }

// Permit lets peers from these IPs connect to Addr (CreatePermission; the port
// does not matter to TURN). Permissions are kept until Close. IPv4-mapped
// IPv6 addresses count as IPv4; the family must be the relayed address's.
func (a *Allocation) Permit(ctx context.Context, ips ...netip.Addr) error {
	if len(ips) == 0 {
		return nil
	}
	norm := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case !ip.IsValid():
			return errors.New("relay: permit: invalid IP address")
		case ip.Is4() != a.relayed.Addr().Is4():
			return fmt.Errorf("relay: permit %s: the relayed address %s is of the other IP family", ip, a.relayed)
		}
		norm = append(norm, ip)
	}
	if a.isClosed() {
		return fmt.Errorf("relay: permit: %w", net.ErrClosed)
	}
	if err := a.createPermission(ctx, norm); err != nil {
		return fmt.Errorf("relay: permit %v on TURN server %s: %w", norm, a.server, err)
	}
	a.mu.Lock()
	for _, ip := range norm {
		a.perms[ip] = struct{}{}
	}
	a.mu.Unlock()
	a.log.WithField("peers", norm).Debug("relay: permission granted")
	return nil
}

// Accept returns the next inbound peer connection, already bound
// (ConnectionBind answered), so its bytes are the peer's. Its RemoteAddr is
// the peer as the TURN server saw it, its LocalAddr the relayed address.
// Accept returns when ctx ends, after Close (an error wrapping
// net.ErrClosed), or when the allocation is lost (control connection
// closed, refresh refused); then Close it and allocate anew.
func (a *Allocation) Accept(ctx context.Context) (net.Conn, error) {
	select {
	case c := <-a.ready:
		return c, nil
	default:
	}
	select {
	case c := <-a.ready:
		return c, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("relay: accept: %w", ctx.Err())
	case <-a.done:
		return nil, fmt.Errorf("relay: accept: %w", net.ErrClosed)
	case <-a.lost:
		return nil, a.lostErr
	}
}

// Close deallocates (Refresh with LIFETIME 0, waiting a few seconds at most
// for the answer), then closes the control connection and drops peer
// connections not yet accepted. It is idempotent.
//
// Data connections already returned by Accept are the caller's to close, but
// they do not outlive the allocation: both pion's server and coturn close
// every data connection of an allocation when it is deleted, which Close
// does (and closing the control connection alone would do too).
func (a *Allocation) Close() error {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		a.closed = true
		a.mu.Unlock()
		close(a.done)
		a.cancel()
		if a.pion != nil {
			if err := a.deallocate(); err != nil {
				a.log.WithError(err).Debug("relay: deallocation failed; closing the control connection ends the allocation")
			}
		}
		a.closeErr = a.teardown()
		a.log.WithField("server", a.server).Debug("relay: allocation closed")
	})
	return a.closeErr
}

// deallocate sends Refresh(0) and waits up to deallocTimeout for the answer.
func (a *Allocation) deallocate() error {
	// pion stops its refresh timer and sends Refresh(0) without waiting for
	// the answer; controlConn spots that request and its answer.
	if err := a.pion.Close(); err != nil {
		return err
	}
	t := time.NewTimer(deallocTimeout)
	defer t.Stop()
	var err error
	select {
	case <-a.deallocAnswered:
		err = a.deallocErr
	case <-a.lost:
		return a.lostErr
	case <-t.C:
		return fmt.Errorf("no answer in %v", deallocTimeout)
	}
	if !errors.Is(err, errStaleNonce) {
		return err
	}
	// pion does not repeat it with the new nonce; do it here.
	a.log.Debug("relay: deallocation: stale nonce; again with the new one")
	ctx, cancel := context.WithTimeout(context.Background(), deallocTimeout)
	defer cancel()
	_, err = a.request(ctx, func() []stun.Setter {
		return []stun.Setter{stun.TransactionID, stun.NewType(stun.MethodRefresh, stun.ClassRequest), lifetime(0)}
	})
	return err
}

// teardown closes pion's client and the control connection, and waits for
// every goroutine of a.
func (a *Allocation) teardown() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	if a.client != nil {
		a.client.Close()
	}
	err := a.ctrl.Close()
	if a.listening {
		<-a.readDone // pion's read loop has seen the close
	}
	a.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (a *Allocation) isClosed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

// lose marks the allocation unusable: Accept returns err from now on.
func (a *Allocation) lose(err error) {
	a.lostOnce.Do(func() {
		a.lostErr = err
		close(a.lost)
		if !a.isClosed() {
			a.log.WithError(err).Warn("relay: TURN allocation lost")
		}
	})
}

// controlFailed is called once the control connection's reader fails.
func (a *Allocation) controlFailed(err error) {
	a.lose(fmt.Errorf("relay: control connection to TURN server %s: %w", a.server, err))
	select {
	case <-a.readDone:
	default:
		close(a.readDone)
	}
}

// inbound sees each message from the control connection and reports
// whether pion should get it.
func (a *Allocation) inbound(raw []byte) bool {
	m := &stun.Message{Raw: append([]byte(nil), raw...)}
	if err := m.Decode(); err != nil {
		a.log.WithError(err).Debug("relay: dropping a non-STUN frame from the TURN server")
		return false
	}
	switch m.Type.Class {
	case stun.ClassIndication:
		if m.Type.Method == stun.MethodConnectionAttempt {
			a.connectionAttempt(m)
		} else {
			a.log.Debugf("relay: dropping a %s from the TURN server", m.Type)
		}
		return false
	case stun.ClassRequest:
		a.log.Debugf("relay: dropping a %s from the TURN server", m.Type)
		return false
	}
	a.learnNonce(m)
	a.mu.Lock()
	dealloc := a.deallocTx != nil && *a.deallocTx == m.TransactionID
	a.mu.Unlock()
	switch {
	case dealloc:
		select {
		case <-a.deallocAnswered: // an answer to the repeated request
		default:
			a.deallocErr = answerError(m)
			close(a.deallocAnswered)
		}
	case m.Type.Method == stun.MethodRefresh:
		// pion retries 438 itself; anything else means the allocation is gone.
		if err := answerError(m); err != nil && !errors.Is(err, errStaleNonce) {
			a.lose(fmt.Errorf("relay: TURN server %s refused to refresh the allocation: %w", a.server, err))
		}
	}
	return true
}

// outbound sees each message pion sends, to spot the deallocation.
func (a *Allocation) outbound(raw []byte) {
	m := &stun.Message{Raw: append([]byte(nil), raw...)}
	if m.Decode() != nil || m.Type != stun.NewType(stun.MethodRefresh, stun.ClassRequest) || !lifetimeZero(m) {
		return
	}
	a.mu.Lock()
	tx := m.TransactionID
	a.deallocTx = &tx
	a.mu.Unlock()
}

// learnNonce takes the nonce of an answer, and notes when the nonce was last
// known good: a new nonce, or a success answer on the control connection.
func (a *Allocation) learnNonce(m *stun.Message) {
	var n stun.Nonce
	got := n.GetFrom(m) == nil
	if !got && m.Type.Class != stun.ClassSuccessResponse {
		return
	}
	a.mu.Lock()
	if got {
		a.nonce = n
	}
	a.nonceOK = time.Now()
	a.mu.Unlock()
}

func (a *Allocation) currentNonce() stun.Nonce {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nonce
}

// request performs an authenticated transaction on the control connection,
// repeating it with the new nonce after 438.
func (a *Allocation) request(ctx context.Context, build func() []stun.Setter) (*stun.Message, error) {
	for try := 1; ; try++ {
		setters := append(build(), a.username, a.realm, a.currentNonce(), a.integrity, stun.Fingerprint)
		msg, err := stun.Build(setters...)
		if err != nil {
			return nil, err
		}
		res, err := a.client.PerformTransactionWithContext(msg, a.client.TURNServerAddr(), false, ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			select {
			case <-a.lost:
				return nil, a.lostErr
			default:
			}
			return nil, err
		}
		err = answerError(res.Msg)
		if errors.Is(err, errStaleNonce) && try < maxTries {
			a.log.Debugf("relay: %s: stale nonce; again with the new one", res.Msg.Type.Method)
			continue // inbound took the new nonce
		}
		return res.Msg, err
	}
}

func (a *Allocation) createPermission(ctx context.Context, ips []netip.Addr) error {
	_, err := a.request(ctx, func() []stun.Setter {
		s := []stun.Setter{stun.TransactionID, stun.NewType(stun.MethodCreatePermission, stun.ClassRequest)}
		for _, ip := range ips {
			s = append(s, peerAddress(netip.AddrPortFrom(ip, 0)))
		}
		return s
	})
	return err
}

// permitted lists the IPs given to Permit.
func (a *Allocation) permitted() []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	ips := make([]netip.Addr, 0, len(a.perms))
	for ip := range a.perms {
		ips = append(ips, ip)
	}
	return ips
}

// refreshPermissions renews every permission each permRefresh until Close.
func (a *Allocation) refreshPermissions() {
	defer a.wg.Done()
	t := time.NewTicker(a.permRefresh)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.lost:
			return
		case <-t.C:
		}
		ips := a.permitted()
		if len(ips) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(a.ctx, permTimeout)
		err := a.createPermission(ctx, ips)
		cancel()
		switch {
		case err != nil && a.ctx.Err() == nil:
			a.log.WithError(err).WithField("peers", ips).Warn("relay: refreshing TURN permissions failed")
		case err == nil:
			a.log.WithField("peers", ips).Debug("relay: permissions refreshed")
		}
	}
}

// attempt is a peer connection the server announced (ConnectionAttempt).
type attempt struct {
	cid  connectionID
	peer netip.AddrPort
}

// connectionAttempt queues the peer connection the server announced for a
// binder. It runs on pion's read loop and must not block.
func (a *Allocation) connectionAttempt(m *stun.Message) {
	peer, err := getPeerAddress(m)
	if err != nil {
		a.log.WithError(err).Debug("relay: bad ConnectionAttempt from the TURN server")
		return
	}
	cid, err := getConnectionID(m)
	if err != nil {
		a.log.WithError(err).Debug("relay: bad ConnectionAttempt from the TURN server")
		return
	}
	a.log.WithField("peer", peer).Debug("relay: ConnectionAttempt")
	select {
	case a.attempts <- attempt{cid, peer}:
	default:
		a.log.WithField("peer", peer).Warnf("relay: %d peer connections wait to be bound; dropping one", maxBacklog)
	}
}

// binder binds queued peer connections and hands each to Accept, until Close.
func (a *Allocation) binder() {
	defer a.wg.Done()
	for {
		var at attempt
		select {
		case <-a.ctx.Done():
			return
		case at = <-a.attempts:
		}
		log := a.log.WithField("peer", at.peer)
		ctx, cancel := context.WithTimeout(a.ctx, bindTimeout)
		c, err := a.bind(ctx, at.cid, at.peer)
		cancel()
		if err != nil {
			if a.ctx.Err() == nil {
				log.WithError(err).Warn("relay: binding a peer connection failed")
			}
			continue
		}
		log.Debug("relay: peer connection bound")
		select {
		case a.ready <- c:
		case <-a.ctx.Done():
			c.Close()
			return
		}
	}
}

// bind opens a data connection and binds it to the peer connection cid.
func (a *Allocation) bind(ctx context.Context, cid connectionID, peer netip.AddrPort) (net.Conn, error) {
	for try := 1; ; try++ {
		// coturn does not answer a ConnectionBind with a stale nonce: it
		// drops the data connection, and the ConnectionID is spent. So the
		// nonce is checked first on the control connection, while dialing.
		checked := make(chan error, 1)
		go func() { checked <- a.checkNonce(ctx) }()
		conn, err := a.dial(ctx, "tcp", a.server)
		if cerr := <-checked; cerr != nil && ctx.Err() == nil {
			a.log.WithError(cerr).Debug("relay: could not check the nonce; binding with the one we have")
		}
		if err != nil {
			return nil, fmt.Errorf("relay: data connection to %s: %w", a.server, err)
		}
		err = a.bindOn(ctx, conn, cid)
		if err == nil {
			return &dataConn{
				Conn:   conn,
				local:  net.TCPAddrFromAddrPort(a.relayed),
				remote: net.TCPAddrFromAddrPort(peer),
			}, nil
		}
		conn.Close()
		if errors.Is(err, errStaleNonce) && try < maxTries && ctx.Err() == nil {
			a.log.Debug("relay: ConnectionBind: stale nonce; again with the new one")
			continue
		}
		return nil, fmt.Errorf("relay: ConnectionBind on %s: %w", a.server, err)
	}
}

// checkNonce makes sure the nonce was known good within a.nonceFresh,
// renewing it if need be. Concurrent binds share one check.
func (a *Allocation) checkNonce(ctx context.Context) error {
	a.checkMu.Lock()
	defer a.checkMu.Unlock()
	a.mu.Lock()
	fresh := time.Since(a.nonceOK) < a.nonceFresh
	a.mu.Unlock()
	if fresh {
		return nil
	}
	return a.renewNonce(ctx)
}

// renewNonce makes an authenticated request on the control connection (it
// renews the permissions): a success proves the nonce good, and a stale one
// is answered with 438 and a new nonce.
func (a *Allocation) renewNonce(ctx context.Context) error {
	ips := a.permitted()
	if len(ips) == 0 {
		return errors.New("no permission to renew the nonce with")
	}
	return a.createPermission(ctx, ips)
}

func (a *Allocation) bindOn(ctx context.Context, conn net.Conn, cid connectionID) error {
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	msg, err := stun.Build(stun.TransactionID, stun.NewType(stun.MethodConnectionBind, stun.ClassRequest), cid,
		a.username, a.realm, a.currentNonce(), a.integrity, stun.Fingerprint)
	if err != nil {
		stop()
		return err
	}
	var res *stun.Message
	if _, err = conn.Write(msg.Raw); err == nil {
		res, err = readMessage(conn)
	}
	if !stop() {
		return ctx.Err() // the deadline is set: this conn is done
	}
	if err != nil {
		return err
	}
	switch {
	case res.TransactionID != msg.TransactionID:
		return errors.New("answer to another transaction")
	case res.Type.Method != stun.MethodConnectionBind:
		return fmt.Errorf("answered with %s", res.Type)
	}
	if err := answerError(res); err != nil {
		if errors.Is(err, errStaleNonce) {
			a.learnNonce(res) // res is no success: only a new nonce counts
		}
		return err
	}
	if err := a.integrity.Check(res); err != nil {
		return fmt.Errorf("answer fails MESSAGE-INTEGRITY: %w", err)
	}
	return nil
}

// dataConn is a bound data connection: the peer's bytes, with the peer's
// and the relayed address as its addresses.
type dataConn struct {
	net.Conn
	local, remote *net.TCPAddr
}

func (c *dataConn) LocalAddr() net.Addr  { return c.local }
func (c *dataConn) RemoteAddr() net.Addr { return c.remote }

// CloseWrite half-closes towards the TURN server. The servers do not carry
// a half-close to the peer: pion's closes the peer connection and this one,
// coturn resets both. Half-close end to end must ride inside the stream.
func (c *dataConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
