package proxy

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinels; every error DialContext and For return for a proxy problem is an
// *Error whose Unwrap gives one of these, so callers branch with errors.Is.
var (
	// ErrProxyAuth: the proxy answered 407 Proxy Authentication Required
	// (or 401, which some proxies send for a wrong password).
	ErrProxyAuth = errors.New("proxy wants credentials")
	// ErrProxyRefused: the proxy answered CONNECT with a non-2xx status other
	// than 407 and 401 (403, 502, 503, ...).
	ErrProxyRefused = errors.New("proxy refused CONNECT")
	// ErrProxyUnreachable: the TCP dial to the proxy failed (or, for an
	// https:// proxy, the TLS handshake with it).
	ErrProxyUnreachable = errors.New("proxy unreachable")
	// ErrBadProxyResponse: the proxy's answer is not HTTP, is cut short, or
	// its header is larger than 64 KiB.
	ErrBadProxyResponse = errors.New("bad answer from proxy")
	// ErrUnsupportedScheme: the proxy URL is not http:// or https:// (for
	// example socks5://).
	ErrUnsupportedScheme = errors.New("unsupported proxy scheme")
	// ErrBadProxyURL: the proxy URL text cannot be used.
	ErrBadProxyURL = errors.New("bad proxy URL")
)

// Error is a failed proxy dial or an unusable proxy URL. It never holds a
// password: Proxy is redacted, and causes that could echo credentials are
// scrubbed before they are stored.
type Error struct {
	Proxy  string // the proxy URL, redacted (for a bad URL: its text, redacted)
	Addr   string // the destination asked for in CONNECT; "" if not that far
	Status int    // status of the proxy's answer; 0 if there was none
	Reason string // the answer's reason phrase, sanitized
	Err    error  // a sentinel above, or the context's error
	Cause  error  // the underlying error (dial, I/O, parse), if any

	withAuth bool // credentials were sent (a 407 then means they are wrong)
}

func (e *Error) Error() string {
	status := fmt.Sprintf("%d %s", e.Status, e.Reason)
	switch e.Err {
	case ErrProxyAuth:
		if e.withAuth {
			return fmt.Sprintf("proxy %s rejected the credentials in the proxy URL (%s): check user and password, http://user:pass@host:port", e.Proxy, status)
		}
		return fmt.Sprintf("proxy %s wants credentials (%s): put them in the proxy URL, http://user:pass@host:port", e.Proxy, status)
	case ErrProxyRefused:
		msg := fmt.Sprintf("proxy %s refused CONNECT %s (%s)", e.Proxy, e.Addr, status)
		switch {
		case e.Status == http.StatusForbidden:
			msg += ": the proxy may allow CONNECT only to port 443"
		case e.Status >= 500 && e.Status <= 599:
			msg += ": the proxy may be unable to reach " + e.Addr
		}
		return msg
	case ErrProxyUnreachable:
		return fmt.Sprintf("proxy %s unreachable: %v", e.Proxy, e.Cause)
	case ErrBadProxyResponse:
		return fmt.Sprintf("proxy %s: bad answer to CONNECT %s: %v", e.Proxy, e.Addr, e.Cause)
	case ErrBadProxyURL, ErrUnsupportedScheme:
		msg := fmt.Sprintf("proxy %q: want %s", e.Proxy, wantURL)
		if e.Cause != nil {
			msg += " (" + e.Cause.Error() + ")"
		}
		return msg
	}
	// The context ended the dial.
	if e.Addr == "" {
		return fmt.Sprintf("proxy %s: dialing the proxy: %v", e.Proxy, e.Err)
	}
	return fmt.Sprintf("proxy %s: CONNECT %s: %v", e.Proxy, e.Addr, e.Err)
}

// Unwrap gives the sentinel (or context error) and the cause.
func (e *Error) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Cause}
}

const wantURL = "http://[user:pass@]host:port"
