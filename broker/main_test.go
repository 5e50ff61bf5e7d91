package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

func TestMain(m *testing.M) {
	if floodChild() {
		return
	}
	goleak.VerifyTestMain(m)
}

// connKinds are the transports every protocol test runs over: the server is
// handed a net.Pipe end (as when embedded), or serves a loopback listener.
var connKinds = []string{"pipe", "tcp"}

// harness is a broker under test with its state in a temp dir.
type harness struct {
	srv   *Server
	state *State
	dial  func(t *testing.T) net.Conn
}

// testLogWriter logs to t until the test's cleanup: goroutines that end
// after it (pion's, which Close does not wait for) must not call t.Log.
type testLogWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *testLogWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func testLogger(t *testing.T) logrus.FieldLogger {
	w := &testLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	l := logrus.New()
	l.SetOutput(w)
	l.SetLevel(logrus.DebugLevel)
	return l
}

func newHarness(t *testing.T, kind string, tweak func(*Config)) *harness {
	t.Helper()
	st, err := LoadOrCreateState(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Token: st.Token, Cert: st.Cert, Log: testLogger(t), Version: "test"}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{srv: srv, state: st}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// Cleanups run last-in first-out: stop the server, then wait for it, so
	// nothing logs after the test ends.
	t.Cleanup(wg.Wait)
	t.Cleanup(cancel)
	switch kind {
	case "pipe":
		h.dial = func(t *testing.T) net.Conn {
			c, s := net.Pipe()
			wg.Add(1)
			go func() {
				defer wg.Done()
				srv.Accept(ctx, s)
			}()
			return c
		}
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ctx, ln); err != nil {
				t.Errorf("serve: %v", err)
			}
		}()
		h.dial = func(t *testing.T) net.Conn {
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	default:
		t.Fatalf("unknown conn kind %q", kind)
	}
	return h
}

// client is a minimal agent side of the control channel.
type client struct {
	t    *testing.T
	id   *secure.Identity
	raw  net.Conn
	conn *tls.Conn
}

func newIdentity(t *testing.T) *secure.Identity {
	t.Helper()
	id, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// handshake opens a TLS control connection as id, pinning pin.
func (h *harness) handshake(t *testing.T, id *secure.Identity, pin secure.Pin) (*client, error) {
	t.Helper()
	cfg, err := secure.ControlClientConfig(id, pin)
	if err != nil {
		t.Fatal(err)
	}
	raw := h.dial(t)
	t.Cleanup(func() { raw.Close() })
	conn := tls.Client(raw, cfg)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := conn.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return &client{t: t, id: id, raw: raw, conn: conn}, nil
}

// hello connects and sends a Hello, returning the broker's first answer.
func (h *harness) hello(t *testing.T, id *secure.Identity, token string) (*client, proto.Message) {
	t.Helper()
	c, err := h.handshake(t, id, h.state.Pin)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c.send(&proto.Hello{Token: token, Version: "test"})
	return c, c.read()
}

// login returns a session past its Welcome; token "" makes a guest.
func (h *harness) login(t *testing.T, id *secure.Identity, token string) *client {
	t.Helper()
	c, m := h.hello(t, id, token)
	w, ok := m.(*proto.Welcome)
	if !ok {
		t.Fatalf("hello: got %#v, want welcome", m)
	}
	if w.AgentID != id.ID().String() {
		t.Fatalf("welcome names %s, want %s", w.AgentID, id.ID())
	}
	return c
}

func (c *client) send(m proto.Message) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := proto.Write(c.conn, m); err != nil {
		c.t.Fatalf("send %T: %v", m, err)
	}
}

func (c *client) readErr() (proto.Message, error) {
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	return proto.Read(c.conn, 0)
}

func (c *client) read() proto.Message {
	c.t.Helper()
	m, err := c.readErr()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

// expectClosed reads until the broker ends the session.
func (c *client) expectClosed() {
	c.t.Helper()
	for range 10 {
		m, err := c.readErr()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatal("session still open")
			}
			return
		}
		c.t.Logf("before close: %#v", m)
	}
	c.t.Fatal("session still open")
}

func (c *client) ping() {
	c.t.Helper()
	c.send(&proto.Ping{Nonce: 42})
	if p, ok := c.read().(*proto.Pong); !ok || p.Nonce != 42 {
		c.t.Fatalf("ping: got %#v", p)
	}
}

func (c *client) close() { c.raw.Close() }

func expectType[T proto.Message](t *testing.T, m proto.Message) T {
	t.Helper()
	v, ok := m.(T)
	if !ok {
		t.Fatalf("got %#v, want %T", m, v)
	}
	return v
}

func expectError(t *testing.T, m proto.Message, code string) {
	t.Helper()
	if e := expectType[*proto.Error](t, m); e.Code != code {
		t.Fatalf("error %q (%s), want code %q", e.Code, e.Message, code)
	}
}
