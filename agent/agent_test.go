package agent

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/peerport/peerport/internal/config"
	"github.com/peerport/peerport/internal/resume"
	"github.com/peerport/peerport/internal/secure"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStunServers(t *testing.T) {
	tests := []struct {
		name    string
		welcome []string
		broker  string
		want    []string
	}{
		{"unspecified v4 means the broker", []string{"0.0.0.0:3478"}, "broker.example.com:7000", []string{"broker.example.com:3478"}},
		{"unspecified v6 means the broker", []string{"[::]:3479"}, "203.0.113.10:7000", []string{"203.0.113.10:3479"}},
		{"specific kept", []string{"203.0.113.11:3478"}, "203.0.113.10:7000", []string{"203.0.113.11:3478"}},
		{"garbage dropped", []string{"nope", "203.0.113.11:3478"}, "203.0.113.10:7000", []string{"203.0.113.11:3478"}},
		{"none", nil, "203.0.113.10:7000", nil},
		{"dual-stack, reached over IPv4", []string{"203.0.113.10:3478", "203.0.113.10:3479", "[2001:db8::10]:3478", "[2001:db8::10]:3479"},
			"203.0.113.10:7000", []string{"203.0.113.10:3478", "203.0.113.10:3479", "[2001:db8::10]:3478", "[2001:db8::10]:3479"}},
		{"dual-stack, reached over IPv6", []string{"203.0.113.10:3478", "203.0.113.10:3479", "[2001:db8::10]:3478", "[2001:db8::10]:3479"},
			"[2001:db8::10]:7000", []string{"[2001:db8::10]:3478", "[2001:db8::10]:3479", "203.0.113.10:3478", "203.0.113.10:3479"}},
		{"reached by name: order kept", []string{"[2001:db8::10]:3478", "203.0.113.10:3478"},
			"broker.example.com:7000", []string{"[2001:db8::10]:3478", "203.0.113.10:3478"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := stunServers(tc.welcome, tc.broker); !slices.Equal(got, tc.want) {
				t.Errorf("stunServers = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestStunPair(t *testing.T) {
	tests := []struct {
		name         string
		servers      []string
		primary, alt string
	}{
		{"other address preferred", []string{"a:3478", "a:3479", "b:3478"}, "a:3478", "b:3478"},
		{"else other port", []string{"a:3478", "a:3479"}, "a:3478", "a:3479"},
		{"one server", []string{"a:3478"}, "a:3478", ""},
		{"same family only", []string{"203.0.113.10:3478", "[2001:db8::10]:3478", "203.0.113.10:3479"}, "203.0.113.10:3478", "203.0.113.10:3479"},
		{"other IPv4 address", []string{"203.0.113.10:3478", "[2001:db8::10]:3478", "203.0.113.11:3478"}, "203.0.113.10:3478", "203.0.113.11:3478"},
		{"IPv6 primary", []string{"[2001:db8::10]:3478", "[2001:db8::10]:3479", "203.0.113.10:3478"}, "[2001:db8::10]:3478", "[2001:db8::10]:3479"},
		{"no alternate of the family", []string{"203.0.113.10:3478", "[2001:db8::10]:3479"}, "203.0.113.10:3478", ""},
		{"none", nil, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, a := stunPair(tc.servers)
			if p != tc.primary || a != tc.alt {
				t.Errorf("stunPair = %q, %q; want %q, %q", p, a, tc.primary, tc.alt)
			}
		})
	}
}

func TestOffers(t *testing.T) {
	a := &Agent{opts: Options{Candidates: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}}
	for ip, want := range map[string]bool{"127.0.0.1": true, "::1": true, "192.0.2.2": false, "fd00::2": false} {
		if got := a.offers(netip.MustParseAddr(ip)); got != want {
			t.Errorf("offers(%s) = %v, want %v", ip, got, want)
		}
	}
	if all := (&Agent{}); !all.offers(netip.MustParseAddr("192.0.2.2")) {
		t.Error("no filter must offer every address")
	}
}

// TestConnectKey: a reload keeps a forward exactly when its ticket (or
// peer and share) and its listen address are unchanged.
func TestConnectKey(t *testing.T) {
	id, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	pin := secure.Pin{1}
	t1, _ := secure.NewTicket("127.0.0.1:7000", pin, id.ID(), "web")
	t2, _ := secure.NewTicket("127.0.0.1:7000", pin, id.ID(), "web") // same share, new secret
	base := ConnectSpec{Ticket: &t1, Listen: "127.0.0.1:1"}
	same := ConnectSpec{Ticket: &t1, Listen: "127.0.0.1:1"}
	for name, other := range map[string]ConnectSpec{
		"other ticket": {Ticket: &t2, Listen: "127.0.0.1:1"},
		"other listen": {Ticket: &t1, Listen: "127.0.0.1:2"},
		"team mode":    {Peer: id.ID(), Share: "web", Listen: "127.0.0.1:1"},
	} {
		if other.key() == base.key() {
			t.Errorf("%s: same key as the original", name)
		}
	}
	if same.key() != base.key() {
		t.Error("identical specs have different keys")
	}
}

func TestOptionsFromConfigResume(t *testing.T) {
	c, err := config.ParseAgent("agent.yaml", []byte("shares: [{name: web, target: 80}]\nresume:\n  keepalive: 1s\n  dead_after: 1500ms\n  timeout: 10m\n  buffer_kib: 256\n"))
	if err != nil {
		t.Fatal(err)
	}
	o, err := OptionsFromConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	want := resume.Config{KeepAlive: time.Second, DeadFloor: 1500 * time.Millisecond, ResumeTimeout: 10 * time.Minute, MaxUnacked: 256 << 10}
	if o.Resume != want {
		t.Errorf("resume %+v, want %+v", o.Resume, want)
	}
}

// TestNoSessionAfterStop: once Run has begun to stop, a session that a dial
// or punch under way completes is refused, not left for nobody to close
// (Run would wait for it for ever: found by a SIGTERM during a connect).
func TestNoSessionAfterStop(t *testing.T) {
	a, err := New(Options{Identity: newIdentity(t), StateDir: t.TempDir(), Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.ctx = ctx
	var id secure.AgentID
	id[0] = 1
	if err := a.addSession(&peerSession{key: sessionKey{peer: id, role: roleConnector}}); err != nil {
		t.Fatalf("a running agent refused a session: %v", err)
	}
	cancel()
	id[0] = 2
	if err := a.addSession(&peerSession{key: sessionKey{peer: id, role: roleConnector}}); err == nil {
		t.Fatal("a stopping agent took a new session")
	}
	if len(a.sessions) != 1 {
		t.Fatalf("%d sessions, want the first only", len(a.sessions))
	}
}
