package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/crypto/acme"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/testutil"
)

// dialCA completes a control handshake with a broker that has no pin,
// verifying its chain against roots for host, and returns the leaf it
// served and its answer to a Hello.
func dialCA(t *testing.T, addr, host string, roots *x509.CertPool, token string) (*x509.Certificate, proto.Message) {
	t.Helper()
	cert, err := newIdentity(t).Certificate()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS13,
		NextProtos: []string{secure.ALPNControl}, Certificates: []tls.Certificate{cert}}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("handshake with %s as %s: %v", addr, host, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := proto.Write(conn, &proto.Hello{Token: token, Version: "test"}); err != nil {
		t.Fatal(err)
	}
	m, err := proto.Read(conn, 0)
	if err != nil {
		t.Fatal(err)
	}
	return conn.ConnectionState().PeerCertificates[0], m
}

// TestStartCertSources: the self-signed broker prints a pinned URL, one with
// the operator's certificate files a URL without a pin, whose host the
// certificate verifies for; agents get their Welcome either way.
func TestStartCertSources(t *testing.T) {
	ca := testutil.NewCA(t, "test root")
	dir := t.TempDir()
	now := time.Now()
	cert := ca.Issue(t, now.Add(-2*time.Hour), now.Add(time.Hour), "broker.test", "127.0.0.1")
	certFile, keyFile := testutil.WritePair(t, dir, "broker", cert)

	r, h := startBroker(t, Options{NoTURN: true})
	if r.URL.Pin != h.state.Pin || !strings.Contains(r.URL.String(), "#") {
		t.Errorf("self-signed broker URL %s: want the state's pin %s", r.URL.Redacted(), h.state.Pin)
	}
	if c := h.login(t, newIdentity(t), h.state.Token); !h.state.Pin.Matches(c.conn.ConnectionState().PeerCertificates[0]) {
		t.Error("self-signed broker served another key")
	}

	r, h = startBroker(t, Options{NoTURN: true, TLS: TLSOptions{CertFile: certFile, KeyFile: keyFile}})
	if !r.URL.Pin.IsZero() || strings.Contains(r.URL.String(), "#") {
		t.Errorf("files broker URL %s: want no pin", r.URL.Redacted())
	}
	if r.URL.Host() != "127.0.0.1" || r.URL.Addr != r.Addr.String() || r.URL.Token != h.state.Token {
		t.Errorf("files broker URL %s, listening on %s", r.URL.Redacted(), r.Addr)
	}
	got, m := dialCA(t, r.Addr.String(), "127.0.0.1", ca.Pool, h.state.Token)
	if !got.Equal(cert.Leaf) {
		t.Errorf("broker served %v, want the certificate of %s", got.Subject, certFile)
	}
	if _, ok := m.(*proto.Welcome); !ok {
		t.Errorf("hello: got %#v, want a welcome", m)
	}
	// The same broker under its name (SNI broker.test).
	if got, _ := dialCA(t, r.Addr.String(), "broker.test", ca.Pool, ""); !got.Equal(cert.Leaf) {
		t.Errorf("broker served %v for broker.test", got.Subject)
	}
}

// TestStartCertErrors: a certificate agents would refuse fails Start, with
// a message that says what to fix.
func TestStartCertErrors(t *testing.T) {
	ca := testutil.NewCA(t, "test root")
	dir := t.TempDir()
	now := time.Now()
	certFile, keyFile := testutil.WritePair(t, dir, "good", ca.Issue(t, now.Add(-2*time.Hour), now.Add(time.Hour), "broker.test", "127.0.0.1"))
	old := ca.Issue(t, now.Add(-2*time.Hour), now.Add(-time.Hour), "127.0.0.1")
	oldCert, _ := testutil.WritePair(t, dir, "old", old)
	missing := filepath.Join(dir, "missing.crt")
	for _, tt := range []struct {
		name   string
		public string
		tls    TLSOptions
		want   string
	}{
		{"files and ACME", "", TLSOptions{CertFile: certFile, KeyFile: keyFile, ACME: ACMEOptions{Domain: "broker.test"}},
			"broker tls: set either a certificate (--cert-file/--key-file) or ACME (--acme-domain), not both"},
		{"cert without key", "", TLSOptions{CertFile: certFile}, "broker tls: --cert-file and --key-file go together; set both"},
		{"missing file", "", TLSOptions{CertFile: missing, KeyFile: keyFile}, "broker tls: stat " + missing + ": no such file or directory"},
		{"key of another certificate", "", TLSOptions{CertFile: oldCert, KeyFile: keyFile},
			"broker tls: certificate " + oldCert + " with key " + keyFile + ": tls: private key does not match public key"},
		{"name not in the certificate", "other.test", TLSOptions{CertFile: certFile, KeyFile: keyFile},
			`broker tls: certificate ` + certFile + `: it is for broker.test, 127.0.0.1, not "other.test", the broker URL's host; set --public-addr (public_addr) to one of its names`},
		{"expired", "", TLSOptions{CertFile: oldCert, KeyFile: strings.TrimSuffix(oldCert, ".crt") + ".key"},
			"broker tls: certificate " + oldCert + ": it expired on " + old.Leaf.NotAfter.UTC().Format(time.RFC3339) + "; renew it"},
		{"ACME name without a dot", "", TLSOptions{ACME: ACMEOptions{Domain: "localhost"}},
			`broker acme: domain "localhost": want a DNS name such as broker.example.com`},
		{"ACME HTTP-01 address bad", "", TLSOptions{ACME: ACMEOptions{Domain: "broker.test", HTTPListen: "127.0.0.1:-1"}},
			"broker acme http listen: listen tcp: address -1: invalid port"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			public := tt.public
			if public == "" {
				public = "127.0.0.1"
			}
			r, err := Start(context.Background(), Options{Listen: "127.0.0.1:0", PublicAddr: public, StateDir: t.TempDir(),
				NoSTUN: true, NoTURN: true, Log: testLogger(t), TLS: tt.tls})
			if err == nil {
				t.Fatalf("Start succeeded with URL %s", r.URL.Redacted())
			}
			if err.Error() != tt.want {
				t.Errorf("Start:\n  %v\nwant\n  %s", err, tt.want)
			}
		})
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

// AfterFunc runs f on the wall clock: tests that move the clock by hand
// have no timers that must follow it (it makes fakeClock a limit.Clock).
func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestFileCertReload: a renewed pair on disk is served from the first
// handshake after the next check (at most a minute later), without a
// restart; a pair that does not load keeps the old certificate served.
func TestFileCertReload(t *testing.T) {
	ca := testutil.NewCA(t, "test root")
	dir := t.TempDir()
	issue := func(names ...string) tls.Certificate {
		t.Helper()
		now := time.Now()
		return ca.Issue(t, now.Add(-2*time.Hour), now.Add(time.Hour), names...)
	}
	firstCert := issue("broker.test")
	certFile, keyFile := testutil.WritePair(t, dir, "broker", firstCert)
	first := firstCert.Leaf
	clock := &fakeClock{now: time.Now()}
	log, hook := logtest.NewNullLogger()
	f, err := newFileCert(certFile, keyFile, "broker.test", clock.Now, log)
	if err != nil {
		t.Fatal(err)
	}
	serving := func() *x509.Certificate {
		t.Helper()
		c, err := f.getCertificate(&tls.ClientHelloInfo{ServerName: "broker.test"})
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf
	}
	// touch gives a rewritten file a new modification time, whatever the
	// file system's time resolution.
	touch := func(paths ...string) {
		t.Helper()
		clock.Add(0)
		for _, p := range paths {
			mt := clock.Now().Add(time.Duration(len(hook.AllEntries())+1) * time.Second)
			if err := os.Chtimes(p, mt, mt); err != nil {
				t.Fatal(err)
			}
		}
	}
	newDir := t.TempDir()
	renew := func(names ...string) *x509.Certificate {
		t.Helper()
		next := issue(names...)
		c, k := testutil.WritePair(t, newDir, "next", next)
		for _, mv := range [][2]string{{c, certFile}, {k, keyFile}} {
			if err := os.Rename(mv[0], mv[1]); err != nil {
				t.Fatal(err)
			}
		}
		touch(certFile, keyFile)
		return next.Leaf
	}

	second := renew("broker.test")
	clock.Add(fileCheckInterval - time.Second)
	if got := serving(); !got.Equal(first) {
		t.Fatal("the files were read again before the check interval")
	}
	clock.Add(time.Second)
	if got := serving(); !got.Equal(second) {
		t.Fatal("renewed files not served after the check interval")
	}
	for _, tt := range []struct {
		name   string
		breaks func()
		log    string
	}{
		{"a certificate without the name", func() { renew("other.test") }, "certificate files changed but do not load"},
		{"a key that is not the certificate's", func() {
			_, k := testutil.WritePair(t, newDir, "stray", issue("broker.test"))
			if err := os.Rename(k, keyFile); err != nil {
				t.Fatal(err)
			}
			touch(keyFile)
		}, "certificate files changed but do not load"},
		{"a deleted file", func() {
			if err := os.Remove(keyFile); err != nil {
				t.Fatal(err)
			}
		}, "certificate files unreadable"},
	} {
		hook.Reset()
		tt.breaks()
		clock.Add(fileCheckInterval)
		if got := serving(); !got.Equal(second) {
			t.Errorf("%s: serving %v, want the certificate served before", tt.name, got.DNSNames)
		}
		if e := hook.LastEntry(); e == nil || e.Level != logrus.WarnLevel || e.Message != tt.log+"; still serving the one read before" {
			t.Errorf("%s: log %+v, want a warning %q", tt.name, e, tt.log)
		}
	}
	// Fixed again: served at the next check.
	third := renew("broker.test")
	clock.Add(fileCheckInterval)
	if got := serving(); !got.Equal(third) {
		t.Error("repaired files not served")
	}
	if e := hook.LastEntry(); e == nil || e.Message != "certificate files changed; serving the new certificate" {
		t.Errorf("log %+v", e)
	}
}

// TestACMEHello: every hello that is not a challenge asks autocert for the
// one domain's certificate, ECDSA for TLS 1.3 clients.
func TestACMEHello(t *testing.T) {
	a := &acmeCert{domain: "broker.test"}
	tls13 := []uint16{tls.VersionTLS13}
	for _, tt := range []struct {
		name      string
		in        tls.ClientHelloInfo
		wantECDSA bool
	}{
		{"its name", tls.ClientHelloInfo{ServerName: "broker.test", SupportedVersions: tls13, CipherSuites: []uint16{tls.TLS_AES_128_GCM_SHA256}}, true},
		{"another name", tls.ClientHelloInfo{ServerName: "other.test", SupportedVersions: tls13}, true},
		{"no SNI (an IP host)", tls.ClientHelloInfo{SupportedVersions: tls13}, true},
		{"TLS 1.2 without ECDSA suites", tls.ClientHelloInfo{ServerName: "broker.test", SupportedVersions: []uint16{tls.VersionTLS12},
			CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}, false},
	} {
		in := tt.in
		got := a.hello(&in)
		if got.ServerName != "broker.test" {
			t.Errorf("%s: ServerName %q, want broker.test", tt.name, got.ServerName)
		}
		if ecdsa := slices.Contains(got.CipherSuites, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); ecdsa != tt.wantECDSA {
			t.Errorf("%s: ECDSA suite offered %v, want %v", tt.name, ecdsa, tt.wantECDSA)
		}
		if in.ServerName != tt.in.ServerName || len(in.CipherSuites) != len(tt.in.CipherSuites) {
			t.Errorf("%s: the caller's hello was changed", tt.name)
		}
	}
}

// TestACMEStart: an ACME broker prints a URL without a pin for its domain,
// offers acme-tls/1, answers HTTP-01 on its own listener, and says clearly
// when the CA cannot be reached. The CA here is a closed loopback port.
func TestACMEStart(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	directory := "http://" + dead.Addr().String() + "/dir"
	dead.Close()
	log, hook := logtest.NewNullLogger()
	state := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, Options{Listen: "127.0.0.1:0", PublicAddr: "127.0.0.1", StateDir: state, NoSTUN: true, NoTURN: true, Log: log,
		TLS: TLSOptions{ACME: ACMEOptions{Domain: "Broker.Test.", Email: "ops@broker.test", Directory: directory, HTTPListen: "127.0.0.1:0"}}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		<-r.Done
	})
	if want := "broker.test:" + strings.Split(r.Addr.String(), ":")[1]; r.URL.Addr != want || !r.URL.Pin.IsZero() {
		t.Errorf("URL %s, want pp://TOKEN@%s", r.URL.Redacted(), want)
	}
	if !slices.Contains(r.Server.tls.NextProtos, acme.ALPNProto) {
		t.Errorf("listener offers %q, want %q among them", r.Server.tls.NextProtos, acme.ALPNProto)
	}
	var failed, httpAddr string
	waitFor(t, "the first order to fail", func() bool {
		for _, e := range hook.AllEntries() {
			if strings.HasPrefix(e.Message, "ACME certificate not obtained") {
				failed = e.Message
			}
			if e.Message == "ACME HTTP-01 listening" {
				httpAddr = e.Data["listen"].(string)
			}
		}
		return failed != "" && httpAddr != ""
	})
	if !strings.Contains(failed, "Check that broker.test resolves to this broker and that port 443") {
		t.Errorf("failure log %q does not say what to check", failed)
	}
	// autocert answers for the domain only (403 otherwise), with or
	// without a port in Host (pebble sends one).
	for _, tt := range []struct {
		host string
		want int
	}{{"broker.test", http.StatusNotFound}, {"broker.test:80", http.StatusNotFound}, {"other.test", http.StatusForbidden}} {
		req, err := http.NewRequest("GET", "http://"+httpAddr+"/.well-known/acme-challenge/unknown-token", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = tt.host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("HTTP-01 for an unknown token, Host %s: %s, want %d", tt.host, resp.Status, tt.want)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	if fi, err := os.Stat(filepath.Join(state, ACMEDir)); err == nil && fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("ACME cache %s has mode %v: it holds the account key", ACMEDir, fi.Mode())
	}
}

// TestConfigCertificate: New takes a fixed certificate or GetCertificate,
// and ACME only with GetCertificate.
func TestConfigCertificate(t *testing.T) {
	st, err := LoadOrCreateState(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	get := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &st.Cert, nil }
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"fixed", Config{Token: st.Token, Cert: st.Cert}, ""},
		{"GetCertificate", Config{Token: st.Token, GetCertificate: get}, ""},
		{"ACME", Config{Token: st.Token, GetCertificate: get, ACME: true}, ""},
		{"none", Config{Token: st.Token}, "broker config: cert: no certificate or private key, and no GetCertificate"},
		{"ACME without GetCertificate", Config{Token: st.Token, Cert: st.Cert, ACME: true}, "broker config: acme: set, but no GetCertificate to answer the challenge"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if tt.want != "" {
				if err == nil || err.Error() != tt.want {
					t.Fatalf("New: %v, want %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Contains(s.tls.NextProtos, acme.ALPNProto); got != tt.cfg.ACME {
				t.Errorf("control TLS offers %q", s.tls.NextProtos)
			}
			if (s.tls.GetCertificate != nil) != (tt.cfg.GetCertificate != nil) {
				t.Error("GetCertificate not used")
			}
		})
	}
}
