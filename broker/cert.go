package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/peerport/peerport/internal/secure"
)

// Where the broker's certificate comes from, and so how agents trust it. The
// broker URL says which:
//
//   - pinned, pp://TOKEN@HOST:PORT#PIN: the self-signed certificate of the
//     state dir's key (the default). Nothing to set up; the URL is the trust.
//   - CA-issued, pp://TOKEN@NAME:PORT: a certificate that verifies for NAME
//     against the agents' system roots. Either the operator's own files
//     (TLSOptions.CertFile, KeyFile), re-read when they change, or one the
//     broker gets and renews by itself over ACME (TLSOptions.ACME), proving
//     the name with the TLS-ALPN-01 challenge on its own listener (the one
//     agents use, port 443 in production) or HTTP-01 on a port 80 listener.

// TLSOptions chooses the broker's certificate. The zero value is the
// self-signed, pinned one.
type TLSOptions struct {
	// CertFile (PEM, the leaf first, then its intermediates) and KeyFile
	// are the operator's own certificate for the public address's host.
	// They are looked at again at most once a minute, and a changed pair
	// is served from the next handshake on.
	CertFile, KeyFile string
	// ACME, when its Domain is set, gets and renews a certificate.
	ACME ACMEOptions
}

// ACMEOptions configure the ACME client (golang.org/x/crypto/acme/autocert).
type ACMEOptions struct {
	Domain string // the one name of the certificate, and the broker URL's host
	Email  string // contact for the CA's expiry notices; optional
	// Directory is the CA's ACME directory URL; empty: Let's Encrypt's
	// production directory (acme.LetsEncryptURL). The CA's terms of
	// service are accepted by asking for a certificate.
	Directory string
	// HTTPListen, if set, also answers HTTP-01 challenges there (":80");
	// TLS-ALPN-01 is always answered on the broker's own listener.
	HTTPListen string
}

// enabled reports whether ACME is asked for.
func (a ACMEOptions) enabled() bool { return a.Domain != "" }

// ACMEDir is the state dir's subdirectory where ACME keeps its account key
// and certificates (autocert.DirCache), so a restart does not order anew.
const ACMEDir = "acme"

// fileCheckInterval bounds how often certificate files are looked at for a
// change: a stat per handshake would be cheap, but not free under load.
const fileCheckInterval = time.Minute

// acmeChallengePort is where TLS-ALPN-01 validation connects (RFC 8737).
const acmeChallengePort = 443

// certSource is the broker's certificate, whichever its source.
type certSource struct {
	kind string          // for logs: "self-signed", "files" or "acme"
	pin  secure.Pin      // self-signed only: the URL carries it
	cert tls.Certificate // self-signed only: fixed for the process
	get  func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	host string // the URL's host the certificate dictates (ACME); "": the public address's
	acme *acmeCert
}

// newCertSource sets up the certificate of o.TLS. public is the address
// (host:port) the URL will carry and bound the listener's address.
func newCertSource(ctx context.Context, o Options, st *State, public string, bound net.Addr, log logrus.FieldLogger) (*certSource, error) {
	t := o.TLS
	files := t.CertFile != "" || t.KeyFile != ""
	switch {
	case files && t.ACME.enabled():
		return nil, errors.New("broker tls: set either a certificate (--cert-file/--key-file) or ACME (--acme-domain), not both")
	case files:
		host, _, _ := net.SplitHostPort(public)
		fc, err := newFileCert(t.CertFile, t.KeyFile, host, time.Now, log)
		if err != nil {
			return nil, err
		}
		return &certSource{kind: "files", get: fc.getCertificate}, nil
	case t.ACME.enabled():
		ac, err := newACMECert(ctx, t.ACME, filepath.Join(o.StateDir, ACMEDir), log)
		if err != nil {
			return nil, err
		}
		if ta, ok := bound.(*net.TCPAddr); ok && ta.Port != acmeChallengePort && t.ACME.HTTPListen == "" {
			log.Warnf("ACME validates TLS-ALPN-01 on port %d of %s, but the broker listens on %d: forward port %d here, or set acme.http_listen (--acme-http :80)",
				acmeChallengePort, t.ACME.Domain, ta.Port, acmeChallengePort)
		}
		return &certSource{kind: "acme", get: ac.getCertificate, host: ac.domain, acme: ac}, nil
	}
	return &certSource{kind: "self-signed", pin: st.Pin, cert: st.Cert}, nil
}

// configure hands the certificate to the control server's Config.
func (c *certSource) configure(cfg *Config) {
	cfg.Cert, cfg.GetCertificate, cfg.ACME = c.cert, c.get, c.acme != nil
}

// url is the broker URL naming the public addresses (host:port, one, or a
// dual-stack broker's two): pinned for the self-signed certificate; else
// without a pin, with the host the certificate is for (whose name serves
// both families).
func (c *certSource) url(st *State, public []string) secure.BrokerURL {
	u := st.URL(strings.Join(public, ","))
	u.Pin = c.pin
	if c.host != "" {
		_, port, _ := net.SplitHostPort(public[0])
		u.Addr = net.JoinHostPort(c.host, port)
	}
	return u
}

// start runs the source's background work: for ACME, the HTTP-01 listener
// (in parts, until ctx is done) and the first order, so the first agent
// does not wait for it.
func (c *certSource) start(ctx context.Context, parts *sync.WaitGroup) {
	if c.acme == nil {
		return
	}
	if c.acme.httpLn != nil {
		parts.Go(func() { c.acme.serveHTTP(ctx) })
	}
	// Not in parts: autocert's order takes no context (it bounds itself at
	// 5 minutes), and shutdown should not wait for a CA.
	go c.acme.obtain()
}

// close releases what newCertSource opened.
func (c *certSource) close() {
	if c.acme != nil {
		c.acme.close()
	}
}

// controlTLS is the control server's TLS config: the fixed certificate, or
// GetCertificate; with ACME also offering the challenge protocol.
func (c *Config) controlTLS() *tls.Config {
	if c.GetCertificate == nil {
		return secure.ControlServerConfig(c.Cert)
	}
	t := secure.ControlServerConfigFunc(c.GetCertificate)
	if c.ACME {
		t.NextProtos = append(t.NextProtos, acme.ALPNProto)
	}
	return t
}

// fileCert serves an operator's certificate files, re-reading them when
// they change (a renewal by certbot or the like) without a restart.
type fileCert struct {
	certFile, keyFile string
	host              string // the broker URL's host: every certificate must be valid for it
	now               func() time.Time
	log               logrus.FieldLogger

	mu      sync.Mutex
	cur     *tls.Certificate
	stamps  [2]fileStamp // of the files cur was read from
	checked time.Time
}

// fileStamp tells a changed file from the one read before.
type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

func newFileCert(certFile, keyFile, host string, now func() time.Time, log logrus.FieldLogger) (*fileCert, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("broker tls: --cert-file and --key-file go together; set both")
	}
	f := &fileCert{certFile: certFile, keyFile: keyFile, host: host, now: now, log: log}
	stamps, cert, err := f.load()
	if err != nil {
		return nil, err
	}
	f.cur, f.stamps, f.checked = cert, stamps, now()
	log.WithFields(certFields(cert.Leaf)).Info("serving the certificate of --cert-file")
	return f, nil
}

// load reads and checks the pair. The stamps are taken first: a file that
// changes while it is read then differs at the next check and is read again.
func (f *fileCert) load() ([2]fileStamp, *tls.Certificate, error) {
	var stamps [2]fileStamp
	for i, p := range []string{f.certFile, f.keyFile} {
		s, err := stampOf(p)
		if err != nil {
			return stamps, nil, fmt.Errorf("broker tls: %w", err)
		}
		stamps[i] = s
	}
	cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err != nil {
		return stamps, nil, fmt.Errorf("broker tls: certificate %s with key %s: %w", f.certFile, f.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return stamps, nil, fmt.Errorf("broker tls: certificate %s: %w", f.certFile, err)
		}
	}
	if err := checkLeaf(cert.Leaf, f.host, f.now()); err != nil {
		return stamps, nil, fmt.Errorf("broker tls: certificate %s: %w", f.certFile, err)
	}
	return stamps, &cert, nil
}

// checkLeaf refuses a certificate agents would refuse: one not valid for
// the URL's host, or outside its validity period.
func checkLeaf(leaf *x509.Certificate, host string, now time.Time) error {
	if err := leaf.VerifyHostname(host); err != nil {
		return fmt.Errorf("it is for %s, not %q, the broker URL's host; set --public-addr (public_addr) to one of its names", strings.Join(certNames(leaf), ", "), host)
	}
	if now.After(leaf.NotAfter) {
		return fmt.Errorf("it expired on %s; renew it", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return fmt.Errorf("it is not valid before %s; check this machine's clock", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

func certNames(leaf *x509.Certificate) []string {
	names := slices.Clone(leaf.DNSNames)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		names = []string{"no name"}
	}
	return names
}

func certFields(leaf *x509.Certificate) logrus.Fields {
	return logrus.Fields{"names": strings.Join(certNames(leaf), ","), "issuer": leaf.Issuer.CommonName, "not_after": leaf.NotAfter.UTC().Format(time.RFC3339)}
}

func (f *fileCert) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now := f.now(); now.Sub(f.checked) >= fileCheckInterval {
		f.checked = now
		f.reloadLocked()
	}
	return f.cur, nil
}

// reloadLocked reads the files again if they changed. A pair that does not
// load (say, the certificate replaced but not yet its key) keeps the old
// one served, and is tried again at the next check.
func (f *fileCert) reloadLocked() {
	var stamps [2]fileStamp
	for i, p := range []string{f.certFile, f.keyFile} {
		s, err := stampOf(p)
		if err != nil {
			f.log.WithError(err).Warn("certificate files unreadable; still serving the one read before")
			return
		}
		stamps[i] = s
	}
	if stamps == f.stamps {
		return
	}
	stamps, cert, err := f.load()
	if err != nil {
		f.log.WithError(err).Warn("certificate files changed but do not load; still serving the one read before")
		return
	}
	f.cur, f.stamps = cert, stamps
	f.log.WithFields(certFields(cert.Leaf)).Info("certificate files changed; serving the new certificate")
}

// acmeCert is a certificate from an ACME CA, by autocert.
type acmeCert struct {
	domain string
	m      *autocert.Manager
	client *http.Client // its own transport, whose idle connections close with the broker
	httpLn net.Listener // HTTP-01; nil when off
	http   http.Handler
	log    logrus.FieldLogger
}

func newACMECert(ctx context.Context, o ACMEOptions, cacheDir string, log logrus.FieldLogger) (*acmeCert, error) {
	domain := strings.ToLower(strings.TrimSuffix(o.Domain, "."))
	// autocert refuses hellos for names without a dot; say so now.
	if !strings.Contains(domain, ".") || net.ParseIP(domain) != nil {
		return nil, fmt.Errorf("broker acme: domain %q: want a DNS name such as broker.example.com", o.Domain)
	}
	dir := o.Directory
	if dir == "" {
		dir = acme.LetsEncryptURL
	}
	tr, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return nil, errors.New("broker acme: http.DefaultTransport is not an *http.Transport")
	}
	client := &http.Client{Transport: tr.Clone(), Timeout: time.Minute}
	a := &acmeCert{domain: domain, client: client, log: log.WithField("domain", domain)}
	a.m = &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(cacheDir),
		HostPolicy: autocert.HostWhitelist(domain),
		Email:      o.Email,
		Client:     &acme.Client{DirectoryURL: dir, HTTPClient: client, UserAgent: "peerport-broker"},
	}
	if o.HTTPListen != "" {
		// HTTPHandler also tells autocert to offer HTTP-01: call it before
		// the first order.
		a.http = withoutHostPort(a.m.HTTPHandler(nil))
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", o.HTTPListen)
		if err != nil {
			return nil, fmt.Errorf("broker acme http listen: %w", err)
		}
		a.httpLn = ln
	}
	a.log.WithFields(logrus.Fields{"directory": dir, "http01": o.HTTPListen, "cache": cacheDir}).Info("ACME certificate for this name (TLS-ALPN-01 on the broker's listener)")
	return a, nil
}

// getCertificate answers a hello: the challenge certificate for a
// TLS-ALPN-01 validation, else the domain's certificate, ordered on first use.
func (a *acmeCert) getCertificate(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if len(h.SupportedProtos) == 1 && h.SupportedProtos[0] == acme.ALPNProto {
		return a.m.GetCertificate(h)
	}
	return a.m.GetCertificate(a.hello(h))
}

// hello is h as autocert should see it. Every hello gets the one domain's
// certificate: one for another name, or none (an agent dialing an IP sends
// no SNI), is then refused by the agent with a clear "valid for NAME, not
// X", instead of failing the handshake with an alert that says nothing.
// And autocert gives a client an ECDSA certificate only if it offers a TLS
// 1.2 ECDSA cipher suite, which a TLS 1.3-only client (every agent) does
// not; in TLS 1.3 the suite does not restrict the key, the signature schemes
// do, and autocert checks those too. Without this agents would get RSA
// certificates, and the broker would order two.
func (a *acmeCert) hello(h *tls.ClientHelloInfo) *tls.ClientHelloInfo {
	c := *h
	c.ServerName = a.domain
	if slices.Contains(h.SupportedVersions, tls.VersionTLS13) {
		c.CipherSuites = append(slices.Clone(h.CipherSuites), tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
	}
	return &c
}

// obtain gets the certificate now (from the cache, or ordered), and says
// how that went.
func (a *acmeCert) obtain() {
	start := time.Now()
	cert, err := a.getCertificate(&tls.ClientHelloInfo{
		ServerName:        a.domain,
		SupportedVersions: []uint16{tls.VersionTLS13},
		SignatureSchemes:  []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.Ed25519, tls.PSSWithSHA256},
		SupportedCurves:   []tls.CurveID{tls.X25519, tls.CurveP256},
	})
	if err != nil {
		a.log.WithError(err).Errorf("ACME certificate not obtained; agents cannot connect until it is (it is tried again at a handshake a minute from now). Check that %s resolves to this broker and that port %d (or acme.http_listen, port 80) reaches it", a.domain, acmeChallengePort)
		return
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			a.log.WithError(err).Error("ACME certificate does not parse")
			return
		}
	}
	a.log.WithFields(certFields(leaf)).WithField("took", time.Since(start).Round(time.Millisecond).String()).Info("ACME certificate ready")
}

// serveHTTP answers HTTP-01 challenges (and redirects anything else to
// HTTPS) until ctx is done.
func (a *acmeCert) serveHTTP(ctx context.Context) {
	log := a.log.WithField("listen", a.httpLn.Addr().String())
	srv := &http.Server{
		Handler:           a.http,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          stdlog.New(debugWriter{log}, "acme http: ", 0),
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	log.Info("ACME HTTP-01 listening")
	if err := srv.Serve(a.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.WithError(err).Warn("ACME HTTP-01 listener stopped")
	}
}

// withoutHostPort drops a port from the request's Host before h sees it.
// A validator may send "name:80" (HTTP allows it, pebble does), and
// autocert's host policy compares the bare name, answering 403 otherwise.
func withoutHostPort(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if host, _, err := net.SplitHostPort(r.Host); err == nil {
			r2 := *r
			r2.Host = host
			r = &r2
		}
		h.ServeHTTP(w, r)
	})
}

func (a *acmeCert) close() {
	if a.httpLn != nil {
		a.httpLn.Close()
	}
	a.client.CloseIdleConnections()
}
