package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/limit"
	"github.com/peerport/peerport/internal/secure"
)

// One port serves everything an agent needs, so a broker on 443 is reachable
// from networks that let nothing else out, and looks like the HTTPS server it
// partly is. TLS ALPN tells the connections apart:
//
//	peerport-control/1  the control channel (session.go)
//	peerport-relay/1    a broker relay connection (pair.go)
//	acme-tls/1          an ACME TLS-ALPN-01 challenge (cert.go): closed after the handshake
//	http/1.1, none      plain HTTPS: /healthz and a short landing page
//
// Agents' protocols require a client certificate (the agent's identity);
// the HTTPS side asks for none, so a browser or a middlebox's probe sees an
// ordinary web server.

// acmeALPN is the TLS-ALPN-01 challenge protocol (RFC 8737).
const acmeALPN = "acme-tls/1"

// httpIdleTimeout bounds an idle HTTPS keep-alive connection.
const httpIdleTimeout = time.Minute

// portTLS returns the listener's TLS config: agents' hellos get agent, the
// control config with client certificates; everything else the HTTPS one.
func (s *Server) portTLS(agent *tls.Config) *tls.Config {
	web := &tls.Config{
		Certificates:   agent.Certificates,
		GetCertificate: agent.GetCertificate,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
	}
	agentCfg := agent.Clone()
	agentCfg.NextProtos = []string{secure.ALPNControl, secure.ALPNRelay}
	if slices.Contains(agent.NextProtos, acmeALPN) {
		web.NextProtos = append(web.NextProtos, acmeALPN)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			if slices.Contains(h.SupportedProtos, secure.ALPNControl) || slices.Contains(h.SupportedProtos, secure.ALPNRelay) {
				return agentCfg, nil
			}
			return web, nil
		},
	}
}

// dispatch serves a connection whose handshake is done, by its ALPN. It
// blocks until the connection's work ends.
func (s *Server) dispatch(ctx context.Context, tc *tls.Conn, raw net.Conn, log logrus.FieldLogger) {
	cs := tc.ConnectionState()
	switch cs.NegotiatedProtocol {
	case secure.ALPNControl, secure.ALPNRelay:
		id, err := secure.PeerID(cs)
		if err != nil {
			s.metrics.refused.WithLabelValues(refusedHandshake).Inc()
			log.WithError(err).Info("agent handshake failed")
			return
		}
		// An agent certificate: out of the pre-authentication budget (the
		// session's Hello deadline and login rate limits take over).
		limit.Authenticated(raw)
		if cs.NegotiatedProtocol == secure.ALPNRelay {
			s.pairs.serve(ctx, tc, id, s.cfg.HandshakeTimeout, log.WithField("agent", id.Short()))
			return
		}
		newSession(s, tc, raw, id, log).run()
	case acmeALPN:
		// The challenge was answered in the handshake (GetCertificate).
	default:
		limit.NoDeadline(raw) // net/http's own timeouts bound it
		raw.SetDeadline(time.Time{})
		s.serveHTTP(ctx, tc)
	}
}

// serveHTTP serves plain HTTPS on one connection until the client leaves.
func (s *Server) serveHTTP(ctx context.Context, c net.Conn) {
	hs := &http.Server{
		Handler:           s.web,
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          stdlog.New(debugWriter{s.log}, "https: ", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	l := newOneConnListener(c)
	hs.Serve(l) // returns once the connection is handed over; then wait for it to end
	<-l.closed
}

// webHandler is the HTTPS side of the port: a health check and a page that
// tells a curious visitor what this is.
func (s *Server) webHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'")
		fmt.Fprint(w, landingPage)
	})
	return mux
}

const landingPage = `<!doctype html>
<html lang="en"><meta charset="utf-8"><title>peerport broker</title>
<body style="font-family:sans-serif;max-width:40em;margin:4em auto;line-height:1.5">
<h1>peerport broker</h1>
<p>This host introduces peerport agents to each other and relays for them
where no direct path can be made. It serves no pages but this one.</p>
<p>To use it, log an agent in with the broker URL its operator gave you:
<code>agent login pp://TOKEN@HOST:PORT</code>.</p>
</body></html>
`

// oneConnListener hands one connection to an http.Server. Its second
// Accept fails, which makes Serve return while the connection goes on;
// closed tells when the server is done with it.
type oneConnListener struct {
	c      net.Conn
	ch     chan net.Conn
	closed chan struct{}
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{ch: make(chan net.Conn, 1), closed: make(chan struct{})}
	l.c = &notifyConn{Conn: c, closed: l.closed}
	l.ch <- l.c
	close(l.ch)
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if c, ok := <-l.ch; ok {
		return c, nil
	}
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

// notifyConn closes closed, once, when the connection is closed.
type notifyConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

// debugWriter feeds net/http's own error lines (a client that sent garbage,
// say) to the broker's log at debug level.
type debugWriter struct{ log logrus.FieldLogger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}
