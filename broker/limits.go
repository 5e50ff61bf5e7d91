package broker

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/limit"
	"github.com/peerport/peerport/internal/secure"
)

// Admission limits (DESIGN §5): what one hostile host can make the broker
// hold. Every listener (control/443, TURN, STUN over TCP) is wrapped by
// Server.Limit: per source IP an accept rate and a cap on connections that
// have not authenticated yet, a deadline for authenticating, and a global
// budget below the fd limit of which pre-authentication connections get
// only a share, so agents that have authenticated always find room. The
// control session then rate-limits logins, registrations and connects per
// IP and per agent (session.go). Refusals are counted in metrics and
// logged one line per burst (limit.BurstLog).

// Defaults of ConnLimits and RateLimits.
const (
	DefaultPreAuthTimeout     = 10 * time.Second
	DefaultMaxPreAuthPerIP    = 32
	DefaultAcceptRatePerIP    = 20 // per second
	DefaultAcceptBurstPerIP   = 64
	DefaultPreAuthShare       = 0.5
	DefaultMaxConns           = 4096 // when the fd limit is unknown
	DefaultLoginsPerMinIP     = 120
	DefaultLoginsPerMinAgent  = 30
	DefaultRegistersPerMinIP  = 600
	DefaultRegistersPerMinAg  = 300
	DefaultConnectsPerMinIP   = 120
	DefaultConnectsPerMinAg   = 60
	defaultRefusalBurstWindow = limit.DefaultBurstWindow
)

// ConnLimits bound connections at the listeners. Zero values mean defaults.
type ConnLimits struct {
	PreAuthTimeout  time.Duration // accepted, not authenticated after this: closed; default 10s
	MaxPreAuthPerIP int           // unauthenticated connections per source IP and listener; default 32
	AcceptRatePerIP float64       // accepts per second per source IP and listener; default 20
	AcceptBurst     int           // default 64
	// MaxConns is the global budget of accepted connections over all
	// listeners; Start derives it from RLIMIT_NOFILE (limit.BudgetFor).
	MaxConns int
	// PreAuthShare (0-1] of MaxConns may be unauthenticated; default 0.5.
	PreAuthShare float64
}

// RateLimits bound requests on control sessions, per minute, each per
// source IP and per agent ID; the burst is one minute's worth. Zero values
// mean defaults; negative ones turn a limit off.
type RateLimits struct {
	LoginsPerIP, LoginsPerAgent       float64
	RegistersPerIP, RegistersPerAgent float64
	ConnectsPerIP, ConnectsPerAgent   float64
	Clock                             limit.Clock // default the wall clock
}

func (c *ConnLimits) setDefaults() {
	if c.PreAuthTimeout == 0 {
		c.PreAuthTimeout = DefaultPreAuthTimeout
	}
	if c.MaxPreAuthPerIP == 0 {
		c.MaxPreAuthPerIP = DefaultMaxPreAuthPerIP
	}
	if c.AcceptRatePerIP == 0 {
		c.AcceptRatePerIP = DefaultAcceptRatePerIP
	}
	if c.AcceptBurst == 0 {
		c.AcceptBurst = DefaultAcceptBurstPerIP
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.PreAuthShare == 0 {
		c.PreAuthShare = DefaultPreAuthShare
	}
}

func (c *ConnLimits) validate() []error {
	var errs []error
	if c.PreAuthTimeout < 0 || c.MaxPreAuthPerIP < 0 || c.AcceptRatePerIP < 0 || c.AcceptBurst < 0 || c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("conns: negative limit in %+v", *c))
	}
	if c.PreAuthShare <= 0 || c.PreAuthShare > 1 {
		errs = append(errs, fmt.Errorf("conns.preauth_share: %v, want (0, 1]", c.PreAuthShare))
	}
	return errs
}

func (r *RateLimits) setDefaults() {
	for _, f := range []struct {
		p *float64
		v float64
	}{{&r.LoginsPerIP, DefaultLoginsPerMinIP}, {&r.LoginsPerAgent, DefaultLoginsPerMinAgent},
		{&r.RegistersPerIP, DefaultRegistersPerMinIP}, {&r.RegistersPerAgent, DefaultRegistersPerMinAg},
		{&r.ConnectsPerIP, DefaultConnectsPerMinIP}, {&r.ConnectsPerAgent, DefaultConnectsPerMinAg}} {
		if *f.p == 0 {
			*f.p = f.v
		}
	}
	if r.Clock == nil {
		r.Clock = limit.RealClock
	}
}

// limits is a Server's admission state.
type limits struct {
	budget   *limit.Budget
	refusals *limit.BurstLog
	conns    ConnLimits

	connRefused *prometheus.CounterVec // by listener, reason
	rateRefused *prometheus.CounterVec // by request, key

	rates map[string][2]*limit.Keyed[string] // request -> per IP, per agent
}

// Requests rate-limited on control sessions, the "request" label.
const (
	reqLogin    = "login"
	reqRegister = "register"
	reqConnect  = "connect"
)

func newLimits(cfg *Config, reg prometheus.Registerer, log logrus.FieldLogger) *limits {
	total := cfg.Conns.MaxConns
	l := &limits{
		budget:   &limit.Budget{Total: total, PreAuth: max(int(float64(total)*cfg.Conns.PreAuthShare), 1)},
		refusals: &limit.BurstLog{Log: log, Window: defaultRefusalBurstWindow, Clock: cfg.Rates.Clock},
		conns:    cfg.Conns,
		connRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "conns_refused_total",
			Help: "Connections refused at accept or closed before authenticating, by listener (control, turn, stun) and reason: rate, per_ip, global, deadline, garbage.",
		}, []string{"listener", "reason"}),
		rateRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "requests_rate_limited_total",
			Help: "Control requests refused with code limit for their rate, by request (login, register, connect) and key (ip, agent).",
		}, []string{"request", "key"}),
		rates: make(map[string][2]*limit.Keyed[string]),
	}
	r := cfg.Rates
	keyed := func(perMin float64) *limit.Keyed[string] {
		if perMin < 0 {
			return nil
		}
		return &limit.Keyed[string]{Rate: perMin / 60, Burst: max(int(perMin), 1), Clock: r.Clock}
	}
	l.rates[reqLogin] = [2]*limit.Keyed[string]{keyed(r.LoginsPerIP), keyed(r.LoginsPerAgent)}
	l.rates[reqRegister] = [2]*limit.Keyed[string]{keyed(r.RegistersPerIP), keyed(r.RegistersPerAgent)}
	l.rates[reqConnect] = [2]*limit.Keyed[string]{keyed(r.ConnectsPerIP), keyed(r.ConnectsPerAgent)}
	for _, ln := range []string{"control", "turn", "stun"} {
		for _, reason := range []string{limit.ReasonRate, limit.ReasonPerKey, limit.ReasonGlobal, limit.ReasonPreAuth} {
			l.connRefused.WithLabelValues(ln, reason)
		}
	}
	reg.MustRegister(l.connRefused, l.rateRefused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "conns_open",
			Help: "Connections open on the broker's listeners (control, TURN, STUN over TCP).",
		}, func() float64 { return float64(l.budget.Open()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "conns_unauthenticated",
			Help: "Connections open that have not authenticated yet.",
		}, func() float64 { return float64(l.budget.Unauthenticated()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Subsystem: "broker", Name: "conns_max",
			Help: "The global connection budget (limits.max_conns, or derived from the fd limit).",
		}, func() float64 { return float64(total) }),
	)
	return l
}

// Limit wraps ln, one of the broker's listeners named name (control, turn,
// stun), with the admission limits. The control server marks its
// connections authenticated after the TLS handshake with an agent
// certificate, the TURN relay after the first authenticated request.
func (s *Server) Limit(ln net.Listener, name string) net.Listener {
	c := s.limits.conns
	refused := s.limits.connRefused
	return limit.NewListener(ln, limit.ListenerConfig{
		PerIP:          &limit.Keyed[netip.Addr]{Rate: c.AcceptRatePerIP, Burst: c.AcceptBurst, Max: c.MaxPreAuthPerIP},
		Budget:         s.limits.budget,
		PreAuthTimeout: c.PreAuthTimeout,
		OnRefuse: func(reason string, ip netip.Addr) {
			refused.WithLabelValues(name, reason).Inc()
			msg := "connections refused"
			if reason == limit.ReasonPreAuth {
				msg = "connections closed: not authenticated in time"
			}
			s.limits.refusals.Refused(msg, reason, logrus.Fields{"listener": name, "remote_ip": ip.String()})
		},
	})
}

// allowRequest takes one request of kind from ip and agent; when refused,
// it counts and logs (one line a burst) and returns the message for the
// agent.
func (s *Server) allowRequest(kind string, remote net.Addr, agent secure.AgentID) (ok bool, msg string) {
	ip := ""
	if ta, ok := remote.(*net.TCPAddr); ok {
		ip = ta.AddrPort().Addr().Unmap().String()
	}
	lim := s.limits.rates[kind]
	for i, k := range []struct{ key, label string }{{ip, "ip"}, {agent.String(), "agent"}} {
		if lim[i] == nil || k.key == "" || lim[i].Allow(k.key) {
			continue
		}
		s.limits.rateRefused.WithLabelValues(kind, k.label).Inc()
		s.limits.refusals.Refused(kind+" requests rate limited", "rate_"+k.label, logrus.Fields{"remote_ip": ip, "agent": agent.Short()})
		return false, fmt.Sprintf("rate limited: too many %s requests from this %s; retry later", kind, map[string]string{"ip": "address", "agent": "agent"}[k.label])
	}
	return true, ""
}
