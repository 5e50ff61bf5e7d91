package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/peerport/peerport/internal/proxy"
	"github.com/peerport/peerport/internal/secure"
)

// Ranges of the broker limits. Beyond them a value is almost surely a typo.
const (
	maxMaxAgents         = 10_000_000
	maxMaxSharesPerAgent = 10_000
	maxMaxPendingIntros  = 10_000
	minMaxMessageBytes   = 1 << 10
	maxMaxMessageBytes   = 1 << 20
	maxRateLimit         = 1_000_000
)

// problems collects validation errors, locating each by the line its field
// was decoded from.
type problems struct {
	file  string
	lines map[string]int // field path -> line; nil for configs built in code
	errs  []error
}

func (p *problems) add(path string, cause error, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: p.lineOf(path), Path: path, Msg: fmt.Sprintf(format, args...), Err: cause})
}

// addErr reports err's text as the problem at path.
func (p *problems) addErr(path string, err error) { p.add(path, err, "%s", err.Error()) }

// lineOf finds the line of path, or of its nearest parent that was written
// in the file (a missing "shares[0].name" is reported at "shares[0]").
func (p *problems) lineOf(path string) int {
	for path != "" {
		if l, ok := p.lines[path]; ok {
			return l
		}
		path = path[:max(strings.LastIndexAny(path, ".["), 0)]
	}
	return 0
}

func (p *problems) err() error { return errors.Join(p.errs...) }

// Validate reports every problem of c at once, one line each; an agent with
// no share and no connect, or one holding config.example.yaml's placeholders,
// is a problem too. It expects SetDefaults to have run.
func (c *Agent) Validate() error { return c.validate(&problems{}) }

func (c *Agent) validate(p *problems) error {
	if c.Broker != "" {
		if u, err := secure.ParseBrokerURL(c.Broker); err != nil {
			p.addErr("broker", err)
		} else if exampleBroker(u) {
			p.add("broker", nil, "still the example's placeholder; replace it with the URL your broker printed (pp://TOKEN@HOST:PORT#PIN)")
		}
	}
	c.Log.validate(p, "log")
	if c.MetricsListen != "" {
		if _, err := NormalizeListen(c.MetricsListen); err != nil {
			p.addErr("metrics_listen", err)
		}
	}
	validPath(p, "path", c.Path)
	if c.Dashboard != "" && c.Dashboard != DashboardOff {
		if _, err := NormalizeListen(c.Dashboard); err != nil {
			p.addErr("dashboard", err)
		} else if !LoopbackListen(c.Dashboard) {
			p.add("dashboard", nil, "%s is not a loopback address: the page shows tickets, so it listens on 127.0.0.1, [::1] or localhost only (or off)", quote(c.Dashboard))
		}
	}
	c.Resume.validate(p, "resume")
	c.Relay.validate(p, "relay")
	if c.Proxy != "" {
		if _, err := proxy.ParseURL(c.Proxy); err != nil {
			p.addErr("proxy", err)
		}
	}

	names := map[string]int{}
	for i, s := range c.Shares {
		at := fmt.Sprintf("shares[%d]", i)
		switch {
		case s.Name == "":
			p.add(at+".name", nil, "required")
		case secure.ValidShareName(s.Name) != nil:
			p.addErr(at+".name", secure.ValidShareName(s.Name))
		default:
			if j, dup := names[s.Name]; dup {
				p.add(at+".name", nil, "duplicate share name %q (also shares[%d])", s.Name, j)
			} else {
				names[s.Name] = i
			}
		}
		if s.Target == "" {
			p.add(at+".target", nil, "required (PORT or HOST:PORT)")
		} else if _, err := NormalizeTarget(s.Target); err != nil {
			p.addErr(at+".target", err)
		}
		for j, id := range s.Allow {
			if _, err := secure.ParseAgentID(id); err != nil {
				p.addErr(fmt.Sprintf("%s.allow[%d]", at, j), err)
			} else if exampleAgentID(id) {
				p.add(fmt.Sprintf("%s.allow[%d]", at, j), nil, "still the example's agent ID; replace it with the ID of an agent to admit (`agent id` prints it), or remove it")
			}
		}
		entryPath(p, at+".path", s.Path)
	}

	type bound struct {
		host string
		port int
		path string
	}
	var listens []bound
	// The metrics listener takes part in the clash check: it is bound by
	// the same process.
	if host, port, err := splitAddr(c.MetricsListen, "127.0.0.1", 0, true); c.MetricsListen != "" && err == nil && port != 0 {
		listens = append(listens, bound{host, port, "metrics_listen"})
	}
	for i, cn := range c.Connects {
		at := fmt.Sprintf("connects[%d]", i)
		if cn.Timeout != 0 {
			durRange(p, at+".timeout", cn.Timeout, time.Second, 24*time.Hour)
		}
		team := cn.Peer != "" || cn.Share != ""
		switch {
		case cn.Ticket != "" && team:
			p.add(at, nil, "set either ticket, or peer and share; not both")
		case cn.Ticket != "" && exampleTicket(cn.Ticket):
			p.add(at+".ticket", nil, "still the example's ticket; replace it with the whole ticket `agent share` printed")
		case cn.Ticket != "":
			if _, err := secure.ParseTicket(cn.Ticket); err != nil {
				p.addErr(at+".ticket", err)
			}
		case !team:
			p.add(at, nil, "set ticket, or peer and share")
		default:
			if cn.Peer == "" {
				p.add(at+".peer", nil, "required with share (the agent ID of the sharer)")
			} else if _, err := secure.ParseAgentID(cn.Peer); err != nil {
				p.addErr(at+".peer", err)
			} else if exampleAgentID(cn.Peer) {
				p.add(at+".peer", nil, "still the example's agent ID; replace it with the sharer's (`agent id` on that machine prints it)")
			}
			if cn.Share == "" {
				p.add(at+".share", nil, "required with peer (the share name on that peer)")
			} else if err := secure.ValidShareName(cn.Share); err != nil {
				p.addErr(at+".share", err)
			}
			// Without broker: here the agent uses the one `agent login` saved,
			// and says so when there is none.
		}
		entryPath(p, at+".path", cn.Path)
		if cn.Listen == "" {
			continue
		}
		host, port, err := splitAddr(cn.Listen, "127.0.0.1", 0, true)
		if err != nil {
			p.addErr(at+".listen", err)
			continue
		}
		if port == 0 {
			continue // the system picks a free port: no clash possible
		}
		for _, b := range listens {
			if b.port == port && (b.host == host || wildcard(b.host) || wildcard(host)) {
				p.add(at+".listen", nil, "address %s clashes with %s", net.JoinHostPort(host, strconv.Itoa(port)), b.path)
				break
			}
		}
		listens = append(listens, bound{host, port, at + ".listen"})
	}
	// `agent up` with nothing to run would sit there looking healthy; an
	// empty file is more likely the wrong one, or one not written yet.
	if len(c.Shares) == 0 && len(c.Connects) == 0 {
		p.add("", nil, "nothing to run: add a share or a connect (see config.example.yaml)")
	}
	return p.err()
}

// clash reports whether two listen addresses (normalized) take the same
// port on a common address; port 0 never clashes.
func clash(a, b string) bool {
	ha, pa, err1 := splitAddr(a, "", 0, true)
	hb, pb, err2 := splitAddr(b, "", 0, true)
	if err1 != nil || err2 != nil || pa == 0 || pa != pb {
		return false
	}
	return ha == hb || wildcard(ha) || wildcard(hb)
}

func wildcard(host string) bool {
	ip := net.ParseIP(host)
	return host == "" || (ip != nil && ip.IsUnspecified())
}

// Validate reports every problem of c at once, one line each. It expects
// SetDefaults to have run.
func (c *Broker) Validate() error { return c.validate(&problems{}) }

func (c *Broker) validate(p *problems) error {
	if _, _, err := splitAddr(c.Listen, "", 0, true); err != nil {
		p.addErr("listen", err)
	}
	if c.PublicAddr != "" {
		if err := checkPublicAddrs(c.PublicAddr); err != nil {
			p.addErr("public_addr", err)
		}
	}
	if c.MetricsListen != "" {
		if _, err := NormalizeListen(c.MetricsListen); err != nil {
			p.addErr("metrics_listen", err)
		} else if clash(c.Listen, c.MetricsListen) {
			p.add("metrics_listen", nil, "address %s clashes with listen", quote(c.MetricsListen))
		}
	}
	for i, a := range c.STUN.Listen {
		if _, _, err := splitAddr(a, "", 0, true); err != nil {
			p.addErr(fmt.Sprintf("stun.listen[%d]", i), err)
		}
	}
	if c.STUN.Off && len(c.STUN.Listen) > 0 {
		p.add("stun", nil, "off with listen addresses: set one of them")
	}
	c.Log.validate(p, "log")
	l := c.Limits
	intRange(p, "limits.max_agents", l.MaxAgents, 1, maxMaxAgents)
	intRange(p, "limits.max_shares_per_agent", l.MaxSharesPerAgent, 1, maxMaxSharesPerAgent)
	intRange(p, "limits.max_pending_intros", l.MaxPendingIntros, 1, maxMaxPendingIntros)
	intRange(p, "limits.max_message_bytes", l.MaxMessageBytes, minMaxMessageBytes, maxMaxMessageBytes)
	positive(p, "limits.handshake_timeout", l.HandshakeTimeout)
	positive(p, "limits.idle_timeout", l.IdleTimeout)
	positive(p, "limits.intro_timeout", l.IntroTimeout)
	positive(p, "limits.registration_grace", l.RegistrationGrace)
	positive(p, "limits.preauth_timeout", l.PreAuthTimeout)
	intRange(p, "limits.max_preauth_per_ip", l.MaxPreAuthPerIP, 1, maxRateLimit)
	intRange(p, "limits.accepts_per_second_per_ip", l.AcceptsPerSecondPerIP, 1, maxRateLimit)
	intRange(p, "limits.accept_burst_per_ip", l.AcceptBurstPerIP, 1, maxRateLimit)
	intRange(p, "limits.max_conns", l.MaxConns, 0, maxMaxAgents)
	intRange(p, "limits.preauth_percent", l.PreAuthPercent, 1, 100)
	for _, r := range []struct {
		key string
		v   int
	}{{"logins_per_minute_per_ip", l.LoginsPerMinPerIP}, {"logins_per_minute_per_agent", l.LoginsPerMinPerAgent},
		{"registers_per_minute_per_ip", l.RegistersPerMinPerIP}, {"registers_per_minute_per_agent", l.RegistersPerMinPerAg},
		{"connects_per_minute_per_ip", l.ConnectsPerMinPerIP}, {"connects_per_minute_per_agent", l.ConnectsPerMinPerAg}} {
		intRange(p, "limits."+r.key, r.v, 1, maxRateLimit)
	}
	c.TURN.validate(p, c)
	c.validateCert(p)
	c.Cluster.validate(p)
	return p.err()
}

// Path policies of shares and connects.
const (
	PathAuto   = "auto"
	PathDirect = "direct"
	PathRelay  = "relay"
	PathTURN   = "turn"   // the TURN relay only
	PathBroker = "broker" // the broker relay only
)

func validPathValue(v string) bool {
	return v == PathAuto || v == PathDirect || v == PathRelay || v == PathTURN || v == PathBroker
}

func validPath(p *problems, at, v string) {
	if !validPathValue(v) {
		p.add(at, nil, "%s: want %s, %s, %s, %s or %s", quote(v), PathAuto, PathDirect, PathRelay, PathTURN, PathBroker)
	}
}

// entryPath checks a share's or connect's path; empty is the file's, which
// is reported at path when bad.
func entryPath(p *problems, at, v string) {
	if v != "" {
		validPath(p, at, v)
	}
}

func (r Relay) validate(p *problems, at string) {
	if r.URL == "" {
		if r.Secret != "" || r.SecretFile != "" {
			p.add(at+".url", nil, "required with a secret (turn:HOST:PORT?transport=tcp)")
		}
		return
	}
	if !strings.HasPrefix(r.URL, "turn:") {
		p.add(at+".url", nil, "%s: want turn:HOST:PORT?transport=tcp", quote(r.URL))
	}
	if (r.Secret == "") == (r.SecretFile == "") {
		p.add(at, nil, "exactly one of secret and secret_file is required with url")
	}
}

// Bounds of the resume settings: below them a busy machine's pause looks
// like a dead path, above them a dead path holds connections for too long
// or a session's buffers hold too much.
const (
	minKeepAlive, maxKeepAlive = 500 * time.Millisecond, time.Minute
	minDeadAfter, maxDeadAfter = 500 * time.Millisecond, time.Minute
	minResume, maxResume       = 5 * time.Second, time.Hour
	minBufferKiB, maxBufferKiB = 64, 64 << 10
)

func (r Resume) validate(p *problems, at string) {
	durRange(p, at+".keepalive", r.KeepAlive, minKeepAlive, maxKeepAlive)
	durRange(p, at+".dead_after", r.DeadAfter, minDeadAfter, maxDeadAfter)
	durRange(p, at+".timeout", r.Timeout, minResume, maxResume)
	intRange(p, at+".buffer_kib", r.BufferKiB, minBufferKiB, maxBufferKiB)
}

func durRange(p *problems, path string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		p.add(path, nil, "%s out of range (%s-%s)", d, lo, hi)
	}
}

func intRange(p *problems, path string, v, lo, hi int) {
	if v < lo || v > hi {
		p.add(path, nil, "%d out of range (%d-%d)", v, lo, hi)
	}
}

func positive(p *problems, path string, d time.Duration) {
	if d <= 0 {
		p.add(path, nil, "must be positive (got %s)", d)
	}
}

var (
	logLevels  = []string{"trace", "debug", "info", "warn", "error"}
	logFormats = []string{"text", "json"}
)

func (l Log) validate(p *problems, at string) {
	if !contains(logLevels, l.Level) {
		p.add(at+".level", nil, "unknown level %s (want %s)", quote(l.Level), strings.Join(logLevels, ", "))
	}
	if !contains(logFormats, l.Format) {
		p.add(at+".format", nil, "unknown format %s (want %s)", quote(l.Format), strings.Join(logFormats, ", "))
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// NormalizeTarget parses a share target, PORT or HOST:PORT, and returns it as
// host:port; a bare port means 127.0.0.1, since most shares are local services.
func NormalizeTarget(s string) (string, error) {
	host, port, err := splitAddr(s, "127.0.0.1", 1, false)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// NormalizeListen parses a connect listen address: empty (the agent picks),
// PORT (on 127.0.0.1, so a forward is not exposed by accident) or HOST:PORT,
// where an empty host means every interface and port 0 a free port.
func NormalizeListen(s string) (string, error) {
	if strings.TrimSpace(s) == "" {
		return "", nil
	}
	host, port, err := splitAddr(s, "127.0.0.1", 0, true)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// LoopbackListen says whether a HOST:PORT listen address is on loopback
// (localhost counts).
func LoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return strings.EqualFold(host, "localhost") || (err == nil && ip.Unmap().IsLoopback() && ip.Zone() == "")
}

// normalizeBrokerListen is NormalizeListen for a broker: a bare port means
// every interface.
func normalizeBrokerListen(s string) (string, error) {
	host, port, err := splitAddr(s, "", 0, true)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// splitAddr parses PORT or HOST:PORT. A bare port gets defHost; minPort is 0
// or 1; emptyHost allows ":PORT".
func splitAddr(s, defHost string, minPort int, emptyHost bool) (string, int, error) {
	s = strings.TrimSpace(s)
	var host, port string
	if s != "" && strings.Trim(s, "0123456789") == "" {
		host, port = defHost, s
	} else {
		var err error
		if host, port, err = net.SplitHostPort(s); err != nil {
			return "", 0, fmt.Errorf("%s is not PORT or HOST:PORT", quote(s))
		}
		if host == "" && !emptyHost {
			return "", 0, fmt.Errorf("%s has no host (write PORT for 127.0.0.1, or HOST:PORT)", quote(s))
		}
		if err := checkHost(host); err != nil {
			return "", 0, err
		}
	}
	n, err := checkPort(port, minPort)
	return host, n, err
}

func checkPort(port string, minPort int) (int, error) {
	if port == "" || strings.Trim(port, "0123456789") != "" {
		return 0, fmt.Errorf("port %s is not a number", quote(port))
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < minPort || n > 65535 {
		return 0, fmt.Errorf("port %s out of range (%d-65535)", cut(port), minPort)
	}
	return n, nil
}

// checkHost rejects what cannot be a host name or IP literal, such as a URL.
func checkHost(host string) error {
	if strings.ContainsFunc(host, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune("/@#?\\\"'[]", r)
	}) {
		return fmt.Errorf("host %s is not a host name or IP address", quote(host))
	}
	return nil
}

// checkPublicAddrs accepts what checkPublicAddr does, or a dual-stack
// broker's IPv4 and IPv6 address (each with an optional port) joined by a
// comma.
func checkPublicAddrs(s string) error {
	elems := strings.Split(s, ",")
	if len(elems) == 1 {
		return checkPublicAddr(s)
	}
	if len(elems) > 2 {
		return fmt.Errorf("%s: at most two addresses, an IPv4 and an IPv6 one", quote(s))
	}
	var v6 [2]bool
	for i, e := range elems {
		e = strings.TrimSpace(e)
		if err := checkPublicAddr(e); err != nil {
			return err
		}
		host := e
		if h, _, err := net.SplitHostPort(e); err == nil {
			host = h
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return fmt.Errorf("%s: two addresses must be one IPv4 and one IPv6 address, not names", quote(s))
		}
		v6[i] = !ip.Unmap().Is4()
	}
	if v6[0] == v6[1] {
		return fmt.Errorf("%s: two addresses must be one IPv4 and one IPv6 address", quote(s))
	}
	return nil
}

// checkPublicAddr accepts host or host:port, the form agents will dial.
func checkPublicAddr(s string) error {
	if net.ParseIP(s) != nil {
		return nil // a bare IPv6 literal has colons but no port
	}
	if strings.Contains(s, "/") {
		return fmt.Errorf("%s is not HOST or HOST:PORT", quote(s)) // likely a URL
	}
	host := s
	if strings.Contains(s, ":") {
		h, port, err := net.SplitHostPort(s)
		if err != nil {
			return fmt.Errorf("%s is not HOST or HOST:PORT", quote(s))
		}
		if _, err := checkPort(port, 1); err != nil {
			return err
		}
		host = h
	}
	if host == "" {
		return fmt.Errorf("%s has no host", quote(s))
	}
	return checkHost(host)
}

// quote quotes a value for a message, cut short: a long value in an address
// field is likely a ticket pasted in the wrong place, and its secret should
// not end up in logs.
func quote(s string) string { return strconv.Quote(cut(s)) }

func cut(s string) string {
	if r := []rune(s); len(r) > 40 {
		return string(r[:37]) + "..."
	}
	return s
}
