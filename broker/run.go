package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/limit"
	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/secure"
)

// DefaultListen is where a broker listens unless told otherwise.
const DefaultListen = ":7000"

// Options are everything `broker` takes.
type Options struct {
	Listen string // default ":7000"
	// PublicAddr is advertised in the URL: host or host:port, or a
	// dual-stack broker's IPv4 and IPv6 address joined by a comma
	// ("203.0.113.10,2001:db8::10", see dualstack.go); default: see Start.
	PublicAddr string
	StateDir   string
	Log        logrus.FieldLogger
	Version    string
	Limits     func(*Config) // optional: adjusts limits and timeouts before New
	// KeepPort makes a Listen on port 0 take the port it chose the last
	// time, kept in StateDir (keepport.go): an embedded broker's tickets
	// then survive a restart.
	KeepPort bool

	// STUNListen are the STUN server's addresses, each served on UDP and
	// TCP. Nil: nat.DefaultAddrs of Listen's host (ports 3478 and 3479, on
	// both addresses where the machine has two), or free ports on the same
	// hosts when those are taken, and a failure to bind is logged, not
	// fatal. NoSTUN turns the STUN server off.
	STUNListen []string
	NoSTUN     bool

	// MetricsListen is where Prometheus metrics (/metrics) and a health
	// check (/healthz) are served over plain HTTP; empty: not served. The
	// metrics hold no secrets but counts and the version; still, bind it to
	// loopback or a private address.
	MetricsListen string

	// TURNListen is where the embedded TURN relay (TURN over TCP, RFC 6062
	// TCP allocations) listens. Empty: Listen's host, port 3480, and a
	// failure to bind it is logged, not fatal. NoTURN turns the relay off.
	// With ExternalTURN the broker runs none and issues credentials for
	// that server instead.
	TURNListen   string
	NoTURN       bool
	ExternalTURN *ExternalTURN
	// TURN are the embedded relay's ports, peer policy and quotas. Its
	// RelayIP defaults to the public address's IP (resolved if a name),
	// BindIP to that IP if it is this machine's, else TURNListen's host, else
	// the unspecified address; OwnAddrs get the machine's interface
	// addresses and the listeners'.
	TURN RelayConfig
	// TURNCredentialTTL is the lifetime of the TURN credentials issued with
	// relay introductions; default 1h.
	TURNCredentialTTL time.Duration

	// TLS is where the broker's certificate comes from (cert.go); zero:
	// the state dir key's self-signed one, its pin in the URL.
	TLS TLSOptions

	// Cluster joins this broker to a cluster of nodes over NATS
	// (cluster.go); nil: the broker runs alone, with no NATS at all.
	Cluster *ClusterOptions
}

// Running is a started broker.
type Running struct {
	URL    secure.BrokerURL
	Addr   net.Addr        // the bound listener address
	Server *Server         // for Stats
	Done   <-chan struct{} // closed when the broker has stopped
	STUN   []string        // bound STUN addresses (UDP and TCP each); none when off
	// MetricsAddr is the bound metrics listener; nil when MetricsListen is empty.
	MetricsAddr net.Addr
	// TURN is the embedded relay's bound listener; nil when it does not run.
	TURN net.Addr
	// TURNURL is the TURN server relay introductions send sharers to, the
	// embedded relay or the external one; empty: the broker offers no relay.
	TURNURL string
	err     error
}

// Err is why the broker stopped: nil after ctx was done. Valid after Done.
func (r *Running) Err() error {
	select {
	case <-r.Done:
		return r.err
	default:
		return nil
	}
}

// Start loads or creates the state, listens and serves in the background
// until ctx is done. The URL's port is the bound one, so ":0" works. Its host
// is PublicAddr if set, else the listener's host if specific, else the first
// global unicast IPv4 address of an up, non-loopback interface, else 127.0.0.1.
// The TURN URL has the same host.
func Start(ctx context.Context, o Options) (*Running, error) {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		o.Log = l
	}
	st, err := LoadOrCreateState(o.StateDir)
	if err != nil {
		return nil, err
	}
	// undo closes, last first, what is open when Start fails.
	var undo []func()
	fail := func(err error) (*Running, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, err
	}
	stun, err := listenSTUN(ctx, o)
	if err != nil {
		return nil, err
	}
	if stun != nil {
		undo = append(undo, func() { stun.Close() })
	}
	ln, err := listen(ctx, o)
	if err != nil {
		return fail(fmt.Errorf("broker listen: %w", err))
	}
	undo = append(undo, func() { ln.Close() })
	addrs, err := publicAddrs(o.PublicAddr, ln.Addr())
	if err != nil {
		return fail(err)
	}
	addr := addrs[0] // the certificate's and the TURN URL's host
	certs, err := newCertSource(ctx, o, st, addr, ln.Addr(), o.Log.WithField("component", "cert"))
	if err != nil {
		return fail(err)
	}
	undo = append(undo, certs.close)
	turnLn, issuer, rc, err := setupTURN(ctx, o, st, addrs, ln.Addr())
	if err != nil {
		return fail(err)
	}
	if turnLn != nil {
		undo = append(undo, func() { turnLn.Close() })
	}
	cfg := Config{Token: st.Token, Log: o.Log, Version: o.Version, Relay: issuer}
	certs.configure(&cfg)
	if stun != nil {
		cfg.STUN = stunAdvertised(stun.Addrs(), publicIPs(o.PublicAddr))
	}
	if o.Limits != nil {
		o.Limits(&cfg)
	}
	connBudget(&cfg, o.Log)
	srv, err := New(cfg)
	if err != nil {
		return fail(err)
	}
	ln = srv.Limit(ln, "control")
	if turnLn != nil {
		turnLn = srv.Limit(turnLn, "turn")
	}
	if stun != nil {
		newSTUNMetrics(srv.Registry()).wrap(stun)
		for i, l := range stun.TCP {
			stun.TCP[i] = srv.Limit(l, "stun")
		}
	}
	url := certs.url(st, addrs)
	var cl *cluster
	if o.Cluster != nil {
		seal, err := newSealer(st.Token, st.TURNSecret, url.Pin, time.Now)
		if err != nil {
			return fail(err)
		}
		if cl, err = joinCluster(ctx, srv, *o.Cluster, seal, url.Addrs()[0], o.Log.WithField("component", "cluster")); err != nil {
			return fail(err)
		}
		undo = append(undo, cl.close)
		srv.cluster.Store(cl)
	}
	var ms *metricsServer
	if o.MetricsListen != "" {
		registerProcessCollectors(srv.Registry())
		if ms, err = listenMetrics(ctx, o.MetricsListen, srv.Registry(), srv.health, srv.log); err != nil {
			return fail(err)
		}
		undo = append(undo, func() { ms.ln.Close() })
	}
	var rl *Relay
	if turnLn != nil {
		if rl, err = NewRelay(srv, rc); err != nil {
			return fail(err)
		}
	}
	done := make(chan struct{})
	r := &Running{URL: url, Addr: ln.Addr(), Server: srv, Done: done}
	if issuer != nil {
		r.TURNURL = issuer.URL
	}
	srv.log.WithFields(logrus.Fields{"listen": ln.Addr().String(), "url": r.URL.Redacted(), "cert": certs.kind}).Info("broker listening")
	// Each part below runs until the control server stops.
	var parts sync.WaitGroup
	pctx, stopParts := context.WithCancel(ctx)
	if ms != nil {
		r.MetricsAddr = ms.ln.Addr()
		mlog := o.Log.WithField("component", "metrics")
		mlog.WithField("listen", r.MetricsAddr.String()).Info("metrics listening (/metrics, /healthz)")
		parts.Go(func() { ms.serve(pctx, mlog) })
	}
	if stun != nil {
		r.STUN = stun.Addrs()
		slog := o.Log.WithField("component", "stun")
		slog.WithField("listen", r.STUN).Info("STUN listening")
		parts.Go(func() {
			if err := nat.NewServer(nat.ServerConfig{Log: slog}).Serve(pctx, stun); err != nil {
				slog.WithError(err).Warn("STUN server stopped")
			}
		})
	}
	if rl != nil {
		r.TURN = turnLn.Addr()
		parts.Go(func() {
			if err := rl.Serve(pctx, turnLn); err != nil {
				rl.log.WithError(err).Warn("TURN relay stopped")
			}
		})
	} else if issuer != nil {
		srv.log.WithField("turn", issuer.URL).Info("relay introductions use an external TURN server")
	}
	certs.start(pctx, &parts)
	go func() {
		defer close(done)
		r.err = srv.Serve(ctx, ln)
		if cl != nil {
			cl.close()
		}
		stopParts()
		parts.Wait()
		certs.close()
	}()
	return r, nil
}

// connBudget raises the fd limit and keeps the global connection budget
// below it: a limits.max_conns above what the descriptors allow is lowered.
func connBudget(cfg *Config, log logrus.FieldLogger) {
	nofile, err := limit.RaiseNoFile()
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		// Windows: sockets are handles, with no RLIMIT_NOFILE to raise or budget under.
	case err != nil:
		log.WithError(err).Warn("cannot raise the file descriptor limit")
	}
	if nofile == 0 {
		return
	}
	share := cfg.Conns.PreAuthShare
	if share == 0 {
		share = DefaultPreAuthShare
	}
	total, _ := limit.BudgetFor(nofile, share)
	if cfg.Conns.MaxConns > total {
		log.WithFields(logrus.Fields{"max_conns": cfg.Conns.MaxConns, "nofile": nofile, "budget": total}).
			Warn("limits.max_conns is above what the fd limit allows; lowered")
	}
	if cfg.Conns.MaxConns == 0 || cfg.Conns.MaxConns > total {
		cfg.Conns.MaxConns = total
	}
	log.WithFields(logrus.Fields{"nofile": nofile, "max_conns": cfg.Conns.MaxConns}).Debug("connection budget")
}

// setupTURN decides the relay of relay introductions: the external TURN
// server, or the embedded one, whose listener it binds; none when off, or
// when the default listener cannot be bound.
func setupTURN(ctx context.Context, o Options, st *State, public []string, ctrl net.Addr) (net.Listener, *RelayIssuer, RelayConfig, error) {
	ttl := o.TURNCredentialTTL
	if e := o.ExternalTURN; e != nil {
		if !strings.HasPrefix(e.URL, "turn:") || len(e.Secret) == 0 {
			return nil, nil, RelayConfig{}, errors.New("broker: external TURN server: want a turn:HOST:PORT?transport=tcp URL and its shared secret")
		}
		return nil, &RelayIssuer{URL: e.URL, Secret: e.Secret, TTL: ttl}, RelayConfig{}, nil
	}
	if o.NoTURN {
		return nil, nil, RelayConfig{}, nil
	}
	log := o.Log.WithField("component", "relay")
	hosts := make([]string, len(public))
	for i, a := range public {
		hosts[i], _, _ = net.SplitHostPort(a)
	}
	host := hosts[0]
	listen, soft := o.TURNListen, o.TURNListen == ""
	if soft {
		h, _, _ := net.SplitHostPort(o.Listen)
		listen = net.JoinHostPort(h, strconv.Itoa(DefaultTURNPort))
	}
	rc := o.TURN
	if !rc.RelayIP.IsValid() {
		v4, v6, err := resolveRelayIPs(ctx, hosts)
		if err != nil {
			if soft {
				log.WithError(err).Warn("TURN relay not started; relay introductions fail with no_relay (set turn.relay_ip)")
				return nil, nil, RelayConfig{}, nil
			}
			return nil, nil, RelayConfig{}, fmt.Errorf("broker turn: %w; set turn.relay_ip", err)
		}
		rc.RelayIP = v4
		if !v4.IsValid() {
			rc.RelayIP, v6 = v6, netip.Addr{}
		}
		if !rc.RelayIP6.IsValid() {
			rc.RelayIP6 = v6
		}
	}
	var lc net.ListenConfig
	tln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		if soft {
			log.WithError(err).Warn("TURN relay not started; relay introductions fail with no_relay (set turn.listen, or turn.off)")
			return nil, nil, RelayConfig{}, nil
		}
		return nil, nil, RelayConfig{}, fmt.Errorf("broker turn listen: %w", err)
	}
	ta := tln.Addr().(*net.TCPAddr).AddrPort()
	if !rc.BindIP.IsValid() {
		rc.BindIP = relayBindIP(rc.RelayIP, ta.Addr())
	}
	if rc.RelayIP6.IsValid() && !rc.BindIP6.IsValid() {
		rc.BindIP6 = relayBindIP(rc.RelayIP6, ta.Addr())
	}
	rc.OwnAddrs = append(slices.Clone(rc.OwnAddrs), ownAddrs(ctrl, tln.Addr())...)
	issuer := &RelayIssuer{URL: turnURL(host, int(ta.Port())), Secret: []byte(st.TURNSecret), TTL: ttl}
	// A dual-stack public address: agents on IPv6 reach the relay at the
	// IPv6 one (a name's URL serves both families as it is).
	if v6 := ipv6Of(publicIPs(o.PublicAddr)); v6.IsValid() && v6.String() != host {
		issuer.URL6 = turnURL(v6.String(), int(ta.Port()))
	}
	return tln, issuer, rc, nil
}

// relayBindIP is where relay ports are bound: the relay IP if it is this
// machine's, else the TURN listener's address if specific (behind a 1:1 NAT,
// the private address the public one maps to), else every address.
func relayBindIP(relayIP, turnIP netip.Addr) netip.Addr {
	turnIP = turnIP.Unmap()
	if slices.Contains(interfaceAddrs(), relayIP) {
		return relayIP
	}
	if turnIP.IsValid() && !turnIP.IsUnspecified() && turnIP.Is4() == relayIP.Is4() {
		return turnIP
	}
	if relayIP.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// ownAddrs are the broker's addresses: the machine's and the listeners'.
func ownAddrs(ls ...net.Addr) []netip.Addr {
	out := interfaceAddrs()
	for _, a := range ls {
		if ta, ok := a.(*net.TCPAddr); ok {
			if ip := ta.AddrPort().Addr().Unmap(); !ip.IsUnspecified() {
				out = append(out, ip)
			}
		}
	}
	return out
}

func interfaceAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// listenSTUN binds the STUN sockets; nil when off or, with the default
// addresses, when they cannot be bound (another broker may hold them).
func listenSTUN(ctx context.Context, o Options) (*nat.Listeners, error) {
	if o.NoSTUN {
		return nil, nil
	}
	addrs := o.STUNListen
	if addrs == nil {
		host, _, _ := net.SplitHostPort(o.Listen)
		addrs = stunDefaultIPv6(nat.DefaultAddrs(host), ipv6Of(publicIPs(o.PublicAddr)))
	}
	ls, err := nat.Listen(ctx, addrs)
	if err != nil && o.STUNListen == nil {
		// The default ports are taken (another broker, say a second
		// `agent share` on this machine): free ports on the same hosts
		// serve agents as well, since the broker tells them where.
		free := make([]string, len(addrs))
		for i, a := range addrs {
			host, _, _ := net.SplitHostPort(a)
			free[i] = net.JoinHostPort(host, "0")
		}
		var ferr error
		if ls, ferr = nat.Listen(ctx, free); ferr == nil {
			o.Log.WithError(err).WithField("stun", ls.Addrs()).Info("STUN's default ports are taken: serving it on free ports")
			return ls, nil
		}
		o.Log.WithError(err).Warn("STUN server not started; agents cannot tell their NAT type from this broker")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	return ls, nil
}
