package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// brokerIntro runs a PathBroker introduction between a sharer and a
// connector and returns both agents' identities and the token each got.
func brokerIntro(t *testing.T, h *harness) (sharerID, connID *secure.Identity, sharerToken, connToken []byte) {
	t.Helper()
	sharerID = newIdentity(t)
	sharer := h.login(t, sharerID, h.state.Token)
	t.Cleanup(sharer.close)
	tk, err := secure.NewTicket("127.0.0.1:7000", h.state.Pin, sharerID.ID(), "web")
	if err != nil {
		t.Fatal(err)
	}
	ah := tk.AdmitHash()
	sharer.send(&proto.Register{ID: 1, Share: "web", AdmitHash: ah[:]})
	if r := expectType[*proto.Result](t, sharer.read()); r.Code != "" {
		t.Fatalf("register: %#v", r)
	}
	connID = newIdentity(t)
	conn := h.login(t, connID, "")
	t.Cleanup(conn.close)
	admit := tk.AdmitKey()
	conn.send(&proto.Connect{ID: 2, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:], Path: proto.PathBroker})
	in := expectType[*proto.Intro](t, sharer.read())
	if in.Path != proto.PathBroker || len(in.RelayToken) != proto.RelayTokenSize {
		t.Fatalf("intro %#v, want a broker relay token", in)
	}
	sharer.send(&proto.IntroReply{Intro: in.Intro, Port: 8080})
	rep := expectType[*proto.ConnectReply](t, conn.read())
	if rep.Code != "" {
		t.Fatalf("connect reply %#v", rep)
	}
	return sharerID, connID, in.RelayToken, rep.RelayToken
}

// relayConn opens a broker relay connection as id and sends its bind.
func (h *harness) relayConn(t *testing.T, id *secure.Identity, token []byte) *tls.Conn {
	t.Helper()
	cfg, err := secure.ControlClientConfig(id, h.state.Pin)
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{secure.ALPNRelay}
	raw := h.dial(t)
	t.Cleanup(func() { raw.Close() })
	c := tls.Client(raw, cfg)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatalf("relay handshake: %v", err)
	}
	if err := proto.Write(c, &proto.RelayBind{Token: token}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	return c
}

func readAnswer(t *testing.T, c *tls.Conn) proto.Message {
	t.Helper()
	m, err := proto.Read(c, 0)
	if err != nil {
		t.Fatalf("read bind answer: %v", err)
	}
	return m
}

func TestBrokerRelayPairs(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, nil)
		sharerID, connID, st, ct := brokerIntro(t, h)
		if !bytes.Equal(st, ct) {
			t.Fatal("sharer and connector got different relay tokens")
		}
		s := h.relayConn(t, sharerID, st)
		c := h.relayConn(t, connID, ct)
		expectType[*proto.Result](t, readAnswer(t, s))
		expectType[*proto.Result](t, readAnswer(t, c))

		// Whatever one side writes, the other reads, both ways at once.
		up, down := make([]byte, 1<<20), make([]byte, 1<<20)
		rand.Read(up)
		rand.Read(down)
		errc := make(chan error, 2)
		go func() { _, err := s.Write(down); errc <- err }()
		go func() { _, err := c.Write(up); errc <- err }()
		gotUp, gotDown := make([]byte, len(up)), make([]byte, len(down))
		if _, err := io.ReadFull(s, gotUp); err != nil {
			t.Fatalf("sharer read: %v", err)
		}
		if _, err := io.ReadFull(c, gotDown); err != nil {
			t.Fatalf("connector read: %v", err)
		}
		for range 2 {
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
			t.Fatal("relayed bytes differ")
		}
		// One side leaving ends the other.
		s.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("connector's relay connection outlived the sharer's")
		}
	})
}

func TestBrokerRelayRefusals(t *testing.T) {
	h := newHarness(t, "tcp", func(c *Config) { c.RelayPairTimeout = 300 * time.Millisecond })
	t.Run("unknown token", func(t *testing.T) {
		c := h.relayConn(t, newIdentity(t), bytes.Repeat([]byte{1}, proto.RelayTokenSize))
		expectError(t, readAnswer(t, c), proto.CodeNotFound)
	})
	t.Run("another agent's token", func(t *testing.T) {
		_, _, token, _ := brokerIntro(t, h)
		c := h.relayConn(t, newIdentity(t), token)
		expectError(t, readAnswer(t, c), proto.CodeUnauthorized)
	})
	t.Run("side bound twice", func(t *testing.T) {
		sharerID, _, token, _ := brokerIntro(t, h)
		h.relayConn(t, sharerID, token)
		c := h.relayConn(t, sharerID, token)
		expectError(t, readAnswer(t, c), proto.CodeRefused)
	})
	t.Run("the other never comes", func(t *testing.T) {
		sharerID, _, token, _ := brokerIntro(t, h)
		c := h.relayConn(t, sharerID, token)
		m := readAnswer(t, c)
		expectError(t, m, proto.CodeTimeout)
		// And the token is gone with it.
		c2 := h.relayConn(t, sharerID, token)
		expectError(t, readAnswer(t, c2), proto.CodeNotFound)
	})
	t.Run("garbage instead of a bind", func(t *testing.T) {
		cfg, _ := secure.ControlClientConfig(newIdentity(t), h.state.Pin)
		cfg.NextProtos = []string{secure.ALPNRelay}
		raw := h.dial(t)
		defer raw.Close()
		c := tls.Client(raw, cfg)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		expectError(t, readAnswer(t, c), proto.CodeBadRequest)
	})
	if got := metric(t, h.srv.Registry(), "peerport_broker_relay_refused_total", "reason", "token"); got < 2 {
		t.Errorf("relay_refused_total{reason=token} = %v, want >= 2", got)
	}
}

// TestPortHTTPS: the broker's port answers a plain HTTPS client (no ALPN of
// ours, no client certificate) like a web server.
func TestPortHTTPS(t *testing.T) {
	h := newHarness(t, "tcp", nil)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialTLSContext: func(context.Context, string, string) (net.Conn, error) {
			c := tls.Client(h.dial(t), &tls.Config{InsecureSkipVerify: true}) // the test checks content, not the pin
			return c, c.Handshake()
		},
	}}
	defer client.CloseIdleConnections()
	for _, tt := range []struct {
		path   string
		status int
		body   string
	}{
		{"/healthz", 200, "ok"},
		{"/", 200, "peerport broker"},
		{"/admin", 404, ""},
	} {
		resp, err := client.Get("https://broker.test" + tt.path)
		if err != nil {
			t.Fatalf("GET %s: %v", tt.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.body) {
			t.Errorf("GET %s: %d %q, want %d containing %q", tt.path, resp.StatusCode, b, tt.status, tt.body)
		}
	}
}
