package secure

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Pin is the SHA-256 of a certificate's DER SubjectPublicKeyInfo.
type Pin [sha256.Size]byte

// String returns the unpadded base64url form used in broker URLs.
func (p Pin) String() string { return base64.RawURLEncoding.EncodeToString(p[:]) }

// IsZero reports whether p is unset.
func (p Pin) IsZero() bool { return p == Pin{} }

// ParsePin parses the text form of a pin.
func ParsePin(s string) (Pin, error) {
	var p Pin
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != len(p) {
		return p, fmt.Errorf("%w: pin must be 43 base64url characters", ErrBadBrokerURL)
	}
	copy(p[:], b)
	return p, nil
}

// PinOf returns the pin of a certificate.
func PinOf(cert *x509.Certificate) Pin { return sha256.Sum256(cert.RawSubjectPublicKeyInfo) }

// Matches reports whether cert's public key is the pinned one, in constant time.
func (p Pin) Matches(cert *x509.Certificate) bool {
	got := PinOf(cert)
	return subtle.ConstantTimeCompare(got[:], p[:]) == 1
}

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9._~-]+$`)

// hostRE is a host name or IPv4 address as a broker URL may write it:
// letters, digits, '.', '-' and '_' (container names), nothing RFC 3986
// would need escaped, and no ',' (the separator of several addresses).
var hostRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// schemeRE is RFC 3986's scheme: only something of that form is quoted back
// in an error, so a token pasted without "pp://" is never echoed.
var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)

// DefaultBrokerPort is the control port a broker URL without a port means.
const DefaultBrokerPort = 7000

// MaxBrokerAddrs is how many addresses one broker URL may name.
const MaxBrokerAddrs = 8

// BrokerURL is pp://TOKEN@HOST:PORT#PIN: where a broker listens, the token
// that admits agents to it, and the pin of its key. A broker with a
// certificate from a CA has no pin, pp://TOKEN@NAME:PORT: agents then verify
// its certificate chain against the system roots, for the URL's host.
//
// A broker run as several nodes (a cluster sharing one token and one key
// or certificate) has a URL naming several addresses, separated by commas:
// pp://TOKEN@b1.example.com:7000,b2.example.com:7000#PIN. Agents try them
// in turn; see Addrs and At.
type BrokerURL struct {
	Token string
	// Addr is host:port, or several of them joined by commas in the
	// order of the URL ("h1:p1,h2:p2"), each with its port filled in.
	Addr string
	Pin  Pin // zero: no pin; the certificate must verify for the dialed address's host
}

// String returns the URL form; without "#PIN" when the pin is zero.
func (u BrokerURL) String() string { return "pp://" + u.Token + "@" + u.Addr + u.fragment() }

// Redacted returns the URL with the token hidden, for logs.
func (u BrokerURL) Redacted() string { return "pp://***@" + u.Addr + u.fragment() }

func (u BrokerURL) fragment() string {
	if u.Pin.IsZero() {
		return ""
	}
	return "#" + u.Pin.String()
}

// Addrs returns the host:port addresses of Addr, in order; nil when Addr
// is empty.
func (u BrokerURL) Addrs() []string { return splitAddrs(u.Addr) }

// At returns a copy of u naming addr alone, with the same token and pin:
// the URL to dial one node by, and to verify its certificate for (a
// pin-less URL is verified for the host of the one address it names). At
// does not check that addr is one of u's.
func (u BrokerURL) At(addr string) BrokerURL {
	u.Addr = addr
	return u
}

// Host returns the host of the first address (without brackets for IPv6):
// the name a broker's CA-issued certificate must be valid for when that
// address is dialed.
func (u BrokerURL) Host() string {
	addrs := u.Addrs()
	if len(addrs) == 0 {
		return ""
	}
	host, _, err := net.SplitHostPort(addrs[0])
	if err != nil {
		return ""
	}
	return host
}

func splitAddrs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// ParseBrokerURL parses pp://TOKEN@HOST[:PORT][,HOST[:PORT]...][#PIN].
// Without a pin the broker is trusted by its certificate chain instead
// (see BrokerClientConfig). Errors never quote the token.
//
// net/url cannot read several hosts, so the authority is parsed here, to
// the same rules url.Parse applied to one: a case-insensitive scheme,
// percent escapes in the token and pin, IPv6 in brackets without a zone,
// an empty port meaning the default.
func ParseBrokerURL(s string) (BrokerURL, error) {
	s = strings.TrimSpace(s)
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return BrokerURL{}, fmt.Errorf("%w: control character in the URL", ErrBadBrokerURL)
		}
	}
	rest, ok := cutPrefixFold(s, "pp://")
	if !ok {
		// The message is the one url.Parse's scheme gave: config tests and
		// scripts match it.
		got := ""
		if scheme, _, found := strings.Cut(s, ":"); found && schemeRE.MatchString(scheme) {
			got = strings.ToLower(scheme)
		}
		return BrokerURL{}, fmt.Errorf("%w: scheme must be pp:// (got %q)", ErrBadBrokerURL, got)
	}
	rest, frag, hasFrag := strings.Cut(rest, "#") // a token cannot hold '#'
	if strings.ContainsAny(rest, "/?") {
		return BrokerURL{}, fmt.Errorf("%w: unexpected path or query", ErrBadBrokerURL)
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return BrokerURL{}, fmt.Errorf("%w: missing token (pp://TOKEN@host:port#pin)", ErrBadBrokerURL)
	}
	userinfo, hosts := rest[:at], rest[at+1:]
	token, err := url.PathUnescape(userinfo)
	if err != nil {
		return BrokerURL{}, fmt.Errorf("%w: token may hold only A-Z a-z 0-9 - . _ ~", ErrBadBrokerURL)
	}
	if strings.Contains(token, ":") {
		return BrokerURL{}, fmt.Errorf("%w: token must not contain ':'", ErrBadBrokerURL)
	}
	if token == "" {
		return BrokerURL{}, fmt.Errorf("%w: missing token (pp://TOKEN@host:port#pin)", ErrBadBrokerURL)
	}
	if !tokenRE.MatchString(token) {
		return BrokerURL{}, fmt.Errorf("%w: token may hold only A-Z a-z 0-9 - . _ ~", ErrBadBrokerURL)
	}
	addr, err := parseAddrList(hosts)
	if err != nil {
		return BrokerURL{}, err
	}
	u := BrokerURL{Token: token, Addr: addr}
	if !hasFrag {
		return u, nil
	}
	frag, err = url.PathUnescape(frag)
	if err != nil {
		return BrokerURL{}, fmt.Errorf("%w: pin must be 43 base64url characters", ErrBadBrokerURL)
	}
	if frag == "" {
		return BrokerURL{}, fmt.Errorf("%w: empty #pin (leave out the '#' for a broker with a certificate from a CA)", ErrBadBrokerURL)
	}
	pin, err := ParsePin(frag)
	if err != nil {
		return BrokerURL{}, err
	}
	// The zero pin means "no pin"; written out, it would print back as a
	// URL without one, and is far more likely a mangled URL than a key.
	if pin.IsZero() {
		return BrokerURL{}, fmt.Errorf("%w: pin is all zeros", ErrBadBrokerURL)
	}
	u.Pin = pin
	return u, nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

// parseAddrList parses a URL's comma-separated HOST[:PORT] list into the
// canonical Addr: each host:port as written, the default port added where
// there was none, joined by commas.
func parseAddrList(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: missing host", ErrBadBrokerURL)
	}
	elems := strings.Split(s, ",")
	if len(elems) > MaxBrokerAddrs {
		return "", fmt.Errorf("%w: %d addresses, at most %d", ErrBadBrokerURL, len(elems), MaxBrokerAddrs)
	}
	out := make([]string, 0, len(elems))
	seen := make(map[string]int, len(elems))
	for i, e := range elems {
		addr, key, err := parseURLAddr(e)
		if err != nil {
			if len(elems) > 1 {
				return "", fmt.Errorf("%w (address %d of %d)", err, i+1, len(elems))
			}
			return "", err
		}
		if j, dup := seen[key]; dup {
			return "", fmt.Errorf("%w: address %d, %s, repeats address %d", ErrBadBrokerURL, i+1, addr, j+1)
		}
		seen[key] = i
		out = append(out, addr)
	}
	return strings.Join(out, ","), nil
}

// parseURLAddr parses one HOST[:PORT] of a broker URL. It returns the
// address with the port filled in, and a key equal for two spellings of
// one address (case of a name, forms of an IP, leading zeros of a port).
func parseURLAddr(e string) (addr, key string, err error) {
	if e == "" {
		return "", "", fmt.Errorf("%w: empty address (two commas in a row, or one at an end)", ErrBadBrokerURL)
	}
	var host, port string
	if strings.HasPrefix(e, "[") {
		end := strings.IndexByte(e, ']')
		if end < 0 {
			return "", "", fmt.Errorf("%w: bad host %q (IPv6 goes in brackets, without a zone)", ErrBadBrokerURL, e)
		}
		host = e[1:end]
		after := e[end+1:]
		if after != "" && after[0] != ':' {
			return "", "", fmt.Errorf("%w: bad host %q (IPv6 goes in brackets, without a zone)", ErrBadBrokerURL, e)
		}
		port = strings.TrimPrefix(after, ":")
		ip, perr := netip.ParseAddr(host)
		if perr != nil || !ip.Is6() || ip.Zone() != "" {
			return "", "", fmt.Errorf("%w: bad host %q (IPv6 goes in brackets, without a zone)", ErrBadBrokerURL, e)
		}
	} else {
		if strings.Count(e, ":") > 1 {
			if _, err := netip.ParseAddr(e); err == nil || strings.Contains(e, "%") {
				return "", "", fmt.Errorf("%w: bad host %q (IPv6 goes in brackets, without a zone)", ErrBadBrokerURL, e)
			}
			return "", "", fmt.Errorf("%w: bad address %q (HOST or HOST:PORT, several separated by commas)", ErrBadBrokerURL, e)
		}
		host, port, _ = strings.Cut(e, ":")
		if host == "" {
			return "", "", fmt.Errorf("%w: missing host", ErrBadBrokerURL)
		}
		if !hostRE.MatchString(host) {
			return "", "", fmt.Errorf("%w: bad host %q (a name or IP address of A-Z a-z 0-9 . - _; a name in another script goes in its xn-- form)", ErrBadBrokerURL, host)
		}
	}
	if port == "" {
		port = strconv.Itoa(DefaultBrokerPort)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strings.Trim(port, "0123456789") != "" {
		return "", "", fmt.Errorf("%w: port %q out of range", ErrBadBrokerURL, port)
	}
	key = strings.ToLower(host)
	if ip, err := netip.ParseAddr(host); err == nil {
		key = ip.Unmap().String()
	}
	return net.JoinHostPort(host, port), key + " " + strconv.Itoa(n), nil
}
