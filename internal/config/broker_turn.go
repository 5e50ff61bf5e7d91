package config

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// BrokerTURN is broker.yaml's turn: section, the broker's relay: a TURN
// server over TCP with RFC 6062 TCP allocations, on unless Off; or, with
// External, a TURN server the broker only issues credentials for.
type BrokerTURN struct {
	Off bool `yaml:"off"` // no embedded relay
	// Listen is the TURN listener, HOST:PORT or :PORT (a bare port means
	// ":PORT"); empty: listen's host, port 3480, and a failure to bind it
	// is logged, not fatal.
	Listen string `yaml:"listen"`
	// RelayIP is the IP relayed addresses are given at, or a dual-stack
	// relay's IPv4 and IPv6 address joined by a comma; empty: the public
	// address's (resolved if a name).
	RelayIP string `yaml:"relay_ip"`
	// RelayPorts is the port range of relayed addresses, "MIN-MAX".
	RelayPorts string `yaml:"relay_ports"`
	// CredentialTTL is the lifetime of the credentials issued to sharers.
	CredentialTTL time.Duration `yaml:"credential_ttl"`
	// AllowPeers opens ranges (CIDR, or a single IP) of the peer addresses
	// the relay refuses: loopback, private, link-local, CGNAT, multicast,
	// and the broker's own.
	AllowPeers []string `yaml:"allow_peers"`
	// MaxAllocationsPerAgent bounds live allocations of one agent ID.
	MaxAllocationsPerAgent int `yaml:"max_allocations_per_agent"`
	// MaxPermissionsPerAllocation bounds the distinct peer IPs of one allocation.
	MaxPermissionsPerAllocation int `yaml:"max_permissions_per_allocation"`
	// Bandwidth is bytes per second per allocation, each way; 0: unlimited.
	Bandwidth int64 `yaml:"bandwidth"`
	// External is a TURN server (coturn with use-auth-secret) relay
	// introductions send sharers to instead; the broker then runs none.
	External BrokerTURNExternal `yaml:"external"`
}

// BrokerTURNExternal is an external TURN server and its shared secret.
type BrokerTURNExternal struct {
	URL        string `yaml:"url"`         // turn:HOST:PORT?transport=tcp
	Secret     string `yaml:"secret"`      // the shared secret (coturn static-auth-secret); or
	SecretFile string `yaml:"secret_file"` // a file holding it (surrounding whitespace ignored)
}

// Defaults of the turn: section.
const (
	DefaultTURNRelayPorts                  = "49152-65535"
	DefaultTURNCredentialTTL               = time.Hour
	DefaultTURNMaxAllocationsPerAgent      = 16
	DefaultTURNMaxPermissionsPerAllocation = 8
)

// Ranges of the turn: section.
const (
	minTURNCredentialTTL      = time.Minute
	maxTURNCredentialTTL      = 30 * 24 * time.Hour
	maxTURNAllocationsOfAgent = 10_000
	maxTURNPermissions        = 1_000
	maxTURNSecretFileSize     = 4 << 10
)

// SetDefaults fills the unset fields of t; a bare port in Listen becomes ":PORT".
func (t *BrokerTURN) SetDefaults() {
	if t.Listen != "" {
		if l, err := normalizeBrokerListen(t.Listen); err == nil {
			t.Listen = l
		}
	}
	setString(&t.RelayPorts, DefaultTURNRelayPorts)
	setDuration(&t.CredentialTTL, DefaultTURNCredentialTTL)
	setInt(&t.MaxAllocationsPerAgent, DefaultTURNMaxAllocationsPerAgent)
	setInt(&t.MaxPermissionsPerAllocation, DefaultTURNMaxPermissionsPerAllocation)
}

// validate reports the problems of the turn: section of c at "turn.*".
func (t BrokerTURN) validate(p *problems, c *Broker) {
	if t.Listen != "" {
		switch _, _, err := splitAddr(t.Listen, "", 0, true); {
		case err != nil:
			p.addErr("turn.listen", err)
		case clash(c.Listen, t.Listen):
			p.add("turn.listen", nil, "address %s clashes with listen", quote(t.Listen))
		case c.MetricsListen != "" && clash(c.MetricsListen, t.Listen):
			p.add("turn.listen", nil, "address %s clashes with metrics_listen", quote(t.Listen))
		}
	}
	if _, _, err := t.RelayIPs(); err != nil {
		p.addErr("turn.relay_ip", err)
	}
	if _, _, err := ParsePortRange(t.RelayPorts); err != nil {
		p.addErr("turn.relay_ports", err)
	}
	if t.CredentialTTL < minTURNCredentialTTL || t.CredentialTTL > maxTURNCredentialTTL {
		p.add("turn.credential_ttl", nil, "%s out of range (%s-%s)", t.CredentialTTL, minTURNCredentialTTL, maxTURNCredentialTTL)
	}
	for i, s := range t.AllowPeers {
		if _, err := parsePeerPrefix(s); err != nil {
			p.addErr(fmt.Sprintf("turn.allow_peers[%d]", i), err)
		}
	}
	intRange(p, "turn.max_allocations_per_agent", t.MaxAllocationsPerAgent, 1, maxTURNAllocationsOfAgent)
	intRange(p, "turn.max_permissions_per_allocation", t.MaxPermissionsPerAllocation, 1, maxTURNPermissions)
	if t.Bandwidth < 0 {
		p.add("turn.bandwidth", nil, "%d is negative (0 means unlimited)", t.Bandwidth)
	}
	e := t.External
	if e.URL == "" {
		if e.Secret != "" || e.SecretFile != "" {
			p.add("turn.external.url", nil, "required with a secret (turn:HOST:PORT?transport=tcp)")
		}
		return
	}
	if err := checkTURNURL(e.URL); err != nil {
		p.addErr("turn.external.url", err)
	}
	if (e.Secret == "") == (e.SecretFile == "") {
		p.add("turn.external", nil, "exactly one of secret and secret_file is required with url")
	}
}

// ParsePortRange parses "MIN-MAX", 1 <= MIN <= MAX <= 65535.
func ParsePortRange(s string) (lo, hi uint16, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	bad := fmt.Errorf("%s is not a port range MIN-MAX, e.g. %s", quote(s), DefaultTURNRelayPorts)
	if !ok {
		return 0, 0, bad
	}
	l, err1 := checkPort(strings.TrimSpace(a), 1)
	h, err2 := checkPort(strings.TrimSpace(b), 1)
	if err1 != nil || err2 != nil {
		return 0, 0, bad
	}
	if l > h {
		return 0, 0, fmt.Errorf("%s: %d is above %d", quote(s), l, h)
	}
	return uint16(l), uint16(h), nil
}

// AllowPrefixes parses AllowPeers.
func (t BrokerTURN) AllowPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range t.AllowPeers {
		pfx, err := parsePeerPrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, pfx)
	}
	return out, nil
}

// parsePeerPrefix takes a CIDR range, or one address.
func parsePeerPrefix(s string) (netip.Prefix, error) {
	if pfx, err := netip.ParsePrefix(s); err == nil {
		return pfx.Masked(), nil
	}
	if ip, err := netip.ParseAddr(s); err == nil && ip.Zone() == "" {
		return netip.PrefixFrom(ip, ip.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("%s is not a CIDR range such as 127.0.0.0/8, nor an IP address", quote(s))
}

// checkTURNURL accepts turn:HOST:PORT?transport=tcp, the only kind agents use.
func checkTURNURL(s string) error {
	rest, ok := strings.CutPrefix(s, "turn:")
	hostport, query, _ := strings.Cut(rest, "?")
	want := fmt.Errorf("%s: want turn:HOST:PORT?transport=tcp", quote(s))
	if !ok || query != "transport=tcp" {
		return want
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		return want
	}
	if _, err := checkPort(port, 1); err != nil {
		return err
	}
	return checkHost(host)
}

// LoadSecret returns the shared secret: Secret, or SecretFile's content
// without surrounding whitespace.
func (e BrokerTURNExternal) LoadSecret() ([]byte, error) {
	if e.SecretFile == "" {
		return []byte(e.Secret), nil
	}
	f, err := os.Open(e.SecretFile)
	if err != nil {
		return nil, &Error{File: e.SecretFile, Path: "turn.external.secret_file", Msg: "cannot read: " + causeText(err), Err: err}
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTURNSecretFileSize+1))
	if err != nil {
		return nil, &Error{File: e.SecretFile, Path: "turn.external.secret_file", Msg: "cannot read: " + causeText(err), Err: err}
	}
	n := len(b)
	b = bytes.TrimSpace(b)
	switch {
	case n > maxTURNSecretFileSize:
		return nil, &Error{File: e.SecretFile, Path: "turn.external.secret_file", Msg: "larger than " + strconv.Itoa(maxTURNSecretFileSize) + " bytes; is this the secret?"}
	case len(b) == 0:
		return nil, &Error{File: e.SecretFile, Path: "turn.external.secret_file", Msg: "empty"}
	}
	return b, nil
}

// RelayIPs parses RelayIP: one IP address, or an IPv4 and an IPv6 address
// joined by a comma (returned as ip and ip6, in that order whatever the
// order given); both invalid when empty.
func (t BrokerTURN) RelayIPs() (ip, ip6 netip.Addr, err error) {
	if t.RelayIP == "" {
		return ip, ip6, nil
	}
	elems := strings.Split(t.RelayIP, ",")
	if len(elems) > 2 {
		return ip, ip6, fmt.Errorf("%s: at most two addresses, an IPv4 and an IPv6 one", quote(t.RelayIP))
	}
	var ips []netip.Addr
	for _, e := range elems {
		a, perr := netip.ParseAddr(strings.TrimSpace(e))
		if perr != nil || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
			return ip, ip6, fmt.Errorf("%s is not an IP address agents can reach", quote(strings.TrimSpace(e)))
		}
		ips = append(ips, a.Unmap())
	}
	if len(ips) == 1 {
		return ips[0], ip6, nil
	}
	if ips[0].Is4() == ips[1].Is4() {
		return ip, ip6, fmt.Errorf("%s: two addresses must be one IPv4 and one IPv6 address", quote(t.RelayIP))
	}
	if ips[0].Is6() {
		ips[0], ips[1] = ips[1], ips[0]
	}
	return ips[0], ips[1], nil
}
