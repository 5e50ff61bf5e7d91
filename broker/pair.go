package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// The broker relay: the path of last resort, which needs nothing but the
// broker's own TLS port. A PathBroker introduction gives both agents one
// token; each dials the broker's port with ALPN secure.ALPNRelay, proves its
// identity in that TLS handshake, and binds the connection with the token
// (proto.RelayBind). Once both sides are bound the broker answers each with
// a Result and copies bytes between the two connections. What it copies is
// the agents' own TLS peer channel: ciphertext to the broker, like
// Tailscale's DERP, but for one TCP stream.
//
// A token is good for one pair, for the two identities of its introduction,
// and for Config.RelayPairTimeout; a connection that binds anything else is told why and
// closed.

const (
	// DefaultRelayPairTimeout is how long a token waits for both agents to
	// bind. The sharer dials as soon as it has answered the introduction,
	// the connector as soon as it reads the reply, so both are normally
	// within a couple of round trips of each other.
	DefaultRelayPairTimeout = 20 * time.Second
	// DefaultMaxRelayPairs bounds the broker relay's pairs, bound or waiting.
	DefaultMaxRelayPairs = 10000
	// pairCopyBuffer is each direction's copy buffer: four full TLS records.
	pairCopyBuffer = 64 << 10
)

// Reasons a broker relay connection is refused (label "reason" of
// peerport_broker_relay_refused_total).
const (
	pairRefusedBind     = "bind"     // no RelayBind, or a malformed one
	pairRefusedToken    = "token"    // unknown or expired token
	pairRefusedIdentity = "identity" // the TLS identity is not one of the token's agents
	pairRefusedTaken    = "taken"    // that side of the pair is already bound
	pairRefusedTimeout  = "timeout"  // the other agent never came
	pairRefusedLimit    = "limit"    // DefaultMaxRelayPairs reached
)

// Errors of Expect.
var errPairLimit = errors.New("broker relay full")

type pairToken [proto.RelayTokenSize]byte

// pairing is one pair of agents the broker relay expects.
type pairing struct {
	sharer, connector secure.AgentID
	timer             *time.Timer // removes the pairing when nobody came in time

	// set under pairRelay.mu
	conns [2]net.Conn   // sharer, connector; as they bind
	ready chan struct{} // closed when both are bound, or when the pairing is dropped
	ok    bool          // both bound (not dropped) when ready closed
	ended int           // sides whose copy has ended
}

// pairRelay is the broker relay's state: the pairings it waits for and the
// pairs it copies for.
type pairRelay struct {
	log     logrus.FieldLogger
	max     int
	timeout time.Duration
	metrics *pairMetrics

	mu      sync.Mutex
	pending map[pairToken]*pairing
	active  int // pairs copying now
}

func newPairRelay(log logrus.FieldLogger, max int, timeout time.Duration, reg prometheus.Registerer) *pairRelay {
	r := &pairRelay{log: log.WithField("component", "broker-relay"), max: max, timeout: timeout, pending: map[pairToken]*pairing{}}
	r.metrics = newPairMetrics(reg, func() (pending, active int) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.pending), r.active
	})
	return r
}

// expect makes a token for a pair of agents. It is dropped after the
// timeout unless both have bound by then.
func (r *pairRelay) expect(sharer, connector secure.AgentID) ([]byte, error) {
	var t pairToken
	if _, err := rand.Read(t[:]); err != nil {
		return nil, fmt.Errorf("relay token: %w", err)
	}
	p := &pairing{sharer: sharer, connector: connector, ready: make(chan struct{})}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending)+r.active >= r.max {
		r.metrics.refused.WithLabelValues(pairRefusedLimit).Inc()
		return nil, errPairLimit
	}
	r.pending[t] = p
	p.timer = time.AfterFunc(r.timeout, func() { r.drop(t, p) })
	return t[:], nil
}

// forget drops the pairing of a token whose introduction failed.
func (r *pairRelay) forget(token []byte) {
	var t pairToken
	copy(t[:], token)
	r.mu.Lock()
	p := r.pending[t]
	r.mu.Unlock()
	if p != nil {
		p.timer.Stop()
		r.drop(t, p)
	}
}

// drop forgets a pairing that did not complete; whoever waits on it is told.
func (r *pairRelay) drop(t pairToken, p *pairing) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending[t] != p {
		return // completed meanwhile
	}
	delete(r.pending, t)
	close(p.ready)
}

// serve runs one broker relay connection whose TLS handshake proved id: it
// reads the RelayBind, waits for the other agent, then copies. It returns
// when the pair ends; the caller closes conn.
func (r *pairRelay) serve(ctx context.Context, conn net.Conn, id secure.AgentID, handshake time.Duration, log logrus.FieldLogger) {
	refuse := func(reason, code, msg string) {
		r.metrics.refused.WithLabelValues(reason).Inc()
		log.WithField("reason", reason).Info("broker relay connection refused: " + msg)
		conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		proto.Write(conn, &proto.Error{Code: code, Message: msg})
	}
	conn.SetDeadline(time.Now().Add(handshake))
	m, err := proto.Read(conn, 1024)
	bind, ok := m.(*proto.RelayBind)
	if err != nil || !ok {
		refuse(pairRefusedBind, proto.CodeBadRequest, "a broker relay connection starts with RelayBind")
		return
	}
	var t pairToken
	copy(t[:], bind.Token)

	r.mu.Lock()
	p := r.pending[t]
	side := -1
	switch {
	case p == nil:
	case id == p.sharer && p.conns[0] == nil:
		side = 0
	case id == p.connector && p.conns[1] == nil:
		side = 1
	}
	if side < 0 {
		r.mu.Unlock()
		switch {
		case p == nil:
			refuse(pairRefusedToken, proto.CodeNotFound, "unknown or expired relay token; ask for a new introduction")
		case id != p.sharer && id != p.connector:
			refuse(pairRefusedIdentity, proto.CodeUnauthorized, "this relay token belongs to other agents")
		default:
			refuse(pairRefusedTaken, proto.CodeRefused, "this side of the relay pair is already bound")
		}
		return
	}
	p.conns[side] = conn
	if p.conns[1-side] != nil {
		delete(r.pending, t)
		p.timer.Stop()
		p.ok = true
		r.active++
		close(p.ready)
	}
	r.mu.Unlock()

	conn.SetDeadline(time.Time{})
	select {
	case <-p.ready:
	case <-ctx.Done():
		r.drop(t, p)
		return
	}
	if !p.ok {
		refuse(pairRefusedTimeout, proto.CodeTimeout, fmt.Sprintf("the other agent did not reach the broker relay within %v", r.timeout))
		return
	}
	r.pipe(ctx, p, side, log)
	r.mu.Lock()
	if p.ended++; p.ended == 2 {
		r.active--
	}
	r.mu.Unlock()
}

// pipe tells its side the pair is up and copies what that side sends to the
// other. The first direction to end closes both connections, which ends the
// other direction too: the agents' TLS channel inside has its own close.
func (r *pairRelay) pipe(ctx context.Context, p *pairing, side int, log logrus.FieldLogger) {
	src, dst := p.conns[side], p.conns[1-side]
	stop := context.AfterFunc(ctx, func() { src.Close() })
	defer stop()
	src.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := proto.Write(src, &proto.Result{}); err != nil {
		src.Close()
		dst.Close()
		return
	}
	src.SetWriteDeadline(time.Time{})
	if side == 0 {
		r.metrics.pairs.Inc()
		log.WithFields(logrus.Fields{"sharer": p.sharer.Short(), "connector": p.connector.Short()}).Info("broker relay pair up")
	}
	copied := r.metrics.bytes.WithLabelValues(pairDirection[side])
	buf := make([]byte, pairCopyBuffer)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
			copied.Add(float64(n)) // as it goes: a relayed session can last for days
		}
		if err != nil {
			break
		}
	}
	src.Close()
	dst.Close()
}

// pairDirection labels the bytes of each side: what the sharer sends goes
// to the connector.
var pairDirection = [2]string{"to_connector", "to_sharer"}

// pairMetrics are the broker relay's.
type pairMetrics struct {
	pairs   prometheus.Counter
	bytes   *prometheus.CounterVec // by direction
	refused *prometheus.CounterVec // by reason
}

func newPairMetrics(reg prometheus.Registerer, counts func() (pending, active int)) *pairMetrics {
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: "broker", Name: name, Help: help}
	}
	m := &pairMetrics{
		pairs: prometheus.NewCounter(opts("relay_pairs_total", "Pairs of agents joined by the broker relay (its own TLS port).")),
		bytes: prometheus.NewCounterVec(opts("relay_bytes_total",
			"Bytes copied by the broker relay, by direction: to_connector, to_sharer."), []string{"direction"}),
		refused: prometheus.NewCounterVec(opts("relay_refused_total",
			"Broker relay connections or pairings refused, by reason: bind, token, identity, taken, timeout, limit."), []string{"reason"}),
	}
	for _, d := range pairDirection {
		m.bytes.WithLabelValues(d)
	}
	gauge := func(name, help string, pick func(pending, active int) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: "broker", Name: name, Help: help},
			func() float64 { return float64(pick(counts())) })
	}
	reg.MustRegister(m.pairs, m.bytes, m.refused,
		gauge("relay_pairs_active", "Broker relay pairs copying now.", func(_, a int) int { return a }),
		gauge("relay_pairs_waiting", "Broker relay tokens waiting for their agents.", func(p, _ int) int { return p }))
	return m
}
