package relay

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// DefaultPort is the TURN port a URL without one means (RFC 7065 §3).
const DefaultPort = 3478

// ParseURL checks a TURN URL (RFC 7065) for a TCP allocation and returns the
// server's host:port. Accepted: "turn:HOST", "turn:HOST:PORT", either with
// "?transport=tcp"; IPv6 literals in brackets. A missing port means 3478.
// Rejected, each with its reason: turns: (TLS to the TURN server is not
// supported), stun:/stuns:, transport=udp (RFC 6062 needs TCP to the
// server), user info, other parameters, and ports outside 1..65535.
func ParseURL(s string) (hostport string, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("relay: TURN URL %q: %s", s, fmt.Sprintf(format, args...))
	}
	scheme, rest, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return "", bad(`want turn:HOST:PORT?transport=tcp`)
	}
	switch strings.ToLower(scheme) {
	case "turn":
	case "turns":
		return "", bad("turns: (TURN over TLS) is not supported; use turn:HOST:PORT?transport=tcp (the peer channel is TLS already)")
	case "stun", "stuns":
		return "", bad("a STUN URL cannot relay; want turn:HOST:PORT?transport=tcp")
	default:
		return "", bad("unknown scheme %q; want turn:HOST:PORT?transport=tcp", scheme)
	}
	// "turn://host:port" is not RFC 7065 but common; take it as "turn:host:port".
	rest = strings.TrimPrefix(rest, "//")
	rest, query, _ := strings.Cut(rest, "?")
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return "", bad("bad parameters: %v", err)
		}
		for k, v := range q {
			if k != "transport" {
				return "", bad("unknown parameter %q; only transport=tcp is understood", k)
			}
			if len(v) != 1 {
				return "", bad("transport given %d times", len(v))
			}
			switch strings.ToLower(v[0]) {
			case "tcp":
			case "udp":
				return "", bad("transport=udp: peerport relays TCP (RFC 6062) and needs transport=tcp")
			default:
				return "", bad("transport=%q: want transport=tcp", v[0])
			}
		}
	}
	rest = strings.TrimSuffix(rest, "/")
	if strings.Contains(rest, "@") {
		return "", bad("user info is not allowed in a TURN URL; credentials come from the broker")
	}
	if rest == "" {
		return "", bad("no host; want turn:HOST:PORT?transport=tcp")
	}
	host, port := rest, ""
	switch {
	case strings.HasPrefix(rest, "["):
		end := strings.Index(rest, "]")
		if end < 0 {
			return "", bad("unclosed [ in IPv6 address")
		}
		host, port = rest[1:end], rest[end+1:]
		if port != "" {
			if !strings.HasPrefix(port, ":") {
				return "", bad("junk %q after ]", port)
			}
			port = port[1:]
			if port == "" {
				return "", bad("empty port")
			}
		}
	case strings.Count(rest, ":") == 1:
		host, port, _ = strings.Cut(rest, ":")
		if port == "" {
			return "", bad("empty port")
		}
	case strings.Count(rest, ":") > 1:
		return "", bad("IPv6 addresses go in brackets: turn:[ADDR]:PORT")
	}
	if host == "" {
		return "", bad("no host; want turn:HOST:PORT?transport=tcp")
	}
	if strings.HasPrefix(rest, "[") {
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() {
			return "", bad("%q in brackets is not an IPv6 address", host)
		}
	} else if strings.ContainsAny(host, "/\\ \t%[]") {
		return "", bad("bad host %q", host)
	}
	p := DefaultPort
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return "", bad("port %q: want a number from 1 to 65535", port)
		}
		p = n
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}
