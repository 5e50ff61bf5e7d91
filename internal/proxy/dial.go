package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	// maxHeader bounds the proxy's answer to CONNECT, status line and
	// headers together (and any interim 1xx answers before it).
	maxHeader = 64 << 10
	// maxReason and maxCause bound the reason phrase and the parser's
	// complaint kept for errors.
	maxReason = 80
	maxCause  = 200
	userAgent = "peerport"
)

// Dialer dials addr directly or through the proxy Config picks. The zero
// Dialer takes the proxy from the environment and dials with a zero
// net.Dialer.
type Dialer struct {
	Config  Config
	Forward *net.Dialer // the dial to the proxy (or the direct dial); nil: a zero net.Dialer
	// TLSConfig for an https:// proxy URL (TLS to the proxy itself); nil:
	// system roots. An empty ServerName is set to the proxy's host.
	TLSConfig *tls.Config
}

// DialContext dials addr (host:port) on network: directly when Config picks
// no proxy, else through the proxy, where network must be tcp, tcp4 or tcp6
// (the proxy resolves the host and picks the address family). ctx bounds the
// dial to the proxy, the TLS handshake with an https:// proxy and the CONNECT
// exchange; the connection returned has no deadline set. Proxy failures are
// *Error; see the sentinels in errors.go.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	fwd := d.Forward
	if fwd == nil {
		fwd = &net.Dialer{}
	}
	p, err := d.Config.For(addr)
	if err != nil {
		return nil, err
	}
	if p == nil {
		return fwd.DialContext(ctx, network, addr)
	}
	via := Redact(p)
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("proxy %s: cannot carry network %q: CONNECT tunnels TCP only", via, network)
	}
	target, err := checkAddr(addr)
	if err != nil {
		return nil, err
	}

	raw, err := fwd.DialContext(ctx, "tcp", p.Host)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &Error{Proxy: via, Err: ctx.Err()}
		}
		return nil, &Error{Proxy: via, Err: ErrProxyUnreachable, Cause: err}
	}
	// From here ctx ends the exchange two ways: its deadline on the socket,
	// and closing the socket when it is cancelled.
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	c, rest, err := d.handshake(ctx, raw, p, target)
	if !stop() {
		// ctx ended; the AfterFunc closed raw, or is closing it.
		_ = raw.Close()
		return nil, &Error{Proxy: via, Addr: target, Err: ctx.Err()}
	}
	if err != nil {
		_ = raw.Close()
		if _, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) {
			// The socket's deadline fired a moment before ctx's timer.
			return nil, &Error{Proxy: via, Addr: target, Err: context.DeadlineExceeded}
		}
		return nil, err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		_ = raw.Close()
		return nil, &Error{Proxy: via, Addr: target, Err: ErrProxyUnreachable, Cause: err}
	}
	return &conn{Conn: c, rest: rest, via: via}, nil
}

// handshake runs TLS with an https:// proxy, then the CONNECT exchange. It
// returns the connection to read and write the tunnel on and the tunnel bytes
// already read.
func (d *Dialer) handshake(ctx context.Context, raw net.Conn, p *url.URL, target string) (net.Conn, []byte, error) {
	x := newExchange(p, target)
	c := raw
	if p.Scheme == "https" {
		cfg := &tls.Config{}
		if d.TLSConfig != nil {
			cfg = d.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = p.Hostname()
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, nil, &Error{Proxy: x.proxy, Err: ErrProxyUnreachable, Cause: fmt.Errorf("TLS handshake: %w", err)}
		}
		c = tc
	}
	if _, err := io.WriteString(c, x.request()); err != nil {
		return nil, nil, &Error{Proxy: x.proxy, Addr: target, Err: ErrProxyUnreachable, Cause: fmt.Errorf("sending CONNECT: %w", err)}
	}
	rest, err := x.readAnswer(c)
	if err != nil {
		return nil, nil, err
	}
	return c, rest, nil
}

// exchange is one CONNECT request and what is needed to judge its answer.
type exchange struct {
	proxy   string   // the proxy URL, redacted
	addr    string   // the destination, canonical host:port
	token   string   // base64 of user:pass for Proxy-Authorization; "" without user info
	secrets []string // text no error may show: the password, user:pass, token
}

func newExchange(p *url.URL, addr string) *exchange {
	x := &exchange{proxy: Redact(p), addr: addr}
	if p.User != nil {
		pass, _ := p.User.Password()
		userPass := p.User.Username() + ":" + pass
		x.token = base64.StdEncoding.EncodeToString([]byte(userPass))
		x.secrets = []string{x.token, userPass, pass}
	}
	return x
}

// request is the CONNECT request, as one write.
func (x *exchange) request() string {
	var b strings.Builder
	b.WriteString("CONNECT " + x.addr + " HTTP/1.1\r\n")
	b.WriteString("Host: " + x.addr + "\r\n")
	b.WriteString("User-Agent: " + userAgent + "\r\n")
	if x.token != "" {
		b.WriteString("Proxy-Authorization: Basic " + x.token + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// readAnswer reads the proxy's answer to CONNECT from r. On a 2xx it returns
// the bytes read past the header (the tunnel's first bytes, possibly none);
// otherwise an *Error: ErrProxyAuth, ErrProxyRefused or ErrBadProxyResponse,
// or, with ErrBadProxyResponse, the read error as its Cause. It reads no more
// than maxHeader bytes from r. Interim 1xx answers (other than 101) are
// skipped.
func (x *exchange) readAnswer(r io.Reader) ([]byte, error) {
	lr := &io.LimitedReader{R: r, N: maxHeader}
	br := bufio.NewReader(lr)
	connect := &http.Request{Method: http.MethodConnect}
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(br, connect)
		if err != nil {
			switch {
			case lr.N == 0 && errors.Is(err, io.ErrUnexpectedEOF):
				err = fmt.Errorf("header longer than %d KiB", maxHeader>>10)
			case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
				err = fmt.Errorf("connection closed before the end of the header: %w", io.ErrUnexpectedEOF)
			}
			return nil, &Error{Proxy: x.proxy, Addr: x.addr, Err: ErrBadProxyResponse, Cause: x.scrubErr(err)}
		}
		if resp.StatusCode/100 != 1 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	// The body of a 2xx answer is the tunnel; that of any other answer is
	// not needed. Neither is read through resp.Body.
	code := resp.StatusCode
	if code < 100 || code > 599 { // RFC 9110 §15; http.ReadResponse takes 000..999
		return nil, &Error{Proxy: x.proxy, Addr: x.addr, Err: ErrBadProxyResponse, Cause: fmt.Errorf("status %03d out of range", code)}
	}
	reason := strings.TrimSpace(strings.TrimPrefix(resp.Status, strconv.Itoa(code)))
	if reason == "" {
		reason = http.StatusText(code)
	}
	reason = x.scrub(sanitize(reason, maxReason))
	switch {
	case code/100 == 2:
		var rest []byte
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			rest = append([]byte(nil), b...)
		}
		return rest, nil
	case code == http.StatusProxyAuthRequired, code == http.StatusUnauthorized:
		// 401 should not come from a proxy, but some (tinyproxy) send it
		// for a wrong password.
		return nil, &Error{Proxy: x.proxy, Addr: x.addr, Status: code, Reason: reason, Err: ErrProxyAuth, withAuth: x.token != ""}
	default:
		return nil, &Error{Proxy: x.proxy, Addr: x.addr, Status: code, Reason: reason, Err: ErrProxyRefused}
	}
}

// scrub replaces any secret in s by "***".
func (x *exchange) scrub(s string) string {
	for _, sec := range x.secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "***")
		}
	}
	return s
}

// scrubErr keeps err unless its text shows a secret (a proxy echoing the
// request would make the parser quote it) or bytes unfit for a terminal (the
// parser quotes what the proxy sent).
func (x *exchange) scrubErr(err error) error {
	if s := x.scrub(sanitize(err.Error(), maxCause)); s != err.Error() {
		return errors.New(s)
	}
	return err
}

// sanitize makes text from the network safe to print: printable ASCII only,
// and no longer than limit bytes (then "...").
func sanitize(s string, limit int) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r > '~' {
			return '?'
		}
		return r
	}, s)
	if len(s) > limit {
		s = s[:limit] + "..."
	}
	return s
}

// conn is a tunnel through a proxy: it reads the bytes that came with the
// proxy's answer first, and knows the proxy for Via.
type conn struct {
	net.Conn
	rest []byte
	via  string
}

func (c *conn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		if len(c.rest) == 0 {
			c.rest = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the tunnel (the proxy passes the FIN on), when the
// connection to the proxy can.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("proxy %s: connection cannot half-close", c.via)
}

// Via returns the proxy a connection from DialContext went through
// (redacted: no password), or "" for a direct one. It looks through wrappers
// that expose NetConn, such as *tls.Conn.
func Via(c net.Conn) string {
	for range 8 {
		switch v := c.(type) {
		case *conn:
			return v.via
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return ""
		}
	}
	return ""
}
