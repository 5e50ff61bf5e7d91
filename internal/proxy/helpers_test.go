package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// tracker closes the connections a test server made and waits for its
// goroutines, so no test leaves any behind.
type tracker struct {
	mu     sync.Mutex
	closed bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

// add tracks c; false (and c closed) when the tracker is already shut.
func (k *tracker) add(c net.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		_ = c.Close()
		return false
	}
	k.conns = append(k.conns, c)
	return true
}

func (k *tracker) shut() {
	k.mu.Lock()
	k.closed = true
	for _, c := range k.conns {
		_ = c.Close()
	}
	k.mu.Unlock()
	k.wg.Wait()
}

// startEcho runs a TCP echo server on loopback and returns its address.
func startEcho(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &tracker{}
	k.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !k.add(c) {
				continue
			}
			k.wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() { _ = ln.Close(); k.shut() })
	return ln.Addr().String()
}

// freeAddr returns a loopback address where nothing listens (a port just
// freed).
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// testProxy is an HTTP CONNECT proxy on loopback, an http.Server whose handler
// hijacks CONNECT requests. It tunnels only to loopback destinations.
type testProxy struct {
	URL *url.URL // without credentials
	// TLS: the roots that trust it, when started with TLS.
	Roots *x509.CertPool

	user, pass string             // credentials it requires; "" none
	status     int                // answer every CONNECT with this status; 0 tunnel
	early      string             // bytes sent right after the 200, in the same write
	misbehave  func(c net.Conn)   // after hijacking, instead of the exchange
	requests   chan *http.Request // every CONNECT it got, when not nil

	srv *httptest.Server
	k   tracker
}

type proxyOption func(*testProxy)

func withAuth(user, pass string) proxyOption {
	return func(p *testProxy) { p.user, p.pass = user, pass }
}
func withStatus(code int) proxyOption { return func(p *testProxy) { p.status = code } }
func withEarly(b string) proxyOption  { return func(p *testProxy) { p.early = b } }
func withTLS() proxyOption            { return func(p *testProxy) { p.Roots = x509.NewCertPool() } }
func withRequests() proxyOption {
	return func(p *testProxy) { p.requests = make(chan *http.Request, 16) }
}
func withMisbehave(f func(net.Conn)) proxyOption {
	return func(p *testProxy) { p.misbehave = f }
}

func startProxy(t testing.TB, opts ...proxyOption) *testProxy {
	t.Helper()
	p := &testProxy{}
	for _, o := range opts {
		o(p)
	}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshake failures the tests cause
	if p.Roots != nil {
		p.srv.StartTLS()
		p.Roots.AddCert(p.srv.Certificate())
	} else {
		p.srv.Start()
	}
	u, err := url.Parse(p.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	p.URL = u
	t.Cleanup(func() {
		p.srv.Close()
		p.k.shut()
	})
	return p
}

// URLWith returns the proxy's URL with user info.
func (p *testProxy) URLWith(user, pass string) *url.URL {
	u := *p.URL
	u.User = url.UserPassword(user, pass)
	return &u
}

func (p *testProxy) serve(w http.ResponseWriter, r *http.Request) {
	p.k.wg.Add(1)
	defer p.k.wg.Done()
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	if p.requests != nil {
		select {
		case p.requests <- r:
		default:
		}
	}
	if p.user != "" {
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.user+":"+p.pass))
		if r.Header.Get("Proxy-Authorization") != want {
			w.Header().Set("Proxy-Authenticate", `Basic realm="test"`)
			http.Error(w, "credentials, please", http.StatusProxyAuthRequired)
			return
		}
	}
	if p.status != 0 {
		http.Error(w, "no", p.status)
		return
	}
	// The network rule: tunnel only to loopback.
	host, _, err := net.SplitHostPort(r.Host)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		http.Error(w, "loopback only", http.StatusForbidden)
		return
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if !p.k.add(c) {
		return
	}
	defer c.Close()
	if p.misbehave != nil {
		p.misbehave(c)
		return
	}
	target, err := net.Dial("tcp", r.Host)
	if err != nil {
		_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	if !p.k.add(target) {
		return
	}
	defer target.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\nProxy-Agent: test\r\n\r\n"+p.early); err != nil {
		return
	}
	p.k.wg.Go(func() {
		_, _ = io.Copy(target, brw.Reader) // brw.Reader holds anything sent early
		closeWrite(target)
	})
	_, _ = io.Copy(c, target)
	closeWrite(c)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// stall reads until the client goes away, never answering.
func stall(c net.Conn) { _, _ = io.Copy(io.Discard, c) }

// answer writes s as the whole answer and closes.
func answer(s string) func(net.Conn) {
	return func(c net.Conn) {
		_, _ = io.WriteString(c, s)
	}
}

// hugeHeader sends a 200 whose header never ends within the bound.
func hugeHeader(c net.Conn) {
	w := bufio.NewWriter(c)
	_, _ = w.WriteString("HTTP/1.1 200 OK\r\n")
	pad := "X-Pad: " + strings.Repeat("a", 1000) + "\r\n"
	for range 80 {
		if _, err := w.WriteString(pad); err != nil {
			return
		}
	}
	_ = w.Flush()
	stall(c)
}

// tlsConfig trusts the test proxy's certificate.
func (p *testProxy) tlsConfig() *tls.Config { return &tls.Config{RootCAs: p.Roots} }

// checkErr checks err is an *Error that is want, and that no secret shows.
func checkErr(t *testing.T, err, want error, secrets ...string) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", want)
	}
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %q (%T) is not an *Error", err, err)
	}
	if !errors.Is(err, want) {
		t.Errorf("error %q is not %v", err, want)
	}
	for _, s := range secrets {
		if s != "" && (strings.Contains(err.Error(), s) || strings.Contains(pe.Proxy, s)) {
			t.Errorf("error %q shows the secret %q", err, s)
		}
	}
	return pe
}
