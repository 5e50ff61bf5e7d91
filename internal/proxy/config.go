package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpproxy"
)

// Config picks the proxy for a destination. The explicit URL wins over the
// environment.
//
// An explicit URL always applies, to every destination: NO_PROXY does not
// exempt anything from it (whoever set it in agent.yaml or on the command line
// meant it). A proxy from the environment follows the usual rules:
//
//   - HTTPS_PROXY (or https_proxy), else ALL_PROXY (or all_proxy); the upper
//     case name wins when both are set. The value is http://, https:// or a
//     bare host:port (taken as http://). socks5:// and other schemes give
//     ErrUnsupportedScheme.
//   - NO_PROXY (or no_proxy) as golang.org/x/net/http/httpproxy reads it: a
//     comma list of host names (matching the name and its subdomains),
//     ".example.com" (subdomains only), IP addresses, CIDR ranges, any of these
//     with ":port" (that port only), or "*" (nothing is proxied).
//   - localhost and loopback destinations are always dialed directly.
type Config struct {
	URL    *url.URL            // explicit (agent.yaml `proxy:` / --proxy); nil: from the environment
	Getenv func(string) string // default os.Getenv; tests inject
}

// For returns the proxy to use for the TCP destination addr (host:port), or
// nil for a direct dial. The URL returned has an explicit port (80 or 443 when
// the text had none) and must not be modified.
func (c Config) For(addr string) (*url.URL, error) {
	if _, err := checkAddr(addr); err != nil {
		return nil, err
	}
	if c.URL != nil {
		return normalize(c.URL)
	}
	getenv := c.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	name, raw := firstEnv(getenv, "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
	if raw == "" {
		return nil, nil
	}
	// httpproxy decides whether NO_PROXY exempts addr; the proxy it is
	// given is a stand-in, the real one is parsed (strictly) below.
	_, noProxy := firstEnv(getenv, "NO_PROXY", "no_proxy")
	decide := (&httpproxy.Config{HTTPSProxy: "http://proxy.invalid", NoProxy: noProxy}).ProxyFunc()
	if use, _ := decide(&url.URL{Scheme: "https", Host: addr}); use == nil {
		return nil, nil // NO_PROXY, or a loopback destination
	}
	u, err := ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return u, nil
}

func firstEnv(getenv func(string) string, names ...string) (name, value string) {
	for _, n := range names {
		if v := strings.TrimSpace(getenv(n)); v != "" {
			return n, v
		}
	}
	return "", ""
}

// ParseURL parses proxy URL text as a user writes it (agent.yaml `proxy:`,
// --proxy, HTTPS_PROXY): http://[user:pass@]host[:port], https://..., or a
// bare host:port (http://). User and password may be percent-encoded. The
// port defaults to 80 for http and 443 for https. Errors are *Error
// (ErrBadProxyURL or ErrUnsupportedScheme) and never show the password.
func ParseURL(s string) (*url.URL, error) {
	s = strings.TrimSpace(s)
	text := s
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		bad := &Error{Proxy: redactText(text), Err: ErrBadProxyURL}
		var ue *url.Error
		// The parser's complaint may quote a piece of the text: keep it
		// only when the text holds no user info.
		if errors.As(err, &ue) && !strings.Contains(text, "@") {
			bad.Cause = ue.Err
		}
		return nil, bad
	}
	return normalize(u)
}

// normalize checks u and returns a copy with an explicit port.
func normalize(u *url.URL) (*url.URL, error) {
	bad := func(sentinel error, why string) error {
		return &Error{Proxy: Redact(u), Err: sentinel, Cause: errors.New(why)}
	}
	var port string
	switch strings.ToLower(u.Scheme) {
	case "http":
		port = "80"
	case "https":
		port = "443"
	case "":
		return nil, bad(ErrBadProxyURL, "no scheme")
	default:
		return nil, bad(ErrUnsupportedScheme, fmt.Sprintf("scheme %q is not supported: peerport speaks HTTP CONNECT only", u.Scheme))
	}
	switch {
	case u.Opaque != "":
		return nil, bad(ErrBadProxyURL, "not a URL with a host")
	case u.Hostname() == "":
		return nil, bad(ErrBadProxyURL, "no host")
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "":
		return nil, bad(ErrBadProxyURL, "a proxy URL has no path, query or fragment")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, bad(ErrBadProxyURL, "port "+p+" out of range")
		}
		port = strconv.Itoa(n)
	}
	return &url.URL{
		Scheme: strings.ToLower(u.Scheme),
		User:   u.User,
		Host:   net.JoinHostPort(u.Hostname(), port),
	}, nil
}

// Redact returns u as text with any password replaced by "***" (for logs and
// errors). The user name stays.
func Redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	if _, has := u.User.Password(); !has {
		return u.String()
	}
	// url would escape "***"; put it in by hand, after the escaped user.
	c := *u
	c.User = url.User(u.User.Username())
	user := c.User.String()
	return strings.Replace(c.String(), "//"+user+"@", "//"+user+":***@", 1)
}

// redactText redacts proxy URL text that did not parse: everything between the
// scheme and the last '@' (which may hold a password, even one with '/' or '@'
// in it) becomes "***".
func redactText(s string) string {
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + len("://")
	}
	at := strings.LastIndex(s[start:], "@")
	if at < 0 {
		return s
	}
	return s[:start] + "***" + s[start+at:]
}

// checkAddr checks a CONNECT destination and returns it in canonical form
// (brackets around an IPv6 address). The host goes on the request line and in
// the Host header, so it may not hold anything that would end or split them.
func checkAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		err = errors.New("no port, or a bare IPv6 address")
	} else {
		n, perr := strconv.Atoi(port)
		switch {
		case perr != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port:
			err = errors.New("port must be a number 1..65535")
		case host == "":
			err = errors.New("no host")
		case strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune("/?#@[]\\\"", r) }):
			err = errors.New("bad character in host")
		}
	}
	if err != nil {
		return "", fmt.Errorf("proxy: destination %q: want host:port: %w", addr, err)
	}
	return net.JoinHostPort(host, port), nil
}
