package natlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ProxyConfig configures an HTTP CONNECT proxy (the real tinyproxy) started
// on a lab host with StartProxy. The zero value is the corporate proxy
// peerport has to get through: port 3128, CONNECT to port 443 only, open to
// the hosts of its own segment, no authentication.
type ProxyConfig struct {
	// Port is the listen port (on every address of the host); 0: 3128.
	Port int
	// ConnectPorts are the destination ports CONNECT may reach; others get
	// "403 Access violation". nil: 443 only. tinyproxy also forwards plain
	// HTTP requests, to any port.
	ConnectPorts []uint16
	// Auth, as "user:password", makes the proxy demand Basic authentication:
	// a request without credentials gets 407, one with wrong credentials 401
	// (tinyproxy's way). Neither part may hold white space (tinyproxy's
	// config syntax).
	Auth string
	// Allow are the client prefixes let in (others get 403); nil: the proxy
	// host's own segment (IPv4 and IPv6) and loopback.
	Allow []netip.Prefix
}

// DefaultProxyPort is the port a proxy listens on when ProxyConfig.Port is 0.
const DefaultProxyPort = 3128

// Proxy is a running tinyproxy. The lab stops it at Close, like every Proc.
type Proxy struct {
	// Addr is the proxy's address as clients on its segment dial it: the
	// host's primary IPv4 address and the port.
	Addr netip.AddrPort
	// Proc is the tinyproxy process; its stdout is tinyproxy's log (one
	// "CONNECT ..." line per request, "Refused CONNECT method on port N").
	Proc *Proc
	auth string
}

// URL returns the proxy URL clients are configured with, with the
// credentials when the proxy demands them: http://user:password@10.0.1.11:3128.
func (p *Proxy) URL() string {
	u := url.URL{Scheme: "http", Host: p.Addr.String()}
	if user, pass, ok := strings.Cut(p.auth, ":"); ok {
		u.User = url.UserPassword(user, pass)
	}
	return u.String()
}

// Stop stops the proxy (also done by the lab's Close).
func (p *Proxy) Stop() error { return p.Proc.Stop() }

// StartProxy starts tinyproxy on the named host; see Node.StartProxy.
func (l *Lab) StartProxy(ctx context.Context, host string, cfg ProxyConfig) (*Proxy, error) {
	return l.Host(host).StartProxy(ctx, cfg)
}

// StartProxy starts the real tinyproxy (Debian package tinyproxy) on the
// node, in the foreground, with a config generated from cfg, and returns
// once it accepts connections. Its config file lives only until then; the
// process is tracked by the lab, so Close kills it whatever the test did.
// Placed on the LAN of a router with OnlyVia (the "proxy" placement of Pair),
// it is the only way out of that LAN.
func (n *Node) StartProxy(ctx context.Context, cfg ProxyConfig) (*Proxy, error) {
	if n.p.kind != nodeHost {
		return nil, fmt.Errorf("natlab: start proxy on %s: not a host", n)
	}
	bin, err := lookPath("tinyproxy")
	if err != nil {
		return nil, fmt.Errorf("natlab: start proxy on %s: tinyproxy not found in PATH; apt-get install tinyproxy", n)
	}
	conf, err := cfg.render(n)
	if err != nil {
		return nil, fmt.Errorf("natlab: start proxy on %s: %w", n, err)
	}
	dir, err := os.MkdirTemp("", "natlab-proxy-")
	if err != nil {
		return nil, fmt.Errorf("natlab: start proxy on %s: %w", n, err)
	}
	// tinyproxy reads its config once at start (and again only on SIGHUP,
	// which nothing sends), so the file goes as soon as it is up.
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("natlab: start proxy on %s: %w", n, err)
	}
	p, err := n.StartCommand(ctx, Command{Path: bin, Args: []string{"-d", "-c", path}})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := p.Expect(wctx, "Accepting connections"); err != nil {
		_ = p.Stop()
		return nil, fmt.Errorf("natlab: start proxy on %s: %w; its log:\n%s", n, err, p.Stdout())
	}
	port := cfg.Port
	if port == 0 {
		port = DefaultProxyPort
	}
	return &Proxy{Addr: netip.AddrPortFrom(n.IP(), uint16(port)), Proc: p, auth: cfg.Auth}, nil
}

// render returns tinyproxy's config for cfg on node n.
func (cfg ProxyConfig) render(n *Node) (string, error) {
	var errs []error
	port := cfg.Port
	if port == 0 {
		port = DefaultProxyPort
	}
	if port < 1 || port > 65535 {
		errs = append(errs, fmt.Errorf("port: %d out of range 1..65535", cfg.Port))
	}
	ports := cfg.ConnectPorts
	if ports == nil {
		ports = []uint16{443}
	}
	for i, p := range ports {
		if p == 0 {
			errs = append(errs, fmt.Errorf("connectPorts[%d]: port 0", i))
		}
	}
	var user, pass string
	if cfg.Auth != "" {
		var ok bool
		user, pass, ok = strings.Cut(cfg.Auth, ":")
		if !ok || user == "" || strings.ContainsAny(cfg.Auth, " \t\r\n") {
			errs = append(errs, errors.New(`auth: want "user:password" without white space`))
		}
	}
	allow := cfg.Allow
	if allow == nil {
		allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
		if seg := n.p.parent; seg != nil {
			allow = append(allow, seg.lan4.Masked())
			if seg.lan6.IsValid() {
				allow = append(allow, seg.lan6.Masked())
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	var b strings.Builder
	// No Listen: every address of the host. No LogFile: with -d the log goes
	// to stdout, where the Proc keeps it. No User: it runs as the lab does.
	fmt.Fprintf(&b, "Port %d\nTimeout 600\nMaxClients 200\nLogLevel Info\nDisableViaHeader Yes\n", port)
	for _, p := range allow {
		fmt.Fprintf(&b, "Allow %s\n", p)
	}
	for _, p := range ports {
		fmt.Fprintf(&b, "ConnectPort %d\n", p)
	}
	if cfg.Auth != "" {
		fmt.Fprintf(&b, "BasicAuth %s %s\n", user, pass)
	}
	return b.String(), nil
}
