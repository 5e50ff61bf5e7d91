package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

func TestLoadOrCreateState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "broker")
	first, err := LoadOrCreateState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[a-z2-7]{26}$`).MatchString(first.Token) {
		t.Errorf("token %q, want 26 lowercase base32 characters", first.Token)
	}
	if first.Pin != secure.PinOf(first.Cert.Leaf) || first.Pin.IsZero() {
		t.Error("pin does not match the certificate")
	}
	for name, want := range map[string]os.FileMode{".": 0o700, KeyFile: 0o600, TokenFile: 0o600, TURNSecretFile: 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), want)
		}
	}
	second, err := LoadOrCreateState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if second.Pin != first.Pin || second.Token != first.Token {
		t.Error("second start changed the pin or token")
	}
	if len(first.TURNSecret) != 52 || second.TURNSecret != first.TURNSecret || first.TURNSecret == first.Token {
		t.Errorf("TURN secret %q, then %q: want one of 52 characters, kept", first.TURNSecret, second.TURNSecret)
	}
	u := second.URL("broker.example.com:7000")
	parsed, err := secure.ParseBrokerURL(u.String())
	if err != nil || parsed != u {
		t.Errorf("URL %s parses to %+v, %v", u, parsed, err)
	}
	if _, err := LoadOrCreateState(""); err == nil {
		t.Error("empty state dir accepted")
	}
}

func TestLoadOrCreateStateCorrupt(t *testing.T) {
	tests := []struct {
		name, file, content string
		want                error
	}{
		{"key garbage", KeyFile, "not a key", secure.ErrBadKey},
		{"token empty", TokenFile, "", ErrBadState},
		{"token short", TokenFile, "abc\n", ErrBadState},
		{"token with @", TokenFile, "abcdefghijklmnop@", ErrBadState},
		{"token two lines", TokenFile, "abcdefghijklmnop\nabcdefghijklmnop\n", ErrBadState},
		{"TURN secret short", TURNSecretFile, "short\n", ErrBadState},
		{"TURN secret with a space", TURNSecretFile, "abcdefgh ijklmnopq\n", ErrBadState},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := LoadOrCreateState(dir); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, tt.file)
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateState(dir)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			// Never silently replaced: agents hold URLs made from it.
			if b, _ := os.ReadFile(path); string(b) != tt.content {
				t.Error("corrupt file was rewritten")
			}
		})
	}
	t.Run("hand-picked token", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, TokenFile), []byte("My.Team-Token_2024\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := LoadOrCreateState(dir)
		if err != nil || st.Token != "My.Team-Token_2024" {
			t.Fatalf("%v, %v", st, err)
		}
	})
}

func TestStart(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := Start(ctx, Options{Listen: "127.0.0.1:0", StateDir: dir, Log: testLogger(t), Version: "v-test",
		Limits: func(c *Config) { c.MaxAgents = 10 }})
	if err != nil {
		t.Fatal(err)
	}
	u, err := secure.ParseBrokerURL(r.URL.String())
	if err != nil {
		t.Fatalf("URL %s: %v", r.URL, err)
	}
	st, err := LoadOrCreateState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Pin != st.Pin || u.Token != st.Token {
		t.Error("URL does not carry the state's pin and token")
	}
	if u.Addr != r.Addr.String() {
		t.Errorf("URL address %s, listener %s", u.Addr, r.Addr)
	}
	if r.Server.cfg.MaxAgents != 10 {
		t.Error("Limits not applied")
	}

	// An agent logs in with nothing but the URL.
	id := newIdentity(t)
	cfg, err := secure.ControlClientConfig(id, u.Pin)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", u.Addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := proto.Write(conn, &proto.Hello{Token: u.Token}); err != nil {
		t.Fatal(err)
	}
	m, err := proto.Read(conn, 0)
	if err != nil {
		t.Fatal(err)
	}
	if w, ok := m.(*proto.Welcome); !ok || w.Version != "v-test" {
		t.Fatalf("got %#v", m)
	}
	if r.Server.Stats().Agents != 1 {
		t.Error("agent not counted")
	}

	cancel()
	select {
	case <-r.Done:
	case <-time.After(10 * time.Second):
		t.Fatal("broker did not stop")
	}
	if err := r.Err(); err != nil {
		t.Errorf("Err after cancel: %v", err)
	}
	if _, err := proto.Read(conn, 0); err == nil {
		t.Error("session survived shutdown")
	}
}

func TestStartErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tests := []struct {
		name string
		o    Options
	}{
		{"port taken", Options{Listen: ln.Addr().String(), StateDir: t.TempDir()}},
		{"no state dir", Options{Listen: "127.0.0.1:0"}},
		{"bad limits", Options{Listen: "127.0.0.1:0", StateDir: t.TempDir(), Limits: func(c *Config) { c.IdleTimeout = -1 }}},
		{"bad public addr", Options{Listen: "127.0.0.1:0", StateDir: t.TempDir(), PublicAddr: "host:99999"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r, err := Start(context.Background(), tt.o); err == nil {
				t.Fatalf("started at %s", r.URL)
			}
		})
	}
}

func TestPublicAddr(t *testing.T) {
	bound := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 7001} }
	tests := []struct {
		name, public string
		bound        net.Addr
		want         string // "" : any ip with port 7001
	}{
		{"host given", "broker.example.com", bound("0.0.0.0"), "broker.example.com:7001"},
		{"host:port given", "broker.example.com:443", bound("0.0.0.0"), "broker.example.com:443"},
		{"ipv6 given", "2001:db8::1", bound("::"), "[2001:db8::1]:7001"},
		{"specific listener", "", bound("127.0.0.1"), "127.0.0.1:7001"},
		{"wildcard listener", "", bound("0.0.0.0"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addrs, err := publicAddrs(tt.public, tt.bound)
			if err != nil || len(addrs) != 1 {
				t.Fatal(addrs, err)
			}
			got := addrs[0]
			if tt.want != "" && got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
			host, port, err := net.SplitHostPort(got)
			if err != nil || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified() {
				t.Fatalf("got %s: never advertise an unspecified address", got)
			}
			if tt.public == "" && port != strconv.Itoa(7001) {
				t.Fatalf("got %s, want the bound port", got)
			}
		})
	}
}

func TestNewConfig(t *testing.T) {
	st, err := LoadOrCreateState(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Cert: st.Cert}); err == nil {
		t.Error("empty token accepted")
	}
	if _, err := New(Config{Token: st.Token}); err == nil {
		t.Error("missing cert accepted")
	}
	_, err = New(Config{Token: st.Token, Cert: st.Cert, MaxAgents: -1, IntroTimeout: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "max_agents") || !strings.Contains(err.Error(), "intro_timeout") {
		t.Errorf("got %v, want every problem named", err)
	}
	s, err := New(Config{Token: st.Token, Cert: st.Cert})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.IdleTimeout != DefaultIdleTimeout || s.cfg.MaxMessageSize != proto.MaxMessageSize {
		t.Errorf("defaults not filled: %+v", s.cfg)
	}
}
