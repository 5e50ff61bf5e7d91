package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/natlab"
)

// The networks of issue 13: one that lets out only TCP to port 443, and one
// that reaches nothing but an HTTP proxy. There the only way to the peer is
// the broker's one port, 443: control channel and broker relay alike. The
// natlab tests (egress_test.go, proxy_test.go) prove what these networks let
// through; these prove that peerport gets through them.

// newOnePortWorld is newLabWorld with the broker deployed as issue 13 says:
// its one listener on port 443, beside its STUN (3478/3479) and TURN (3480)
// servers, which it keeps running and which a restricted network cannot
// reach. Nobody is logged in yet: who logs in, and through what, is the
// test's business (see login).
func newOnePortWorld(t *testing.T, topo natlab.Topology) *labWorld {
	lab := natlab.New(t, topo)
	w := &labWorld{t: t, lab: lab, ctx: t.Context(), sharerDir: t.TempDir(), connDir: t.TempDir(), broker: lab.Host("broker")}
	w.url = w.firstLine(w.startCmd(w.broker, natlab.Command{Path: bins.broker, Env: raceEnv,
		Args: []string{"--state-dir", t.TempDir(), "--public-addr", w.broker.IP().String(), "--listen", ":443", "--metrics-listen", "127.0.0.1:9102"}}))
	if !strings.Contains(w.url, ":443") {
		t.Fatalf("broker URL %q does not name port 443", w.url)
	}
	return w
}

// login runs `agent login` for the sharer on host a with env added (a
// proxy), and returns the process once it has exited, with its exit error.
func (w *labWorld) login(env ...string) (*natlab.Proc, error) {
	c := agentCmd("--state-dir", w.sharerDir, "login", w.url)
	c.Env = append(c.Env, env...)
	p := w.startCmd(w.lab.Host("a"), c)
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	return p, p.Wait(ctx)
}

// proxyEnv points an agent at the proxy the way users do, in both
// spellings, so that neither one inherited from the test's environment wins.
func proxyEnv(url string) []string {
	return []string{"HTTPS_PROXY=" + url, "https_proxy=" + url}
}

// tcpOutcome dials addr from n for at most d: "connected", "refused" or
// "timeout" (nothing came back).
func tcpOutcome(ctx context.Context, n *natlab.Node, addr string, d time.Duration) string {
	c, err := n.DialWith(ctx, &net.Dialer{Timeout: d}, "tcp", addr)
	if err == nil {
		c.Close()
		return "connected"
	}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

// requireBrokerPorts checks, from open (a host whose network lets
// everything out), that the broker serves what restricted cannot reach,
// and that restricted indeed reaches only 443: so a pass means peerport got
// through the restricted network, not around it.
func (w *labWorld) requireBrokerPorts(open, restricted *natlab.Node) {
	w.t.Helper()
	ip := w.broker.IP().String()
	for _, tc := range []struct {
		from *natlab.Node
		port int
		want string
	}{
		{open, 443, "connected"},
		{open, 3480, "connected"}, // the TURN server, over TCP
		{restricted, 443, "connected"},
		{restricted, 3480, "timeout"},
	} {
		addr := net.JoinHostPort(ip, strconv.Itoa(tc.port))
		if got := tcpOutcome(w.ctx, tc.from, addr, 700*time.Millisecond); got != tc.want {
			w.t.Fatalf("%s -> broker %s: %s, want %s", tc.from, addr, got, tc.want)
		}
	}
}

// brokerRelayed waits until the state dir has one peer session, on the
// broker relay, and returns it. That session must have carried at least
// minBytes both ways: the one each side keeps is the one the data took,
// not a spare left over from the race between paths.
func (w *labWorld) brokerRelayed(dir, who string, minBytes int64) agent.PeerStatus {
	w.t.Helper()
	p := w.onlyPath(dir, "relay")
	if p.RelayKind != "broker" {
		w.t.Errorf("%s's peer session %+v: relay_kind %q, want broker (the 443 relay: nothing else gets out)", who, p, p.RelayKind)
	}
	if p.RelayedBytes < minBytes {
		w.t.Errorf("%s's peer session %+v: relayed %d bytes, want at least %d", who, p, p.RelayedBytes, minBytes)
	}
	return p
}

// requireBrokerRelayBytes waits until the broker's metrics count at least n
// bytes copied by its relay: the broker's own word that the session crossed
// its one port. The broker adds a pair's bytes when the pair ends, so the
// caller ends the session first (stops an agent).
func (w *labWorld) requireBrokerRelayBytes(n float64) {
	w.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		m := w.brokerMetrics()
		pairs, bytes := metricSum(m, "peerport_broker_relay_pairs_total"), metricSum(m, "peerport_broker_relay_bytes_total")
		if pairs >= 1 && bytes >= n {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("broker metrics after 10s: %v relay pairs, %v bytes relayed; want >= 1 and >= %v", pairs, bytes, n)
		}
	}
}

// TestLabOnePort443Sharer: the sharer's network lets out only TCP to port
// 443 (no UDP, no STUN, no TURN, no punch); share and connect still work,
// over the broker relay on the broker's one port.
func TestLabOnePort443Sharer(t *testing.T) {
	t.Parallel()
	testOnePort443(t, natlab.Pair(natlab.BehindCone443, natlab.BehindCone), "a")
}

// TestLabOnePort443Connector is TestLabOnePort443Sharer with the connector
// on the 443-only network (the sharer could allocate a TURN relay, but the
// connector could not reach it).
func TestLabOnePort443Connector(t *testing.T) {
	t.Parallel()
	testOnePort443(t, natlab.Pair(natlab.BehindCone, natlab.BehindCone443), "b")
}

// testOnePort443 runs a share on a and a connect from b, one of them (the
// host restricted) behind a network that lets out only TCP 443, and checks
// 16 MiB come back intact over the broker relay.
func testOnePort443(t *testing.T, topo natlab.Topology, restricted string) {
	w := newOnePortWorld(t, topo)
	open := map[string]string{"a": "b", "b": "a"}[restricted]
	w.requireBrokerPorts(w.lab.Host(open), w.lab.Host(restricted))
	if p, err := w.login(); err != nil {
		t.Fatalf("login over 443: %v\n%s", err, p.Stderr())
	}
	start := time.Now()
	_, conn, addr := w.shareConnect()
	c, err := w.lab.Host("b").Dial(w.ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	echoOver(t, c, 16<<20)
	echoed := time.Since(start)
	p := w.brokerRelayed(w.connDir, "connector", 32<<20) // 16 MiB each way, in TLS records
	s := w.brokerRelayed(w.sharerDir, "sharer", 32<<20)
	if err := conn.Stop(); err != nil {
		t.Errorf("stop the connector: %v", err)
	}
	w.requireBrokerRelayBytes(32 << 20)
	t.Logf("%s restricted to 443: share, connect and a 16 MiB echo in %v; connector %s via %s (relayed %d B), sharer relayed %d B",
		restricted, echoed.Round(time.Millisecond), p.Path, p.RelayKind, p.RelayedBytes, s.RelayedBytes)
}

// TestLabProxyOnly: the sharer's network reaches nothing but the real
// tinyproxy beside it (CONNECT to port 443 only); the agent, given
// HTTPS_PROXY, logs in, shares and is connected to through it, over the
// broker relay. With a proxy that demands Basic auth it works with the
// credentials in the URL, and fails at once with one clear error naming the
// proxy and its answer without them.
func TestLabProxyOnly(t *testing.T) {
	t.Parallel()
	requireTool(t, "tinyproxy")
	tests := []struct {
		name string
		auth string // ProxyConfig.Auth
	}{
		{"open", ""},
		{"auth", "peer:port-s3cret"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newOnePortWorld(t, natlab.Pair(natlab.BehindProxy, natlab.BehindCone))
			a := w.lab.Host("a")
			if got := tcpOutcome(w.ctx, a, net.JoinHostPort(w.broker.IP().String(), "443"), 700*time.Millisecond); got != "timeout" {
				t.Fatalf("a -> broker:443 directly: %s, want timeout (only the proxy gets out)", got)
			}
			px, err := w.lab.StartProxy(w.ctx, "proxy-a", natlab.ProxyConfig{Auth: tc.auth})
			if err != nil {
				t.Fatal(err)
			}
			if tc.auth != "" {
				user, pass, _ := strings.Cut(tc.auth, ":")
				for _, bad := range []struct {
					name, url string
					codes     []string // the proxy's answer the error must name
				}{
					{"without credentials", "http://" + px.Addr.String(), []string{"407"}},
					// tinyproxy answers wrong credentials with 401.
					{"with a wrong password", "http://" + user + ":wrong-" + pass + "@" + px.Addr.String(), []string{"401", "407"}},
				} {
					start := time.Now()
					p, err := w.login(proxyEnv(bad.url)...)
					took := time.Since(start)
					stderr := strings.TrimSpace(p.Stderr())
					if err == nil {
						t.Errorf("login through %s %s succeeded; want a non-zero exit", px.Addr, bad.name)
						continue
					}
					line := proxyErrorLine(stderr, px.Addr.String(), bad.codes)
					switch {
					case line == "":
						t.Errorf("login %s: stderr names neither the proxy %s nor its answer %v:\n%s", bad.name, px.Addr, bad.codes, stderr)
					case strings.Contains(stderr, pass):
						t.Errorf("login %s: stderr shows the password:\n%s", bad.name, stderr)
					case strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic"):
						t.Errorf("login %s: a crash, not an error:\n%s", bad.name, stderr)
					case took > 10*time.Second:
						t.Errorf("login %s took %v; a proxy's refusal is final, want it at once", bad.name, took.Round(time.Millisecond))
					}
					t.Logf("login %s: exit %v after %v: %s", bad.name, err, took.Round(time.Millisecond), line)
				}
			}
			env := proxyEnv(px.URL())
			if p, err := w.login(env...); err != nil {
				t.Fatalf("login through %s: %v\n%s", px.Addr, err, p.Stderr())
			}
			share := agentCmd("--state-dir", w.sharerDir, "share", w.echoIn(a))
			share.Env = append(share.Env, env...)
			ticket := w.firstLine(w.startCmd(a, share))
			b := w.lab.Host("b")
			conn := w.startCmd(b, agentCmd("--state-dir", w.connDir, "connect", ticket, "--listen", "127.0.0.1:18080"))
			c, err := b.Dial(w.ctx, "tcp", w.firstLine(conn))
			if err != nil {
				t.Fatal(err)
			}
			echoOver(t, c, 16<<20)
			w.brokerRelayed(w.connDir, "connector", 32<<20)
			s := w.brokerRelayed(w.sharerDir, "sharer", 32<<20)
			if tc.auth == "" {
				// The proxy restarts under both agents' feet: every tunnel
				// through it dies mid-stream. That is a lost path, not a
				// crash: both reconnect through the new proxy by themselves.
				c.Close()
				if err := px.Stop(); err != nil {
					t.Fatalf("stop the proxy: %v", err)
				}
				if px, err = w.lab.StartProxy(w.ctx, "proxy-a", natlab.ProxyConfig{}); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				var last error
				for time.Since(start) < 90*time.Second {
					c, err := b.Dial(w.ctx, "tcp", "127.0.0.1:18080")
					if err == nil {
						err = tryEcho(c, 1<<20, 10*time.Second)
					}
					if last = err; err == nil {
						break
					}
					time.Sleep(500 * time.Millisecond)
				}
				if last != nil {
					t.Fatalf("no echo within 90 s of the proxy's restart: %v", last)
				}
				t.Logf("proxy restarted: forwarding again after %v", time.Since(start).Round(time.Millisecond))
			}
			if err := conn.Stop(); err != nil {
				t.Errorf("stop the connector: %v", err)
			}
			w.requireBrokerRelayBytes(32 << 20)
			// The sharer's way out was the proxy: its log has the tunnels.
			if want := "CONNECT " + net.JoinHostPort(w.broker.IP().String(), "443"); !strings.Contains(px.Proc.Stdout(), want) {
				t.Errorf("tinyproxy's log has no %q:\n%s", want, px.Proc.Stdout())
			}
			t.Logf("through %s: 16 MiB intact, sharer on %s via %s (relayed %d B)", px.URL(), s.Path, s.RelayKind, s.RelayedBytes)
		})
	}
}

// proxyErrorLine returns the first line of stderr that names the proxy
// address and one of the status codes, or "".
func proxyErrorLine(stderr, proxyAddr string, codes []string) string {
	for _, l := range strings.Split(stderr, "\n") {
		if !strings.Contains(l, proxyAddr) {
			continue
		}
		for _, code := range codes {
			if strings.Contains(l, code) {
				return l
			}
		}
	}
	return ""
}

// TestLabNetcheckOnePort: netcheck says which of the broker's ports get
// through, on an open network, on one that lets out only TCP 443, and
// behind a proxy, and names the proxy.
func TestLabNetcheckOnePort(t *testing.T) {
	t.Parallel()
	requireTool(t, "tinyproxy")
	w := newOnePortWorld(t, natlab.Pair(natlab.BehindCone443, natlab.BehindProxy))
	px, err := w.lab.StartProxy(w.ctx, "proxy-b", natlab.ProxyConfig{})
	if err != nil {
		t.Fatal(err)
	}
	type probe struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	tests := []struct {
		name, host string
		env        []string
		// broker, STUN/UDP, STUN/TCP, TURN reachable
		want   [4]bool
		proxy  bool
		relays string
	}{
		{"443 only", "a", nil, [4]bool{true, false, false, false}, false, "broker"},
		{"proxy", "b", proxyEnv(px.URL()), [4]bool{true, false, false, false}, true, "broker"},
	}
	for _, tc := range tests {
		c := agentCmd("--state-dir", t.TempDir(), "netcheck", "--json", "--broker", w.url)
		c.Env = append(c.Env, tc.env...)
		out, err := w.lab.Host(tc.host).RunCommand(w.ctx, c)
		if err != nil {
			t.Fatalf("%s: netcheck: %v\n%s", tc.name, err, out)
		}
		var r struct {
			Verdict, Why string
			Reach        struct {
				Broker  probe    `json:"broker"`
				Proxy   string   `json:"proxy"`
				STUNUDP probe    `json:"stun_udp"`
				STUNTCP probe    `json:"stun_tcp"`
				TURN    probe    `json:"turn"`
				Relays  []string `json:"relays"`
			} `json:"reachability"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%s: %v\n%s", tc.name, err, out)
		}
		got := [4]bool{r.Reach.Broker.OK, r.Reach.STUNUDP.OK, r.Reach.STUNTCP.OK, r.Reach.TURN.OK}
		if got != tc.want || (r.Reach.Proxy != "") != tc.proxy || strings.Join(r.Reach.Relays, ",") != tc.relays ||
			r.Verdict != "relay needed" || r.Why == "" {
			t.Errorf("%s: netcheck %s\nwant broker/stun-udp/stun-tcp/turn reachable %v, proxy named %v, relays %q, verdict relay needed with a reason",
				tc.name, out, tc.want, tc.proxy, tc.relays)
		}
	}
	// And the human form on the 443-only network, for the README.
	out, err := w.lab.Host("a").RunCommand(w.ctx, agentCmd("--state-dir", t.TempDir(), "netcheck", "--broker", w.url))
	if err != nil || !strings.Contains(string(out), "reachability:") {
		t.Fatalf("netcheck: %v\n%s", err, out)
	}
	t.Logf("netcheck on the 443-only network:\n%s", out)
}
