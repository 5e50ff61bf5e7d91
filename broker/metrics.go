package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/nat"
)

// metricsNamespace prefixes every metric name: peerport_broker_*.
const metricsNamespace = "peerport"

// Reasons a session is refused, the "reason" label of
// peerport_broker_sessions_refused_total besides the proto codes.
const (
	refusedHandshake = "handshake" // TLS, ALPN or client certificate failed
	refusedHello     = "hello"     // no Hello, or a malformed one
)

// connectorGone labels an introduction the connector left before its answer.
const connectorGone = "connector_gone"

// metrics are the broker's Prometheus collectors. They live in a registry of
// their own, owned by the Server, never the global default one: an agent
// that embeds a broker, and tests that start many, would otherwise collide.
type metrics struct {
	reg           *prometheus.Registry
	sessions      *prometheus.CounterVec // admitted, by role
	refused       *prometheus.CounterVec // by reason
	introductions *prometheus.CounterVec // by where the sharer was: local (this node) or remote (another node of the cluster)
	introFailed   *prometheus.CounterVec // by code
	punches       *prometheus.CounterVec // by result and both NAT types, as connectors report them
	turnIssued    prometheus.Counter     // TURN credentials issued with relay introductions
	codeClaims    *prometheus.CounterVec // steps of short code claims, by result
	// The cluster's (cluster.go): sealed messages refused, and the time
	// requests to other nodes take.
	clusterRefused prometheus.Counter
	clusterRequest prometheus.Histogram
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "sessions_total",
			Help: "Control sessions admitted, by role: member (broker token) or guest (ticket only).",
		}, []string{"role"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "sessions_refused_total",
			Help: "Control connections not admitted, by reason: handshake, hello, unauthorized (wrong token), limit.",
		}, []string{"reason"}),
		introductions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "introductions_total",
			Help: "Introductions the sharer answered, by where the sharer was: local (this node) or remote (another node of the cluster).",
		}, []string{"where"}),
		clusterRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "cluster_messages_refused_total",
			Help: "Messages from the cluster's NATS refused: not sealed with this cluster's key, altered, stale or replayed.",
		}),
		clusterRequest: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "cluster_request_seconds",
			Help:    "Requests to other nodes (introductions, presence), from sending to the answer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		introFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "introductions_failed_total",
			Help: "Connect requests that got no introduction, by code: unauthorized, not_found, timeout, limit, bad_request, the sharer's own code, or connector_gone.",
		}, []string{"code"}),
		punches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "punches_total",
			Help: "Hole punches after an introduction, as connectors report them, by result (direct, relay_needed, failed) and the NAT types of connector (nat) and sharer (peer_nat).",
		}, []string{"result", "nat", "peer_nat"}),
		codeClaims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "code_claims_total",
			Help: "Steps of short code claims passed to sharers, by result: answered, wrong_code (the code is burnt), not_found, timeout, limit, unauthorized.",
		}, []string{"code"}),
		turnIssued: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "turn_credentials_issued_total",
			Help: "TURN credentials issued to sharers with relay introductions, for the embedded relay or an external one.",
		}),
	}
	// Pre-create the common series so a dashboard sees 0, not "no data".
	for _, r := range []string{"member", "guest"} {
		m.sessions.WithLabelValues(r)
	}
	m.introductions.WithLabelValues("local")
	clusterGauge := func(name, help string, f func(*cluster) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: name, Help: help,
		}, func() float64 {
			if cl := s.cluster.Load(); cl != nil {
				return f(cl)
			}
			return 0
		})
	}
	gauge := func(name, help string, f func(Stats) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: name, Help: help,
		}, func() float64 { return float64(f(s.Stats())) })
	}
	m.reg.MustRegister(
		m.sessions, m.refused, m.introductions, m.introFailed, m.punches, m.turnIssued, m.codeClaims, m.clusterRefused, m.clusterRequest,
		clusterGauge("cluster_connected", "1 while this node reaches the cluster's NATS (0 alone or cut off).", func(cl *cluster) float64 {
			if cl.connected() {
				return 1
			}
			return 0
		}),
		clusterGauge("cluster_nodes", "Nodes of the cluster heard from, this one included.", func(cl *cluster) float64 { return float64(cl.nodeCount()) }),
		clusterGauge("cluster_rtt_seconds", "Round trip from this node to its NATS server.", func(cl *cluster) float64 { return time.Duration(cl.rtt.Load()).Seconds() }),
		gauge("agents_online", "Member agents (distinct identities) with a control session.", func(st Stats) int { return st.Agents }),
		gauge("guests_online", "Guest (ticket-only) control sessions.", func(st Stats) int { return st.Guests }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "sessions_online",
			Help: "Control sessions, members and guests.",
		}, func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			return float64(s.sessions)
		}),
		gauge("shares", "Shares registered.", func(st Stats) int { return st.Shares }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "build_info",
			Help: "Always 1; the version label is the broker's software version.", ConstLabels: prometheus.Labels{"version": s.cfg.Version},
		}, func() float64 { return 1 }),
	)
	return m
}

// relayMetrics are the embedded TURN relay's, registered by NewRelay.
type relayMetrics struct {
	allocations  prometheus.Counter     // allocations made
	allocRefused *prometheus.CounterVec // by reason: quota
	bytes        *prometheus.CounterVec // relayed, by direction: to_peer, from_peer
	denials      *prometheus.CounterVec // peers refused, by reason
	authFailures *prometheus.CounterVec // by reason
}

func newRelayMetrics(reg prometheus.Registerer, active func() int) *relayMetrics {
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: "broker", Name: name, Help: help}
	}
	m := &relayMetrics{
		allocations: prometheus.NewCounter(opts("turn_allocations_total", "TURN TCP allocations made on the embedded relay.")),
		allocRefused: prometheus.NewCounterVec(opts("turn_allocations_refused_total",
			"TURN allocations refused, by reason: quota (the agent's allocations per agent)."), []string{"reason"}),
		bytes: prometheus.NewCounterVec(opts("turn_relayed_bytes_total",
			"Bytes relayed between TURN clients and their peers, by direction: to_peer, from_peer."), []string{"direction"}),
		denials: prometheus.NewCounterVec(opts("turn_permission_denials_total",
			"Peers the relay refused (CreatePermission, Connect, inbound), by reason: denied_address, not_introduced, quota, no_allocation."), []string{"reason"}),
		authFailures: prometheus.NewCounterVec(opts("turn_auth_failures_total",
			"TURN requests refused for their credential, by reason: malformed, offline (no broker session), expired, forged."), []string{"reason"}),
	}
	m.allocRefused.WithLabelValues(refusedQuota)
	for _, d := range []string{directionToPeer, directionFromPeer} {
		m.bytes.WithLabelValues(d)
	}
	for _, r := range []string{deniedAddress, deniedNotIntroduced, deniedQuota} {
		m.denials.WithLabelValues(r)
	}
	for _, r := range []string{authMalformed, authOffline, authExpired, authForged} {
		m.authFailures.WithLabelValues(r)
	}
	reg.MustRegister(m.allocations, m.allocRefused, m.bytes, m.denials, m.authFailures,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "turn_allocations",
			Help: "TURN TCP allocations live on the embedded relay.",
		}, func() float64 { return float64(active()) }))
	return m
}

// Registry is the Server's own metrics registry. Embedders may register more
// collectors in it (Start adds the Go runtime, process and STUN ones).
func (s *Server) Registry() *prometheus.Registry { return s.metrics.reg }

// stunMetrics counts what reaches the STUN server. The nat package has no
// per-request hook, so this counts at the socket: UDP datagrams read and TCP
// connections accepted (a client sends one Binding per connection).
type stunMetrics struct {
	packets *prometheus.CounterVec // by network
}

func newSTUNMetrics(reg prometheus.Registerer) *stunMetrics {
	m := &stunMetrics{packets: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Subsystem: "broker", Name: "stun_requests_total",
		Help: "STUN traffic received, by network: udp counts datagrams, tcp counts connections.",
	}, []string{"network"})}
	m.packets.WithLabelValues("udp")
	m.packets.WithLabelValues("tcp")
	reg.MustRegister(m.packets)
	return m
}

// wrap makes ls count into m. The nat server keys its sockets by local
// address and never asserts their concrete types, so wrappers are safe.
func (m *stunMetrics) wrap(ls *nat.Listeners) {
	udp := m.packets.WithLabelValues("udp")
	for i, pc := range ls.UDP {
		ls.UDP[i] = countingPacketConn{pc, udp}
	}
	tcp := m.packets.WithLabelValues("tcp")
	for i, ln := range ls.TCP {
		ls.TCP[i] = countingListener{ln, tcp}
	}
}

type countingPacketConn struct {
	net.PacketConn
	c prometheus.Counter
}

func (p countingPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, a, err := p.PacketConn.ReadFrom(b)
	if err == nil {
		p.c.Inc()
	}
	return n, a, err
}

type countingListener struct {
	net.Listener
	c prometheus.Counter
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.c.Inc()
	}
	return c, err
}

// metricsServer serves /metrics and /healthz.
type metricsServer struct {
	ln  net.Listener
	srv *http.Server
}

// listenMetrics binds addr and returns the server, not yet serving.
func listenMetrics(ctx context.Context, addr string, reg *prometheus.Registry, health func() string, log logrus.FieldLogger) (*metricsServer, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("broker metrics listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: promLogger{log}, Registry: reg, MaxRequestsInFlight: 4, Timeout: 10 * time.Second,
	}))
	// The broker answers /healthz only while its control listener serves:
	// Start stops this server when the broker stops.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, health())
	})
	return &metricsServer{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}}, nil
}

// serve blocks until ctx is done, then shuts the server down.
func (m *metricsServer) serve(ctx context.Context, log logrus.FieldLogger) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.srv.Serve(m.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Warn("metrics server stopped")
		}
	}()
	select {
	case <-ctx.Done():
	case <-done:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := m.srv.Shutdown(sctx); err != nil {
		m.srv.Close()
	}
	<-done
}

// promLogger feeds promhttp's errors into the broker's logger.
type promLogger struct{ log logrus.FieldLogger }

func (p promLogger) Println(v ...any) { p.log.Warn(append([]any{"metrics: "}, v...)...) }

// registerProcessCollectors adds the Go runtime and process collectors, for
// a broker that owns its process (not an embedded one).
func registerProcessCollectors(reg prometheus.Registerer) {
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
}

// health is /healthz's answer: "ok", and the cluster's state when the
// broker is a node of one. A node cut off from its cluster still serves its
// own agents, so it stays 200: the line says what is degraded.
func (s *Server) health() string {
	if cl := s.cluster.Load(); cl != nil {
		return "ok\n" + cl.health()
	}
	return "ok"
}
