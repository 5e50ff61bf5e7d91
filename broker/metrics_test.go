package broker

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/peerport/peerport/internal/nat"
	"github.com/peerport/peerport/internal/proto"
)

// startWithMetrics starts a broker on loopback with metrics and STUN on, and
// a harness to log agents in to it.
func startWithMetrics(t *testing.T) (*Running, *harness) {
	t.Helper()
	return startBroker(t, Options{Version: "v-test", MetricsListen: "127.0.0.1:0", STUNListen: []string{"127.0.0.1:0"}})
}

// get fetches path from the metrics listener without keeping a connection.
func get(t *testing.T, r *Running, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + r.MetricsAddr.String() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// samples parses the text exposition format into series -> value, where a
// series is written as in the exposition: name{label="v",...}.
func samples(t *testing.T, body string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func TestMetricsEndpoint(t *testing.T) {
	r, h := startWithMetrics(t)
	if r.MetricsAddr == nil {
		t.Fatal("no MetricsAddr")
	}
	if code, body := get(t, r, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, _ := get(t, r, "/nope"); code != http.StatusNotFound {
		t.Errorf("/nope = %d, want 404", code)
	}

	// One introduction, one refused Connect, one wrong token.
	sharer, tk := sharerWithTicket(t, h, "web")
	defer sharer.close()
	conn := h.login(t, newIdentity(t), "")
	defer conn.close()
	admit := tk.AdmitKey()
	conn.send(&proto.Connect{ID: 1, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:], Candidates: connectorCands})
	in := expectType[*proto.Intro](t, sharer.read())
	sharer.send(&proto.IntroReply{Intro: in.Intro, Candidates: sharerCands, Port: 8080})
	expectType[*proto.ConnectReply](t, conn.read())
	conn.send(&proto.Connect{ID: 2, Sharer: tk.Sharer.String(), Share: "web", Admit: make([]byte, 32)})
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.Code != proto.CodeUnauthorized {
		t.Fatalf("connect with a wrong admit key: %#v", rep)
	}
	bad, m := h.hello(t, newIdentity(t), "not-the-token")
	defer bad.close()
	expectError(t, m, proto.CodeUnauthorized)

	// STUN over both networks; the answers prove the counting sockets still work.
	stunAddr := r.STUN[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := nat.MappedAddrTCP(ctx, netip.MustParseAddrPort("127.0.0.1:0"), stunAddr); err != nil {
		t.Fatalf("STUN over TCP: %v", err)
	}
	stunUDP(t, stunAddr)

	want := map[string]float64{
		`peerport_broker_agents_online`:                                   1,
		`peerport_broker_guests_online`:                                   1,
		`peerport_broker_sessions_online`:                                 2,
		`peerport_broker_shares`:                                          1,
		`peerport_broker_sessions_total{role="member"}`:                   1,
		`peerport_broker_sessions_total{role="guest"}`:                    1,
		`peerport_broker_sessions_refused_total{reason="unauthorized"}`:   1,
		`peerport_broker_introductions_total{where="local"}`:              1,
		`peerport_broker_introductions_failed_total{code="unauthorized"}`: 1,
		`peerport_broker_stun_requests_total{network="udp"}`:              1,
		`peerport_broker_stun_requests_total{network="tcp"}`:              1,
		`peerport_broker_build_info{version="v-test"}`:                    1,
	}
	// The wrong-token session is counted when the broker has sent its
	// Error, which the client saw; the gauges are read at scrape time.
	code, body := get(t, r, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	got := samples(t, body)
	for series, v := range want {
		if got[series] != v {
			t.Errorf("%s = %v, want %v", series, got[series], v)
		}
	}
	for _, series := range []string{"go_goroutines", "process_open_fds"} {
		if _, ok := got[series]; !ok {
			t.Errorf("%s missing: the runtime and process collectors are not registered", series)
		}
	}

	// Gauges follow the registry: the guest leaves.
	conn.close()
	waitFor(t, "guest offline", func() bool { return r.Server.Stats().Guests == 0 })
	_, body = get(t, r, "/metrics")
	if g := samples(t, body)[`peerport_broker_guests_online`]; g != 0 {
		t.Errorf("guests_online = %v after the guest left", g)
	}
}

// stunUDP runs one Binding over UDP and checks the answer names our address.
func stunUDP(t *testing.T, server string) {
	t.Helper()
	c, err := net.Dial("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	if _, err := c.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("STUN over UDP: %v", err)
	}
	resp := &stun.Message{Raw: buf[:n]}
	if err := resp.Decode(); err != nil || resp.Type != stun.BindingSuccess {
		t.Fatalf("STUN over UDP: %v, type %v", err, resp.Type)
	}
}

func TestMetricsOff(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Start(ctx, Options{Listen: "127.0.0.1:0", StateDir: t.TempDir(), Log: testLogger(t), NoSTUN: true})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cancel()
	<-r.Done
	if r.MetricsAddr != nil {
		t.Errorf("MetricsAddr %v without MetricsListen", r.MetricsAddr)
	}
	// The registry exists anyway, for embedders and Stats-like reads.
	mfs, err := r.Server.Registry().Gather()
	if err != nil || len(mfs) == 0 {
		t.Errorf("Gather = %d families, %v", len(mfs), err)
	}
}

func TestMetricsListenTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r, err := Start(context.Background(), Options{Listen: "127.0.0.1:0", StateDir: t.TempDir(), NoSTUN: true, MetricsListen: ln.Addr().String()})
	if err == nil {
		t.Fatalf("started at %s with the metrics port taken", r.URL)
	}
	if !strings.Contains(err.Error(), "metrics listen") {
		t.Errorf("error %q does not name the metrics listener", err)
	}
}

func TestMetricCode(t *testing.T) {
	tests := []struct{ in, want string }{
		{proto.CodeUnauthorized, proto.CodeUnauthorized},
		{proto.CodeRefused, proto.CodeRefused},
		{proto.CodeTimeout, proto.CodeTimeout},
		{"made-up-by-a-sharer", "other"},
		{"", "other"},
	}
	for _, tt := range tests {
		if got := metricCode(tt.in); got != tt.want {
			t.Errorf("metricCode(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
