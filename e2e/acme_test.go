package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/testutil"
)

// Brokers with a certificate from a CA: the broker URL has no pin, and
// agents verify the broker's chain for the URL's host with their system
// roots (SSL_CERT_FILE here). TestLabACME gets the certificate over ACME
// from a real ACME server, pebble, in the NAT lab; TestCertFile uses an
// operator's certificate files on loopback.

// newE2ECA makes a private CA for the test and writes its root, PEM, to
// dir/root.pem, for SSL_CERT_FILE.
func newE2ECA(t *testing.T, dir string) (ca *testutil.CA, rootFile string) {
	t.Helper()
	ca = testutil.NewCA(t, "peerport e2e root")
	rootFile = filepath.Join(dir, "root.pem")
	ca.WriteRoot(t, rootFile)
	return ca, rootFile
}

// withRoots runs an agent with SSL_CERT_FILE set to roots; "" runs it with
// the system roots only (SSL_CERT_FILE removed, if the test has one).
func withRoots(roots string, args ...string) []string {
	if roots == "" {
		return append([]string{"-u", "SSL_CERT_FILE", bins.agent}, args...)
	}
	return append([]string{"SSL_CERT_FILE=" + roots, bins.agent}, args...)
}

// refusal is how a broker the agent must not trust shows.
type refusal struct {
	name string
	url  string
	want []string // in stderr
}

// checkRefusals runs `agent login` and `agent share --broker` for each
// case: both must exit non-zero, quickly (the refusal is final, not
// retried), with stderr saying why.
func checkRefusals(t *testing.T, roots string, cases []refusal, login, share func(roots string, args ...string) (string, error)) {
	t.Helper()
	for _, rc := range cases {
		for _, cmd := range []struct {
			what string
			run  func() (string, error)
		}{
			{"login", func() (string, error) { return login(rc.roots(roots), "login", rc.url) }},
			{"share", func() (string, error) { return share(rc.roots(roots), "share", "127.0.0.1:9", "--broker", rc.url) }},
		} {
			start := time.Now()
			stderr, err := cmd.run()
			took := time.Since(start)
			if err == nil {
				t.Errorf("%s: agent %s succeeded", rc.name, cmd.what)
				continue
			}
			if took > 20*time.Second {
				t.Errorf("%s: agent %s took %v to give up; want a final refusal", rc.name, cmd.what, took)
			}
			for _, w := range rc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("%s: agent %s stderr lacks %q:\n%s", rc.name, cmd.what, w, stderr)
				}
			}
			t.Logf("%s: agent %s refused in %v: %s", rc.name, cmd.what, took.Round(time.Millisecond), lastLine(stderr))
		}
	}
}

// roots is the SSL_CERT_FILE of a case: untrusted-root cases run without.
func (rc refusal) roots(trusted string) string {
	if strings.HasPrefix(rc.name, "untrusted") {
		return ""
	}
	return trusted
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestCertFile: a broker with the operator's certificate files prints a URL
// without a pin; agents that trust the CA log in, share and connect; one
// that does not, or that uses a name the certificate is not for, is refused.
func TestCertFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, rootFile := newE2ECA(t, dir)
	now := time.Now()
	certFile, keyFile := testutil.WritePair(t, dir, "broker", ca.Issue(t, now.Add(-time.Hour), now.Add(24*time.Hour), "broker.test", "127.0.0.1"))
	b := start(t, "broker", bins.broker, "--listen", "127.0.0.1:0", "--state-dir", t.TempDir(), "--public-addr", "127.0.0.1",
		"--no-turn", "--cert-file", certFile, "--key-file", keyFile)
	url := b.firstLine()
	u, err := secure.ParseBrokerURL(url)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(url, "#") || !u.Pin.IsZero() || u.Host() != "127.0.0.1" {
		t.Fatalf("broker URL %s: want pp://TOKEN@127.0.0.1:PORT, no pin", u.Redacted())
	}
	sharerDir, connDir := t.TempDir(), t.TempDir()
	if _, stderr, err := run(t, "/usr/bin/env", withRoots(rootFile, "--state-dir", sharerDir, "login", url)...); err != nil {
		t.Fatalf("login: %v\n%s", err, stderr)
	}
	sharer := start(t, "sharer", "/usr/bin/env", withRoots(rootFile, "--state-dir", sharerDir, "share", echoServer(t))...)
	ticket := sharer.firstLine()
	tk, err := secure.ParseTicket(ticket)
	if err != nil || !tk.Pin.IsZero() || tk.Broker != u.Addr {
		t.Fatalf("ticket %+v, %v: want broker %s and no pin", tk, err, u.Addr)
	}
	conn := start(t, "connector", "/usr/bin/env", withRoots(rootFile, "--state-dir", connDir, "connect", ticket, "--listen", "127.0.0.1:0")...)
	echoCheck(t, conn.firstLine(), 1<<20)

	_, port, _ := net.SplitHostPort(u.Addr)
	agentRun := func(roots string, args ...string) (string, error) {
		_, stderr, err := run(t, "/usr/bin/env", withRoots(roots, append([]string{"--state-dir", t.TempDir()}, args...)...)...)
		return stderr, err
	}
	checkRefusals(t, rootFile, []refusal{
		// localhost is this broker too, but not a name of its certificate.
		{"wrong name", "pp://" + u.Token + "@localhost:" + port, []string{
			"broker localhost:" + port + ": certificate not trusted (x509: certificate is valid for broker.test, not localhost); use a broker URL with a name the certificate is for"}},
		{"untrusted root", url, []string{
			"broker 127.0.0.1:" + port + ": certificate not trusted (x509: certificate signed by unknown authority); if the broker uses a private CA, point SSL_CERT_FILE at its root"}},
	}, agentRun, agentRun)
}

// pebbleBin finds pebble, the ACME test server (Debian package "pebble").
func pebbleBin(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("pebble")
	if err != nil {
		if os.Getenv(natlab.EnvRequired) == "required" {
			t.Fatalf("pebble not found (apt-get install pebble); %s=required", natlab.EnvRequired)
		}
		t.Skip("pebble not found; apt-get install pebble")
	}
	return p
}

// TestLabACME: in the NAT lab, a broker on port 443 gets its certificate
// from pebble, a real ACME server that validates the TLS-ALPN-01 challenge by
// connecting to broker.test:443 (names come from the lab's hosts files).
// The URL has no pin; agents that trust pebble's root share and connect
// through it; a wrong name, and an agent without that root, are refused at
// once with an error that names the broker.
func TestLabACME(t *testing.T) {
	t.Parallel()
	pebble := pebbleBin(t)
	lab := natlab.New(t, natlab.Topology{
		Name:    "acme",
		Routers: []natlab.RouterSpec{{Name: "gw-b", Kind: natlab.Cone}},
		Hosts:   []natlab.HostSpec{{Name: "broker", ExtraIPs: 1}, {Name: "ca"}, {Name: "a"}, {Name: "b", Behind: "gw-b"}},
	})
	w := &labWorld{t: t, lab: lab, ctx: t.Context(), sharerDir: t.TempDir(), connDir: t.TempDir(), broker: lab.Host("broker")}
	caHost, brokerIP := lab.Host("ca"), lab.Host("broker").IP()
	caIP := caHost.IP().String()
	// Every name first: a program sees the lab's hosts files only if they
	// were there when it started. pebble resolves them to validate.
	for _, h := range []struct {
		name string
		node *natlab.Node
	}{
		{"broker.test", w.broker}, {"other.test", w.broker}, {"ca.test", caHost},
		{"elsewhere.test", caHost}, {"http01.test", lab.Host("a")},
	} {
		if err := lab.AddHost(h.name, h.node.IP()); err != nil {
			t.Fatal(err)
		}
	}

	// pebble, with an API certificate from a CA of the test, which the
	// broker's ACME client trusts through SSL_CERT_FILE.
	dir := t.TempDir()
	apiCA, apiRootFile := newE2ECA(t, dir)
	now := time.Now()
	apiCert, apiKey := testutil.WritePair(t, dir, "pebble", apiCA.Issue(t, now.Add(-time.Hour), now.Add(24*time.Hour), "ca.test", caIP))
	cfg, err := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":                  net.JoinHostPort(caIP, "14000"),
		"managementListenAddress":        net.JoinHostPort(caIP, "15000"),
		"certificate":                    apiCert,
		"privateKey":                     apiKey,
		"httpPort":                       80,
		"tlsPort":                        443, // where it validates TLS-ALPN-01: the broker's port
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}})
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	// Real validation: PEBBLE_VA_ALWAYS_VALID off; no artificial sleeps.
	pb := w.startCmd(caHost, natlab.Command{Path: pebble, Args: []string{"-config", cfgFile},
		Env: []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_VA_ALWAYS_VALID=0"}})
	eventually(t, 30*time.Second, "pebble to listen", func() bool {
		c, err := caHost.Dial(w.ctx, "tcp", net.JoinHostPort(caIP, "14000"))
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	start := time.Now()
	b := w.startCmd(w.broker, natlab.Command{Path: bins.broker, Env: append([]string{"SSL_CERT_FILE=" + apiRootFile}, raceEnv...),
		Args: []string{"--state-dir", t.TempDir(), "--listen", ":443", "--acme-domain", "broker.test",
			"--acme-directory", "https://" + net.JoinHostPort(caIP, "14000") + "/dir"}})
	w.url = w.firstLine(b)
	u, err := secure.ParseBrokerURL(w.url)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(w.url, "#") || u.Addr != "broker.test:443" {
		t.Fatalf("broker URL %s: want pp://TOKEN@broker.test:443, no pin", u.Redacted())
	}
	eventually(t, 60*time.Second, "the broker's ACME certificate", func() bool {
		if strings.Contains(b.Stderr(), "ACME certificate not obtained") {
			t.Fatalf("broker could not get its certificate:\n%s\npebble:\n%s", b.Stderr(), pb.Stdout())
		}
		return strings.Contains(b.Stderr(), "ACME certificate ready")
	})
	t.Logf("certificate obtained %v after the broker started", time.Since(start).Round(time.Millisecond))

	// The served chain is pebble's: it verifies against pebble's root
	// (from its management API) for broker.test.
	root := fetchPebbleRoot(t, w, lab.Host("a"), caIP, apiCA)
	rootFile := filepath.Join(dir, "pebble-root.pem")
	if err := os.WriteFile(rootFile, root, 0o644); err != nil {
		t.Fatal(err)
	}
	leaf := servedLeaf(t, w, lab.Host("a"), brokerIP.String()+":443", "broker.test", root)
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "broker.test" || !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
		t.Errorf("served leaf for %v issued by %q: want broker.test from pebble", leaf.DNSNames, leaf.Issuer.CommonName)
	}

	// Agents that trust pebble's root: login, share on a (public), connect
	// from b (behind a cone NAT), data intact.
	a, bh := lab.Host("a"), lab.Host("b")
	agentEnv := append([]string{"SSL_CERT_FILE=" + rootFile}, raceEnv...)
	if out, err := a.RunCommand(w.ctx, natlab.Command{Path: bins.agent, Env: agentEnv, Args: []string{"--state-dir", w.sharerDir, "login", w.url}}); err != nil {
		t.Fatalf("login: %v\n%s", err, out)
	}
	sharer := w.startCmd(a, natlab.Command{Path: bins.agent, Env: agentEnv, Args: []string{"--state-dir", w.sharerDir, "share", w.echoIn(a)}})
	ticket := w.firstLine(sharer)
	if tk, err := secure.ParseTicket(ticket); err != nil || !tk.Pin.IsZero() || tk.Broker != "broker.test:443" {
		t.Fatalf("ticket %+v, %v: want broker.test:443 and no pin", tk, err)
	}
	conn := w.startCmd(bh, natlab.Command{Path: bins.agent, Env: agentEnv, Args: []string{"--state-dir", w.connDir, "connect", ticket, "--listen", "127.0.0.1:18080"}})
	addr := w.firstLine(conn)
	c, err := bh.Dial(w.ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	echoOver(t, c, 4<<20)
	t.Logf("connector's path: %s", w.peer(w.connDir).Path)

	labRun := func(roots string, args ...string) (string, error) {
		env := raceEnv
		if roots != "" {
			env = append([]string{"SSL_CERT_FILE=" + roots}, raceEnv...)
		}
		ctx, cancel := context.WithTimeout(w.ctx, time.Minute)
		defer cancel()
		p, err := a.StartCommand(ctx, natlab.Command{Path: bins.agent, Env: env, Args: append([]string{"--state-dir", t.TempDir()}, args...)})
		if err != nil {
			t.Fatal(err)
		}
		p.Stdin().Close()
		werr := p.Wait(ctx)
		if ctx.Err() != nil {
			p.Stop()
		}
		return p.Stderr(), werr
	}
	// The validation is real: a broker whose name points elsewhere (at
	// pebble's own host, where nothing answers on 443) gets no certificate,
	// and says so.
	b2 := w.startCmd(a, natlab.Command{Path: bins.broker, Env: append([]string{"SSL_CERT_FILE=" + apiRootFile}, raceEnv...),
		Args: []string{"--state-dir", t.TempDir(), "--listen", ":443", "--no-turn", "--acme-domain", "elsewhere.test",
			"--acme-directory", "https://" + net.JoinHostPort(caIP, "14000") + "/dir"}})
	w.firstLine(b2)
	eventually(t, 60*time.Second, "the misplaced broker to report its failed order", func() bool {
		if strings.Contains(b2.Stderr(), "ACME certificate ready") {
			t.Fatalf("a broker that cannot be validated got a certificate:\n%s", b2.Stderr())
		}
		return strings.Contains(b2.Stderr(), "ACME certificate not obtained")
	})
	b2.Stop()

	// HTTP-01 with --acme-http, for a broker whose port is not 443: its
	// TLS-ALPN-01 validation fails (nothing on a's 443), HTTP-01 on :80 passes.
	b3 := w.startCmd(a, natlab.Command{Path: bins.broker, Env: append([]string{"SSL_CERT_FILE=" + apiRootFile}, raceEnv...),
		Args: []string{"--state-dir", t.TempDir(), "--listen", ":7443", "--no-turn", "--acme-domain", "http01.test", "--acme-http", ":80",
			"--acme-directory", "https://" + net.JoinHostPort(caIP, "14000") + "/dir"}})
	if u3 := w.firstLine(b3); !strings.HasSuffix(u3, "@http01.test:7443") {
		t.Errorf("HTTP-01 broker URL %q: want pp://TOKEN@http01.test:7443", u3)
	}
	eventually(t, 60*time.Second, "the HTTP-01 broker's certificate", func() bool {
		if strings.Contains(b3.Stderr(), "ACME certificate not obtained") {
			t.Fatalf("HTTP-01 broker got no certificate:\n%s\npebble:\n%s", b3.Stderr(), pb.Stdout())
		}
		return strings.Contains(b3.Stderr(), "ACME certificate ready")
	})
	if leaf := servedLeaf(t, w, bh, a.IP().String()+":7443", "http01.test", root); leaf.DNSNames[0] != "http01.test" {
		t.Errorf("HTTP-01 broker served %v", leaf.DNSNames)
	}
	b3.Stop()

	checkRefusals(t, rootFile, []refusal{
		{"wrong name", "pp://" + u.Token + "@other.test:443", []string{
			"broker other.test:443: certificate not trusted (x509: certificate is valid for broker.test, not other.test); use a broker URL with a name the certificate is for"}},
		{"untrusted root", w.url, []string{
			"broker broker.test:443: certificate not trusted (x509: certificate signed by unknown authority); if the broker uses a private CA, point SSL_CERT_FILE at its root"}},
	}, labRun, labRun)
}

// fetchPebbleRoot reads pebble's issuing root from its management API,
// from node n, trusting the API's certificate by apiCA.
func fetchPebbleRoot(t *testing.T, w *labWorld, n *natlab.Node, caIP string, apiCA *testutil.CA) []byte {
	t.Helper()
	tr := &http.Transport{
		DialContext:     func(ctx context.Context, network, addr string) (net.Conn, error) { return n.Dial(ctx, network, addr) },
		TLSClientConfig: &tls.Config{RootCAs: apiCA.Pool},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get("https://" + net.JoinHostPort(caIP, "15000") + "/roots/0")
	if err != nil {
		t.Fatalf("pebble root: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pebble root: %s, %v", resp.Status, err)
	}
	if blk, _ := pem.Decode(b); blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("pebble root is not a PEM certificate:\n%s", b)
	}
	return b
}

// servedLeaf completes a control-channel handshake with the broker at addr
// from node n for name, verifying the chain against root, and returns the
// leaf it served.
func servedLeaf(t *testing.T, w *labWorld, n *natlab.Node, addr, name string, root []byte) *x509.Certificate {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(root) {
		t.Fatal("pebble root does not parse")
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := secure.SelfSignedCert(key, "peerport-agent")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := n.Dial(w.ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS13,
		NextProtos: []string{secure.ALPNControl}, Certificates: []tls.Certificate{id}})
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatalf("the broker's certificate does not verify against pebble's root for %s: %v", name, err)
	}
	return c.ConnectionState().PeerCertificates[0]
}
