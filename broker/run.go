package broker

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/secure"
)

// DefaultListen is where a broker listens unless told otherwise.
const DefaultListen = ":7000"

// Options are everything `broker` takes.
type Options struct {
	Listen     string // default ":7000"
	PublicAddr string // host or host:port advertised in the URL; default: see Start
	StateDir   string
	Log        logrus.FieldLogger
	Version    string
	Limits     func(*Config) // optional: adjusts limits and timeouts before New

	// STUNListen are the STUN server's addresses, each served on UDP and
	// TCP. Nil: nat.DefaultAddrs of Listen's host (ports 3478 and 3479, on
	// both addresses where the machine has two), and a failure to bind them
	// is logged, not fatal. NoSTUN turns the STUN server off.
	STUNListen []string
	NoSTUN     bool

	// MetricsListen is where Prometheus metrics (/metrics) and a health
	// check (/healthz) are served over plain HTTP; empty: not served. The
	// metrics hold no secrets but counts and the version; still, bind it to
	// loopback or a private address.
	MetricsListen string
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
	err         error
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
	stun, err := listenSTUN(ctx, o)
	if err != nil {
		return nil, err
	}
	closeSTUN := func() {
		if stun != nil {
			stun.Close()
		}
	}
	cfg := Config{Token: st.Token, Cert: st.Cert, Log: o.Log, Version: o.Version}
	if stun != nil {
		cfg.STUN = stun.Addrs()
	}
	if o.Limits != nil {
		o.Limits(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		closeSTUN()
		return nil, err
	}
	if stun != nil {
		newSTUNMetrics(srv.Registry()).wrap(stun)
	}
	var ms *metricsServer
	if o.MetricsListen != "" {
		registerProcessCollectors(srv.Registry())
		if ms, err = listenMetrics(ctx, o.MetricsListen, srv.Registry(), srv.log); err != nil {
			closeSTUN()
			return nil, err
		}
	}
	closeMetrics := func() {
		if ms != nil {
			ms.ln.Close()
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", o.Listen)
	if err != nil {
		closeMetrics()
		closeSTUN()
		return nil, fmt.Errorf("broker listen: %w", err)
	}
	addr, err := publicAddr(o.PublicAddr, ln.Addr())
	if err != nil {
		ln.Close()
		closeMetrics()
		closeSTUN()
		return nil, err
	}
	done := make(chan struct{})
	r := &Running{URL: st.URL(addr), Addr: ln.Addr(), Server: srv, Done: done}
	srv.log.WithFields(logrus.Fields{"listen": ln.Addr().String(), "url": r.URL.Redacted()}).Info("broker listening")
	mctx, stopMetrics := context.WithCancel(ctx)
	metricsDone := make(chan struct{})
	if ms != nil {
		r.MetricsAddr = ms.ln.Addr()
		mlog := o.Log.WithField("component", "metrics")
		mlog.WithField("listen", r.MetricsAddr.String()).Info("metrics listening (/metrics, /healthz)")
		go func() {
			defer close(metricsDone)
			ms.serve(mctx, mlog)
		}()
	} else {
		close(metricsDone)
	}
	sctx, stopSTUN := context.WithCancel(ctx)
	stunDone := make(chan struct{})
	if stun != nil {
		r.STUN = stun.Addrs()
		slog := o.Log.WithField("component", "stun")
		slog.WithField("listen", r.STUN).Info("STUN listening")
		go func() {
			defer close(stunDone)
			if err := nat.NewServer(nat.ServerConfig{Log: slog}).Serve(sctx, stun); err != nil {
				slog.WithError(err).Warn("STUN server stopped")
			}
		}()
	} else {
		close(stunDone)
	}
	go func() {
		defer close(done)
		r.err = srv.Serve(ctx, ln)
		stopSTUN()
		stopMetrics()
		<-stunDone
		<-metricsDone
	}()
	return r, nil
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
		addrs = nat.DefaultAddrs(host)
	}
	ls, err := nat.Listen(ctx, addrs)
	if err != nil {
		if o.STUNListen == nil {
			o.Log.WithError(err).Warn("STUN server not started; agents cannot tell their NAT type from this broker")
			return nil, nil
		}
		return nil, fmt.Errorf("broker: %w", err)
	}
	return ls, nil
}

func publicAddr(public string, bound net.Addr) (string, error) {
	port := 0
	var host net.IP
	if ta, ok := bound.(*net.TCPAddr); ok {
		port, host = ta.Port, ta.IP
	}
	if public != "" {
		if h, p, err := net.SplitHostPort(public); err == nil {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 || h == "" {
				return "", fmt.Errorf("public address %q: want host or host:port", public)
			}
			return public, nil
		}
		return net.JoinHostPort(public, strconv.Itoa(port)), nil
	}
	if host != nil && !host.IsUnspecified() {
		return net.JoinHostPort(host.String(), strconv.Itoa(port)), nil
	}
	ip := "127.0.0.1"
	if ips := nat.GlobalIPv4s(); len(ips) > 0 {
		ip = ips[0].String()
	}
	return net.JoinHostPort(ip, strconv.Itoa(port)), nil
}
