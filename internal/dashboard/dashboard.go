// Package dashboard serves an agent's local status page, like ngrok's
// 127.0.0.1:4040: one HTML page with its script and style embedded (it works
// offline), fed by server-sent events that carry the agent's status JSON.
//
// The page shows tickets, which are secrets, and loopback is reachable by
// every local user and, through the browser, by every web page. So the server
// binds to loopback only, answers only requests whose Host names the address
// it listens on (DNS rebinding), refuses a foreign Origin or a cross-site
// fetch, sends no CORS headers, and wants a per-process random token: in the
// page URL once (/?token=…), then in an HttpOnly SameSite=Strict cookie.
//
//	GET /              the page (with ?token=: sets the cookie, redirects to /)
//	GET /app.js, /app.css
//	GET /api/status    the status JSON once
//	GET /events        text/event-stream: the status JSON at connect, on change
//	                   and at least every Interval
//	GET /qr/{share}    the share's ticket as an SVG QR code
//
// It knows nothing of the agent: the status is whatever JSON-able value the
// Status func returns.
package dashboard

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

//go:embed assets
var assets embed.FS

// Defaults of Config's zero fields.
const (
	DefaultInterval   = time.Second
	DefaultPoll       = 250 * time.Millisecond
	DefaultMaxClients = 8
)

// ErrNotLoopback is returned for a listen address off loopback.
var ErrNotLoopback = errors.New("not a loopback address")

// Config configures a Server.
type Config struct {
	// Addr is where to listen: a loopback IP or localhost, and a port. Port
	// 0 picks a free one; when the port is taken, a free port on the same
	// host is taken instead (two agents side by side both get a page).
	Addr string
	// Status returns the snapshot the page shows, encoded with
	// encoding/json.
	Status func() any
	// Ticket returns the ticket of a share, for its QR code; nil: no QR
	// codes.
	Ticket func(share string) (string, bool)
	Log    logrus.FieldLogger
	// Interval is the longest time between two events on a stream; Poll
	// how often the status is read to send a change sooner.
	Interval, Poll time.Duration
	// MaxClients bounds the event streams open at once: each holds a
	// connection and a goroutine.
	MaxClients int
}

// Server is a dashboard listening on loopback, ready to Serve.
type Server struct {
	cfg   Config
	log   logrus.FieldLogger
	ln    net.Listener
	srv   *http.Server
	token string
	hosts map[string]bool // Host header values that name us
	hub   *hub
	slots chan struct{} // one per open event stream
}

// CheckAddr reports whether addr is a listen address the dashboard takes.
func CheckAddr(addr string) error {
	_, err := bindAddr(addr)
	return err
}

// bindAddr turns addr into what to bind: localhost becomes 127.0.0.1, so
// that the page is reached at one address.
func bindAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("dashboard address %q: %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("dashboard address %q: bad port", addr)
	}
	if strings.EqualFold(host, "localhost") {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("dashboard address %q: %w: the page shows tickets, so it listens on 127.0.0.1, [::1] or localhost only", addr, ErrNotLoopback)
	}
	return net.JoinHostPort(host, port), nil
}

// Listen binds the dashboard's port; Serve serves it.
func Listen(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Status == nil {
		return nil, errors.New("dashboard: no status source")
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Poll <= 0 || cfg.Poll > cfg.Interval {
		cfg.Poll = min(DefaultPoll, cfg.Interval)
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = DefaultMaxClients
	}
	addr, err := bindAddr(cfg.Addr)
	if err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if host, port, _ := net.SplitHostPort(addr); err != nil && port != "0" {
		// Taken (another agent's page), or a privileged port: any free
		// port serves as well, and the URL says which.
		cfg.Log.WithError(err).Debug("dashboard port unavailable; taking a free one")
		ln, err = lc.Listen(ctx, "tcp", net.JoinHostPort(host, "0"))
	}
	if err != nil {
		return nil, fmt.Errorf("dashboard listen: %w", err)
	}
	tok := make([]byte, 24)
	rand.Read(tok) // never fails (crypto/rand)
	s := &Server{cfg: cfg, log: cfg.Log, ln: ln, token: base64.RawURLEncoding.EncodeToString(tok),
		hub: newHub(), slots: make(chan struct{}, cfg.MaxClients)}
	port := ln.Addr().(*net.TCPAddr).Port
	s.hosts = map[string]bool{
		strings.ToLower(ln.Addr().String()):               true,
		net.JoinHostPort("localhost", strconv.Itoa(port)): true,
	}
	if port == 80 {
		s.hosts[ln.Addr().(*net.TCPAddr).IP.String()], s.hosts["localhost"] = true, true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.page)
	mux.HandleFunc("GET /app.js", s.asset("assets/app.js", "text/javascript; charset=utf-8"))
	mux.HandleFunc("GET /app.css", s.asset("assets/app.css", "text/css; charset=utf-8"))
	mux.HandleFunc("GET /api/status", s.status)
	mux.HandleFunc("GET /events", s.events)
	mux.HandleFunc("GET /qr/{share}", s.qr)
	s.srv = &http.Server{
		Handler:           s.guard(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// Event streams move their own write deadline on at every event.
		WriteTimeout:   15 * time.Second,
		IdleTimeout:    60 * time.Second,
		MaxHeaderBytes: 16 << 10,
	}
	return s, nil
}

// Addr is the address listened on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the page's address with the token: what a person opens.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() + "/?token=" + s.token }

// Serve serves until ctx ends, then closes every connection and returns
// once its goroutines are done. It returns an error only when serving
// failed before ctx ended.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Request contexts end with ctx: event streams stop at shutdown.
	s.srv.BaseContext = func(net.Listener) context.Context { return ctx }
	var wg sync.WaitGroup
	wg.Go(func() { s.hub.run(ctx, s.cfg.Poll, s.cfg.Interval, s.snapshot) })
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		errc <- err
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	if s.srv.Shutdown(sctx) != nil {
		s.srv.Close()
	}
	scancel()
	wg.Wait()
	if err = <-errc; errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	return nil
}

// snapshot is the status as JSON, or nil when it does not encode.
func (s *Server) snapshot() []byte {
	b, err := json.Marshal(s.cfg.Status())
	if err != nil {
		s.log.WithError(err).Warn("dashboard: status does not encode")
		return nil
	}
	return b
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	s.asset("assets/index.html", "text/html; charset=utf-8")(w, r)
}

func (s *Server) asset(name, ctype string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		b, err := assets.ReadFile(name)
		if err != nil {
			http.Error(w, "missing asset", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", ctype)
		w.Write(b)
	}
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	b := s.snapshot()
	if b == nil {
		http.Error(w, "status unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}
