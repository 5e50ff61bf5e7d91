package broker

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

func forKinds(t *testing.T, f func(t *testing.T, kind string)) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) { f(t, kind) })
	}
}

func TestHello(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, nil)
		tests := []struct {
			name  string
			first func(h *harness) proto.Message
			code  string // empty: Welcome
		}{
			{"member", func(h *harness) proto.Message { return &proto.Hello{Token: h.state.Token} }, ""},
			{"guest", func(h *harness) proto.Message { return &proto.Hello{} }, ""},
			{"wrong token", func(h *harness) proto.Message { return &proto.Hello{Token: "not-the-token"} }, proto.CodeUnauthorized},
			{"token prefix", func(h *harness) proto.Message { return &proto.Hello{Token: h.state.Token[:10]} }, proto.CodeUnauthorized},
			{"ping first", func(h *harness) proto.Message { return &proto.Ping{Nonce: 1} }, proto.CodeBadRequest},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				id := newIdentity(t)
				c, err := h.handshake(t, id, h.state.Pin)
				if err != nil {
					t.Fatal(err)
				}
				defer c.close()
				c.send(tt.first(h))
				m := c.read()
				if tt.code == "" {
					w := expectType[*proto.Welcome](t, m)
					if w.AgentID != id.ID().String() || w.Version != "test" {
						t.Errorf("welcome %#v", w)
					}
					if kind == "tcp" && !strings.HasPrefix(w.Observed, "127.0.0.1:") {
						t.Errorf("observed %q, want 127.0.0.1:port", w.Observed)
					}
					c.ping()
					return
				}
				expectError(t, m, tt.code)
				if tt.code == proto.CodeUnauthorized {
					if e := m.(*proto.Error); !strings.Contains(e.Message, "agent login") {
						t.Errorf("message %q does not say what to do", e.Message)
					}
				}
				c.expectClosed()
			})
		}
	})
}

func TestGuestCannotShare(t *testing.T) {
	h := newHarness(t, "pipe", nil)
	c := h.login(t, newIdentity(t), "")
	defer c.close()
	c.send(&proto.Register{ID: 7, Share: "web"})
	if r := expectType[*proto.Result](t, c.read()); r.ID != 7 || r.Code != proto.CodeUnauthorized {
		t.Fatalf("register as guest: %#v", r)
	}
	c.send(&proto.Unregister{ID: 8, Share: "web"})
	if r := expectType[*proto.Result](t, c.read()); r.ID != 8 || r.Code != proto.CodeUnauthorized {
		t.Fatalf("unregister as guest: %#v", r)
	}
	c.ping() // the session survives a refused request
	if st := h.srv.Stats(); st.Shares != 0 || st.Guests != 1 || st.Agents != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestRegister(t *testing.T) {
	h := newHarness(t, "pipe", func(c *Config) { c.MaxSharesPerAgent = 2 })
	c := h.login(t, newIdentity(t), h.state.Token)
	defer c.close()
	hash := make([]byte, 32)
	tests := []struct {
		name string
		msg  proto.Message
		code string
	}{
		{"first", &proto.Register{Share: "web", AdmitHash: hash}, ""},
		{"again updates", &proto.Register{Share: "web", Allow: []string{newIdentity(t).ID().String()}}, ""},
		{"second", &proto.Register{Share: "db", AdmitHash: hash}, ""},
		{"over the limit", &proto.Register{Share: "ssh", AdmitHash: hash}, proto.CodeLimit},
		{"bad name", &proto.Register{Share: "Web Site", AdmitHash: hash}, proto.CodeBadRequest},
		{"bad allow", &proto.Register{Share: "web", Allow: []string{"nobody"}}, proto.CodeBadRequest},
		{"unregister", &proto.Unregister{Share: "db"}, ""},
		{"unregister unknown", &proto.Unregister{Share: "nope"}, ""},
		{"room again", &proto.Register{Share: "ssh", AdmitHash: hash}, ""},
	}
	for i, tt := range tests {
		id := uint64(100 + i)
		switch m := tt.msg.(type) {
		case *proto.Register:
			m.ID = id
		case *proto.Unregister:
			m.ID = id
		}
		c.send(tt.msg)
		r := expectType[*proto.Result](t, c.read())
		if r.ID != id || r.Code != tt.code {
			t.Errorf("%s: %#v, want code %q", tt.name, r, tt.code)
		}
	}
	if st := h.srv.Stats(); st.Shares != 2 || st.Agents != 1 {
		t.Errorf("stats %+v, want 2 shares of 1 agent", st)
	}
	c.close()
	waitFor(t, "shares gone", func() bool { st := h.srv.Stats(); return st.Shares == 0 && st.Agents == 0 })
}

// waitFor polls cond (bounded) for state the broker changes asynchronously.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

var (
	connectorCands = []proto.Candidate{{Kind: proto.KindHost, Addr: "192.0.2.1:4000"}}
	sharerCands    = []proto.Candidate{{Kind: proto.KindHost, Addr: "198.51.100.7:5000"}, {Kind: proto.KindSrflx, Addr: "203.0.113.9:6000"}}
)

// sharerWithTicket logs in a member that shares name with a fresh ticket.
func sharerWithTicket(t *testing.T, h *harness, name string) (*client, secure.Ticket) {
	t.Helper()
	id := newIdentity(t)
	s := h.login(t, id, h.state.Token)
	tk, err := secure.NewTicket("127.0.0.1:7000", h.state.Pin, id.ID(), name)
	if err != nil {
		t.Fatal(err)
	}
	ah := tk.AdmitHash()
	s.send(&proto.Register{ID: 1, Share: name, AdmitHash: ah[:]})
	if r := expectType[*proto.Result](t, s.read()); r.Code != "" {
		t.Fatalf("register: %#v", r)
	}
	return s, tk
}

func TestIntroduction(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, nil)
		sharer, tk := sharerWithTicket(t, h, "web")
		defer sharer.close()
		connID := newIdentity(t)
		conn := h.login(t, connID, "")
		defer conn.close()

		admit := tk.AdmitKey()
		conn.send(&proto.Connect{ID: 9, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:], Candidates: connectorCands})
		in := expectType[*proto.Intro](t, sharer.read())
		if in.Connector != connID.ID().String() || in.Share != "web" || fmt.Sprint(in.Candidates) != fmt.Sprint(connectorCands) {
			t.Fatalf("intro %#v", in)
		}
		sharer.send(&proto.IntroReply{Intro: in.Intro, Candidates: sharerCands, Port: 8080})
		rep := expectType[*proto.ConnectReply](t, conn.read())
		if rep.ID != 9 || rep.Code != "" || rep.Port != 8080 || fmt.Sprint(rep.Candidates) != fmt.Sprint(sharerCands) {
			t.Fatalf("connect reply %#v", rep)
		}
		// A late duplicate reply is ignored, and the sharer's session lives on.
		sharer.send(&proto.IntroReply{Intro: in.Intro})
		sharer.send(&proto.IntroReply{Intro: 12345})
		sharer.ping()
		if st := h.srv.Stats(); st != (Stats{Agents: 1, Guests: 1, Shares: 1, Introductions: 1}) {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestConnectRefused(t *testing.T) {
	h := newHarness(t, "pipe", func(c *Config) { c.IntroTimeout = 200 * time.Millisecond })
	sharer, tkWeb := sharerWithTicket(t, h, "web")
	defer sharer.close()
	// A second share of the same sharer, with its own ticket.
	tkDB, err := secure.NewTicket(tkWeb.Broker, tkWeb.Pin, tkWeb.Sharer, "db")
	if err != nil {
		t.Fatal(err)
	}
	dbHash := tkDB.AdmitHash()
	sharer.send(&proto.Register{ID: 2, Share: "db", AdmitHash: dbHash[:]})
	expectType[*proto.Result](t, sharer.read())

	conn := h.login(t, newIdentity(t), "")
	defer conn.close()
	webKey, dbKey := tkWeb.AdmitKey(), tkDB.AdmitKey()
	offline := newIdentity(t).ID().String()
	tests := []struct {
		name   string
		req    proto.Connect
		code   string
		answer bool // the sharer gets an Intro and does not answer
	}{
		{"admit of another share", proto.Connect{Sharer: tkWeb.Sharer.String(), Share: "web", Admit: dbKey[:]}, proto.CodeUnauthorized, false},
		{"admit of web to db", proto.Connect{Sharer: tkWeb.Sharer.String(), Share: "db", Admit: webKey[:]}, proto.CodeUnauthorized, false},
		{"unknown share", proto.Connect{Sharer: tkWeb.Sharer.String(), Share: "nope", Admit: webKey[:]}, proto.CodeNotRegistered, false},
		{"no admit key", proto.Connect{Sharer: tkWeb.Sharer.String(), Share: "web"}, proto.CodeUnauthorized, false},
		{"sharer offline", proto.Connect{Sharer: offline, Share: "web", Admit: webKey[:]}, proto.CodeNotFound, false},
		{"bad sharer id", proto.Connect{Sharer: "x", Share: "web", Admit: webKey[:]}, proto.CodeBadRequest, false},
		{"sharer silent", proto.Connect{Sharer: tkWeb.Sharer.String(), Share: "web", Admit: webKey[:]}, proto.CodeTimeout, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req
			req.ID = uint64(i + 1)
			conn.send(&req)
			if tt.answer {
				expectType[*proto.Intro](t, sharer.read())
			}
			rep := expectType[*proto.ConnectReply](t, conn.read())
			if rep.ID != req.ID || rep.Code != tt.code || len(rep.Candidates) != 0 {
				t.Fatalf("%#v, want code %q", rep, tt.code)
			}
			if tt.code == proto.CodeNotFound && !strings.Contains(rep.Message, "is not online") {
				t.Errorf("message %q", rep.Message)
			}
		})
	}
	if n := h.srv.Stats().Introductions; n != 0 {
		t.Errorf("%d introductions counted, want 0", n)
	}
}

// TestRegistrationGrace: a share the online sharer does not hold is "not
// registered yet" (retry) just after the broker starts, after a login of
// the sharer's identity and after the share was withdrawn; past the grace
// it is refused like a bad ticket.
func TestRegistrationGrace(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	h := newHarness(t, "pipe", func(c *Config) { c.Now, c.RegistrationGrace = clock.Now, time.Minute })
	id := newIdentity(t)
	sharer := h.login(t, id, h.state.Token)
	defer sharer.close()
	for i, name := range []string{"web", "db"} {
		sharer.send(&proto.Register{ID: uint64(i + 1), Share: name})
		if r := expectType[*proto.Result](t, sharer.read()); r.Code != "" {
			t.Fatalf("register %s: %#v", name, r)
		}
	}
	conn := h.login(t, newIdentity(t), h.state.Token)
	defer conn.close()
	steps := []struct {
		name  string
		do    func()
		share string
		code  string
	}{
		{"broker just started", nil, "nope", proto.CodeNotRegistered},
		{"past the grace", func() { clock.Add(2 * time.Minute) }, "nope", proto.CodeUnauthorized},
		{"withdrawn", func() {
			sharer.send(&proto.Unregister{ID: 3, Share: "db"})
			expectType[*proto.Result](t, sharer.read())
		}, "db", proto.CodeNotRegistered},
		{"withdrawn, past the grace", func() { clock.Add(2 * time.Minute) }, "db", proto.CodeUnauthorized},
		{"identity just logged in again", func() {
			second := h.login(t, id, h.state.Token)
			t.Cleanup(second.close)
		}, "nope", proto.CodeNotRegistered},
	}
	for i, st := range steps {
		if st.do != nil {
			st.do()
		}
		conn.send(&proto.Connect{ID: uint64(i + 1), Sharer: id.ID().String(), Share: st.share})
		if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.Code != st.code {
			t.Errorf("%s: %#v, want code %q", st.name, rep, st.code)
		}
	}
}

func TestSharerAnswers(t *testing.T) {
	h := newHarness(t, "tcp", nil)
	sharer, tk := sharerWithTicket(t, h, "web")
	defer sharer.close()
	conn := h.login(t, newIdentity(t), "")
	defer conn.close()
	admit := tk.AdmitKey()

	// The sharer declines: its code and message reach the connector.
	conn.send(&proto.Connect{ID: 1, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:]})
	in := expectType[*proto.Intro](t, sharer.read())
	sharer.send(&proto.IntroReply{Intro: in.Intro, Code: proto.CodeRefused, Message: "target down"})
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.Code != proto.CodeRefused || rep.Message != "target down" {
		t.Fatalf("declined: %#v", rep)
	}

	// The sharer goes away while the connector waits.
	conn.send(&proto.Connect{ID: 2, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:]})
	expectType[*proto.Intro](t, sharer.read())
	sharer.close()
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.ID != 2 || rep.Code != proto.CodeNotFound {
		t.Fatalf("sharer gone: %#v", rep)
	}
	conn.ping()
}

func TestAllowList(t *testing.T) {
	h := newHarness(t, "pipe", nil)
	sharerID, friendID, strangerID := newIdentity(t), newIdentity(t), newIdentity(t)
	sharer := h.login(t, sharerID, h.state.Token)
	defer sharer.close()
	sharer.send(&proto.Register{ID: 1, Share: "db", Allow: []string{friendID.ID().String()}})
	if r := expectType[*proto.Result](t, sharer.read()); r.Code != "" {
		t.Fatal(r)
	}
	tests := []struct {
		name  string
		id    *secure.Identity
		token string
		code  string
	}{
		{"allowed member", friendID, h.state.Token, ""},
		{"stranger", strangerID, h.state.Token, proto.CodeUnauthorized},
		// Identity alone admits members only: a guest needs a ticket.
		{"allowed guest", friendID, "", proto.CodeUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := h.login(t, tt.id, tt.token)
			defer c.close()
			c.send(&proto.Connect{ID: 5, Sharer: sharerID.ID().String(), Share: "db", Candidates: connectorCands})
			if tt.code == "" {
				in := expectType[*proto.Intro](t, sharer.read())
				sharer.send(&proto.IntroReply{Intro: in.Intro, Candidates: sharerCands})
			}
			if rep := expectType[*proto.ConnectReply](t, c.read()); rep.Code != tt.code {
				t.Fatalf("%#v, want code %q", rep, tt.code)
			}
		})
	}
}

func TestPendingIntroLimit(t *testing.T) {
	h := newHarness(t, "pipe", func(c *Config) { c.MaxPendingIntros = 1; c.IntroTimeout = 300 * time.Millisecond })
	sharer, tk := sharerWithTicket(t, h, "web")
	defer sharer.close()
	conn := h.login(t, newIdentity(t), "")
	defer conn.close()
	admit := tk.AdmitKey()
	conn.send(&proto.Connect{ID: 1, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:]})
	expectType[*proto.Intro](t, sharer.read()) // now the first one is surely in flight
	conn.send(&proto.Connect{ID: 2, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:]})
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.ID != 2 || rep.Code != proto.CodeLimit {
		t.Fatalf("second connect: %#v", rep)
	}
	if rep := expectType[*proto.ConnectReply](t, conn.read()); rep.ID != 1 || rep.Code != proto.CodeTimeout {
		t.Fatalf("first connect: %#v", rep)
	}
}

// TestSeveralSessionsOneAgent: sessions of one identity (two `agent share`
// processes of one state dir, or a reconnect before the old session timed
// out) live side by side; each introduction goes to the newest session
// holding its share.
func TestSeveralSessionsOneAgent(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, nil)
		sharer, tk := sharerWithTicket(t, h, "web")
		defer sharer.close()
		// A guest with the same identity (a connector on the same machine).
		g := h.login(t, sharer.id, "")
		defer g.close()
		sharer.ping()

		again := h.login(t, sharer.id, h.state.Token)
		defer again.close()
		sharer.ping() // still online
		if st := h.srv.Stats(); st.Agents != 1 || st.Guests != 1 || st.Shares != 1 {
			t.Errorf("stats %+v", st)
		}
		admit := tk.AdmitKey()
		connect := func(id uint64, to *client) {
			t.Helper()
			g.send(&proto.Connect{ID: id, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:]})
			in := expectType[*proto.Intro](t, to.read())
			to.send(&proto.IntroReply{Intro: in.Intro, Candidates: sharerCands})
			if rep := expectType[*proto.ConnectReply](t, g.read()); rep.Code != "" {
				t.Fatalf("%#v", rep)
			}
		}
		// Only the first session holds "web": it gets the introduction.
		connect(2, sharer)
		// Once the newer session registers it too, the newer one does.
		ah := tk.AdmitHash()
		again.send(&proto.Register{ID: 1, Share: "web", AdmitHash: ah[:]})
		expectType[*proto.Result](t, again.read())
		connect(3, again)
		// The newer session gone, the older one serves again.
		again.close()
		waitFor(t, "newer session gone", func() bool { return h.srv.Stats().Shares == 1 })
		connect(4, sharer)
	})
}

func TestMaxAgents(t *testing.T) {
	h := newHarness(t, "pipe", func(c *Config) { c.MaxAgents = 1 })
	first := h.login(t, newIdentity(t), h.state.Token)
	defer first.close()
	c, m := h.hello(t, newIdentity(t), "")
	expectError(t, m, proto.CodeLimit)
	c.expectClosed()
	// The agent already online may still reconnect.
	again := h.login(t, first.id, h.state.Token)
	again.close()
}

// frame builds a raw frame, for what proto.Write refuses to send.
func frame(length uint32, version, typ byte, body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, length)
	return append(append(b, version, typ), body...)
}

func TestBadFrames(t *testing.T) {
	h := newHarness(t, "tcp", func(c *Config) { c.MaxMessageSize = 4096 })
	other := h.login(t, newIdentity(t), h.state.Token)
	defer other.close()
	big := strings.Repeat("x", 64<<10)
	tests := []struct {
		name string
		raw  []byte
		msg  proto.Message
	}{
		{"too large", frame(uint32(2+len(big)), proto.Version, byte(proto.TypePing), big), nil},
		{"huge length", frame(1<<31, proto.Version, byte(proto.TypePing), ""), nil},
		{"version", frame(4, 9, byte(proto.TypePing), "{}"), nil},
		{"unknown type", frame(4, proto.Version, 200, "{}"), nil},
		{"bad json", frame(5, proto.Version, byte(proto.TypePing), "{{{"), nil},
		{"invalid register", frame(4, proto.Version, byte(proto.TypeRegister), "{}"), nil},
		{"unexpected type", nil, &proto.Welcome{AgentID: "me"}},
		{"broker's message", nil, &proto.Intro{Intro: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := h.login(t, newIdentity(t), h.state.Token)
			defer c.close()
			if tt.msg != nil {
				c.send(tt.msg)
			} else {
				// The broker may stop reading before the whole frame is in.
				go func() {
					c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
					c.conn.Write(tt.raw)
				}()
			}
			expectError(t, c.read(), proto.CodeBadRequest)
			c.expectClosed()
			other.ping()
		})
	}
	waitFor(t, "bad sessions gone", func() bool { return h.srv.Stats().Agents == 1 })
}

func TestBadConnections(t *testing.T) {
	h := newHarness(t, "tcp", func(c *Config) { c.HandshakeTimeout = 500 * time.Millisecond })
	other := h.login(t, newIdentity(t), h.state.Token)
	defer other.close()
	tests := []struct {
		name string
		send []byte
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"zeros", make([]byte, 4096)},
		{"nothing", nil},
		{"tls record garbage", []byte{0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := h.dial(t)
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if len(tt.send) > 0 {
				c.Write(tt.send)
			}
			// The broker closes it (at the latest after HandshakeTimeout).
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						t.Fatal("broker kept the connection open")
					}
					break
				}
			}
			other.ping()
		})
	}
}

func TestTLSMismatch(t *testing.T) {
	h := newHarness(t, "tcp", nil)
	other := h.login(t, newIdentity(t), h.state.Token)
	defer other.close()

	t.Run("wrong pin", func(t *testing.T) {
		st, err := LoadOrCreateState(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		_, err = h.handshake(t, newIdentity(t), st.Pin)
		if err == nil || !strings.Contains(err.Error(), secure.ErrPinMismatch.Error()) {
			t.Fatalf("handshake with a wrong pin: %v", err)
		}
	})
	t.Run("peer ALPN", func(t *testing.T) {
		id := newIdentity(t)
		cfg, err := secure.PeerClientConfig(id, id.ID())
		if err != nil {
			t.Fatal(err)
		}
		raw := h.dial(t)
		defer raw.Close()
		c := tls.Client(raw, cfg)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := c.Handshake(); err == nil {
			t.Fatal("control server accepted the peer ALPN")
		}
	})
	t.Run("no client cert", func(t *testing.T) {
		raw := h.dial(t)
		defer raw.Close()
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{secure.ALPNControl}})
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// In TLS 1.3 the client learns of the refusal on its first read.
		err := c.Handshake()
		if err == nil {
			_, err = c.Read(make([]byte, 1))
		}
		if err == nil {
			t.Fatal("control server accepted a client without certificate")
		}
	})
	other.ping()
}

func TestIdleTimeout(t *testing.T) {
	h := newHarness(t, "pipe", func(c *Config) { c.IdleTimeout = 200 * time.Millisecond })
	c := h.login(t, newIdentity(t), h.state.Token)
	defer c.close()
	c.expectClosed()
	waitFor(t, "agent gone", func() bool { return h.srv.Stats().Agents == 0 })
}

// TestShutdown ends the server with sessions in every state; goleak (in
// TestMain) and the harness's wait check that nothing is left behind.
func TestShutdown(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, nil)
		sharer, tk := sharerWithTicket(t, h, "web")
		defer sharer.close()
		conn := h.login(t, newIdentity(t), "")
		defer conn.close()
		admit := tk.AdmitKey()
		conn.send(&proto.Connect{ID: 1, Sharer: tk.Sharer.String(), Share: "web", Admit: admit[:]})
		expectType[*proto.Intro](t, sharer.read()) // an introduction is pending
		half, err := h.handshake(t, newIdentity(t), h.state.Pin)
		if err != nil {
			t.Fatal(err)
		}
		defer half.close() // no Hello yet
		raw := h.dial(t)   // no TLS yet
		defer raw.Close()
		// The harness cleanup cancels and waits for every goroutine.
	})
}

// A listener failing under Serve ends every session and is reported.
func TestServeListenerFails(t *testing.T) {
	st, err := LoadOrCreateState(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Token: st.Token, Cert: st.Cert, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(context.Background(), ln) }()
	h := &harness{srv: srv, state: st, dial: func(t *testing.T) net.Conn {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}}
	c := h.login(t, newIdentity(t), st.Token)
	defer c.close()
	ln.Close()
	c.expectClosed()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("Serve returned nil after its listener failed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}
